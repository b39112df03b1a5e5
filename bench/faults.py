"""Fault harness: nothing lost, nothing counted twice, whatever happens to the workers.

    .venv/bin/python bench/faults.py [--runs 10] [--faults restart,kill,join-term,join-kill] [--bootstrap H:P]

Each run simulates a program with a planted conversion dip, produces ALL of it
to fresh uuid-named topics (4 partitions) before any worker starts (a backlog:
consent is not read before the engagement it governs), computes the answer
with the embedded driver on the same records, then runs `pmon worker`
processes on the local broker and injects one fault once the first worker has
counted ~30 % of the engagement events:

- `restart`: SIGTERM, then a new worker;
- `kill`: SIGKILL, then a new worker;
- `join-term`: a second worker joins the group (a rebalance), then leaves by SIGTERM;
- `join-kill`: the same, the second worker leaves by SIGKILL;
- `two-workers`: no fault: two workers share the partitions to the end (the
  report comes from the one that owns the initiative).

It then waits for the surviving worker to account for every engagement event
and compares with the embedded driver: events counted (lost = fewer,
double-counted = more), late, the report's dashboard and experiment memos,
and the incident transitions, read committed (by event id; the outputs are
transactional, so a transition sent twice is a defect, counted as re-sent).
It prints one line per run and a tally per fault; the exit code is 1 if any
run lost, double-counted or disagreed.
`tests/integration/test_faults.py` runs one of each in `make test`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# `python bench/faults.py` puts bench/ first on the path: the repository goes before it even when it is on the
# path already (PYTHONPATH), or bench/experiments.py would shadow the experiments package.
sys.path.insert(0, str(ROOT))

import pmon_harness  # noqa: E402
from bench import broker, pages  # noqa: E402
from incidents.model import IncidentEvent  # noqa: E402
from monitor.events import encode  # noqa: E402
from monitor.report import ReportRequest, build_report  # noqa: E402
from monitor.settings import Settings  # noqa: E402
from pmon_harness import WaitTimeout, Worker, free_port, wait_for  # noqa: E402
from simulation.simulator import Injection, SimulationSpec, default_program, simulate  # noqa: E402

FAULTS = ("restart", "kill", "join-term", "join-kill", "two-workers")
PLG = "PLG Onboarding"
# Fields of the report that describe how the work was delivered, not its result.
DELIVERY_FIELDS = ("duplicates_skipped", "plan_revision", "plan_dir", "source_offsets_lost")
STOP_GRACE = 60.0  # seconds from a signal to SIGKILL: generous, the fault under test is the signal, not a kill


def dip_spec(seed: int = 11) -> SimulationSpec:
    plg = next(spec for spec in default_program() if spec.name == PLG)
    start = SimulationSpec(days=1, injections=()).start
    dip = Injection("conversion_drop", PLG, start + timedelta(days=2, hours=11), 6, 0.5,
                    profile="new_user", channel="web", variant="treatment")
    return SimulationSpec(seed=seed, days=3, users=4000, initiatives=(plg,), injections=(dip,))


def isolated_settings(bootstrap: str, workdir: Path, **overrides: Any) -> Settings:
    """A run's settings (`pmon_harness.isolated_settings`): 4 partitions, detectors that warm up within the dip's
    3 simulated days."""
    return pmon_harness.isolated_settings(
        bootstrap, workdir, tag="fault",
        **{"topic_partitions": 4, "log_level": os.environ.get("PMON_FAULTS_LOG_LEVEL", "WARNING"),
           "warmup_buckets": 12, "min_exposures": 150, **overrides})


def _report(worker: Worker, initiative: str) -> dict[str, Any] | None:
    """The report, or None while there is none, or the worker does not answer (it may be the one the fault hit)."""
    try:
        return worker.report(initiative)
    except OSError:
        return None


def _metric(worker: Worker, name: str, **labels: str) -> float:
    try:
        return worker.metric(name, **labels)
    except OSError:
        return 0.0  # not serving (yet, or any more)


def accounted(worker: Worker, initiative: str, *, with_lost: bool = False) -> int:
    """Events counted (and late); `with_lost`: plus the source offsets the worker reported lost."""
    report = _report(worker, initiative)
    if report is None:
        return 0
    return report["counted_events"] + report["late_dropped"] + (report["source_offsets_lost"] if with_lost else 0)


@dataclass
class Expected:
    """The embedded driver's answer on the same records."""

    engagement: int
    report: dict[str, Any]
    incidents: list[IncidentEvent]


def expected_of(settings: Settings, records: list[tuple[str, bytes, bytes]]) -> Expected:
    from streams.embedded import EmbeddedDriver

    driver = EmbeddedDriver(settings.model_copy(update={"plan_dir": settings.plan_dir / "embedded"}))
    run = asyncio.run(driver.run(records))
    report = build_report(driver.initiative_stage, ReportRequest(initiative=PLG, window="30d", detail="full"))
    return Expected(sum(1 for topic, _, _ in records if topic == "engagement"),
                    report.model_dump(mode="json"), run.incidents)


