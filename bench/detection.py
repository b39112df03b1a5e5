"""Detection benchmark: the product's detectors, candidates and a static-threshold baseline on labelled traffic.

    .venv/bin/python bench/detection.py [--seeds 8] [--days 10] [--jobs 2]

For each seed (in parallel, one process per seed):

1. Plans labelled incidents over `days` of clean seasonal traffic (the first `WARMUP_DAYS` stay clean;
   `bench/detection_labels.py`): per series, in 12-hour slots, dips of click-through and conversion rate of
   10, 20 and 40 %, spikes, volume drops, fallback surges, latency regressions and 30-hour level shifts; per
   initiative, feed gaps and variant suppression.
2. Simulates the traffic (`simulation.simulator.simulate`) and replays every record through the product's
   embedded driver (`streams.embedded.EmbeddedDriver`, as `pmon demo` runs it): the per-user stage, the
   per-initiative stage's event-time windows and watermark, its per-bucket loop over every series (zeros
   for a silent one), the variant-share groups, the timer's freshness checks and the breach policy. The
   registry's detectors run as the monitor runs them; every other candidate and the static baselines
   (`bench/detection_candidates.py`) run beside them as the stage's shadow detectors, which raise no
   incident. An observer passed to the stage (`monitor.initiative_stage.Judged`) hands the bench each
   verdict and the per-series transitions the breach policy made of it: an alert is an *opened* one.
3. Scores them against the labels (`bench/detection_scoring.py`), prints the figures and writes
   `docs/benchmarks/detection.md`.

This file adds no windowing, bucket loop, freshness objective or breach logic of its own
(`tests/pipeline/test_detection_bench.py` checks it): what it measures is what the product decides.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import math
import os
import pickle
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# `python bench/detection.py` puts bench/ first on the path: the repository goes before it, also when PYTHONPATH
# names it, or bench/experiments.py would shadow the experiments package the pipeline imports.
if sys.path[0] != str(ROOT):
    sys.path.insert(0, str(ROOT))

from bench import pages  # noqa: E402
from bench.detection_candidates import shadow_detectors  # noqa: E402
from bench.detection_labels import GRACE, HOUR, WARMUP_DAYS, Label, bench_program, oracle_power, schedule, with_latency  # noqa: E402
from bench.detection_scoring import SeedResult, report  # noqa: E402
from incidents.series import SeriesKey, split_detector_key  # noqa: E402
from monitor.events import encode  # noqa: E402
from monitor.initiative_stage import InitiativeState, Judged  # noqa: E402
from monitor.settings import Settings  # noqa: E402
from simulation.simulator import InitiativeSpec, SimulatedRecord, SimulationSpec, simulate  # noqa: E402
from streams.embedded import EmbeddedDriver  # noqa: E402


class Alerts:
    """The stage's observer: per detector, every opened per-series transition, by hour of the run."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.opened: dict[str, list[tuple[str, str, int]]] = defaultdict(list)
        self.verdicts: dict[str, int] = defaultdict(int)

    def __call__(self, judged: Judged) -> None:
        self.verdicts[judged.detector] += 1
        # A feed's incident is initiative-wide; every other one is on the series judged.
        scope, key = ("initiative", judged.initiative) if judged.detector == "freshness" else ("series", judged.series)
        hour = int((judged.start - self.start) // HOUR)
        self.opened[judged.detector] += [(scope, key, hour) for t in judged.transitions if t.transition == "opened"]


def bench_settings(program: tuple[InitiativeSpec, ...], plan_dir: Path) -> Settings:
    """The product's defaults (and any `PMON_*` variables set), with each experiment's planned allocation."""
    allocations = {spec.name: dict(zip(spec.variants, spec.planned_allocation, strict=True))
                   for spec in program if spec.experiment}
    return Settings(plan_dir=plan_dir, log_level="WARNING", allocations=allocations)


def _encoded(records: Iterable[SimulatedRecord]) -> Iterator[tuple[str, bytes, bytes]]:
    for record in records:
        yield record.topic, record.key.encode(), encode(record.event)


def run_seed(seed: int, days: int, program: tuple[InitiativeSpec, ...] | None = None) -> SeedResult:
    """One simulated run through the embedded driver; the opened transitions of every detector after the
    warm-up, and what the labels need to be scored (`program`: the bench's by default)."""
    clock = time.perf_counter()
    program = program or bench_program()
    injections, labels, latency = schedule(seed, days, program)
    spec = SimulationSpec(seed=seed, days=days, initiatives=program, injections=tuple(injections))
    alerts = Alerts(spec.start.timestamp())
    end = spec.end.timestamp()
    with tempfile.TemporaryDirectory() as plan_dir:
        settings = bench_settings(program, Path(plan_dir))
        # The run's end as the wall clock: every simulated event is in the past, whatever today's date.
        driver = EmbeddedDriver(settings, replay=True, wall_clock=lambda: end, observer=alerts,
                                shadow_detectors=shadow_detectors(settings))
        run = asyncio.run(driver.run(_encoded(with_latency(simulate(spec), latency))))
    degraded = [i for i in run.incidents if i.kind == "monitoring_degraded"]
    if degraded or run.dead_letters:   # a step that raised is caught by the driver: say so, do not score it
        raise RuntimeError(f"seed {seed}: the pipeline degraded ({len(degraded)} incidents, "
                           f"{len(run.dead_letters)} dead letters): {degraded[:1]} {run.dead_letters[:1]}")
    warmup_end = WARMUP_DAYS * 24
    incidents = {name: [alert for alert in found if alert[2] >= warmup_end] for name, found in alerts.opened.items()}
    state = driver.initiative_stage.state
    sizes, warming = _detector_states(state)
    series_initiative = {key: spec_.name for spec_ in program for key in spec_.series_keys()}
    volume = {key: spec_.exposures_per_hour * spec_.exposure_share(*SeriesKey.parse(key)[1:])
              for spec_ in program for key in spec_.series_keys()}
    power = _oracle(labels, program, state, spec.start.timestamp() + warmup_end * HOUR)
    emitted: dict[str, int] = defaultdict(int)
    for incident in run.incidents:
        if incident.transition == "opened":
            emitted[incident.kind] += 1
    return SeedResult(seed, labels, incidents, _clean_hours(labels, series_initiative, spec.hours, warmup_end),
                      sizes, warming, series_initiative, volume, power,
                      {"simulate+pipeline": time.perf_counter() - clock}, dict(emitted), run.records,
                      dict(alerts.verdicts))


def _detector_states(state: InitiativeState) -> tuple[dict[str, list[int]], dict[str, list[str]]]:
    """Per detector, the pickled size of each series' detector as the stage left it, and the series whose
    detector is still warming up."""
    sizes: dict[str, list[int]] = defaultdict(list)
    warming: dict[str, list[str]] = defaultdict(list)
    for key, series_state in state.series.items():
        if series_state is None:
            continue
        series, name = split_detector_key(key)
        sizes[name].append(len(pickle.dumps(series_state.detector)))
        if series_state.detector.warming_up:
            warming[name].append(series)
    return dict(sizes), dict(warming)


def _oracle(labels: list[Label], program: tuple[InitiativeSpec, ...], state: InitiativeState,
            warmup_end: float) -> list[float]:
    """The oracle's power per label, against each series' rates over the clean warm-up days as the
    pipeline counted them (its bucket rows)."""
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])
    for row in state.buckets.values():
        if row is None or row.start >= warmup_end:
            continue
        for series, c in row.series.items():
            total = totals[series]
            total[0] += c.exposures
            total[1] += c.clicks
            total[2] += c.conversions
            total[3] += c.fallbacks
    power = []
    for label in labels:
        exposures, clicks, conversions, fallbacks = totals[label.series[0]]
        rates = {"ctr": clicks / exposures, "cvr": conversions / exposures, "fallback_rate": fallbacks / exposures}
        spec = next(s for s in program if s.name == label.initiative)
        power.append(oracle_power(label, rates, math.sqrt(math.expm1(spec.latency_sigma ** 2))))
    return power


