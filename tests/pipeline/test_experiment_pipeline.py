"""Experiment readouts through the embedded pipeline: exact per-user totals, the recommendation for a known
winner, loser and sample ratio mismatch, decision events and the memo in report and plan."""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from experiments.memo import render_memo
from monitor.events import EngagementEvent, encode
from monitor.report import ReportRequest, build_report
from monitor.settings import Settings
from plans.plan_sink import latest
from simulation.simulator import InitiativeSpec, SimulationSpec, simulate
from streams.embedded import EmbeddedDriver, EmbeddedRun
from tests.helpers import EXPERIMENT_SPEC, WINNER, experiment_plans


def _settings(plan_dir: Path) -> Settings:
    return Settings(plan_dir=plan_dir, log_level="WARNING", **experiment_plans())


@pytest.fixture(scope="module")
def records() -> list[tuple[str, bytes, bytes]]:
    return [(r.topic, r.key.encode(), encode(r.event)) for r in simulate(EXPERIMENT_SPEC)]


@pytest.fixture(scope="module")
def replay(records, tmp_path_factory) -> tuple[EmbeddedDriver, EmbeddedRun]:
    driver = EmbeddedDriver(_settings(tmp_path_factory.mktemp("plans")), replay=True)
    return driver, asyncio.run(driver.run(records))


def test_per_variant_totals_are_exact_per_user_sums(records, replay) -> None:
    driver, _ = replay
    closed_until = driver.initiative_stage.state.clocks["Loser"].closed_until  # totals hold the closed buckets' events
    users: dict[str, dict[str, Any]] = defaultdict(lambda: {"conversions": 0, "revenue": 0.0})
    for topic, _, raw in records:
        if topic != "engagement":
            continue
        event = EngagementEvent.model_validate_json(raw)
        if event.experiment == "exp-loser" and event.event_time.timestamp() < closed_until:
            user = users[event.user_id]
            user["variant"] = user.get("variant", event.variant)
            if event.event_type == "conversion":
                user["conversions"] += 1
                user["revenue"] += event.revenue
    totals = driver.initiative_stage.state.experiments["Loser"]["exp-loser"].totals
    for variant in ("control", "treatment"):
        mine = [u for u in users.values() if u["variant"] == variant]
        got = totals.variants[variant]
        assert got.users == len(mine)
        assert got.converting_users == sum(1 for u in mine if u["conversions"])
        assert got.conversions == sum(u["conversions"] for u in mine)
        assert got.conversions_sq == sum(u["conversions"] ** 2 for u in mine)
        assert got.revenue == pytest.approx(sum(u["revenue"] for u in mine), rel=1e-9)
        assert got.revenue_sq == pytest.approx(sum(u["revenue"] ** 2 for u in mine), rel=1e-9)


@pytest.mark.parametrize("initiative, experiment, state", [
    ("Winner", "exp-winner", "ship"), ("Loser", "exp-loser", "roll_back"), ("Skewed", "exp-srm", "investigate")])
def test_the_readout_recommends_what_was_injected(replay, initiative: str, experiment: str, state: str) -> None:
    driver, run = replay
    memo = driver.initiative_stage.state.experiments[initiative][experiment].memo
    assert memo.summary.state == state, memo.summary.reasons
    decisions = [e for e in run.incidents if e.kind == "experiment_decision" and e.initiative == initiative]
    assert decisions and decisions[-1].evidence.detail["state"] == state
    assert {e.owner for e in decisions} == {"Testing Lead"}
    if state == "investigate":
        assert any(flag["kind"] == "sample_ratio_mismatch" for flag in decisions[-1].evidence.detail["flags"])
    plan = latest(driver.settings.plan_dir, initiative)
    assert [(m.experiment, m.state) for m in plan.experiment_memos] == [(experiment, state)]
    # The plan's success metric is the memo's primary lift; the stages say how far the pipeline got.
    assert plan.metric("lift_pct").current == pytest.approx(100 * plan.experiment_memos[0].primary_lift, abs=0.01)
    assert {stage.name: stage.status for stage in plan.stages}["experiments"] == "active"
    assert all(stage.status == "active" for stage in plan.stages)
    report = build_report(driver.initiative_stage, ReportRequest(initiative=initiative, detail="full"))
    assert [m.summary.state for m in report.experiments] == [state]
    # The same look, the same numbers: the report shows the memo of the last look; the plan keeps the memo of
    # the look that changed the decision, whose event carries its numbers.
    [in_plan], [in_report] = plan.experiment_memos, report.experiments
    assert in_report.summary == memo.summary
    detail, evidence = decisions[-1].evidence.detail, decisions[-1].evidence
    assert [in_plan.primary_lift_low, in_plan.primary_lift_high] == detail["lift_interval"]
    assert (in_plan.primary_lift, in_plan.users) == (evidence.score, detail["users"])
    # Users' conversions before exposure reached the readout (here users join early, so they explain little).
    assert memo.summary.primary_variance_reduction is not None and abs(memo.summary.primary_variance_reduction) < 0.5


