"""Detection benchmark: every detector, and a static-threshold baseline, on labelled simulated traffic.

    .venv/bin/python bench/detection.py [--seeds 8] [--days 10] [--jobs 2]

For each seed (in parallel, one process per seed):

1. Schedules many labelled incidents over `days` of clean seasonal traffic
   (the first `WARMUP_DAYS` stay clean): per series, in 12-hour slots, dips of
   click-through and conversion rate of 10, 20 and 40 %, spikes, volume drops,
   fallback surges, latency regressions and 30-hour level shifts; per
   initiative, feed gaps and variant suppression. Latency regressions are
   applied to the aggregated buckets (the simulator has no latency kind); every
   other incident is a `simulation.simulator.Injection`.
2. Runs the simulator (`simulation.simulator.simulate`) and aggregates its events
   into hourly `BucketObservation`s per series (zeros for a silent series), per
   initiative, and per (initiative, profile, channel) variant group; records
   every feed's last event time every 5 minutes of event time.
3. Runs, online and per series, every registered detector, the static-threshold
   baselines, the variant-share detector per group and the freshness check per
   feed, each through the breach policy (`incidents.breach_policy.BreachPolicy`,
   defaults: the second breach within 3 buckets opens an incident). An alert is
   an *opened incident*.

Then, per incident kind: precision, recall, F1 and median detection delay (in
buckets after the incident's first bucket: 0 = opened within its first hour),
for each candidate detector, for the monitor's choice (`detectors.registry`) and
for the static baseline; false alerts per 100 series-days of clean data; state
sizes; and the issue's targets, PASS or FAIL.

Matching: an incident matches a label when it is on one of the label's series
(an initiative-wide incident: on its initiative) and opens in
[start, end + 3 buckets). Unmatched incidents are false alerts. A kind's
precision is its matched incidents over those plus all of the detector's
false alerts.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import pickle
import random
import statistics
import sys
import time
from collections import defaultdict, deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

from scipy.stats import binom, norm, poisson

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/detection.py` puts bench/ first on the path, not the repo
    sys.path.insert(0, str(ROOT))

from detectors.base import BucketDetector, BucketObservation, Verdict, step  # noqa: E402
from detectors.conversion_drop import ConversionDropDetector  # noqa: E402
from detectors.cusum import (JointSpikeCusumDetector, RateCusumDetector, VolumeCusumDetector,  # noqa: E402
                             VolumeShareCusumDetector)
from detectors.freshness import KIND as FRESHNESS_KIND, check_freshness, objective_for_rate  # noqa: E402
from detectors.kpis import read  # noqa: E402
from detectors.level_shift import LevelShiftDetector  # noqa: E402
from detectors.registry import DETECTORS, PER_INITIATIVE, detector_for_kpi  # noqa: E402
from detectors.variant_share import VariantShareDetector  # noqa: E402
from incidents.breach_policy import BreachPolicy, BreachPolicyConfig, BreachState  # noqa: E402
from incidents.model import Evidence  # noqa: E402
from incidents.playbooks import PLAYBOOKS  # noqa: E402
from incidents.series import SeriesKey, build_key  # noqa: E402
from simulation.simulator import (DEFAULT_START, InitiativeSpec, Injection, SimulationSpec,  # noqa: E402
                               default_program, simulate, traffic_factor)

WARMUP_DAYS = 3
SLOT_HOURS = 12
GRACE = 3               # buckets after a label's end in which an incident still matches it
TICK_SECONDS = 300      # the freshness timer, in event time
HOUR = 3600

# (family, magnitude, hours): the series-level incidents, cycled through in a shuffled order.
SERIES_KINDS: tuple[tuple[str, float, int], ...] = (
    ("ctr_drop", 0.1, 6), ("ctr_drop", 0.2, 6), ("ctr_drop", 0.4, 6),
    ("conversion_drop", 0.1, 6), ("conversion_drop", 0.2, 6), ("conversion_drop", 0.4, 6),
    ("spike", 0.5, 4), ("volume_drop", 0.5, 5), ("fallback_surge", 0.15, 4),
    ("latency_regression", 0.4, 5), ("level_shift", 0.15, 30),
)
# The KPIs whose detectors answer each family: the monitor's detectors for a kind are their registry choice.
FAMILY_KPIS: dict[str, tuple[str, ...]] = {
    "ctr_drop": ("ctr",), "conversion_drop": ("cvr",), "spike": ("ctr", "cvr", "revenue_per_exposure"),
    "volume_drop": ("exposures",), "feed_gap": ("exposures",), "variant_suppression": ("exposures",),
    "fallback_surge": ("fallback_rate",), "latency_regression": ("latency_ms",), "level_shift": ("ctr", "cvr"),
}
FAMILY_EXTRA = {"feed_gap": ("freshness",), "variant_suppression": ("variant_share",)}
# The families each KPI's detectors answer, for the evidence behind `detectors.registry`'s choice.
KPI_FAMILIES: dict[str, tuple[str, ...]] = {
    "ctr": ("ctr_drop", "spike", "level_shift"), "cvr": ("conversion_drop", "spike", "level_shift"),
    "revenue_per_exposure": ("spike", "conversion_drop"), "fallback_rate": ("fallback_surge",),
    "latency_ms": ("latency_regression",), "exposures": ("volume_drop", "feed_gap", "variant_suppression"),
}
DIP_FAMILIES = ("ctr_drop", "conversion_drop", "volume_drop")
# The KPI each simulated kind moves; a spike moves clicks and conversions, the oracle tests clicks.
INJECTED_KPI = {"ctr_drop": "ctr", "conversion_drop": "cvr", "spike": "ctr", "volume_drop": "exposures",
                "fallback_surge": "fallback_rate"}
ORACLE_ALPHA = 0.001    # the oracle's one-sided level: the breach policy's two breaches at 0.005 are ~1e-4 per span
DETECTABLE = 0.95       # a label is in the targets' scope when the oracle finds it with at least this probability
HIGH_VOLUME = 1000      # exposures per series-hour from which a 20 % rate dip can be told from noise in 2 hours
# Registered detectors of a univariate `value` (for `pmon detect --csv`); nothing to measure here.
UNIVARIATE_ONLY = ("seasonal_profile", "seasonal_holt_winters", "robust_series")
# Measured alternatives that are not registered: ADWIN needs more than the contract's two buckets to
# find even a 50 % drop, and finds level shifts later and less often than Page-Hinkley (see the report).
ALTERNATIVES: dict[str, Any] = {
    # the CUSUMs' neighbouring thresholds (see detectors/cusum.py for the chosen ones)
    **{f"ctr_cusum_h{h}": partial(RateCusumDetector, kpi="ctr", threshold=h) for h in (4, 6)},
    **{f"cvr_cusum_h{h}": partial(RateCusumDetector, kpi="cvr", threshold=h) for h in (5, 7)},
    **{f"volume_cusum_h{h}": partial(VolumeCusumDetector, threshold=h) for h in (7, 9)},
    **{f"volume_share_cusum_h{h}": partial(VolumeShareCusumDetector, threshold=h) for h in (7, 9)},
    **{f"cvr_cusum_small_h{h}": partial(RateCusumDetector, kpi="cvr", shift=0.1, threshold=h) for h in (8, 10)},
    **{f"spike_joint_cusum_h{h}": partial(JointSpikeCusumDetector, threshold=h) for h in (7, 9)},
    "ctr_cusum_no_lag": partial(RateCusumDetector, kpi="ctr", learn_lag=0),
    # the CUSUMs' baselines as before: buckets beyond 4 standard deviations (an unseen spike) learnt
    "ctr_cusum_learn_outliers": partial(RateCusumDetector, kpi="ctr", learn_outliers=True),
    "cvr_cusum_learn_outliers": partial(RateCusumDetector, kpi="cvr", threshold=6.0, learn_outliers=True),
    "cvr_cusum_no_lag": partial(RateCusumDetector, kpi="cvr", threshold=6.0, learn_lag=0),
    "volume_cusum_no_lag": partial(VolumeCusumDetector, learn_lag=0),
    "ctr_level_shift_adwin": partial(LevelShiftDetector, kpi="ctr", drift_detector="adwin"),
    "cvr_level_shift_adwin": partial(LevelShiftDetector, kpi="cvr", drift_detector="adwin"),
}
CANDIDATES: dict[str, Any] = {**DETECTORS, **ALTERNATIVES}


def bench_program() -> tuple[InitiativeSpec, ...]:
    """The simulator's default program plus one high-volume initiative (3,000 exposures/hour per series).

    The default program's biggest series sees ~350 exposures an hour: there a 20 % dip of a 10 %
    rate is 1.2 standard deviations of one hour's noise, below what any test can find in two hours.
    """
    checkout = InitiativeSpec(
        name="Checkout Recs", profiles=("guest", "member"), channels=("web",), variants=("control", "treatment"),
        experiment="checkout-recs-v2", exposures_per_hour=12_000.0, ctr=0.12, cvr=0.08, allocation=(0.5, 0.5),
        revenue_mean=40.0, rule_ids=("checkout-recs-web",))
    return (checkout, *default_program())


# ---------------------------------------------------------------------------------------------- labels


@dataclass(frozen=True)
class Label:
    seed: int
    family: str
    magnitude: float
    initiative: str
    series: tuple[str, ...]
    start: int            # hour of the run
    end: int              # exclusive
    volume: float         # expected exposures per series-hour at the start
    hourly: tuple[float, ...] = ()   # expected exposures per series-hour, each hour of the label
    kpi: str = ""         # the KPI the injection moves (for the oracle)

    @property
    def kind(self) -> str:
        return f"{self.family}@{round(self.magnitude * 100)}" if self.family in ("ctr_drop", "conversion_drop") \
            else self.family


def schedule(seed: int, days: int, program: tuple[InitiativeSpec, ...]
             ) -> tuple[list[Injection], list[Label], dict[tuple[str, int], float]]:
    """Labelled incidents in 12-hour slots after the warm-up; at most one at a time per series."""
    rng = random.Random(f"bench-schedule:{seed}")
    slots = (days - WARMUP_DAYS) * 24 // SLOT_HOURS
    injections: list[Injection] = []
    labels: list[Label] = []
    latency: dict[tuple[str, int], float] = {}   # (series, hour) -> latency multiplier
    cycle: list[tuple[str, float, int]] = []

    def next_kind() -> tuple[str, float, int]:
        if not cycle:
            cycle.extend(rng.sample(SERIES_KINDS, len(SERIES_KINDS)))
        return cycle.pop()

    def expected_volume(spec: InitiativeSpec, keys: list[str], hour: int) -> float:
        parts = [SeriesKey.parse(key) for key in keys]
        factor = traffic_factor(DEFAULT_START + timedelta(hours=hour))
        return statistics.fmean(spec.exposures_per_hour * spec.exposure_share(p, c, v) * factor
                                for _, p, c, v in parts)

    for spec in program:
        busy_until = {key: 0 for key in spec.series_keys()}
        for slot in range(slots):
            slot_start = WARMUP_DAYS * 24 + slot * SLOT_HOURS
            start = slot_start + rng.randrange(0, 4)
            free = [key for key, until in busy_until.items() if until <= slot_start]
            if len(free) == len(busy_until) and rng.random() < 0.3:
                when = DEFAULT_START + timedelta(hours=start)
                if spec.experiment and rng.random() < 0.5:
                    variant = rng.choice(spec.variants)
                    injection = Injection("variant_suppression", spec.name, when, 3, 1.0, variant=variant)
                else:
                    injection = Injection("feed_gap", spec.name, when, 3, 1.0)
                keys = injection.series((spec,))
                injections.append(injection)
                labels.append(Label(seed, injection.kind, 1.0, spec.name, tuple(keys), start, start + 3,
                                    expected_volume(spec, keys, start),
                                    tuple(expected_volume(spec, keys, h) for h in range(start, start + 3)),
                                    "exposures"))
                for key in busy_until:
                    busy_until[key] = slot_start + SLOT_HOURS
                continue
            for key in free:
                if rng.random() >= 0.55:
                    continue
                family, magnitude, hours = next_kind()
                if start + hours + GRACE > days * 24:
                    continue
                _, profile, channel, variant = SeriesKey.parse(key)
                if family == "latency_regression":
                    for hour in range(start, start + hours):
                        latency[(key, hour)] = 1.0 + magnitude
                    kpi = "latency_ms"
                else:
                    sim_kind = {"level_shift": rng.choice(("ctr_drop", "conversion_drop"))}.get(family, family)
                    injections.append(Injection(sim_kind, spec.name, DEFAULT_START + timedelta(hours=start), hours,
                                                magnitude, profile=profile, channel=channel, variant=variant))
                    kpi = INJECTED_KPI[sim_kind]
                labels.append(Label(seed, family, magnitude, spec.name, (key,), start, start + hours,
                                    expected_volume(spec, [key], start),
                                    tuple(expected_volume(spec, [key], h) for h in range(start, start + hours)), kpi))
                busy_until[key] = slot_start + SLOT_HOURS * math.ceil((start - slot_start + hours + GRACE)
                                                                      / SLOT_HOURS)
    return injections, labels, latency


# ---------------------------------------------------------------------------------------------- aggregation


@dataclass
class Traffic:
    """A run's hourly counters per series, and every feed's last event time at each freshness tick."""

    hours: int
    counters: dict[str, list[list[float]]]            # series -> hour -> [exp, clicks, conv, revenue, fb, latency]
    ticks: list[tuple[int, dict[str, float | None]]]  # (seconds since start, feed -> last event, seconds)


def aggregate(spec: SimulationSpec) -> Traffic:
    start = spec.start.timestamp()
    hours = spec.hours
    counters = {key: [[0, 0, 0, 0.0, 0, 0.0] for _ in range(hours)]
                for initiative in spec.initiatives for key in initiative.series_keys()}
    by_parts = {SeriesKey.parse(key): rows for key, rows in counters.items()}
    last: dict[str, float | None] = {initiative.name: None for initiative in spec.initiatives}
    ticks: list[tuple[int, dict[str, float | None]]] = []
    next_tick = TICK_SECONDS
    for record in simulate(spec):
        if record.topic != "engagement":
            continue
        event = record.event
        at = event.event_time.timestamp() - start
        while at >= next_tick:
            ticks.append((next_tick, dict(last)))
            next_tick += TICK_SECONDS
        last[event.initiative] = at
        row = by_parts[(event.initiative, event.profile, event.channel, event.variant)][int(at // HOUR)]
        kind = event.event_type
        if kind == "exposure":
            row[0] += 1
            row[4] += event.fallback
            row[5] += event.decision_latency_ms
        elif kind == "click":
            row[1] += 1
        else:
            row[2] += 1
            row[3] += event.revenue
    while next_tick <= hours * HOUR:
        ticks.append((next_tick, dict(last)))
        next_tick += TICK_SECONDS
    return Traffic(hours, counters, ticks)


def observation(series: str, hour: int, row: list[float], latency_factor: float = 1.0,
                group_exposures: int = 0) -> BucketObservation:
    begin = DEFAULT_START + timedelta(hours=hour)
    return BucketObservation(series, begin, begin + timedelta(hours=1), int(row[0]), int(row[1]), int(row[2]),
                             row[3], int(row[4]), row[5] * latency_factor, group_exposures=group_exposures)


# ---------------------------------------------------------------------------------------------- the static baseline


class StaticThreshold(BucketDetector):
    """The baseline to beat: a KPI `threshold` below (or above) its trailing 24-bucket mean, no statistics."""

    kind: ClassVar[str] = "static_threshold"

    def __init__(self, kpi: str, direction: str, threshold: float, min_count: int = 1, window: int = 24) -> None:
        self.kpi, self.direction, self.threshold, self.min_count = kpi, direction, threshold, min_count
        self._values: deque[float] = deque(maxlen=window)

    @property
    def warming_up(self) -> bool:
        return len(self._values) < (self._values.maxlen or 0)

    def learn_one(self, observation: BucketObservation) -> None:
        reading = read(observation, self.kpi)
        if reading is not None and reading.n >= self.min_count:
            self._values.append(reading.value)

    def score_one(self, observation: BucketObservation) -> Verdict:
        reading = read(observation, self.kpi)
        mean = statistics.fmean(self._values) if self._values else 0.0
        if self.warming_up or reading is None or reading.n < self.min_count or mean <= 0:
            return Verdict(False, False, reading.value if reading else 0.0, mean, 0.0, warming_up=self.warming_up)
        change = 1 - reading.value / mean if self.direction == "drop" else reading.value / mean - 1
        return Verdict(True, change >= self.threshold, reading.value, mean, change)


# The same relative thresholds and volume floors as the detectors they stand against.
STATIC: dict[str, tuple[str, str, float, int]] = {
    "static_ctr_drop": ("ctr", "drop", 0.2, 200), "static_cvr_drop": ("cvr", "drop", 0.2, 200),
    "static_ctr_spike": ("ctr", "rise", 0.3, 200), "static_cvr_spike": ("cvr", "rise", 0.3, 200),
    "static_fallback": ("fallback_rate", "rise", 1.0, 200), "static_volume": ("exposures", "drop", 0.3, 1),
    "static_latency": ("latency_ms", "rise", 0.2, 30), "static_revenue": ("revenue_per_exposure", "rise", 0.3, 100),
}
STATIC_FOR_KPI = {"ctr": ("static_ctr_drop", "static_ctr_spike"), "cvr": ("static_cvr_drop", "static_cvr_spike"),
                  "fallback_rate": ("static_fallback",), "exposures": ("static_volume",),
                  "latency_ms": ("static_latency",), "revenue_per_exposure": ("static_revenue",)}


# ---------------------------------------------------------------------------------------------- the oracle


def oracle_power(label: Label, rates: dict[str, float], latency_cv: float) -> float:
    """The chance that the best test there is finds the label: an oracle that knows the series' true
    baseline, the label's start and its length, and tests the whole label at once (one-sided, exact
    binomial or Poisson, level `ORACLE_ALPHA`; the normal test for latency). No online detector can do
    much better, so a label the oracle misses is out of any detector's reach: the targets' scope.

    `rates` are the series' baseline ctr, cvr and fallback_rate; expected exposures are the label's.
    """
    n = sum(label.hourly)
    if label.family in ("feed_gap", "variant_suppression"):   # nothing at all where n exposures were expected
        return 1.0 if poisson.cdf(0, n) <= ORACLE_ALPHA else 0.0
    if label.family == "volume_drop":
        k = _lower_critical(poisson(n))
        return float(poisson.cdf(k, n * (1 - label.magnitude))) if k >= 0 else 0.0
    if label.family == "latency_regression":
        return float(norm.sf(norm.isf(ORACLE_ALPHA) - label.magnitude * math.sqrt(n) / latency_cv))
    trials, p0 = round(n), rates[label.kpi]
    if trials == 0 or p0 <= 0:
        return 0.0
    if label.family == "spike":
        p1 = min(1.0, p0 * (1 + label.magnitude))
    elif label.family == "fallback_surge":
        p1 = label.magnitude                                   # the surge sets the fallback share
    else:
        p1 = p0 * (1 - label.magnitude)
    if p1 > p0:   # reject when X > isf: the least k with P(X > k) <= alpha under the baseline
        return float(binom.sf(binom.isf(ORACLE_ALPHA, trials, p0), trials, p1))
    k = _lower_critical(binom(trials, p0))
    return float(binom.cdf(k, trials, p1)) if k >= 0 else 0.0


def _lower_critical(null: Any) -> int:
    """The greatest k with P(X <= k) <= ORACLE_ALPHA under the frozen distribution `null` (-1 if none)."""
    k = int(null.ppf(ORACLE_ALPHA))       # the least k with cdf(k) >= alpha
    return k if null.cdf(k) <= ORACLE_ALPHA else k - 1


# ---------------------------------------------------------------------------------------------- one seed


@dataclass
class SeedResult:
    seed: int
    labels: list[Label]
    incidents: dict[str, list[tuple[str, str, int]]]   # detector -> (scope "series"/"initiative", key, hour)
    clean_hours: dict[str, int]                         # series -> clean hours after the warm-up
    sizes: dict[str, list[int]]                         # detector -> pickled bytes per instance
    warming: dict[str, list[str]]                       # detector -> series still warming up at the end
    series_initiative: dict[str, str]
    series_volume: dict[str, float]                     # series -> mean expected exposures per hour
    power: list[float] = field(default_factory=list)    # the oracle's chance to find each label
    seconds: dict[str, float] = field(default_factory=dict)


def _evaluate(detector: Any, observations: list[BucketObservation], policy: BreachPolicy, initiative: str,
              kind: str) -> list[int]:
    """Score then learn (healthy buckets only), through the breach policy; the hours incidents opened."""
    state, opened = BreachState(), []
    for hour, bucket in enumerate(observations):
        verdict = step(detector, bucket)
        if not verdict.scored:
            continue
        state, events = _observe(policy, state, initiative, kind, bucket.series, verdict.breached,
                                 bucket.bucket_start, bucket.bucket_end)
        opened += [hour for event in events if event.transition == "opened"]
    return opened


def _observe(policy: BreachPolicy, state: BreachState, initiative: str, kind: str, series: str, breached: bool,
             begin: Any, end: Any) -> tuple[BreachState, list[Any]]:
    evidence = Evidence(observed=0.0, expected=0.0, score=0.0, bucket_start=begin, bucket_end=end)
    # Kinds without a playbook yet take conversion_drop's: the policy only needs one to name its events.
    kind = kind if kind in PLAYBOOKS else "conversion_drop"
    return policy.observe(state, initiative=initiative, kind=kind, series=series, breached=breached,
                          evidence=evidence)


def run_seed(seed: int, days: int) -> SeedResult:
    clock = time.perf_counter()
    labels, latency, traffic = simulate_seed(seed, days)
    simulated = time.perf_counter() - clock
    result = detect_seed(seed, labels, latency, traffic)
    result.seconds["simulate+aggregate"] = simulated
    return result


def simulate_seed(seed: int, days: int) -> tuple[list[Label], dict[tuple[str, int], float], Traffic]:
    program = bench_program()
    injections, labels, latency = schedule(seed, days, program)
    spec = SimulationSpec(seed=seed, days=days, initiatives=program, injections=tuple(injections))
    return labels, latency, aggregate(spec)


def detect_seed(seed: int, labels: list[Label], latency: dict[tuple[str, int], float], traffic: Traffic,
                ) -> SeedResult:
    clock = time.perf_counter()
    program = bench_program()
    seconds: dict[str, float] = {}

    policy = BreachPolicy(BreachPolicyConfig())
    incidents: dict[str, list[tuple[str, str, int]]] = defaultdict(list)
    sizes: dict[str, list[int]] = defaultdict(list)
    warming: dict[str, list[str]] = defaultdict(list)
    series_initiative = {key: spec_.name for spec_ in program for key in spec_.series_keys()}
    warmup_end = WARMUP_DAYS * 24

    # Per series: every registered per-series detector and every static baseline.
    factories: dict[str, Any] = {name: factory for name, factory in CANDIDATES.items()
                                 if name not in PER_INITIATIVE and name not in UNIVARIATE_ONLY}
    factories.update({name: (lambda args=args: StaticThreshold(*args)) for name, args in STATIC.items()})
    initiative_exposures = {spec_.name: [sum(int(traffic.counters[key][hour][0]) for key in spec_.series_keys())
                                         for hour in range(traffic.hours)] for spec_ in program}
    for key, rows in traffic.counters.items():
        totals = initiative_exposures[series_initiative[key]]
        buckets = [observation(key, hour, row, latency.get((key, hour), 1.0), totals[hour])
                   for hour, row in enumerate(rows)]
        for name, factory in factories.items():
            detector = factory()
            opened = _evaluate(detector, buckets, policy, series_initiative[key], detector.kind)
            incidents[name] += [("series", key, hour) for hour in opened if hour >= warmup_end]
            sizes[name].append(len(pickle.dumps(detector)))
            if detector.warming_up:
                warming[name].append(key)

    # Per initiative: the multi-metric detector over the initiative's total.
    for spec_ in program:
        totals = []
        for hour in range(traffic.hours):
            total = [0, 0, 0, 0.0, 0, 0.0]
            for key in spec_.series_keys():
                row = traffic.counters[key][hour]
                for i in range(5):
                    total[i] += row[i]
                total[5] += row[5] * latency.get((key, hour), 1.0)
            totals.append(observation(spec_.name, hour, total))
        for name in PER_INITIATIVE:
            detector = DETECTORS[name]()
            opened = _evaluate(detector, totals, policy, spec_.name, detector.kind)
            incidents[name] += [("initiative", spec_.name, hour) for hour in opened if hour >= warmup_end]
            sizes[name].append(len(pickle.dumps(detector)))

    # Per variant group: each variant's share of the group's exposures against its allocation.
    for spec_ in program:
        if not spec_.experiment:
            continue
        allocation = dict(zip(spec_.variants, spec_.allocation))
        for profile in spec_.profiles:
            for channel in spec_.channels:
                keys = {v: build_key(spec_.name, profile, channel, v) for v in spec_.variants}
                detector = VariantShareDetector(allocation)
                states = {v: BreachState() for v in keys}
                for hour in range(traffic.hours):
                    counts = {v: int(traffic.counters[k][hour][0]) for v, k in keys.items()}
                    verdicts = detector.score_one(counts)
                    detector.learn_one(counts)
                    begin = DEFAULT_START + timedelta(hours=hour)
                    for v, verdict in verdicts.items():
                        if not verdict.scored:
                            continue
                        states[v], events = _observe(policy, states[v], spec_.name, detector.kind, keys[v],
                                                     verdict.breached, begin, begin + timedelta(hours=1))
                        if hour >= warmup_end:
                            incidents["variant_share"] += [("series", keys[v], hour) for e in events
                                                           if e.transition == "opened"]

    # Per feed (engagement x initiative): the freshness check every 5 minutes of event time.
    trough = min(_HOURLY_FACTORS)
    objectives = {s.name: objective_for_rate(s.exposures_per_hour * trough) for s in program}
    feed_states = {s.name: BreachState() for s in program}
    for at, last_seen in traffic.ticks:
        now = DEFAULT_START + timedelta(seconds=at)
        seen = {feed: None if t is None else DEFAULT_START + timedelta(seconds=t) for feed, t in last_seen.items()}
        for feed, verdict in check_freshness(seen, now, objectives).items():
            if not verdict.scored:
                continue
            feed_states[feed], events = _observe(policy, feed_states[feed], feed, FRESHNESS_KIND, feed,
                                                 verdict.breached, now - timedelta(seconds=TICK_SECONDS), now)
            hour = (at - TICK_SECONDS) // HOUR
            if hour >= warmup_end:
                incidents["freshness"] += [("initiative", feed, hour) for e in events if e.transition == "opened"]

    seconds["detectors"] = time.perf_counter() - clock
    volume = {key: spec_.exposures_per_hour * spec_.exposure_share(*SeriesKey.parse(key)[1:])
              for spec_ in program for key in spec_.series_keys()}
    # The oracle's baselines: each series' rates over the clean warm-up days.
    power = []
    for label in labels:
        key = label.series[0]
        exposures, clicks, conversions, _, fallbacks, _ = (sum(row[i] for row in traffic.counters[key][:warmup_end])
                                                           for i in range(6))
        rates = {"ctr": clicks / exposures, "cvr": conversions / exposures, "fallback_rate": fallbacks / exposures}
        spec_ = next(s for s in program if s.name == label.initiative)
        power.append(oracle_power(label, rates, math.sqrt(math.expm1(spec_.latency_sigma ** 2))))
    return SeedResult(seed, labels, dict(incidents), _clean_hours(labels, traffic, warmup_end), dict(sizes),
                      dict(warming), series_initiative, volume, power, seconds)


_HOURLY_FACTORS = [traffic_factor(DEFAULT_START + timedelta(hours=h)) for h in range(24 * 7)]


def _clean_hours(labels: list[Label], traffic: Traffic, warmup_end: int) -> dict[str, int]:
    covered = {(key, hour) for label in labels for key in label.series
               for hour in range(label.start, label.end + GRACE)}
    return {key: sum(1 for hour in range(warmup_end, traffic.hours) if (key, hour) not in covered)
            for key in traffic.counters}


# ---------------------------------------------------------------------------------------------- scoring


@dataclass
class Score:
    labels: int
    detected: int
    true_alerts: int
    false_alerts: int
    delays: list[int]

    @property
    def recall(self) -> float:
        return self.detected / self.labels if self.labels else 0.0

    @property
    def precision(self) -> float:
        alerts = self.true_alerts + self.false_alerts
        return self.true_alerts / alerts if alerts else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def delay(self) -> float:
        return statistics.median(self.delays) if self.delays else math.nan


class Matcher:
    """Incidents against labels: which label each incident matches, and the first incident of each label.

    `keep` restricts both to a set of series (an initiative-wide label or incident
    is kept when all its initiative's series are).
    """

    def __init__(self, results: list[SeedResult], keep: set[str] | None = None, detectable: bool = False) -> None:
        def kept(scope: str, result: SeedResult) -> bool:
            keys = [k for k, i in result.series_initiative.items() if scope in (k, i)]
            return keep is None or all(k in keep for k in keys)

        chosen = [(label, power) for result in results for label, power in zip(result.labels, result.power)
                  if all(kept(key, result) for key in label.series)]
        self.labels = [label for label, _ in chosen]
        self.power = [power for _, power in chosen]
        # The labels scored: all, or (`detectable`) those the oracle finds with probability >= DETECTABLE.
        # An alert matching only a label out of scope is then neither a hit nor a false alert.
        self.scope = {i for i, power in enumerate(self.power) if not detectable or power >= DETECTABLE}
        self.clean_days = sum(hours for result in results for key, hours in result.clean_hours.items()
                              if keep is None or key in keep) / 24
        by_scope: dict[tuple[int, str], list[int]] = defaultdict(list)
        for index, label in enumerate(self.labels):
            for scope in dict.fromkeys((label.initiative, *label.series)):
                by_scope[(label.seed, scope)].append(index)
        # detector -> (hour opened, indices of the labels it matches) per incident
        self.alerts: dict[str, list[tuple[int, tuple[int, ...]]]] = defaultdict(list)
        for result in results:
            for name, found in result.incidents.items():
                for _, scope, hour in found:
                    if not kept(scope, result):
                        continue
                    matched = tuple(i for i in by_scope[(result.seed, scope)]
                                    if self.labels[i].start <= hour < self.labels[i].end + GRACE)
                    self.alerts[name].append((hour, matched))

    def false_alerts(self, detectors: tuple[str, ...]) -> int:
        return sum(1 for name in detectors for _, matched in self.alerts.get(name, []) if not matched)

    def false_rate(self, detectors: tuple[str, ...]) -> float:
        """False alerts per 100 clean series-days."""
        return 100 * self.false_alerts(detectors) / self.clean_days if self.clean_days else math.nan

    def delays(self, detectors: tuple[str, ...]) -> dict[int, int]:
        """Label index -> buckets from its start to the first incident matching it."""
        first: dict[int, int] = {}
        for name in detectors:
            for hour, matched in self.alerts.get(name, []):
                for i in matched:
                    first[i] = min(first.get(i, hour - self.labels[i].start), hour - self.labels[i].start)
        return first

    def score(self, detectors: tuple[str, ...], kinds: set[str] | None = None) -> Score:
        """Labels of `kinds` (None: all) against the union of `detectors`' incidents."""
        wanted = {i for i, label in enumerate(self.labels) if i in self.scope and (kinds is None or label.kind in kinds)}
        true_alerts = sum(1 for name in detectors for _, matched in self.alerts.get(name, [])
                          if any(i in wanted for i in matched))
        first = {i: delay for i, delay in self.delays(detectors).items() if i in wanted}
        return Score(len(wanted), len(first), true_alerts, self.false_alerts(detectors), sorted(first.values()))

    def kinds(self) -> list[str]:
        return sorted({self.labels[i].kind for i in self.scope}, key=lambda k: (k.split("@")[0], len(k), k))

    def dips(self) -> tuple[list[int], dict[int, int]]:
        """The dips of 20 % and more, and the monitor's delay for each one it found."""
        dips = [i for i, label in enumerate(self.labels)
                if i in self.scope and label.family in DIP_FAMILIES and label.magnitude >= 0.2]
        delays: dict[int, int] = {}
        for family in DIP_FAMILIES:
            delays.update(self.delays(monitor_for(family)))
        return dips, {i: delays[i] for i in dips if i in delays}

    def targets(self, per_series_bytes: float) -> list[tuple[str, bool, str]]:
        overall = self.score(monitor_for(None))
        dips, found = self.dips()
        recall = len(found) / len(dips) if dips else math.nan
        delay = statistics.median(found.values()) if found else math.nan
        false_rate = self.false_rate(monitor_for(None))
        losing = []
        for kind in self.kinds():
            family = kind.split("@")[0]
            mine, static = self.score(monitor_for(family), {kind}).f1, self.score(static_for(family), {kind}).f1
            if mine <= static:
                losing.append(f"{kind} {mine:.2f} vs {static:.2f}")
        return [
            ("F1 >= 0.9 overall", overall.f1 >= 0.9, f"F1 {overall.f1:.3f}"),
            ("dips >= 20 %: recall >= 0.95, median delay <= 2", recall >= 0.95 and delay <= 2,
             f"recall {recall:.3f} ({len(found)}/{len(dips)}), median delay {delay:.1f}"),
            ("<= 1 false alert per 100 series-days", false_rate <= 1, f"{false_rate:.2f}"),
            ("state <= 16 KB per series", per_series_bytes <= 16 * 1024, f"{per_series_bytes / 1024:.1f} KB"),
            ("beats the static baseline's F1 on every kind", not losing, "; ".join(losing) or "all kinds"),
        ]


def monitor_for(family: str | None) -> tuple[str, ...]:
    """The monitor's detectors for a family (None: all of them)."""
    families = [family] if family else list(FAMILY_KPIS)
    names: list[str] = []
    for fam in families:
        for kpi in FAMILY_KPIS[fam]:
            names += detector_for_kpi(kpi)
        names += FAMILY_EXTRA.get(fam, ())
    if family is None:
        names += [name for name in PER_INITIATIVE if name in _chosen_everywhere()]
    return tuple(dict.fromkeys(names))


def _chosen_everywhere() -> set[str]:
    return {name for kpi in ("ctr", "cvr", "revenue_per_exposure", "fallback_rate", "latency_ms", "exposures")
            for name in detector_for_kpi(kpi)}


def static_for(family: str | None) -> tuple[str, ...]:
    families = [family] if family else list(FAMILY_KPIS)
    return tuple(dict.fromkeys(name for fam in families for kpi in FAMILY_KPIS[fam] for name in STATIC_FOR_KPI[kpi]))


def _kpi_of(name: str) -> str | None:
    """The KPI a candidate answers for; a series' share of its initiative's exposures answers for volume."""
    detector = CANDIDATES[name]()
    kpi = "cvr" if isinstance(detector, ConversionDropDetector) else getattr(detector, "kpi", None)
    return "exposures" if kpi == "exposure_share" else kpi


def candidates_for(family: str) -> tuple[str, ...]:
    kpis = FAMILY_KPIS[family]
    names = [name for name in CANDIDATES if name not in UNIVARIATE_ONLY
             and (_kpi_of(name) in kpis or name in PER_INITIATIVE)]
    return tuple(names) + FAMILY_EXTRA.get(family, ())


# ---------------------------------------------------------------------------------------------- report


def _fmt(score: Score) -> str:
    delay = "-" if math.isnan(score.delay) else f"{score.delay:.0f}"
    return (f"{score.precision:6.2f} {score.recall:6.2f} {score.f1:6.2f} {delay:>6} "
            f"{score.detected:>4}/{score.labels:<4} {score.false_alerts:>5}")


def _short(score: Score) -> str:
    delay = "-" if math.isnan(score.delay) else f"{score.delay:.0f}"
    return f"{score.precision:5.2f} {score.recall:5.2f} {score.f1:5.2f} {delay:>3}"


def report(results: list[SeedResult], elapsed: float, days: int) -> None:
    matcher = Matcher(results)
    high = {key for key, volume in results[0].series_volume.items() if volume >= HIGH_VOLUME}
    scoped = Matcher(results, detectable=True)
    print(f"\n{len(results)} seeds x {days} days, {len(results[0].series_volume)} series "
          f"({len(high)} with >= {HIGH_VOLUME} exposures/hour), {len(matcher.labels)} labelled incidents, "
          f"{len(scoped.scope)} of them in reach (the oracle finds them with probability >= {DETECTABLE}), "
          f"{matcher.clean_days:.0f} clean series-days after a {WARMUP_DAYS}-day warm-up\n")
    print("In reach: an oracle that knows the true baseline, start and length of an incident and tests it "
          f"whole (exact one-sided test, level {ORACLE_ALPHA}) finds it with probability >= {DETECTABLE}. "
          "Per kind: labels in reach / all, the oracle's expected recall over all labels, and the monitor's "
          "recall over all labels:")
    for kind in matcher.kinds():
        family = kind.split("@")[0]
        indices = [i for i, label in enumerate(matcher.labels) if label.kind == kind]
        reach = sum(1 for i in indices if i in scoped.scope)
        oracle = statistics.fmean(matcher.power[i] for i in indices)
        print(f"  {kind:<22}{reach:>4}/{len(indices):<4} oracle {oracle:5.2f}  monitor "
              f"{matcher.score(monitor_for(family), {kind}).recall:5.2f}")
    print()
    header = f"{'kind':<22}{'detector':<24}{'prec':>6} {'recall':>6} {'F1':>6} {'delay':>6} {'found':>9} {'false':>5}"
    print(header)
    print("-" * len(header))
    for kind in matcher.kinds():
        family = kind.split("@")[0]
        rows = [(name, (name,)) for name in candidates_for(family)]
        rows += [("MONITOR", monitor_for(family)), ("STATIC", static_for(family))]
        for position, (name, detectors) in enumerate(rows):
            print(f"{kind if position == 0 else '':<22}{name:<24}{_fmt(matcher.score(detectors, {kind}))}")
        reach_score = scoped.score(monitor_for(family), {kind})
        if reach_score.labels:
            print(f"{'':<22}{'MONITOR in reach':<24}{_fmt(reach_score)}")
        print()
    for name, m in (("all labels", matcher), ("in reach", scoped)):
        print(f"{'ALL (' + name + ')':<22}{'MONITOR':<24}{_fmt(m.score(monitor_for(None)))}")
        print(f"{'':<22}{'STATIC':<24}{_fmt(m.score(static_for(None)))}")

    print("\nEvidence per KPI: each candidate over the kinds its KPI answers (all labels | in reach), "
          "precision recall F1 median-delay; * = the registry's choice. An initiative-wide "
          "detector's incident matches any label of its initiative, so its precision is flattering:")
    for kpi, families in KPI_FAMILIES.items():
        kinds = {k for k in matcher.kinds() if k.split("@")[0] in families}
        print(f"  {kpi} ({', '.join(sorted(kinds))}):")
        names = [n for n in CANDIDATES if n not in UNIVARIATE_ONLY and _kpi_of(n) == kpi]
        for name in (*names, *PER_INITIATIVE, *STATIC_FOR_KPI[kpi]):
            a, b = matcher.score((name,), kinds), scoped.score((name,), kinds)
            chosen = "*" if name in detector_for_kpi(kpi) else " "
            print(f"   {chosen}{name:<24}{_short(a)} | {_short(b)}")

    dips, found = matcher.dips()
    print("\nDips >= 20 % (ctr, conversion, volume) by expected exposures per series-hour at the dip's start "
          "(monitor):")
    for low, top in ((0, 100), (100, 300), (300, 1000), (1000, math.inf)):
        band = [i for i in dips if low <= matcher.labels[i].volume < top]
        if band:
            hits = sorted(found[i] for i in band if i in found)
            median = f"{statistics.median(hits):.1f}" if hits else "-"
            print(f"  {low:>5} to {top:<5} recall {len(hits) / len(band):.2f} ({len(hits)}/{len(band)}), "
                  f"median delay {median}")

    high_matcher = Matcher(results, keep=high)
    print(f"\nFalse alerts per 100 clean series-days ({matcher.clean_days:.0f} all, "
          f"{high_matcher.clean_days:.0f} >= {HIGH_VOLUME}/h):")
    for name in sorted(set(matcher.alerts) | set(monitor_for(None))):
        print(f"  {name:<24}{matcher.false_rate((name,)):7.2f}{high_matcher.false_rate((name,)):7.2f}")
    for name, detectors in (("MONITOR", monitor_for(None)), ("STATIC", static_for(None))):
        print(f"  {name:<24}{matcher.false_rate(detectors):7.2f}{high_matcher.false_rate(detectors):7.2f}")

    print("\nPickled state, mean bytes per instance (per series unless noted):")
    sizes: dict[str, list[int]] = defaultdict(list)
    for result in results:
        for name, values in result.sizes.items():
            sizes[name] += values
    for name in sorted(sizes):
        print(f"  {name:<24}{statistics.fmean(sizes[name]):9.0f}{' (per initiative)' if name in PER_INITIATIVE else ''}")
    per_series = sum(statistics.fmean(sizes[name]) for name in _chosen_everywhere() if name not in PER_INITIATIVE)
    print(f"  {'MONITOR per series':<24}{per_series:9.0f}  (its per-series detectors together)")

    warming: dict[str, set[str]] = defaultdict(set)
    for result in results:
        for name, keys in result.warming.items():
            warming[name].update(keys)
    still = sorted({key for name in _chosen_everywhere() for key in warming.get(name, ())})
    print(f"\nStill warming up at the end of the run (monitor's detectors): {len(still)} series")
    for name in sorted(_chosen_everywhere()):
        if warming.get(name):
            print(f"  {name:<24}{len(warming[name]):3} series, the busiest "
                  f"{max(results[0].series_volume[k] for k in warming[name]):.0f} exposures/hour on average")

    for name, m in (("all labels", matcher), (f"labels in reach (oracle >= {DETECTABLE})", scoped)):
        print(f"\nTargets (issue 3), {name}:")
        for what, ok, figure in m.targets(per_series):
            print(f"  {'PASS' if ok else 'FAIL'}  {what:<50}{figure}")
    seconds: dict[str, float] = defaultdict(float)
    for result in results:
        for part, value in result.seconds.items():
            seconds[part] += value
    print(f"\nWall time {elapsed:.0f} s; summed over seeds: "
          + ", ".join(f"{part} {value:.0f} s" for part, value in seconds.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=8, help="simulated runs (default 8)")
    parser.add_argument("--days", type=int, default=10, help=f"days per run, the first {WARMUP_DAYS} clean")
    parser.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1), help="parallel processes")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "detection.md",
                        help="where to write the Markdown page (default docs/benchmarks/detection.md)")
    args = parser.parse_args(argv)
    if args.days <= WARMUP_DAYS + 1 or args.seeds < 1:
        parser.error(f"--days must exceed {WARMUP_DAYS + 1} and --seeds be positive")
    started = time.perf_counter()
    seeds = list(range(1, args.seeds + 1))
    if args.jobs > 1:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            results = list(pool.map(run_seed, seeds, [args.days] * len(seeds)))
    else:
        results = [run_seed(seed, args.days) for seed in seeds]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        report(results, time.perf_counter() - started, args.days)
    text = printed.getvalue()
    sys.stdout.write(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(f"# Detection on the simulator (`bench/detection.py --seeds {args.seeds} --days {args.days}`)\n\n"
                        "Written by the benchmark; the figures behind the registry's choice per KPI "
                        "(`detectors/registry.py`, `detectors/README.md`).\n\n```\n" + text.strip("\n") + "\n```\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
