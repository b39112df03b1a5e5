"""Helpers the test modules share (the fixtures are in `tests/conftest.py`): running `pmon` as a process, reading
a worker's web views, and the scenarios several layers replay (the KPI threshold, the experiments)."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson

from incidents.model import IncidentEvent
from monitor.events import EngagementEvent, encode
from pmon_harness import PMON
from simulation.simulator import InitiativeSpec, SimulationSpec
from tests.conftest import consume

# --------------------------------------------------------------------------- pmon as a process

def run_pmon(*args: str, cwd: Path, env: dict[str, str] | None = None, program: Path = PMON,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`pmon ARGS` (or another of the project's entry points) in `cwd` with no PMON_* variable of the caller's,
    plans under `cwd/plans`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PMON_")}
    clean.pop("PYTHONWARNINGS", None)
    clean.update({"PMON_PLAN_DIR": str(cwd / "plans"), "COLUMNS": "200"})
    clean.update(env or {})
    return subprocess.run([str(program), *args], cwd=cwd, env=clean, capture_output=True, text=True,
                          timeout=timeout, check=False)


def one_line(stderr: str) -> str:
    """The one line of `stderr`; fails the test when there are more or none."""
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected exactly one line on stderr, got {len(lines)}:\n{stderr}"
    return lines[0]


# --------------------------------------------------------------------------- a worker's web views and outputs

# Consent scenarios on a worker start at this hour of the simulator's default day.
T0 = SimulationSpec(days=1, injections=()).start + timedelta(hours=10)


def http_json(url: str) -> tuple[int, Any]:
    """(HTTP status, JSON body) of `url`, whatever the status."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def consent_incidents(settings: Any) -> dict[str, IncidentEvent]:
    """The consent_violation incidents opened so far, by initiative."""
    found = [IncidentEvent.model_validate_json(m.value) for m in consume(settings, "incidents", want=1, timeout=1,
                                                                            settle=0)]
    return {i.initiative: i for i in found if i.kind == "consent_violation" and i.transition == "opened"}


# --------------------------------------------------------------------------- the KPI-threshold scenario

INITIATIVE = "Threshold Test"
# Hourly buckets of 2,000 exposures at 20 % conversion; then two hours 15 % lower (340 instead of 400
# conversions: binomial p ~ 1e-3.6, significant at 0.001), then healthy hours again.
EXPOSURES, CONVERSIONS, DROPPED = 2000, 400, 340
CLEAN, DROP, AFTER = 6, 2, 4
DETECTION = dict(warmup_buckets=4, baseline_buckets=6, min_exposures=200, significance=0.001,
                 breach_span_buckets=3, series_detectors=("volume_cusum",),
                 consent_default_policy="opt-out", consent_policies={})


def threshold_series(t0: datetime, after: int = AFTER) -> list[tuple[str, bytes, bytes]]:
    """The hours, then events an hour later that close them (`after` healthy hours end the drop)."""
    records = []
    n = 0
    for hour in range(CLEAN + DROP + after):
        conversions = DROPPED if CLEAN <= hour < CLEAN + DROP else CONVERSIONS
        for i in range(EXPOSURES + conversions):
            user = f"u{n % 5000}"
            event = EngagementEvent(event_id=f"e{n}", event_type="exposure" if i < EXPOSURES else "conversion",
                                    event_time=t0 + timedelta(hours=hour, seconds=i), user_id=user,
                                    initiative=INITIATIVE, profile="p", channel="web", variant="control")
            records.append(("engagement", user.encode(), encode(event)))
            n += 1
    # One closing event per user of ten: every source partition's mark passes the last bucket.
    closing = [EngagementEvent(event_id=f"close-{u}", event_type="exposure", user_id=f"u{u}", initiative=INITIATIVE,
                               event_time=t0 + timedelta(hours=CLEAN + DROP + after + 1), profile="p",
                               channel="web", variant="control") for u in range(10)]
    return records + [("engagement", event.user_id.encode(), encode(event)) for event in closing]


def two_days_ago() -> datetime:
    """Two days ago on the hour: inside the retention, behind the wall clock."""
    now = datetime.now(timezone.utc) - timedelta(days=2)
    return now.replace(minute=0, second=0, microsecond=0)


def threshold_events_file(path: Path) -> Path:
    """The scenario as a JSONL events file whose drop lasts to the end (the incident stays open)."""
    with path.open("wb") as out:
        for topic, key, value in threshold_series(two_days_ago(), after=0):
            out.write(orjson.dumps({"topic": topic, "key": key.decode(), "value": orjson.loads(value)}) + b"\n")
    return path


def stored_threshold_state(tmp_path: Path) -> Path:
    """A stored state (`pmon monitor --events --state`) holding one kpi_threshold incident."""
    state = tmp_path / "state"
    built = run_pmon("monitor", "--initiative", INITIATIVE, "--events",
                     str(threshold_events_file(tmp_path / "events.jsonl")),
                     "--state", str(state), "--alert-threshold", "0.1", cwd=tmp_path,
                     env={"PMON_WARMUP_BUCKETS": "4", "PMON_BASELINE_BUCKETS": "6",
                          "PMON_CONSENT_DEFAULT_POLICY": "opt-out", "PMON_CONSENT_POLICIES": "{}"})
    assert built.returncode == 0, built.stderr
    return state


# --------------------------------------------------------------------------- the experiment scenario

# A known winner, a known loser and a sample ratio mismatch (44 % treatment where 50 % was planned).
WINNER = InitiativeSpec(name="Winner", profiles=("all",), channels=("web",), variants=("control", "treatment"),
                        experiment="exp-winner", exposures_per_hour=300.0, ctr=0.1, cvr=0.05,
                        variant_cvr_lifts=(1.0, 1.3), revenue_mean=30.0)
LOSER = InitiativeSpec(name="Loser", profiles=("all",), channels=("web",), variants=("control", "treatment"),
                       experiment="exp-loser", exposures_per_hour=300.0, ctr=0.1, cvr=0.05,
                       variant_cvr_lifts=(1.0, 0.7), revenue_mean=30.0)
SKEWED = InitiativeSpec(name="Skewed", profiles=("all",), channels=("web",), variants=("control", "treatment"),
                        experiment="exp-srm", exposures_per_hour=300.0, ctr=0.1, cvr=0.05, allocation=(0.56, 0.44),
                        planned_allocation=(0.5, 0.5), revenue_mean=30.0)
EXPERIMENT_SPEC = SimulationSpec(seed=5, days=5, users=6000, initiatives=(WINNER, LOSER, SKEWED), injections=())


def experiment_plans() -> dict[str, Any]:
    """The `experiments` and `allocations` settings of the scenario: the planned allocations, conversions per user
    as the success metric, revenue per user as a guardrail (no worse than 5 %)."""
    allocations = {i.name: dict(zip(i.variants, i.planned_allocation, strict=True))
                   for i in EXPERIMENT_SPEC.initiatives}
    experiments = {i.experiment: {"allocation": allocations[i.name],
                                  "success_metrics": [{"metric": "conversions_per_user"}],
                                  "guardrails": [{"metric": "revenue_per_user", "margin": 0.05}]}
                   for i in EXPERIMENT_SPEC.initiatives}
    return {"experiments": experiments, "allocations": allocations}
