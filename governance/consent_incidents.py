"""Consent violations become one incident per initiative at once: no second breach, straight to the privacy lead.

The incident opens with the first violation and lists, in its evidence, the
counts so far. Later violations are `updated` transitions with the new totals,
sent when the count doubles and at the close of a bucket in which it changed:
a privacy lead hears at once that more came, without one event per exposure
when a backlog is replayed. A late grant that disproves every violation resolves
it at once; otherwise it resolves after `recovery_buckets` closed buckets
without a violation. Its id is
deterministic: (initiative, `consent_violation`, "group", hour of the first
violation), so a replay or a restarted worker repeats nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from governance.consent_ledger import Violation
from incidents.breach_policy import period_of
from incidents.model import Evidence, IncidentEvent, Transition, incident_id, transition_event_id
from incidents.playbooks import owner_at, playbook_for
from incidents.timeutil import utc

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
    users: tuple[str, ...] = ()  # pseudonyms, the first `_EXAMPLES`
    last_at: float = float("-inf")  # event time of the latest violation: transitions never go back in time
    quiet_buckets: int = 0
    reported: int = 0  # the count the last transition carried


def observe_violations(
    state: ViolationState, violations: Sequence[Violation], *, initiative: str
) -> tuple[ViolationState, list[IncidentEvent]]:
    """Fold one step's violations and acquittals (one initiative's, deduplicated by the caller) into the incident.

    >>> v = Violation("e1", 1_794_477_600.0, "I", "I|p|web|control", "p1a2", "revoked at ...")
    >>> state, out = observe_violations(ViolationState(), [v], initiative="I")
    >>> [(e.transition, e.owner, e.severity, e.evidence.observed) for e in out]
    [('opened', 'Data Privacy Lead', 'critical', 1.0)]
    >>> state, out = observe_violations(state, [replace(v, event_id="e2")], initiative="I")
    >>> [(e.transition, e.evidence.observed) for e in out], state.count
    ([('updated', 2.0)], 2)
    >>> state, out = observe_violations(state, [replace(v, event_id="e3")], initiative="I")
    >>> out, state.count                                   # 3 < 2 x 2: told at the bucket's close
    ([], 3)
    """
    acquitted = [v for v in violations if v.acquitted]
    convicted = [v for v in violations if not v.acquitted]
    events: list[IncidentEvent] = []
    if acquitted and state.incident is not None:
        state = replace(state, count=max(0, state.count - len(acquitted)))
        state = replace(state, late=min(state.late, state.count))
        if state.count == 0 and not convicted:
            detail = {
                "violations": 0,
                "acquitted": [v.event_id for v in acquitted][:_EXAMPLES],
                "kpi": "violations",
                "reason": "consent granted earlier (by event time) arrived after the convictions",
            }
            at = utc(state.last_at)
            evidence = Evidence(observed=0.0, expected=0.0, score=0.0, bucket_start=at, bucket_end=at, detail=detail)
            return ViolationState(), [
                _event(replace(state, sequence=state.sequence + 1), "resolved", initiative, evidence)
            ]
    if not convicted:
        return state, events
    first = min(convicted, key=lambda v: v.at)
    opening = state.incident is None
    if opening:
        period = period_of(utc(first.at).replace(minute=0, second=0, microsecond=0))
        state = ViolationState(incident_id(initiative, KIND, "group", period), period)
    series = list(state.series) + sorted({v.series for v in convicted} - set(state.series))
    users = list(state.users) + [u for u in dict.fromkeys(v.user for v in convicted) if u not in state.users]
    state = replace(
        state,
        count=state.count + len(convicted),
        late=state.late + sum(v.late for v in convicted),
        series=tuple(series),
        users=tuple(users[:_EXAMPLES]),
        last_at=max(state.last_at, max(v.at for v in convicted)),
        quiet_buckets=0,
    )
    if opening or state.count >= 2 * state.reported:
        state, event = _report(state, "opened" if opening else "updated", initiative, convicted)
        events.append(event)
    return state, events


def _report(
    state: ViolationState, transition: Transition, initiative: str, newest: Sequence[Violation]
) -> tuple[ViolationState, IncidentEvent]:
    state = replace(state, sequence=state.sequence + 1, reported=state.count)
    detail = {
        "violations": state.count,
        "late_convictions": state.late,
        "users_listed": list(state.users),
        "examples": [
            {
                "event_id": v.event_id,
                "at": utc(v.at).isoformat(),
                "series": v.series,
                "reason": v.reason,
                "late": v.late,
            }
            for v in sorted(newest, key=lambda v: v.at)[:_EXAMPLES]
        ],
        "kpi": "violations",
    }
    start = min((v.at for v in newest), default=state.last_at)
    evidence = Evidence(
        observed=float(state.count),
        expected=0.0,
        score=float(state.count),
        bucket_start=utc(min(start, state.last_at)),
        bucket_end=utc(state.last_at),
        detail=detail,
    )
    return state, _event(state, transition, initiative, evidence)


def observe_quiet_bucket(
    state: ViolationState, *, initiative: str, bucket_start: float, bucket_end: float, recovery_buckets: int
) -> tuple[ViolationState, list[IncidentEvent]]:
    """A closed bucket: the totals if they changed since the last transition; a bucket without violations
    counts toward recovery, and `recovery_buckets` of them resolve.

    >>> v = Violation("e1", 3600.0, "I", "I|p|web|control", "p1", "no record; EU is opt-in")
    >>> state, _ = observe_violations(ViolationState(), [v], initiative="I")
    >>> state, out = observe_quiet_bucket(state, initiative="I", bucket_start=7200.0, bucket_end=10800.0,
    ...                                   recovery_buckets=1)
    >>> [e.transition for e in out], state.incident
    (['resolved'], None)
    """
    if state.incident is None:
        return state, []
    events = []
    if state.count != state.reported:
        state, event = _report(state, "updated", initiative, ())
        events.append(event)
    if bucket_start <= state.last_at:
        return state, events
    quiet = state.quiet_buckets + 1
    if quiet < recovery_buckets:
        return replace(state, quiet_buckets=quiet), events
    resolved = replace(state, sequence=state.sequence + 1)
    evidence = Evidence(
        observed=0.0,
        expected=0.0,
        score=0.0,
        bucket_start=utc(bucket_start),
        bucket_end=utc(bucket_end),
        detail={"violations": state.count, "late_convictions": state.late, "kpi": "violations", "quiet_buckets": quiet},
    )
    return ViolationState(), [*events, _event(resolved, "resolved", initiative, evidence)]


def _event(state: ViolationState, transition: Transition, initiative: str, evidence: Evidence) -> IncidentEvent:
    playbook = playbook_for(KIND)
    assert state.incident is not None, "only a state with an incident has transitions"
    return IncidentEvent(
        event_id=transition_event_id(state.incident, transition, state.sequence),
        incident_id=state.incident,
        transition=transition,
        kind=KIND,
        severity="critical",
        initiative=initiative,
        series=list(state.series),
        period=state.period,
        owner=owner_at(playbook.first_rung),
        rung=playbook.first_rung,
        playbook=playbook.text,
        evidence=evidence,
        occurred_at=evidence.bucket_end,
    )
