"""One initiative's governance scan: what the per-initiative stage calls, and the state it keeps.

The stream hands it plain data: a closed bucket's `GovernanceTally`, the
consent violations the per-user stage found, rule changes. It returns incident
transitions and keeps a `GovernanceState` (one table value per initiative). The
checklist (`checklist`) is built from that state for the report and the plan.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from governance.consent_incidents import ViolationState, observe_quiet_bucket, observe_violations
from governance.consent_ledger import Violation
from governance.rule_audit import RuleAudit, RuleChange
from governance.rule_fallback import FallbackRatePolicy, RuleFallbackState
from governance.variant_balance import MEASURES, BalanceVerdict, balance_test
from incidents.breach_policy import BreachPolicy, BreachState
from incidents.model import Evidence, IncidentEvent
from incidents.playbooks import ESCALATION_LADDER, PLAYBOOKS, owner_at
from incidents.series import field_of
from incidents.timeutil import utc
from plans.document import ChecklistItem

# Incident kinds that are judgements of engagement KPIs: their evidence lists probable causes.
GOVERNANCE_KINDS = frozenset(
    {"consent_violation", "unapproved_rule_change", "experiment_integrity", "rule_fallback", "variant_imbalance"}
)
NOT_KPI_KINDS = GOVERNANCE_KINDS | {"feed_stale", "monitoring_degraded", "experiment_decision"}
OPENED_KEPT = 20  # governance incidents listed per kind in the checklist's evidence
CONVICTED_KEPT = 5000  # violation event ids remembered per initiative: a redelivered one is not counted twice
LIVE_SECONDS = 86_400  # a rule serves a live experiment if its exposures carried one within this
# What the per-user stage found about an exposure, as bits sent along with it to the per-initiative stage.
CONSENTED, FIRST_IN_HOUR, FIRST_FALLBACK_IN_HOUR = 1, 2, 4


def adherence_pct(personalized: int, violations: int) -> float | None:
    """Share of personalized exposures that had consent, in %, rounded DOWN to 4 decimals, so that a
    failed consent checklist never sits beside 100 %; None before any personalized exposure.

    >>> adherence_pct(500_000, 19), adherence_pct(10, 0), adherence_pct(0, 0)
    (99.9962, 100.0, None)
    """
    if not personalized:
        return None
    return math.floor(1e6 * (1.0 - violations / personalized)) / 1e4


class GovernanceConfig(BaseModel):
    """The governance settings, built once from `monitor.settings.Settings`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    fallback_threshold: float = Field(0.10, gt=0, lt=1)
    balance_significance: float = Field(0.001, gt=0, lt=0.5)
    probable_cause_hours: float = Field(6.0, ge=0)
    recovery_buckets: int = Field(3, ge=1)


@dataclass(slots=True)
class GovernanceTally:
    """A bucket's governance counters (part of the bucket row).

    `rules["channel|rule|experiment"] = [exposures, fallbacks]`;
    `variants["experiment|variant"] = [user-hours, consented, with a fallback]`;
    `personalized[channel]` = personalized (non-fallback) exposures.
    """

    rules: dict[str, list[int]] = field(default_factory=dict)
    variants: dict[str, list[int]] = field(default_factory=dict)
    personalized: dict[str, int] = field(default_factory=dict)

    def merge(self, other: GovernanceTally) -> None:
        """Add another tally of the same bucket (another batch's)."""
        for key, (exposures, fallbacks) in other.rules.items():
            counts = self.rules.setdefault(key, [0, 0])
            counts[0] += exposures
            counts[1] += fallbacks
        for key, units in other.variants.items():
            mine = self.variants.setdefault(key, [0, 0, 0])
            for n, value in enumerate(units):
                mine[n] += value
        for channel, count in other.personalized.items():
            self.personalized[channel] = self.personalized.get(channel, 0) + count

    def add_exposure(
        self,
        channel: str,
        rule_id: str | None,
        experiment: str | None,
        variant: str,
        fallback: bool,
        first_in_hour: bool,
        consented: bool,
        first_fallback_in_hour: bool,
    ) -> None:
        counts = self.rules.setdefault(f"{channel}|{rule_id or 'none'}|{experiment or ''}", [0, 0])
        counts[0] += 1
        counts[1] += fallback
        if not fallback:
            self.personalized[channel] = self.personalized.get(channel, 0) + 1
        if experiment and (first_in_hour or first_fallback_in_hour):
            units = self.variants.setdefault(f"{experiment}|{variant}", [0, 0, 0])
            units[0] += first_in_hour
            units[1] += first_in_hour and consented
            units[2] += first_fallback_in_hour