def _clean_hours(labels: list[Label], series_initiative: dict[str, str], hours: int,
                 warmup_end: int) -> dict[str, int]:
    covered = {(key, hour) for label in labels for key in label.series
               for hour in range(label.start, label.end + GRACE)}
    return {key: sum(1 for hour in range(warmup_end, hours) if (key, hour) not in covered)
            for key in series_initiative}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=8, help="simulated runs (default 8)")
    parser.add_argument("--days", type=int, default=10, help=f"days per run, the first {WARMUP_DAYS} clean")
    parser.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1), help="parallel processes")
    parser.add_argument("--out", type=Path, default=pages.page_path("detection"),
                        help="where to write the Markdown page (default docs/benchmarks/detection.md)")
    args = parser.parse_args(argv)
    if args.days <= WARMUP_DAYS + 1 or args.seeds < 1:
        parser.error(f"--days must exceed {WARMUP_DAYS + 1} and --seeds be positive")
    load_before, commit = os.getloadavg(), pages.checkout_commit()
    started = time.perf_counter()
    seeds = list(range(1, args.seeds + 1))
    results = []
    with ProcessPoolExecutor(max_workers=args.jobs) if args.jobs > 1 else contextlib.nullcontext() as pool:
        runs = pool.map(run_seed, seeds, [args.days] * len(seeds)) if pool else map(run_seed, seeds,
                                                                                  [args.days] * len(seeds))
        for result in runs:   # in seed order, as they finish: a long run says how far it got
            results.append(result)
            print(f"seed {result.seed}: {result.records:,} records, {time.perf_counter() - started:.0f} s",
                  file=sys.stderr, flush=True)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        report(results, time.perf_counter() - started, args.days)
    text = printed.getvalue()
    sys.stdout.write(text)
    pages.write_page("detection", f"Detection on the simulator ({args.seeds} seeds x {args.days} days)",
                     "The figures behind the registry's choice per KPI (`detectors/registry.py`, "
                     "`detectors/README.md`).\n\n```\n" + text.strip("\n") + "\n```",
                     argv=sys.argv[1:] if argv is None else argv, load_before=load_before, out=args.out,
                     commit=commit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
