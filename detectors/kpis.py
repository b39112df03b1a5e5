"""The KPIs of a closed bucket, each with the kind of evidence behind it.

A KPI is only as trustworthy as the volume behind it: a click-through rate over
12 exposures is not one over 12,000. So a reading carries the numbers a test
needs, not just the ratio:

* ``binomial`` — a rate: ``successes`` out of ``n`` trials (clicks, conversions
  or fallbacks out of exposures). Tested with the binomial tail.
* ``poisson`` — a count (exposures): ``total`` events, ``n`` = 1. Tested with
  the Poisson tail around a forecast.
* ``mean`` — a mean over ``n`` items (revenue or decision latency per
  exposure): ``total`` is the sum. Its spread is estimated from history, and
  the standard error shrinks as 1 / sqrt(n).

Clicks and conversions are counted by their own event time, so a few may land in
the bucket after their exposure's: a rate's successes are capped at its trials.

>>> from datetime import datetime, timedelta, timezone
>>> t0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
>>> bucket = BucketObservation("s", t0, t0 + timedelta(hours=1), 1000, clicks=120, conversions=80,
...                            revenue=2400.0, fallbacks=20, latency_ms_sum=44000.0)
>>> {name: round(read(bucket, name).value, 3) for name in KPI_NAMES}
{'ctr': 0.12, 'cvr': 0.08, 'revenue_per_exposure': 2.4, 'fallback_rate': 0.02, 'latency_ms': 44.0, 'exposures': 1000.0}
>>> read(bucket, "ctr")
Reading(kpi='ctr', evidence='binomial', value=0.12, total=120.0, n=1000)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from detectors.base import BucketObservation
from detectors.exceptions import InvalidObservation

Evidence = Literal["binomial", "poisson", "mean"]


@dataclass(frozen=True, slots=True)
class Reading:
    """One KPI of one bucket: ``value`` = ``total`` / ``n`` (``total`` itself for a count)."""

    kpi: str
    evidence: Evidence
    value: float
    total: float
    n: int


@dataclass(frozen=True, slots=True)
class Kpi:
    name: str
    evidence: Evidence
    description: str
    # (total, n) of a valid observation; n == 0 means the bucket says nothing about the KPI.
    parts: Callable[[BucketObservation], tuple[float, int]]


KPIS: dict[str, Kpi] = {
    kpi.name: kpi
    for kpi in (
        Kpi(
            "ctr",
            "binomial",
            "click-through rate: clicks / exposures",
            lambda o: (min(o.clicks, o.exposures), o.exposures),
        ),
        Kpi(
            "cvr",
            "binomial",
            "conversion rate: conversions / exposures",
            lambda o: (min(o.conversions, o.exposures), o.exposures),
        ),
        Kpi("revenue_per_exposure", "mean", "revenue / exposures", lambda o: (o.revenue, o.exposures)),
        Kpi("fallback_rate", "binomial", "fallbacks / exposures", lambda o: (o.fallbacks, o.exposures)),
        Kpi(
            "latency_ms",
            "mean",
            "decision latency: latency_ms_sum / exposures",
            lambda o: (o.latency_ms_sum, o.exposures),
        ),
        Kpi("exposures", "poisson", "exposure volume", lambda o: (float(o.exposures), 1)),
        Kpi(
            "value",
            "mean",
            "a univariate series' value (backtests)",
            lambda o: (0.0, 0) if o.value is None else (o.value, 1),
        ),
        Kpi(
            "exposure_share",
            "binomial",
            "the series' share of its initiative's exposures",
            lambda o: (float(o.exposures), o.group_exposures),
        ),
    )
}
KPI_NAMES: tuple[str, ...] = tuple(name for name in KPIS if name not in ("value", "exposure_share"))
"""The six KPIs of a personalization series (``value`` is for univariate backtests only, ``exposure_share``
for the volume share detector: it needs the initiative's exposures)."""


def validate(observation: BucketObservation) -> None:
    """Raise InvalidObservation for what no bucket of real traffic can hold.

    Negative counts are refused by BucketObservation itself; this checks what it
    does not: the float counters, and fallbacks and latency, which are counted on
    exposures and so cannot exist without them.

    >>> from datetime import datetime, timedelta, timezone
    >>> t0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
    >>> validate(BucketObservation("s", t0, t0 + timedelta(hours=1), 10, fallbacks=11))
    Traceback (most recent call last):
    ...
    detectors.exceptions.InvalidObservation: fallbacks=11 above exposures=10 in s
    """
    o = observation
    if not isinstance(o, BucketObservation):
        raise InvalidObservation(f"expected a BucketObservation, got {type(o).__name__}")
    for name in ("revenue", "latency_ms_sum"):
        value = getattr(o, name)
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise InvalidObservation(f"{name}={value!r} is not a finite non-negative number in {o.series}")
    if o.fallbacks > o.exposures:
        raise InvalidObservation(f"fallbacks={o.fallbacks} above exposures={o.exposures} in {o.series}")
    if o.group_exposures and o.exposures > o.group_exposures:
        raise InvalidObservation(f"exposures={o.exposures} above its initiative's {o.group_exposures} in {o.series}")
    if o.exposures == 0 and o.latency_ms_sum > 0:
        raise InvalidObservation(f"latency without exposures in {o.series}")
    if o.value is not None and (not isinstance(o.value, (int, float)) or not math.isfinite(o.value)):
        raise InvalidObservation(f"value={o.value!r} is not a finite number in {o.series}")


def read(observation: BucketObservation, kpi: str) -> Reading | None:
    """The KPI of a validated bucket, or None when the bucket has nothing to say about it (no exposures)."""
    spec = KPIS[kpi]
    validate(observation)
    total, n = spec.parts(observation)
    if n <= 0:
        return None
    value = total if spec.evidence == "poisson" else total / n
    return Reading(kpi, spec.evidence, float(value), float(total), n)


def read_all(observation: BucketObservation) -> dict[str, Reading | None]:
    """Every KPI of a bucket (``value`` excluded)."""
    return {name: read(observation, name) for name in KPI_NAMES}


def check_kpi(kpi: str, allowed: tuple[Evidence, ...]) -> Kpi:
    """The KPI named `kpi`, if its evidence is one a detector can test; ValueError otherwise."""
    spec = KPIS.get(kpi)
    if spec is None:
        raise ValueError(f"unknown KPI {kpi!r}; known: {sorted(KPIS)}")
    if spec.evidence not in allowed:
        raise ValueError(f"KPI {kpi!r} is {spec.evidence} evidence; this detector tests {', '.join(allowed)}")
    return spec
