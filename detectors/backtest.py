"""Run a registered detector over a univariate series, point by point (`pmon detect --csv`).

Online, as the monitor would: each point is scored against what the detector
learnt from the points before it, then learnt only if it did not alert (an
ongoing anomaly never becomes the new normal, as in `detectors.evaluation`).
A point is one bucket as wide as the gap to the next point (the last one as
wide as the gap before it; one hour for a series of one point), so a daily or
a 5-minute series keeps its own season of 24 buckets.

`prepare_series` takes rows as they come (out of order, repeated timestamps,
blank values) and says what it did with them: it sorts them, averages the
values of a repeated timestamp, drops a blank or NaN value (a missing point),
and infers the sampling interval (the median gap) and its irregular gaps.

The default, `robust_series` (`detectors.robust_series`), needs no assumed
season or scale; its alert is the first breach of an episode. The other
detectors' alert is their breach.

The value is read as a generic mean KPI (``BucketObservation.value``) by the
detectors that test a mean; detectors that test a count (the volume
detectors) read it as a count, which must be a non-negative integer; detectors
of rates (which need exposures *and* successes) and the per-initiative
multi-metric detector cannot run on one number and are refused.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from detectors.base import BucketDetector, BucketObservation, step
from detectors.exceptions import InvalidObservation
from detectors.kpis import KPIS
from detectors.registry import DETECTORS
from detectors.robust_series import RobustSeriesDetector

DEFAULT_DETECTOR = "robust_series"


def univariate_detectors() -> list[str]:
    """The registered detectors `run_series` accepts."""
    return sorted(name for name in DETECTORS if _evidence(name) in ("mean", "poisson"))


def _evidence(name: str) -> str | None:
    kpi = getattr(DETECTORS[name](), "kpi", None)
    return KPIS[kpi].evidence if kpi in KPIS else None


def _build(name: str, warmup_points: int | None) -> tuple[BucketDetector, bool]:
    """The detector, and whether it reads the value as a count."""
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; known: {sorted(DETECTORS)}")
    if isinstance(DETECTORS[name](), RobustSeriesDetector):
        return DETECTORS[name](**({} if warmup_points is None else {"warmup_points": warmup_points})), False
    evidence = _evidence(name)
    if evidence == "mean":
        return DETECTORS[name](kpi="value", min_count=1), False  # a value is a mean of one item
    if evidence == "poisson":
        return DETECTORS[name](), True
    raise ValueError(
        f"detector {name!r} needs more than one number per bucket; "
        f"for a univariate series use one of {univariate_detectors()}"
    )


def run_series(
    rows: Iterable[tuple[datetime, float]], detector_name: str = DEFAULT_DETECTOR, warmup_points: int | None = None
) -> Iterator[tuple[datetime, float, float, bool]]:
    """Yield (timestamp, value, anomaly_score, alert) for each row, in order.

    Timestamps must increase (`prepare_series` makes them). The score is the
    detector's: a calibrated score in [0, 1] for `robust_series` (whose
    warm-up is `warmup_points`), a relative distance to the expectation for
    most others; it is 0.0 while the detector warms up.

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
    detector, as_count = _build(detector_name, warmup_points)
    points = iter(rows)
    current = next(points, None)
    previous: datetime | None = None
    while current is not None:
        when, value = current
        following = next(points, None)
        if following is not None and following[0] <= when:
            raise InvalidObservation(f"timestamps must increase: {following[0]} after {when}")
        width = (
            following[0] - when
            if following is not None
            else when - previous
            if previous is not None
            else timedelta(hours=1)
        )
        observation = _observation(detector_name, when, width, value, as_count)
        verdict = step(detector, observation)
        yield when, value, verdict.score, bool(verdict.detail.get("alert", verdict.breached))
        previous, current = when, following


def _observation(series: str, when: datetime, width: timedelta, value: float, as_count: bool) -> BucketObservation:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidObservation(f"value at {when} is not a finite number: {value!r}")
    if as_count:
        if value < 0 or value != int(value):
            raise InvalidObservation(f"a count detector needs non-negative whole numbers, got {value} at {when}")
        return BucketObservation(series, when, when + width, int(value))
    return BucketObservation(series, when, when + width, 0, value=float(value))


@dataclass(frozen=True)
class SeriesReport:
    """What `prepare_series` found and did."""

    rows: int  # rows read
    points: int  # points left: one per timestamp, with a value
    repeated: int  # rows whose timestamp an earlier row had (their values averaged)
    out_of_order: int  # rows earlier than the row before them (sorted)
    missing_values: int  # rows with a blank or NaN value (dropped)
    interval: timedelta | None  # the median gap
    irregular_gaps: int  # gaps more than 1.5 intervals or less than 0.5

    def describe(self, warmup_points: int | None = None) -> str:
        """One line for a person.

        >>> SeriesReport(5, 4, 1, 1, 0, timedelta(minutes=5), 0).describe(12)
        '5 rows, 4 points; 1 repeated timestamps (values averaged); 1 out of order (sorted); interval 0:05:00; warm-up 12 points'
        """  # noqa: E501 - doctest output, on one line as Python prints it
        parts = [f"{self.rows} rows, {self.points} points"]
        if self.repeated:
            parts.append(f"{self.repeated} repeated timestamps (values averaged)")
        if self.out_of_order:
            parts.append(f"{self.out_of_order} out of order (sorted)")
        if self.missing_values:
            parts.append(f"{self.missing_values} blank or NaN values (dropped)")
        parts.append(f"interval {self.interval}" if self.interval else "interval unknown (one point)")
        if self.irregular_gaps:
            parts.append(f"{self.irregular_gaps} irregular gaps")
        if warmup_points is not None:
            parts.append(f"warm-up {warmup_points} points")
        return "; ".join(parts)


def prepare_series(rows: Iterable[tuple[datetime, float | None]]) -> tuple[list[tuple[datetime, float]], SeriesReport]:
    """Rows as they come, made into a series `run_series` takes, and what was done to them.

    >>> from datetime import timezone
    >>> t0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
    >>> rows = [(t0, 1.0), (t0 + timedelta(hours=2), 3.0), (t0 + timedelta(hours=1), 2.0),
    ...         (t0 + timedelta(hours=1), 4.0), (t0 + timedelta(hours=3), None)]
    >>> points, report = prepare_series(rows)
    >>> [v for _, v in points], report.repeated, report.out_of_order, report.missing_values, report.interval
    ([1.0, 3.0, 3.0], 1, 1, 1, datetime.timedelta(seconds=3600))
    """
    sums: dict[datetime, list[float]] = {}
    count = out_of_order = missing = repeated = 0
    previous: datetime | None = None
    for when, value in rows:
        count += 1
        if previous is not None and when < previous:
            out_of_order += 1
        previous = when
        if value is None or (isinstance(value, float) and math.isnan(value)):
            missing += 1
            continue
        if not math.isfinite(value):
            raise InvalidObservation(f"value at {when} is not a finite number: {value!r}")
        if when in sums:
            repeated += 1
            sums[when][0] += value
            sums[when][1] += 1
        else:
            sums[when] = [value, 1]
    points = [(when, total / n) for when, (total, n) in sorted(sums.items())]
    gaps = [(b[0] - a[0]) for a, b in itertools.pairwise(points)]
    interval = statistics.median(gaps) if gaps else None  # type: ignore[type-var]  # timedeltas sort and average
    irregular = sum(1 for gap in gaps if interval and not 0.5 * interval <= gap <= 1.5 * interval)
    return points, SeriesReport(count, len(points), repeated, out_of_order, missing, interval, irregular)
