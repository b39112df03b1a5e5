"""Consent violations become one incident per initiative at once: no second breach, straight to the privacy lead.

The incident opens with the first violation and lists, in its evidence, the
counts so far; each later step with new violations is an `updated` transition
with the new totals (a privacy lead wants every one). It resolves after
`recovery_buckets` closed buckets without a violation. Its id is
deterministic: (initiative, `consent_violation`, "group", hour of the first
violation), so a replay or a restarted worker repeats nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone

from governance.consent_ledger import Violation
from incidents.breach_policy import period_of
from incidents.model import Evidence, IncidentEvent, Transition, incident_id, transition_event_id
from incidents.playbooks import owner_at, playbook_for

KIND = "consent_violation"
_EXAMPLES = 10  # violations listed in the evidence: enough to act on, bounded


@dataclass(frozen=True, slots=True)
class ViolationState:
    incident: str | None = None
    period: str | None = None
    sequence: int = 0
    count: int = 0
    late: int = 0
    series: tuple[str, ...] = ()
    users: tuple[str, ...] = ()        # pseudonyms, the first `_EXAMPLES`
    last_at: float = float("-inf")     # event time of the latest violation
    quiet_buckets: int = 0


def observe_violations(state: ViolationState, violations: Sequence[Violation], *,
                       initiative: str) -> tuple[ViolationState, list[IncidentEvent]]:
    """Fold one step's violations (one initiative's, deduplicated by the caller) into the incident.

    >>> v = Violation("e1", 1_794_477_600.0, "I", "I|p|web|control", "p1a2", "revoked at ...")
    >>> state, out = observe_violations(ViolationState(), [v], initiative="I")
    >>> [(e.transition, e.owner, e.severity, e.evidence.observed) for e in out]
    [('opened', 'Data Privacy Lead', 'critical', 1.0)]
    >>> state, out = observe_violations(state, [replace(v, event_id="e2")], initiative="I")
    >>> [(e.transition, e.evidence.observed) for e in out], state.count
    ([('updated', 2.0)], 2)
    """
    acquitted = [v for v in violations if v.acquitted]
    violations = [v for v in violations if not v.acquitted]
    if acquitted and state.incident is not None:
        state, events = _acquit(state, acquitted, initiative)
        if not violations:
            return state, events
        more_state, more = observe_violations(state, violations, initiative=initiative)
        return more_state, events + more
    if not violations:
        return state, []
    first = min(violations, key=lambda v: v.at)
    if state.incident is None:
        period = period_of(_utc(first.at).replace(minute=0, second=0, microsecond=0))
        state = ViolationState(incident_id(initiative, KIND, "group", period), period)
        transition: Transition = "opened"
    else:
        transition = "updated"
    series = list(state.series) + sorted({v.series for v in violations} - set(state.series))
    users = list(state.users) + [u for u in dict.fromkeys(v.user for v in violations) if u not in state.users]
    state = replace(state, sequence=state.sequence + 1, count=state.count + len(violations),
                    late=state.late + sum(v.late for v in violations), series=tuple(series),
                    users=tuple(users[:_EXAMPLES]), last_at=max(state.last_at, max(v.at for v in violations)),
                    quiet_buckets=0)
    detail = {
        "violations": state.count, "late_convictions": state.late, "new_violations": len(violations),
        "users_listed": list(state.users),
        "examples": [{"event_id": v.event_id, "at": _utc(v.at).isoformat(), "series": v.series, "reason": v.reason,
                      "late": v.late} for v in sorted(violations, key=lambda v: v.at)[:_EXAMPLES]],
        "kpi": "violations",
    }
    evidence = Evidence(observed=float(state.count), expected=0.0, score=float(state.count),
                        bucket_start=_utc(first.at), bucket_end=_utc(state.last_at), detail=detail)
    return state, [_event(state, transition, initiative, evidence)]


def _acquit(state: ViolationState, acquitted: Sequence[Violation],
            initiative: str) -> tuple[ViolationState, list[IncidentEvent]]:
    """Withdraw violations a late grant disproved: `updated` with the new total, `resolved` at zero."""
    count = max(0, state.count - len(acquitted))
    state = replace(state, sequence=state.sequence + 1, count=count,
                    late=min(state.late, count))
    detail = {"violations": count, "acquitted": [v.event_id for v in acquitted][:_EXAMPLES],
              "reason": "consent granted earlier (by event time) arrived after the conviction", "kpi": "violations"}
    at = _utc(max(v.at for v in acquitted))
    evidence = Evidence(observed=float(count), expected=0.0, score=float(count), bucket_start=at, bucket_end=at,
                        detail=detail)
    if count == 0:
        return ViolationState(), [_event(state, "resolved", initiative, evidence)]
    return state, [_event(state, "updated", initiative, evidence)]


def observe_quiet_bucket(state: ViolationState, *, initiative: str, bucket_start: float, bucket_end: float,
                         recovery_buckets: int) -> tuple[ViolationState, list[IncidentEvent]]:
    """A closed bucket: one without violations counts toward recovery; `recovery_buckets` of them resolve.

    >>> v = Violation("e1", 3600.0, "I", "I|p|web|control", "p1", "no record; EU is opt-in")
    >>> state, _ = observe_violations(ViolationState(), [v], initiative="I")
    >>> state, out = observe_quiet_bucket(state, initiative="I", bucket_start=7200.0, bucket_end=10800.0,
    ...                                   recovery_buckets=1)
    >>> [e.transition for e in out], state.incident
    (['resolved'], None)
    """
    if state.incident is None or bucket_start <= state.last_at:
        return state, []
    quiet = state.quiet_buckets + 1
    if quiet < recovery_buckets:
        return replace(state, quiet_buckets=quiet), []
    resolved = replace(state, sequence=state.sequence + 1)
    evidence = Evidence(observed=0.0, expected=0.0, score=0.0, bucket_start=_utc(bucket_start),
                        bucket_end=_utc(bucket_end),
                        detail={"violations": state.count, "late_convictions": state.late, "kpi": "violations",
                                "quiet_buckets": quiet})
    return ViolationState(), [_event(resolved, "resolved", initiative, evidence)]


def _event(state: ViolationState, transition: Transition, initiative: str, evidence: Evidence) -> IncidentEvent:
    playbook = playbook_for(KIND)
    return IncidentEvent(
        event_id=transition_event_id(state.incident, transition, state.sequence), incident_id=state.incident,
        transition=transition, kind=KIND, severity="critical", initiative=initiative, series=list(state.series),
        period=state.period, owner=owner_at(playbook.first_rung), rung=playbook.first_rung, playbook=playbook.text,
        evidence=evidence, occurred_at=evidence.bucket_end)


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=timezone.utc)
