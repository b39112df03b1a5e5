"""The breach policy: pending, opened, escalated up the ladder, resolved; deterministic ids."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta, timezone

import pytest

from incidents.breach_policy import BreachPolicy, BreachPolicyConfig, BreachState, period_of
from incidents.model import Evidence, IncidentEvent, incident_id
from incidents.playbooks import ESCALATION_LADDER

T0 = datetime(2026, 11, 10, 14, tzinfo=timezone.utc)
INITIATIVE = "PLG Onboarding"
KIND = "conversion_drop"
SERIES = "PLG Onboarding|new_user|web|control"


def evidence(hour: int) -> Evidence:
    start = T0 + timedelta(hours=hour)
    return Evidence(observed=0.05, expected=0.10, score=0.5, bucket_start=start, bucket_end=start + timedelta(hours=1))


def run(policy: BreachPolicy, verdicts: Iterable[tuple[int, bool]], *, state: BreachState | None = None,
        series: str = SERIES, first_rung: int | None = None) -> tuple[BreachState, list[IncidentEvent]]:
    """Feed (hour, breached) verdicts; return the final state and every event emitted."""
    state = state or BreachState()
    events: list[IncidentEvent] = []
    for hour, breached in verdicts:
        state, out = policy.observe(state, initiative=INITIATIVE, kind=KIND, series=series, breached=breached,
                                    evidence=evidence(hour), first_rung=first_rung)
        events += out
    return state, events


@pytest.fixture
def policy() -> BreachPolicy:
    return BreachPolicy(BreachPolicyConfig(breach_span_buckets=3, recovery_span_buckets=3, escalate_every=2))


def test_first_breach_is_only_pending(policy: BreachPolicy) -> None:
    state, events = run(policy, [(0, True)])
    assert events == []
    assert state.status == "pending" and state.pending_start == T0 and state.incident is None


def test_second_breach_within_the_span_opens_an_incident(policy: BreachPolicy) -> None:
    state, events = run(policy, [(0, True), (1, False), (2, True)])
    assert [e.transition for e in events] == ["opened"]
    opened = events[0]
    assert state.status == "firing" and state.incident == opened.incident_id
    assert opened.incident_id == incident_id(INITIATIVE, KIND, SERIES, period_of(T0))
    assert opened.period == "2026-11-10T14:00"  # named after the first breach, not the one that opened it
    assert opened.owner == ESCALATION_LADDER[0] and opened.rung == 0 and opened.severity == "warning"
    assert opened.series == [SERIES] and opened.initiative == INITIATIVE and opened.kind == KIND
    assert opened.occurred_at == T0 + timedelta(hours=3)  # the end of the bucket that opened it
    assert opened.evidence == evidence(2)


def test_a_second_breach_after_the_span_is_only_a_new_pending(policy: BreachPolicy) -> None:
    state, events = run(policy, [(0, True), (5, True)])
    assert events == []
    assert state.status == "pending" and state.pending_start == T0 + timedelta(hours=5)
    # ...and that new pending can open with the next breach, named after its own period.
    state, events = run(policy, [(6, True)], state=state)
    assert [e.transition for e in events] == ["opened"]
    assert events[0].period == period_of(T0 + timedelta(hours=5))


def test_healthy_buckets_after_the_span_clear_a_pending_warning(policy: BreachPolicy) -> None:
    state, _ = run(policy, [(0, True), (1, False)])
    assert state.status == "pending"  # still within the span
    state, events = run(policy, [(4, False)], state=state)
    assert events == [] and state == BreachState()


def test_exactly_one_opened_event_however_long_the_breach_lasts(policy: BreachPolicy) -> None:
    _, events = run(policy, [(h, True) for h in range(40)])
    assert [e.transition for e in events].count("opened") == 1
    assert events[0].transition == "opened"


def test_escalation_climbs_one_rung_every_escalate_every_breaches_capped_at_the_top(policy: BreachPolicy) -> None:
    state, events = run(policy, [(0, True), (1, True)])
    assert [(e.transition, e.rung, e.owner) for e in events] == [("opened", 0, ESCALATION_LADDER[0])]
    state, events = run(policy, [(2, True)], state=state)
    assert events == [] and state.rung == 0  # one further breach: not yet
    state, events = run(policy, [(3, True)], state=state)
    assert [(e.transition, e.rung, e.owner) for e in events] == [("escalated", 1, ESCALATION_LADDER[1])]
    assert events[0].severity == "critical"
    state, events = run(policy, [(4, True), (5, True)], state=state)
    assert [(e.transition, e.rung, e.owner) for e in events] == [("escalated", 2, ESCALATION_LADDER[2])]
    top = len(ESCALATION_LADDER) - 1
    assert state.rung == top
    state, events = run(policy, [(h, True) for h in range(6, 30)], state=state)
    assert events == [] and state.rung == top and state.status == "firing"


def test_healthy_buckets_between_breaches_do_not_stop_escalation_counting(policy: BreachPolicy) -> None:
    state, _ = run(policy, [(0, True), (1, True), (2, True), (3, False)])
    state, events = run(policy, [(4, True)], state=state)
    assert [(e.transition, e.rung) for e in events] == [("escalated", 1)]


def test_first_rung_beyond_the_ladder_is_capped_at_the_top_rung(policy: BreachPolicy) -> None:
    _, events = run(policy, [(0, True), (1, True)], first_rung=7)
    assert [(e.transition, e.rung, e.owner) for e in events] == [("opened", 2, ESCALATION_LADDER[-1])]


def test_recovery_after_the_span_resolves_with_the_same_incident_id(policy: BreachPolicy) -> None:
    state, events = run(policy, [(0, True), (1, True)])
    opened = events[0]
    state, events = run(policy, [(2, False), (3, False)], state=state)
    assert events == [] and state.status == "firing"  # two healthy buckets are not enough
    state, events = run(policy, [(4, True), (5, False), (6, False)], state=state)
    assert events == [] and state.status == "firing"  # a breach restarted the streak
    state, events = run(policy, [(7, False)], state=state)
    assert [e.transition for e in events] == ["resolved"]
    resolved = events[0]
    assert resolved.incident_id == opened.incident_id and resolved.period == opened.period
    assert resolved.occurred_at == T0 + timedelta(hours=8)
    assert state == BreachState()


def test_incident_ids_are_deterministic(policy: BreachPolicy) -> None:
    verdicts = [(0, True), (1, True), (2, True), (3, True), (4, False), (5, False), (6, False)]
    _, first = run(policy, verdicts)
    _, second = run(BreachPolicy(policy.config), verdicts)
    assert [e.model_dump() for e in first] == [e.model_dump() for e in second]
    _, shifted = run(policy, [(h + 1, b) for h, b in verdicts])  # the same story an hour later
    assert shifted[0].incident_id != first[0].incident_id
    assert shifted[0].incident_id == incident_id(INITIATIVE, KIND, SERIES, period_of(T0 + timedelta(hours=1)))
    _, other_series = run(policy, verdicts, series=SERIES.replace("web", "email"))
    assert other_series[0].incident_id != first[0].incident_id


def test_event_ids_are_unique_per_transition(policy: BreachPolicy) -> None:
    _, events = run(policy, [(h, True) for h in range(8)] + [(h, False) for h in range(8, 11)])
    assert [e.transition for e in events] == ["opened", "escalated", "escalated", "resolved"]
    assert len({e.event_id for e in events}) == len(events)
    assert len({e.incident_id for e in events}) == 1
    # A later incident of the same series (another period) has ids of its own.
    _, later = run(policy, [(20, True), (21, True)])
    assert later[0].event_id not in {e.event_id for e in events}


def test_two_incidents_of_one_series_in_the_same_hour_get_different_ids() -> None:
    policy = BreachPolicy(BreachPolicyConfig(breach_span_buckets=3, recovery_span_buckets=1, escalate_every=6))
    minute = timedelta(minutes=1)

    def ev(k: int) -> Evidence:  # 60-second buckets
        return Evidence(observed=0.05, expected=0.1, score=0.5, bucket_start=T0 + k * minute,
                        bucket_end=T0 + (k + 1) * minute)

    state, events = BreachState(), []
    for k, breached in [(0, True), (1, True), (2, False), (30, True), (31, True)]:
        state, out = policy.observe(state, initiative=INITIATIVE, kind=KIND, series=SERIES, breached=breached,
                                    evidence=ev(k))
        events += out
    assert [e.transition for e in events] == ["opened", "resolved", "opened"]
    assert events[2].incident_id != events[0].incident_id
    assert events[2].event_id != events[0].event_id


def test_every_detector_kind_has_a_playbook_and_an_owner_on_the_ladder() -> None:
    from detectors.freshness import KIND as FRESHNESS_KIND
    from detectors.registry import DETECTORS, PER_INITIATIVE
    from incidents.playbooks import playbook_for

    kinds = {factory().kind for name, factory in DETECTORS.items() if name not in PER_INITIATIVE} | {FRESHNESS_KIND}
    for kind in sorted(kinds):
        playbook = playbook_for(kind)
        assert playbook.text and 0 <= playbook.first_rung < len(ESCALATION_LADDER), kind