def _rounded(value: Any) -> Any:
    """Floats to 9 significant digits: sums over partitions add in another order than over one stream."""
    if isinstance(value, float):
        return float(f"{value:.9g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items() if k not in DELIVERY_FIELDS}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def report_differences(got: dict[str, Any], want: dict[str, Any]) -> list[str]:
    got, want = _rounded(got), _rounded(want)
    return [f"{name}: worker {str(got.get(name))[:300]} != embedded {str(want.get(name))[:300]}"
            for name in sorted(set(got) | set(want)) if got.get(name) != want.get(name)]


def _essence(incident: IncidentEvent) -> tuple[Any, ...]:
    return (incident.event_id, incident.incident_id, incident.transition, incident.owner, tuple(incident.series),
            incident.evidence.bucket_start, round(incident.evidence.observed, 9), round(incident.evidence.expected, 9))


async def _read_topic(settings: Settings, topic: str, timeout: float) -> list[Any]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(settings.topic(topic), bootstrap_servers=settings.kafka_bootstrap,
                                group_id=None, auto_offset_reset="earliest", enable_auto_commit=False,
                                # The worker's outputs are transactional: what an aborted transaction sent
                                # is not output.
                                isolation_level="read_committed")
    await consumer.start()
    found: list[Any] = []
    try:
        deadline = time.monotonic() + timeout
        quiet = 0
        while time.monotonic() < deadline and quiet < 4:
            batch = await consumer.getmany(timeout_ms=500)
            records = [r for part in batch.values() for r in part]
            found += records
            quiet = 0 if records else quiet + 1
    finally:
        await consumer.stop()
    return found


@dataclass
class RunResult:
    fault: str
    expected: int
    counted: int
    seconds: float
    differences: list[str]
    duplicate_transitions: int
    at_fault: int = 0                # events the first worker had accounted for when the fault came
    error: str | None = None
    reported_lost: int = 0           # source offsets the worker itself reported lost (monitoring_degraded)

    @property
    def lost(self) -> int:
        return max(0, self.expected - self.counted)

    @property
    def double(self) -> int:
        return max(0, self.counted - self.expected)

    @property
    def ok(self) -> bool:
        return self.error is None and self.lost == 0 and self.double == 0 and not self.differences


def run_fault(fault: str, bootstrap: str, workdir: Path, *, seed: int = 11,
              records: list[tuple[str, bytes, bytes]] | None = None) -> RunResult:
    """One run of one fault on fresh topics; see the module docstring."""
    from streams.kafka_io import produce

    if fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}; use one of {', '.join(FAULTS)}")
    settings = isolated_settings(bootstrap, workdir)
    records = records if records is not None else [(r.topic, r.key.encode(), encode(r.event))
                                                   for r in simulate(dip_spec(seed))]
    expected = expected_of(settings, records)
    # Most of it before any worker starts (a backlog), the rest once the fault came (live traffic), so
    # that every worker of the run has records left to read.
    split = int(len(records) * 0.6)
    asyncio.run(produce(settings, records[:split]))
    started = time.monotonic()
    logs = workdir / f"{settings.app_id}"
    logs.mkdir(parents=True, exist_ok=True)
    workers: list[Worker] = []

    def start() -> Worker:
        # Same group and topics as its peers, a web port of its own.
        worker = Worker(settings.model_copy(update={"web_port": free_port()}), logs / f"worker-{len(workers)}.log")
        workers.append(worker)
        return worker

    def progress() -> str:
        return "; ".join(f"worker {n} {'up' if w.alive() else f'exit {w.process.returncode}'}: accounted "
                         f"{accounted(w, PLG) if w.alive() else '-'} of {expected.engagement}\n{w.log(1500)}"
                         for n, w in enumerate(workers))

    try:
        first = start()
        at_fault = wait_for(lambda: (n := accounted(first, PLG)) >= 0.3 * expected.engagement and n, timeout=300,
                            what="the first worker to be 30 % into the backlog", on_timeout=progress)
        if fault in ("restart", "kill"):
            first.stop(signal.SIGTERM if fault == "restart" else signal.SIGKILL, grace=STOP_GRACE)
            survivor = start()
            asyncio.run(produce(settings, records[split:]))
        elif fault == "two-workers":
            second = start()
            wait_for(lambda: _metric(second, "pmon_stage1_partitions") > 0, timeout=300,
                     what="the second worker to join stage 1's group", on_timeout=progress)
            asyncio.run(produce(settings, records[split:]))
            survivor = wait_for(lambda: next((w for w in workers if accounted(w, PLG) >= expected.engagement), None),
                                timeout=420, what="one of the two workers to account for every event",
                                on_timeout=progress)
        else:
            second = start()
            wait_for(lambda: _metric(second, "pmon_stage1_partitions") > 0, timeout=300,
                     what="the second worker to join stage 1's group", on_timeout=progress)
            asyncio.run(produce(settings, records[split:]))
            wait_for(lambda: _metric(second, "pmon_records_total", topic="engagement") > 0, timeout=300,
                     what="the second worker to read records of its partitions", on_timeout=progress)
            second.stop(signal.SIGTERM if fault == "join-term" else signal.SIGKILL, grace=STOP_GRACE)
            survivor = first
        # Every event counted, or reported lost (a gap between the stages raises monitoring_degraded).
        wait_for(lambda: accounted(survivor, PLG, with_lost=True) >= expected.engagement, timeout=420,
                 what="the surviving worker to account for every engagement event", on_timeout=progress)
        # Whatever is still on its way is counted too: wait until the figure stops moving.
        counted, stable_since = accounted(survivor, PLG), time.monotonic()
        while time.monotonic() - stable_since < 3:
            now = accounted(survivor, PLG)
            if now != counted:
                counted, stable_since = now, time.monotonic()
            time.sleep(0.5)  # polling interval
        report = _report(survivor, PLG) or {}
        reported_lost = report.get("source_offsets_lost", 0)
        differences = report_differences(report, expected.report)
        transitions = [IncidentEvent.model_validate_json(m.value)
                       for m in asyncio.run(_read_topic(settings, "incidents", timeout=30))]
        seen = Counter(i.event_id for i in transitions)
        if sorted(set(map(_essence, transitions))) != sorted(map(_essence, expected.incidents)):
            differences.append(f"incidents: worker {sorted(seen)} != embedded "
                               f"{sorted(i.event_id for i in expected.incidents)}")
        return RunResult(fault, expected.engagement, counted, time.monotonic() - started, differences,
                         sum(n - 1 for n in seen.values()), at_fault, reported_lost=reported_lost)
    except WaitTimeout as exc:
        counted = max((accounted(w, PLG) for w in workers if w.alive()), default=0)
        return RunResult(fault, expected.engagement, counted, time.monotonic() - started, [], 0, error=str(exc))
    finally:
        for worker in workers:
            worker.stop(grace=STOP_GRACE)
        asyncio.run(delete_run_topics(settings))


