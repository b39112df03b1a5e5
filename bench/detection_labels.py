"""The detection benchmark's labels: the incidents it plants in simulated traffic, and the oracle that says
which of them any test could find (`bench/detection.py` runs them through the product and scores them).

Labels are planned before the simulation runs (`schedule`) and become `simulation.simulator.Injection`s, except
latency regressions, which the simulator has no kind for: `with_latency` raises the decision latency of the
labelled series' exposures in the records themselves, before the pipeline sees them.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from scipy.stats import binom, norm, poisson

from incidents.series import SeriesKey, build_key
from simulation.simulator import (
    DEFAULT_START,
    InitiativeSpec,
    Injection,
    SimulatedRecord,
    default_program,
    traffic_factor,
)

WARMUP_DAYS = 3
SLOT_HOURS = 12
GRACE = 3               # buckets after a label's end in which an incident still matches it
HOUR = 3600

# (family, magnitude, hours): the series-level incidents, cycled through in a shuffled order.
SERIES_KINDS: tuple[tuple[str, float, int], ...] = (
    ("ctr_drop", 0.1, 6), ("ctr_drop", 0.2, 6), ("ctr_drop", 0.4, 6),
    ("conversion_drop", 0.1, 6), ("conversion_drop", 0.2, 6), ("conversion_drop", 0.4, 6),
    ("spike", 0.5, 4), ("volume_drop", 0.5, 5), ("fallback_surge", 0.15, 4),
    ("latency_regression", 0.4, 5), ("level_shift", 0.15, 30),
)
# The KPI each simulated kind moves; a spike moves clicks and conversions, the oracle tests clicks.
INJECTED_KPI = {"ctr_drop": "ctr", "conversion_drop": "cvr", "spike": "ctr", "volume_drop": "exposures",
                "fallback_surge": "fallback_rate"}
ORACLE_ALPHA = 0.001    # the oracle's one-sided level: the breach policy's two breaches at 0.005 are ~1e-4 per span
DETECTABLE = 0.95       # a label is in the targets' scope when the oracle finds it with at least this probability


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
    """Labelled incidents in 12-hour slots after the warm-up; at most one at a time per series.

    Returns the simulator's injections, the labels, and the latency regressions as (series, hour of the run)
    -> latency multiplier (for `with_latency`).
    """
    rng = random.Random(f"bench-schedule:{seed}")
    slots = (days - WARMUP_DAYS) * 24 // SLOT_HOURS
    injections: list[Injection] = []
    labels: list[Label] = []
    latency: dict[tuple[str, int], float] = {}
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


def with_latency(records: Iterable[SimulatedRecord], latency: dict[tuple[str, int], float]
                 ) -> Iterator[SimulatedRecord]:
    """The records, with the decision latency of each labelled series' exposures raised during its regression."""
    start = DEFAULT_START.timestamp()
    for record in records:
        event: Any = record.event
        if record.topic == "engagement" and event.event_type == "exposure":
            key = build_key(event.initiative, event.profile, event.channel, event.variant)
            factor = latency.get((key, int((event.event_time.timestamp() - start) // HOUR)))
            if factor is not None:
                record = SimulatedRecord(record.topic, record.key, event.model_copy(
                    update={"decision_latency_ms": event.decision_latency_ms * factor}))
        yield record


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
