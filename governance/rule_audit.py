"""Rule-change audit: change control, experiment integrity, pending approvals and probable causes.

Per initiative, `RuleAudit` keeps the rule-change log (bounded, by event time)
and the audit incidents it opened:

- `unapproved_rule_change`: a change without an approver or without a ticket
  opens an incident at once (change control is a fact, not a statistic); further
  unapproved changes of the rule update it; an approved, ticketed change of the
  same rule resolves it.
- `experiment_integrity`: a change to a rule that serves a live experiment's
  variants (exposures of the rule carried an experiment within
  `live_experiment_seconds` before the change, or the change names a live
  experiment) opens an incident for the Testing Lead; it stays open until the
  Testing Lead decides (the readout says so).
- Pending approvals: changes without an approver not followed by an approved
  change of the same rule.
- Probable causes of a KPI incident: the initiative's rule changes in the
  `hours` before the end of the bucket that opened it.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from incidents.breach_policy import period_of
from incidents.model import Evidence, IncidentEvent, Transition, incident_id, transition_event_id
from incidents.playbooks import owner_at, playbook_for
from incidents.timeutil import utc

UNAPPROVED = "unapproved_rule_change"
INTEGRITY = "experiment_integrity"
LOG_LIMIT = 200  # changes kept per initiative: enough for audits and probable causes, bounded


@dataclass(frozen=True, slots=True)
class RuleChange:
    event_id: str
    at: float
    rule_id: str
    action: str
    author: str
    approver: str | None = None
    ticket: str | None = None
    experiment: str | None = None

    @property
    def approved(self) -> bool:
        return self.approver is not None and self.ticket is not None

    def missing(self) -> list[str]:
        return [name for name, value in (("approver", self.approver), ("ticket", self.ticket)) if value is None]

    def describe(self) -> dict[str, object]:
        return {
            "event_id": self.event_id,
            "at": utc(self.at).isoformat(),
            "rule_id": self.rule_id,
            "action": self.action,
            "author": self.author,
            "approver": self.approver,
            "ticket": self.ticket,
            "approved": self.approved,
        }


@dataclass(frozen=True, slots=True)
class _OpenFinding:
    incident: str
    period: str
    sequence: int
    changes: tuple[str, ...]  # event ids


@dataclass(slots=True)
class RuleAudit:
    """One initiative's rule-change log and open audit incidents (a table value).

    >>> audit = RuleAudit()
    >>> change = RuleChange("r1", 1_794_477_600.0, "plg-web", "rolled_out", "a.kim")
    >>> [(e.kind, e.transition, e.owner) for e in audit.observe(change, initiative="I", live_experiments={})]
    [('unapproved_rule_change', 'opened', 'Personalization Architect')]
    >>> fix = RuleChange("r2", 1_794_481_200.0, "plg-web", "updated", "a.kim", "j.ortiz", "PERS-1")
    >>> [(e.kind, e.transition) for e in audit.observe(fix, initiative="I", live_experiments={"plg-web": ("exp",)})]
    [('unapproved_rule_change', 'resolved'), ('experiment_integrity', 'opened')]
    """

    log: list[RuleChange] = field(default_factory=list)
    open: dict[str, _OpenFinding] = field(default_factory=dict)  # "<kind>|<rule_id>" -> finding

    def observe(
        self, change: RuleChange, *, initiative: str, live_experiments: Mapping[str, Sequence[str]]
    ) -> list[IncidentEvent]:
        """Log one change (a redelivered one is ignored) and return the audit transitions it causes.

        `live_experiments` maps a rule id to the experiments its exposures served recently.
        """
        if any(known.event_id == change.event_id for known in self.log):
            return []
        bisect.insort(self.log, change, key=lambda c: c.at)
        del self.log[:-LOG_LIMIT]
        events = []
        unapproved_key = f"{UNAPPROVED}|{change.rule_id}"
        if not change.approved:
            reason = f"{change.action} of {change.rule_id} by {change.author} without " + " or ".join(change.missing())
            events.append(self._open_or_update(UNAPPROVED, change, initiative, reason))
        elif unapproved_key in self.open and not any(
            c.rule_id == change.rule_id and not c.approved and c.at > change.at for c in self.log
        ):
            # only an approved change that follows (by event time) the unapproved ones settles them
            events.append(
                self._resolve(
                    unapproved_key, change, initiative, f"approved change {change.event_id} by {change.approver}"
                )
            )
        experiments = set(live_experiments.get(change.rule_id, ()))
        if change.experiment and any(change.experiment in served for served in live_experiments.values()):
            experiments.add(change.experiment)
        if experiments and change.action != "created":
            reason = (
                f"{change.action} of {change.rule_id}, which serves live experiment(s) {', '.join(sorted(experiments))}"
            )
            events.append(self._open_or_update(INTEGRITY, change, initiative, reason, experiments=sorted(experiments)))
        return events

    def _open_or_update(
        self, kind: str, change: RuleChange, initiative: str, reason: str, **detail: object
    ) -> IncidentEvent:
        key = f"{kind}|{change.rule_id}"
        known = self.open.get(key)
        if known is None:
            period = period_of(utc(change.at).replace(minute=0, second=0, microsecond=0))
            finding = _OpenFinding(incident_id(initiative, kind, change.rule_id, period), period, 1, (change.event_id,))
            transition: Transition = "opened"
        else:
            finding = replace(known, sequence=known.sequence + 1, changes=(*known.changes, change.event_id))
            transition = "updated"
        self.open[key] = finding
        return _event(finding, kind, transition, initiative, change, reason, **detail)

    def _resolve(self, key: str, change: RuleChange, initiative: str, reason: str) -> IncidentEvent:
        finding = self.open.pop(key)
        resolved = replace(finding, sequence=finding.sequence + 1)
        return _event(resolved, key.split("|", 1)[0], "resolved", initiative, change, reason)

    def pending_approvals(self) -> list[RuleChange]:
        """Changes without an approver that no later approved change of the same rule settled."""
        pending, settled = [], set()
        for change in reversed(self.log):
            if change.approved:
                settled.add(change.rule_id)
            elif change.approver is None and change.rule_id not in settled:
                pending.append(change)
        return pending[::-1]

    def probable_causes(self, *, before: float, hours: float) -> list[RuleChange]:
        """The changes in the `hours` before `before` (event time), oldest first."""
        return [c for c in self.log if before - hours * 3600 <= c.at <= before]


def _event(
    finding: _OpenFinding,
    kind: str,
    transition: Transition,
    initiative: str,
    change: RuleChange,
    reason: str,
    **detail: object,
) -> IncidentEvent:
    playbook = playbook_for(kind)
    at = utc(change.at)
    evidence = Evidence(
        observed=1.0 if transition != "resolved" else 0.0,
        expected=0.0,
        score=1.0,
        bucket_start=at,
        bucket_end=at,
        detail={
            "kpi": "rule_changes",
            "reason": reason,
            "change": change.describe(),
            "changes": list(finding.changes),
            **detail,
        },
    )
    return IncidentEvent(
        event_id=transition_event_id(finding.incident, transition, finding.sequence),
        incident_id=finding.incident,
        transition=transition,
        kind=kind,
        severity=playbook.severity,
        initiative=initiative,
        series=[f"{initiative}|rule|{change.rule_id}"],
        period=finding.period,
        owner=owner_at(playbook.first_rung),
        rung=playbook.first_rung,
        playbook=playbook.text,
        evidence=evidence,
        occurred_at=at,
    )