async def delete_run_topics(settings: Settings) -> None:
    """Delete the run's topics: inputs, outputs and the app's internal ones."""
    try:
        await broker.delete_topics(
            settings, lambda t: t.startswith(f"{settings.topic_prefix}.") or t.startswith(settings.app_id)
        )
    except Exception as exc:  # noqa: BLE001 - best effort: the broker's retention removes what is left
        print(f"  (could not delete the run's topics: {exc!r})", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="runs of each fault (default 10)")
    parser.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated, of {', '.join(FAULTS)}")
    parser.add_argument("--bootstrap", default=os.environ.get("PMON_KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    parser.add_argument("--out", type=Path, default=pages.page_path("faults"),
                        help="where to write the page (default docs/benchmarks/faults.md)")
    args = parser.parse_args(argv)
    with pages.recording("faults", "Faults: nothing lost, nothing counted twice", args.out, argv):
        return _run(args, parser)


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    unknown = [f for f in faults if f not in FAULTS]
    if unknown or args.runs < 1:
        parser.error(f"unknown faults {unknown}; use {', '.join(FAULTS)}" if unknown else "--runs must be >= 1")
    records = [(r.topic, r.key.encode(), encode(r.event)) for r in simulate(dip_spec())]
    tally: dict[str, Counter[str]] = {fault: Counter() for fault in faults}
    with tempfile.TemporaryDirectory(prefix="pmon-faults-") as tmp:
        for n in range(args.runs):
            for fault in faults:
                result = run_fault(fault, args.bootstrap, Path(tmp), records=records)
                tally[fault].update(runs=1, lost=result.lost, double=result.double, failed=not result.ok,
                                    resent=result.duplicate_transitions)
                print(f"{fault:<10} run {n + 1:>2}: fault at {result.at_fault:,}, "
                      f"{result.counted:,} of {result.expected:,} counted ({result.reported_lost:,} reported lost), "
                      f"lost {result.lost}, double {result.double}, re-sent transitions "
                      f"{result.duplicate_transitions}, {result.seconds:.0f} s"
                      + (f" — ERROR {result.error}" if result.error else "")
                      + "".join(f"\n    differs: {d}" for d in result.differences), flush=True)
    print("\nfault       runs  lost  double-counted  disagreeing  re-sent transitions")
    for fault, counts in tally.items():
        print(f"{fault:<10} {counts['runs']:>5} {counts['lost']:>5} {counts['double']:>15} {counts['failed']:>12} "
              f"{counts['resent']:>20}")
    return 1 if any(counts["failed"] for counts in tally.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
