"""Checks beyond one series' KPIs, through the embedded driver replaying simulated traffic:
feed freshness on the timer, variant share against the allocation, zeros for silent series."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

from incidents.model import IncidentEvent
from monitor.events import encode
from monitor.settings import Settings
from plans.history import revisions
from simulation.simulator import DEFAULT_START, InitiativeSpec, Injection, SimulationSpec, simulate
from streams.embedded import EmbeddedDriver

INITIATIVE = "Checkout Recs"
PROGRAM = (InitiativeSpec(
    name=INITIATIVE, profiles=("member",), channels=("web",), variants=("control", "treatment"),
    experiment="checkout-v2", exposures_per_hour=600.0, ctr=0.12, cvr=0.08, allocation=(0.5, 0.5),
    revenue_mean=40.0, rule_ids=("checkout-web",)),)
# After the seasonal detectors' two days of warm-up.
GAP_START = DEFAULT_START + timedelta(days=3, hours=10)
SUPPRESSED_START = DEFAULT_START + timedelta(days=3, hours=17)


def replay(tmp_path: Path, injections: tuple[Injection, ...], **overrides: object) -> list[IncidentEvent]:
    spec = SimulationSpec(seed=3, days=4, users=2_000, initiatives=PROGRAM, injections=injections)
    chosen: dict[str, object] = dict(
        plan_dir=tmp_path / "plans", allocations={INITIATIVE: {"control": 0.5, "treatment": 0.5}},
        freshness_objective_seconds=900, check_interval_seconds=60, idle_close_seconds=900,
        breach_span_buckets=3, recovery_span_buckets=3)
    settings = Settings(**{**chosen, **overrides})
    records = ((r.topic, r.key.encode(), encode(r.event)) for r in simulate(spec))
    return asyncio.run(EmbeddedDriver(settings, replay=True).run(records)).incidents


def opened(incidents: list[IncidentEvent], kind: str) -> list[IncidentEvent]:
    return [e for e in incidents if e.kind == kind and e.transition == "opened"]


@pytest.fixture(scope="module")
def injected_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("injected")


@pytest.fixture(scope="module")
def injected(injected_dir: Path) -> list[IncidentEvent]:
    return replay(injected_dir, (
        Injection("feed_gap", INITIATIVE, GAP_START, 3, 1.0),
        Injection("variant_suppression", INITIATIVE, SUPPRESSED_START, 3, 1.0, variant="treatment")))


def test_a_silent_feed_is_stale_within_its_objective_and_recovers_when_events_return(
        injected: list[IncidentEvent]) -> None:
    [stale] = opened(injected, "feed_stale")
    assert stale.series == [f"{INITIATIVE}|engagement"]
    # Two stale checks: the objective (15 min, at this feed's rate) plus one check interval, give or take a check.
    assert GAP_START + timedelta(minutes=15) <= stale.evidence.bucket_end <= GAP_START + timedelta(minutes=18)
    assert stale.evidence.observed > stale.evidence.expected == 900.0
    assert stale.owner == "Personalization Architect" and "feed" in stale.playbook.lower()
    [resolved] = [e for e in injected if e.kind == "feed_stale" and e.transition == "resolved"]
    assert resolved.incident_id == stale.incident_id
    assert GAP_START + timedelta(hours=3) < resolved.evidence.bucket_end <= GAP_START + timedelta(hours=3, minutes=5)


def test_the_plan_records_the_feed_going_stale_and_fresh_again(injected: list[IncidentEvent],
                                                              injected_dir: Path) -> None:
    statuses = []
    for plan in revisions(injected_dir / "plans", INITIATIVE):
        feed = plan.feed("pmon.engagement")
        if not statuses or statuses[-1][0] != feed.status:
            statuses.append((feed.status, feed.last_event_time))
    assert [status for status, _ in statuses] == ["unknown", "fresh", "stale", "fresh"]
    stale_since = statuses[2][1]
    assert GAP_START - timedelta(minutes=5) <= stale_since <= GAP_START  # the last event before the gap


def test_the_gap_hours_are_observed_as_zero_volume(injected: list[IncidentEvent]) -> None:
    drops = opened(injected, "volume_drop")
    in_gap = [e for e in drops if GAP_START <= e.evidence.bucket_start < GAP_START + timedelta(hours=3)]
    assert in_gap and in_gap[0].evidence.observed == 0.0
    assert set(in_gap[0].series) == {f"{INITIATIVE}|member|web|control", f"{INITIATIVE}|member|web|treatment"}


def test_a_suppressed_variant_opens_one_incident_against_its_allocation(injected: list[IncidentEvent]) -> None:
    [suppressed] = opened(injected, "variant_suppression")
    assert suppressed.series == [f"{INITIATIVE}|member|web|treatment"]
    # Opened on the second suppressed bucket.
    assert suppressed.evidence.bucket_start == SUPPRESSED_START + timedelta(hours=1)
    assert (suppressed.evidence.observed, suppressed.evidence.expected) == (0.0, 0.5)
    assert suppressed.evidence.detail["p_value"] < 1e-50
    assert suppressed.owner == "Testing Lead"


def test_clean_traffic_raises_neither_a_stale_feed_nor_a_suppressed_variant(tmp_path: Path) -> None:
    incidents = replay(tmp_path, ())
    assert opened(incidents, "feed_stale") == []
    assert opened(incidents, "variant_suppression") == []


def test_without_an_allocation_the_shares_are_learnt_first(tmp_path: Path) -> None:
    # The same suppression, but the shares must be learnt: 24 healthy buckets, then it is found.
    incidents = replay(tmp_path, (Injection("variant_suppression", INITIATIVE, SUPPRESSED_START, 3, 1.0,
                                            variant="treatment"),), allocations={})
    [suppressed] = opened(incidents, "variant_suppression")
    assert suppressed.evidence.expected == pytest.approx(0.5, abs=0.05)


def test_a_series_without_events_for_the_retention_leaves_the_tables(tmp_path: Path) -> None:
    from monitor.events import EngagementEvent

    settings = Settings(plan_dir=tmp_path / "plans", retention_days=1, allowed_lateness_seconds=0)
    driver = EmbeddedDriver(settings)
    pipeline = driver.initiative_stage

    def feed(hour: int, variant: str) -> None:
        asyncio.run(driver.run([("engagement", None, encode(EngagementEvent(
            event_id=f"e{hour}{variant}", event_type="exposure", event_time=DEFAULT_START + timedelta(hours=hour),
            user_id="u1", initiative=INITIATIVE, profile="member", channel="web", variant=variant)))]))

    feed(0, "treatment")
    feed(0, "control")
    feed(1, "control")
    assert any("|treatment|" in key for key in pipeline.state.series)
    for hour in range(2, 30):   # only control for more than a day
        feed(hour, "control")
    assert not any("|treatment|" in key for key in pipeline.state.series)
    assert any("|control|" in key for key in pipeline.state.series)
    assert list(pipeline.state.shares) == [f"{INITIATIVE}|member|web"]   # the group lives on with control
