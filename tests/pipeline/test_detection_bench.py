"""`bench/detection.py` measures the product, not a copy of it: it drives the embedded driver and only adds
labels and scoring (issue 16). A static check that no bench module judges a bucket itself, and a tiny run
end to end."""

from __future__ import annotations

import ast
from pathlib import Path

from bench import detection
from bench.detection_candidates import CANDIDATES, STATIC
from detectors.registry import DETECTORS, monitored
from simulation.simulator import SimulationSpec, default_program, simulate

BENCH = Path(__file__).resolve().parents[2] / "bench"
MODULES = sorted(BENCH.glob("detection*.py"))
# What the pipeline does per bucket, per check and per breach: the bench may call none of it itself.
LOOP_MODULES = {"monitor.windows", "detectors.evaluation", "detectors.freshness", "incidents.breach_policy",
                "incidents.grouping", "monitor.initiative_stage.InitiativeStage", "monitor.user_stage"}
LOOP_CALLS = {"step", "score_one", "learn_one", "track_one", "evaluate_bucket", "observe", "check_freshness",
              "objective_for_rate", "fold_group", "on_partial", "on_check", "on_message", "apply"}


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def test_the_bench_modules_import_and_call_no_loop_of_their_own() -> None:
    assert {p.name for p in MODULES} >= {"detection.py", "detection_labels.py", "detection_candidates.py",
                                         "detection_scoring.py"}
    for path in MODULES:
        tree = _tree(path)
        imported = {f"{node.module}.{alias.name}" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                    for alias in node.names} | {node.module for node in ast.walk(tree)
                                                if isinstance(node, ast.ImportFrom)}
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        assert not imported & LOOP_MODULES, f"{path.name} imports {sorted(imported & LOOP_MODULES)}"
        called = {node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                  for node in ast.walk(tree) if isinstance(node, ast.Call)}
        assert not called & LOOP_CALLS, f"{path.name} calls {sorted(called & LOOP_CALLS)}: the pipeline's work"


def test_the_bench_drives_the_embedded_driver_with_an_observer_and_shadow_detectors() -> None:
    calls = [node for node in ast.walk(_tree(BENCH / "detection.py"))
             if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "EmbeddedDriver"]
    assert len(calls) == 1
    assert {k.arg for k in calls[0].keywords} >= {"replay", "observer", "shadow_detectors"}


def test_a_tiny_run_end_to_end_scores_what_the_pipeline_judged() -> None:
    program = tuple(spec for spec in default_program() if spec.name == "Win-back Emails")   # 200 exposures an hour
    result = detection.run_seed(1, 5, program)
    injections, _, _ = detection.schedule(1, 5, program)
    spec = SimulationSpec(seed=1, days=5, initiatives=program, injections=tuple(injections))
    assert result.records == sum(1 for _ in simulate(spec))   # every simulated record went through the driver
    # Every series detector, the monitor's and the shadows alike, judged the same closed buckets: the stage's loop.
    per_series = {name: n for name, n in result.verdicts.items() if name not in ("variant_share", "freshness")}
    assert set(per_series) == set(CANDIDATES) | set(STATIC) | set(monitored())
    assert len(set(per_series.values())) == 1 and next(iter(per_series.values())) > 0
    assert result.verdicts["variant_share"] > 0
    # The incidents the pipeline emitted for KPI kinds are those its own detectors' transitions opened.
    kinds = {DETECTORS[name]().kind for name in monitored() if result.incidents.get(name)}
    emitted = {kind for kind in result.emitted if kind in {DETECTORS[name]().kind for name in monitored()}}
    assert emitted and emitted <= kinds
    assert len(result.power) == len(result.labels) > 0