@dataclass(slots=True)
class GovernanceState:
    violations: ViolationState = field(default_factory=ViolationState)
    convicted: dict[str, tuple[float, str]] = field(default_factory=dict)  # violation event id -> (event time, channel)
    adherence: dict[str, list[int]] = field(default_factory=dict)  # channel -> [personalized, violations]
    rules: dict[str, RuleFallbackState] = field(default_factory=dict)  # "channel|rule"
    rule_rates: dict[str, tuple[int, int]] = field(default_factory=dict)  # last closed bucket: (fallbacks, exposures)
    balance: dict[str, BreachState] = field(default_factory=dict)  # "experiment|measure"
    balance_verdicts: dict[str, BalanceVerdict] = field(default_factory=dict)
    live: dict[str, dict[str, float]] = field(default_factory=dict)  # rule id -> experiment -> last seen
    audit: RuleAudit = field(default_factory=RuleAudit)
    evaluated_until: float = float("-inf")
    opened: dict[str, list[str]] = field(default_factory=dict)  # governance kind -> incidents opened

    def note_opened(self, incident: IncidentEvent) -> None:
        """Remember a governance incident opened in the monitored period: the checklist says it happened."""
        if incident.kind in GOVERNANCE_KINDS and incident.transition == "opened":
            ids = self.opened.setdefault(incident.kind, [])
            if incident.incident_id not in ids:
                ids[:] = [*ids, incident.incident_id][-OPENED_KEPT:]