def test_decision_events_are_deterministic_and_only_on_a_change(records, replay, tmp_path: Path) -> None:
    _, first = replay
    again = asyncio.run(EmbeddedDriver(_settings(tmp_path), replay=True).run(records))
    ids = [e.event_id for e in first.incidents if e.kind == "experiment_decision"]
    assert ids == [e.event_id for e in again.incidents if e.kind == "experiment_decision"]
    for initiative in ("Winner", "Loser", "Skewed"):
        states = [e.evidence.detail["state"] for e in first.incidents
                  if e.kind == "experiment_decision" and e.initiative == initiative and e.transition == "opened"]
        assert all(a != b for a, b in itertools.pairwise(states)), f"{initiative}: an event without a change"


def test_each_decision_stands_until_the_next_one_resolves_it(replay) -> None:
    _, first = replay
    changed = 0
    for initiative in ("Winner", "Loser", "Skewed"):
        events = [e for e in first.incidents if e.kind == "experiment_decision" and e.initiative == initiative]
        opened = [e for e in events if e.transition == "opened"]
        resolved = {e.incident_id: e for e in events if e.transition == "resolved"}
        assert opened, f"{initiative}: no decision at all"
        # Every decision but the standing one is resolved once, when its successor opens, and names it.
        for decision, successor in itertools.pairwise(opened):
            ended = resolved.pop(decision.incident_id)
            assert ended.evidence.detail["superseded_by"] == successor.incident_id
            assert ended.occurred_at == successor.occurred_at and events.index(ended) < events.index(successor)
            changed += 1
        assert resolved == {}, f"{initiative}: the standing decision {opened[-1].incident_id} was resolved"
    assert changed, "no experiment changed its decision: the test would check nothing"


def test_an_experiment_without_a_plan_is_read_against_an_equal_split_and_the_memo_says_so(tmp_path: Path) -> None:
    short = SimulationSpec(seed=5, days=1, users=2000, initiatives=(WINNER,), injections=())
    records = [(r.topic, r.key.encode(), encode(r.event)) for r in simulate(short)]
    driver = EmbeddedDriver(Settings(plan_dir=tmp_path, log_level="WARNING"))  # no PMON_EXPERIMENTS, no allocation
    asyncio.run(driver.run(records))
    memo = driver.initiative_stage.state.experiments["Winner"]["exp-winner"].memo
    assert memo is not None and {v.variant: v.planned_share for v in memo.readout.variants} == \
        {"control": 0.5, "treatment": 0.5}
    [assumption] = memo.summary.assumptions
    assert "equal split" in assumption and "PMON_EXPERIMENTS" in assumption
    assert "**Assumed**" in render_memo(memo, detail="summary")


def test_a_snapshot_pickled_before_the_lift_history_existed_still_loads() -> None:
    """A worker's stage-2 snapshot from before `history` was added: the upgrade keeps it, history empty."""
    import pickle

    from monitor.initiative_stage import ExperimentState

    current = ExperimentState(started=7200.0, evaluated_until=10_800.0, history=((1.0, 0.1, 0.0, 0.2),))
    dict_state, slots = current.__reduce_ex__(pickle.HIGHEST_PROTOCOL)[2]   # what pickle stores
    older = {name: value for name, value in slots.items() if name != "history"}
    restored = pickle.loads(pickle.dumps(current))
    upgraded = ExperimentState.__new__(ExperimentState)
    upgraded.__setstate__((dict_state, older))
    assert restored == current
    assert upgraded.history == () and upgraded.started == 7200.0 and upgraded.totals == current.totals


def test_users_with_a_history_before_exposure_give_cuped_its_reduction(tmp_path: Path) -> None:
    """An experiment launched half-way through a run meets users who converted elsewhere before: CUPED removes
    a sizeable share of the variance there, and next to nothing in one that met its users on day one."""
    background = InitiativeSpec(name="Background", profiles=("all",), channels=("web",), variants=("none",),
                                experiment=None, exposures_per_hour=600.0, ctr=0.1, cvr=0.05)
    late = InitiativeSpec(name="Late", profiles=("all",), channels=("web",), variants=("control", "treatment"),
                          experiment="exp-late", exposures_per_hour=600.0, ctr=0.1, cvr=0.05, launch_day=3)
    early = replace(late, name="Early", experiment="exp-early", launch_day=0)
    spec = SimulationSpec(seed=5, days=5, users=3000, initiatives=(background, late, early), injections=(),
                          propensity_sigma=0.8)
    experiments = {e: {"allocation": {"control": 0.5, "treatment": 0.5},
                       "success_metrics": [{"metric": "conversions_per_user"}]} for e in ("exp-late", "exp-early")}
    driver = EmbeddedDriver(Settings(plan_dir=tmp_path, experiments=experiments, log_level="WARNING"), replay=True)
    asyncio.run(driver.run([(r.topic, r.key.encode(), encode(r.event)) for r in simulate(spec)]))
    reduction = {name: driver.initiative_stage.state.experiments[name][experiment].memo.summary
                 .primary_variance_reduction for name, experiment in (("Late", "exp-late"), ("Early", "exp-early"))}
    assert reduction["Late"] > 0.05, reduction
    assert reduction["Early"] < reduction["Late"] / 3, reduction
