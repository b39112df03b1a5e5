"""Run a registered detector over a univariate series, point by point (`pmon detect --csv`).

Online, as the monitor would: each point is scored against what the detector
learnt from the points before it, then learnt only if it did not alert (an
ongoing anomaly never becomes the new normal, as in `detectors.evaluation`).
A point is one bucket as wide as the gap to the next point (the last one as
wide as the gap before it; one hour for a series of one point), so a daily or
a 5-minute series keeps its own season of 24 buckets.

The value is read as a generic mean KPI (``BucketObservation.value``) by the
detectors that test a mean; detectors that test a count (the volume
detectors) read it as a count, which must be a non-negative integer; detectors
of rates (which need exposures *and* successes) and the per-initiative
multi-metric detector cannot run on one number and are refused.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta

from detectors.base import BucketDetector, BucketObservation, step
from detectors.exceptions import InvalidObservation
from detectors.kpis import KPIS
from detectors.registry import DETECTORS

DEFAULT_DETECTOR = "seasonal_profile"


def univariate_detectors() -> list[str]:
    """The registered detectors `run_series` accepts."""
    return sorted(name for name in DETECTORS if _evidence(name) in ("mean", "poisson"))


def _evidence(name: str) -> str | None:
    kpi = getattr(DETECTORS[name](), "kpi", None)
    return KPIS[kpi].evidence if kpi in KPIS else None


def _build(name: str) -> tuple[BucketDetector, bool]:
    """The detector, and whether it reads the value as a count."""
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; known: {sorted(DETECTORS)}")
    evidence = _evidence(name)
    if evidence == "mean":
        return DETECTORS[name](kpi="value", min_count=1), False   # a value is a mean of one item
    if evidence == "poisson":
        return DETECTORS[name](), True
    raise ValueError(f"detector {name!r} needs more than one number per bucket; "
                     f"for a univariate series use one of {univariate_detectors()}")


def run_series(rows: Iterable[tuple[datetime, float]], detector_name: str = DEFAULT_DETECTOR,
               ) -> Iterator[tuple[datetime, float, float, bool]]:
    """Yield (timestamp, value, anomaly_score, alert) for each row, in order.

    Timestamps must increase. The score is the detector's (a relative distance
    to the expectation for most); it is 0.0 while the detector warms up.

    >>> import math
    >>> from datetime import timezone
    >>> t0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
    >>> rows = [(t0 + timedelta(hours=h), 100 + 30 * math.sin(2 * math.pi * h / 24) + (h % 5 - 2))
    ...         for h in range(24 * 5)]
    >>> rows[100] = (rows[100][0], 40.0)                      # a dip
    >>> alerts = [t.isoformat() for t, _, _, alert in run_series(rows, "seasonal_profile") if alert]
    >>> alerts
    ['2026-11-05T04:00:00+00:00']
    """
    detector, as_count = _build(detector_name)
    points = iter(rows)
    current = next(points, None)
    previous: datetime | None = None
    while current is not None:
        when, value = current
        following = next(points, None)
        if following is not None and following[0] <= when:
            raise InvalidObservation(f"timestamps must increase: {following[0]} after {when}")
        width = (following[0] - when if following is not None
                 else when - previous if previous is not None else timedelta(hours=1))
        observation = _observation(detector_name, when, width, value, as_count)
        verdict = step(detector, observation)
        yield when, value, verdict.score, verdict.breached
        previous, current = when, following


def _observation(series: str, when: datetime, width: timedelta, value: float,
                 as_count: bool) -> BucketObservation:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidObservation(f"value at {when} is not a finite number: {value!r}")
    if as_count:
        if value < 0 or value != int(value):
            raise InvalidObservation(f"a count detector needs non-negative whole numbers, got {value} at {when}")
        return BucketObservation(series, when, when + width, int(value))
    return BucketObservation(series, when, when + width, 0, value=float(value))