class GovernanceScan:
    """Governance decisions for one initiative at a time; state in, (state changed in place) transitions out."""

    def __init__(self, config: GovernanceConfig, breach_policy: BreachPolicy) -> None:
        self.config = config
        self.breach_policy = breach_policy
        self.fallback_policy = FallbackRatePolicy(threshold=config.fallback_threshold)

    # -- consent ------------------------------------------------------------------
    def on_violations(
        self, state: GovernanceState, violations: Iterable[Violation], *, initiative: str
    ) -> list[IncidentEvent]:
        new = []
        for violation in violations:
            channel = field_of(violation.series, "channel")
            if violation.acquitted:
                if state.convicted.pop(violation.event_id, None) is None:
                    continue  # never counted here: nothing to withdraw
                state.adherence.setdefault(channel, [0, 0])[1] -= 1
            elif violation.event_id in state.convicted:
                continue  # redelivered after a crash, or convicted twice
            else:
                state.convicted[violation.event_id] = (violation.at, channel)
                state.adherence.setdefault(channel, [0, 0])[1] += 1
            new.append(violation)
        if len(state.convicted) > CONVICTED_KEPT:
            keep = sorted(state.convicted.items(), key=lambda item: item[1][0])[-CONVICTED_KEPT:]
            state.convicted = dict(keep)
        state.violations, events = observe_violations(state.violations, new, initiative=initiative)
        return events

    # -- rule changes -------------------------------------------------------------
    def on_rule_change(self, state: GovernanceState, change: RuleChange, *, initiative: str) -> list[IncidentEvent]:
        live = {
            rule: tuple(e for e, seen in experiments.items() if seen >= change.at - LIVE_SECONDS)
            for rule, experiments in state.live.items()
        }
        return state.audit.observe(change, initiative=initiative, live_experiments=live)

    def probable_causes(self, state: GovernanceState, incident: IncidentEvent) -> IncidentEvent:
        """A KPI incident's opening with the rule changes of the preceding hours in its evidence;
        one rung higher when any of them was unapproved (approval-aware escalation)."""
        if incident.kind in NOT_KPI_KINDS or incident.transition != "opened":
            return incident
        causes = state.audit.probable_causes(
            before=incident.evidence.bucket_end.timestamp(), hours=self.config.probable_cause_hours
        )
        if not causes:
            return incident
        detail = {**incident.evidence.detail, "probable_causes": [c.describe() for c in causes]}
        update: dict[str, object] = {"evidence": incident.evidence.model_copy(update={"detail": detail})}
        if any(not c.approved for c in causes) and incident.rung < len(ESCALATION_LADDER) - 1:
            update.update(rung=incident.rung + 1, owner=owner_at(incident.rung + 1), severity="critical")
        return incident.model_copy(update=update)

    # -- closed buckets -----------------------------------------------------------
    def on_bucket(
        self, state: GovernanceState, tally: GovernanceTally, *, initiative: str, start: float, end: float
    ) -> list[IncidentEvent]:
        if end <= state.evaluated_until:
            return []
        state.evaluated_until = end
        events: list[IncidentEvent] = []
        for channel, count in tally.personalized.items():
            state.adherence.setdefault(channel, [0, 0])[0] += count
        state.violations, resolved = observe_quiet_bucket(
            state.violations,
            initiative=initiative,
            bucket_start=start,
            bucket_end=end,
            recovery_buckets=self.config.recovery_buckets,
        )
        events += resolved
        events += self._judge_rules(state, tally, initiative, start, end)
        events += self._judge_balance(state, tally, initiative, start, end)
        return events

    def _judge_rules(
        self, state: GovernanceState, tally: GovernanceTally, initiative: str, start: float, end: float
    ) -> list[IncidentEvent]:
        by_rule: dict[str, list[int]] = {}
        for key, (exposures, fallbacks) in tally.rules.items():
            channel, rule_id, experiment = key.split("|")
            counts = by_rule.setdefault(f"{channel}|{rule_id}", [0, 0])
            counts[0] += exposures
            counts[1] += fallbacks
            if experiment and rule_id != "none":
                state.live.setdefault(rule_id, {})[experiment] = end
        state.rule_rates = {rule: (fallbacks, exposures) for rule, (exposures, fallbacks) in by_rule.items()}
        events = []
        for rule in sorted(set(by_rule) | set(state.rules)):
            exposures, fallbacks = by_rule.get(rule, (0, 0))
            rule_state = state.rules.get(rule) or RuleFallbackState()
            verdict = self.fallback_policy.judge(rule_state, fallbacks=fallbacks, exposures=exposures)
            if not verdict.breached:
                rule_state = self.fallback_policy.learn(rule_state, fallbacks=fallbacks, exposures=exposures)
            if exposures < self.fallback_policy.min_exposures and rule_state.breach.status == "ok":
                state.rules[rule] = rule_state
                continue  # too few to judge: neither a breach nor a recovery
            evidence = Evidence(
                observed=verdict.rate,
                expected=verdict.expected,
                score=verdict.p_value,
                bucket_start=utc(start),
                bucket_end=utc(end),
                detail={
                    "kpi": "fallback_rate",
                    "fallbacks": fallbacks,
                    "exposures": exposures,
                    "p_value": verdict.p_value,
                    "reason": verdict.reason,
                },
            )
            rule_state.breach, caused = self.breach_policy.observe(
                rule_state.breach,
                initiative=initiative,
                kind="rule_fallback",
                series=f"{initiative}|rule|{rule}",
                breached=verdict.breached,
                evidence=evidence,
            )
            state.rules[rule] = rule_state
            events += caused
        return events

    def _judge_balance(
        self, state: GovernanceState, tally: GovernanceTally, initiative: str, start: float, end: float
    ) -> list[IncidentEvent]:
        experiments: dict[str, dict[str, list[int]]] = {}
        for key, units in tally.variants.items():
            experiment, variant = key.rsplit("|", 1)
            experiments.setdefault(experiment, {})[variant] = units
        events = []
        for experiment, variants in sorted(experiments.items()):
            for index, measure in enumerate(MEASURES, start=1):
                # consent: (user-hours, consented); fallback: (user-hours, with a fallback)
                verdict = balance_test(measure, {v: (u[0], u[index]) for v, u in variants.items()})
                key = f"{experiment}|{measure}"
                state.balance_verdicts[key] = verdict
                if not verdict.tested and state.balance.get(key, BreachState()).status == "ok":
                    continue
                breached = verdict.tested and verdict.p_value < self.config.balance_significance
                rates = verdict.rates
                evidence = Evidence(
                    observed=max(rates.values(), default=0.0),
                    expected=min(rates.values(), default=0.0),
                    score=verdict.p_value,
                    bucket_start=utc(start),
                    bucket_end=utc(end),
                    detail={
                        "kpi": f"{measure}_rate",
                        "experiment": experiment,
                        "test": verdict.test,
                        "p_value": verdict.p_value,
                        "rates": rates,
                        "user_hours": verdict.units,
                    },
                )
                state.balance[key], caused = self.breach_policy.observe(
                    state.balance.get(key, BreachState()),
                    initiative=initiative,
                    kind="variant_imbalance",
                    series=f"{initiative}|experiment|{experiment}|{measure}",
                    breached=breached,
                    evidence=evidence,
                )
                events += caused
        return events

    # -- checklist ----------------------------------------------------------------
    def checklist(
        self,
        state: GovernanceState,
        *,
        adherence: Mapping[str, Sequence[int]] | None = None,
        opened: Mapping[str, list[str]] | None = None,
    ) -> tuple[ChecklistItem, ...]:
        """The checklist over the monitored period, or over a report's window when `adherence` (channel ->
        personalized, violations) and `opened` (governance kind -> incidents) describe that window: the other
        items' status is the state at the window's end, their history the incidents in the window."""
        period = "period" if opened is None else "window"
        opened = state.opened if opened is None else opened
        items = (
            self._consent_item(state, state.adherence if adherence is None else adherence),
            self._fallback_item(state),
            self._approval_item(state),
            self._integrity_item(state),
            self._balance_item(state),
        )
        return tuple(_with_history(item, opened.get(_ITEM_KINDS[item.item], []), period) for item in items)

    def _consent_item(self, state: GovernanceState, adherence: Mapping[str, Sequence[int]]) -> ChecklistItem:
        personalized = sum(c[0] for c in adherence.values())
        violations = sum(c[1] for c in adherence.values())
        # Only what decides the status: the plan is rewritten when its checklist changes, not every hour.
        by_channel = {ch: c[1] for ch, c in sorted(adherence.items()) if c[1]}
        owner = owner_at(PLAYBOOKS["consent_violation"].first_rung)
        if violations:
            return ChecklistItem(
                item="consent_adherence",
                status="fail",
                owner=owner,
                summary=f"{violations} personalized exposure(s) reached users without consent",
                evidence={"violations_by_channel": by_channel, "open_incident": state.violations.incident},
            )
        # A window after the violations can pass while their incident is still open: say so.
        still_open: dict[str, Any] = (
            {
                "summary": f"; incident {state.violations.incident} from before is still open",
                "evidence": {"open_incident": state.violations.incident},
            }
            if state.violations.incident
            else {"summary": "", "evidence": {}}
        )
        if not personalized:
            return ChecklistItem(
                item="consent_adherence",
                status="pending",
                owner=owner,
                summary="no personalized exposure judged yet" + still_open["summary"],
                evidence=still_open["evidence"],
            )
        return ChecklistItem(
            item="consent_adherence",
            status="pass",
            owner=owner,
            summary="every personalized exposure had consent" + still_open["summary"],
            evidence=still_open["evidence"],
        )

    def _fallback_item(self, state: GovernanceState) -> ChecklistItem:
        owner = owner_at(PLAYBOOKS["rule_fallback"].first_rung)
        firing = sorted(rule for rule, s in state.rules.items() if s.breach.status == "firing")
        if firing:
            incidents = [state.rules[rule].breach.incident for rule in firing]
            return ChecklistItem(
                item="fallback_rates",
                status="fail",
                owner=owner,
                summary=f"rule(s) falling back too often: {', '.join(firing)}",
                evidence={"firing": firing, "incidents": incidents, "threshold": self.config.fallback_threshold},
            )
        if not state.rule_rates:
            return ChecklistItem(item="fallback_rates", status="pending", owner=owner, summary="no closed bucket yet")
        return ChecklistItem(
            item="fallback_rates",
            status="pass",
            owner=owner,
            summary=f"every rule within the {self.config.fallback_threshold:.0%} fallback threshold and its usual rate",
            evidence={"rules": sorted(state.rules)},
        )

    def _approval_item(self, state: GovernanceState) -> ChecklistItem:
        owner = owner_at(PLAYBOOKS["unapproved_rule_change"].first_rung)
        unapproved = sorted(key.split("|", 1)[1] for key in state.audit.open if key.startswith("unapproved"))
        pending = [c.describe() for c in state.audit.pending_approvals()]
        if unapproved:
            return ChecklistItem(
                item="rule_change_approval",
                status="fail",
                owner=owner,
                summary=f"unapproved change(s) of {', '.join(unapproved)}",
                evidence={"rules": unapproved, "pending": pending},
            )
        if pending:
            return ChecklistItem(
                item="rule_change_approval",
                status="pending",
                owner=owner,
                summary=f"{len(pending)} change(s) await approval",
                evidence={"pending": pending},
            )
        return ChecklistItem(
            item="rule_change_approval",
            status="pass",
            owner=owner,
            summary=f"all {len(state.audit.log)} logged rule changes approved with a ticket",
        )

    def _integrity_item(self, state: GovernanceState) -> ChecklistItem:
        owner = owner_at(PLAYBOOKS["experiment_integrity"].first_rung)
        changed = sorted(key.split("|", 1)[1] for key in state.audit.open if key.startswith("experiment_integrity"))
        if changed:
            return ChecklistItem(
                item="experiment_integrity",
                status="fail",
                owner=owner,
                summary=f"rule(s) serving a live experiment changed: {', '.join(changed)}",
                evidence={"rules": changed},
            )
        if not state.live:
            return ChecklistItem(
                item="experiment_integrity",
                status="pass",
                owner=owner,
                summary="no experiment served: nothing to protect",
            )
        return ChecklistItem(
            item="experiment_integrity",
            status="pass",
            owner=owner,
            summary="no change to a rule serving a live experiment",
        )

    def _balance_item(self, state: GovernanceState) -> ChecklistItem:
        owner = owner_at(PLAYBOOKS["variant_imbalance"].first_rung)
        firing = sorted(key for key, s in state.balance.items() if s.status == "firing")
        if firing:
            return ChecklistItem(
                item="variant_balance",
                status="fail",
                owner=owner,
                summary=f"variants differ beyond chance: {', '.join(firing)}",
                evidence={
                    "firing": firing,
                    "incidents": [state.balance[k].incident for k in firing],
                    "significance": self.config.balance_significance,
                },
            )
        if not state.balance_verdicts:
            return ChecklistItem(
                item="variant_balance",
                status="pass",
                owner=owner,
                summary="no experiment served: no variants to compare",
            )
        return ChecklistItem(
            item="variant_balance",
            status="pass",
            owner=owner,
            summary="consent and fallback rates balanced across variants",
            evidence={"checked": sorted(state.balance_verdicts)},
        )


_ITEM_KINDS = {
    "consent_adherence": "consent_violation",
    "fallback_rates": "rule_fallback",
    "rule_change_approval": "unapproved_rule_change",
    "experiment_integrity": "experiment_integrity",
    "variant_balance": "variant_imbalance",
}


def _with_history(item: ChecklistItem, opened: list[str], period: str) -> ChecklistItem:
    """A passing item says when it did not always pass: the incidents of its kind in the period (or window)."""
    if not opened:
        return item
    update: dict[str, object] = {"evidence": {**item.evidence, f"incidents_in_{period}": list(opened)}}
    if item.status == "pass":
        update["summary"] = f"{item.summary} now; {len(opened)} incident(s) earlier in the {period}, resolved"
    return item.model_copy(update=update)


def violations_of(records: Sequence[dict]) -> list[Violation]:
    """Violations from their JSON form (the per-user stage sends them to the per-initiative stage)."""
    return [Violation(**record) for record in records]
