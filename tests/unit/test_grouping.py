"""Grouping: simultaneous breaches of one kind in one initiative are one incident."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from incidents.breach_policy import BreachPolicy, BreachPolicyConfig, BreachState
from incidents.grouping import GroupState, fold_group
from incidents.model import Evidence, incident_id

T0 = datetime(2026, 11, 10, 14, tzinfo=timezone.utc)
POLICY = BreachPolicy(BreachPolicyConfig(breach_span_buckets=3, recovery_span_buckets=2, escalate_every=2))
SERIES = ("I|new|web|a", "I|new|web|b", "I|old|email|a")


def run(schedule: dict[str, list[bool]]) -> list:
    """Per-series breach schedules, hour by hour, through the policy and the grouper, as the pipeline does."""
    states = {series: BreachState() for series in schedule}
    group, emitted = GroupState(), []
    for hour in range(max(len(v) for v in schedule.values())):
        evidence = Evidence(observed=0.05, expected=0.1, score=0.5, bucket_start=T0 + timedelta(hours=hour),
                            bucket_end=T0 + timedelta(hours=hour + 1))
        transitions = []
        for series, breaches in schedule.items():
            if hour < len(breaches):
                states[series], out = POLICY.observe(states[series], initiative="I", kind="conversion_drop",
                                                     series=series, breached=breaches[hour], evidence=evidence)
                transitions += out
        group, out = fold_group(group, transitions)
        emitted += out
    return emitted


def test_simultaneous_breaches_open_one_incident_listing_every_series() -> None:
    events = run({s: [True, True, False, False] for s in SERIES})
    assert [e.transition for e in events] == ["opened", "resolved"]
    assert events[0].series == list(SERIES)
    assert events[0].incident_id == events[1].incident_id == incident_id(
        "I", "conversion_drop", "group", (T0 + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"))
    assert events[1].evidence.bucket_start == T0 + timedelta(hours=3), "resolved when the last member recovered"


def test_a_series_joining_an_open_incident_is_an_update_not_a_new_page() -> None:
    events = run({SERIES[0]: [True, True, True, False, False, False],
                  SERIES[1]: [False, False, True, True, False, False]})
    assert [e.transition for e in events] == ["opened", "updated", "resolved"]
    assert len({e.incident_id for e in events}) == 1
    assert events[1].series == [SERIES[0], SERIES[1]]
    assert len({e.event_id for e in events}) == 3


def test_the_group_climbs_when_a_member_climbs() -> None:
    events = run({SERIES[0]: [True] * 6, SERIES[1]: [True, True, False, False, False, False]})
    transitions = [e.transition for e in events]
    assert transitions[0] == "opened" and "escalated" in transitions
    escalated = events[transitions.index("escalated")]
    assert escalated.rung == 1 and escalated.owner == "Personalization Architect"
    assert "resolved" not in transitions, "one member still firing keeps the group open"


def test_a_new_group_after_resolution_has_a_new_id() -> None:
    events = run({SERIES[0]: [True, True, False, False, True, True, False, False]})
    opened = [e for e in events if e.transition == "opened"]
    assert len(opened) == 2 and opened[0].incident_id != opened[1].incident_id
