"""A KPI with a daily cycle against its one-step seasonal forecast, weighted by volume.

Exposure volume swings from ~0.3 to ~1.8 times its daily mean, so a trailing
mean is the wrong expectation at every hour; a seasonal forecast
(`detectors.forecasters`) is the right one. The observed value is then tested
against the forecast with the test its evidence calls for:

* a count (exposures): the Poisson tail, P(X <= observed) for a drop or
  P(X >= observed) for a rise, with the forecast as the mean. Zero exposures
  against a forecast of 4 is not news (p = 0.018); against 400 it is. A
  forecast is not exact, so a count varies more than Poisson around it: the
  dispersion (variance / mean, an exponentially weighted mean of
  (observed - forecast)^2 / forecast over the healthy buckets) turns the Poisson
  into the negative binomial of the same mean and that variance when above 1.
  Without it, a forecast that one noisy first day put 40 % too high at 9 am
  breaches every morning, and is never corrected since breaches are not learnt;
* a mean over n items (decision latency, revenue per exposure, a backtested
  value): a z-test, z = (mean - forecast) / sqrt(s2 / n), where s2, the spread
  of one item, is an exponentially weighted mean of n x residual^2 over the
  healthy buckets (a bucket mean over n items varies as s2 / n).

A bucket breaches when the test's tail is below `significance` *and* the
relative distance to the forecast is at least `alert_threshold`; the second
condition keeps a highly significant but harmless 5 % wobble of a
high-volume series quiet (the day-of-week effect, for one).
"""

from __future__ import annotations

import math
from datetime import timezone
from typing import ClassVar, Literal

from detectors.base import BucketDetector, BucketObservation, Verdict
from detectors.forecasters import FORECASTERS, make_forecaster
from detectors.kpis import check_kpi, read
from detectors.rate_change import OUTLIER_Z2
from detectors.stats import count_lower_tail, count_upper_tail, ewma_weight, normal_lower_tail, normal_upper_tail

Direction = Literal["drop", "rise", "both"]


def bucket_index(observation: BucketObservation) -> int:
    """The bucket's number since the epoch (naive times are read as UTC); its phase is index % season."""
    start = observation.bucket_start
    if start.tzinfo is None:
        start = start.replace(tzinfo=timezone.utc)
    width = (observation.bucket_end - observation.bucket_start).total_seconds()
    return int(start.timestamp() // width)


class SeasonalDetector(BucketDetector):
    """Flags a KPI far from its seasonal forecast, in one direction or both.

    Parameters
    ----------
    kpi
        A count ("exposures") or a mean ("latency_ms", "revenue_per_exposure", "value") of `detectors.kpis`.
    direction
        "drop", "rise" or "both" (a two-sided test).
    forecaster
        "profile", "holt_winters" or "snarimax" (see `detectors.forecasters`).
    alert_threshold
        The smallest relative distance to the forecast that may breach.
    significance
        The test's tail below which the distance counts as real.
    season
        Buckets per season (24 hourly buckets: a daily cycle).
    warmup_buckets
        Buckets to learn before judging any: two seasons, the River models' minimum.
    min_count
        A mean over fewer items is learnt but not judged.
    variance_buckets
        Centre of mass, in buckets, of the spread estimate (a mean's item variance, a count's dispersion).

    Examples
    --------
    >>> import math, random
    >>> from datetime import datetime, timedelta, timezone
    >>> rng = random.Random(3)
    >>> t0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
    >>> def bucket(h, factor=1.0):
    ...     mean = 500 * (1 + 0.7 * math.sin(2 * math.pi * h / 24)) * factor
    ...     n = round(rng.gauss(mean, math.sqrt(mean)))
    ...     return BucketObservation("s", t0 + timedelta(hours=h), t0 + timedelta(hours=h + 1), n)
    >>> detector = VolumeDropDetector()
    >>> for h in range(72):
    ...     detector.learn_one(bucket(h))
    >>> detector.score_one(bucket(72)).breached, detector.score_one(bucket(78)).breached
    (False, False)
    >>> verdict = detector.score_one(bucket(79, factor=0.5))
    >>> verdict.breached, round(verdict.score, 1)
    (True, 0.5)
    """

    kind: ClassVar[str] = "kpi_spike"

    def __init__(
        self,
        kpi: str = "exposures",
        direction: Direction = "drop",
        forecaster: str = "profile",
        alert_threshold: float = 0.3,
        significance: float = 0.001,
        season: int = 24,
        warmup_buckets: int = 48,
        min_count: int = 1,
        variance_buckets: int = 48,
    ) -> None:
        self._evidence = check_kpi(kpi, ("poisson", "mean")).evidence
        if direction not in ("drop", "rise", "both"):
            raise ValueError(f"direction must be 'drop', 'rise' or 'both', got {direction!r}")
        if forecaster not in FORECASTERS:
            raise ValueError(f"unknown forecaster {forecaster!r}; known: {FORECASTERS}")
        if not 0 <= alert_threshold or not 0 < significance < 0.5:
            raise ValueError("alert_threshold must be >= 0 and significance in (0, 0.5)")
        if season < 2 or warmup_buckets < 1 or min_count < 1 or variance_buckets < 1:
            raise ValueError("season must be >= 2; warmup_buckets, min_count and variance_buckets positive")
        self.kpi = kpi
        self.direction = direction
        self.forecaster = forecaster
        self.alert_threshold = alert_threshold
        self.significance = significance
        self.season = season
        self.warmup_buckets = warmup_buckets
        self.min_count = min_count
        self.variance_buckets = variance_buckets
        # A backtested value may be negative: only it gets the additive form.
        self._model = make_forecaster(forecaster, season, multiplicative=kpi != "value")
        self._spread = 0.0  # a mean's per-item variance or a count's dispersion, exponentially weighted
        self._residuals = 0  # residuals behind _spread (capped)
        self._learnt = 0  # capped at warmup_buckets

    @property
    def warming_up(self) -> bool:
        return self._learnt < self.warmup_buckets or self._residuals < self.season // 2

    def learn_one(self, observation: BucketObservation) -> None:
        reading = read(observation, self.kpi)
        if reading is None:
            return
        index = bucket_index(observation)
        forecast = self._model.forecast(index)
        if forecast is not None and (self._evidence == "mean" or forecast > 0):
            error = (reading.value - forecast) ** 2
            sample = reading.n * error if self._evidence == "mean" else error / forecast
            floor = 1.0 if self._evidence == "poisson" else 0.0
            # An outlier beyond 4 standard deviations is not everyday noise (see detectors.rate_change);
            # which needs a spread to measure against: the first half season's residuals are all taken.
            settled = self._residuals >= self.season // 2
            if not settled or sample <= OUTLIER_Z2 * max(self._spread, floor):
                weight = 1.0 if self._residuals == 0 else ewma_weight(self.variance_buckets)
                self._spread += weight * (sample - self._spread)
                self._residuals = min(self._residuals + 1, self.season)
        self._model.learn(index, reading.value)
        self._learnt = min(self._learnt + 1, self.warmup_buckets)

    def score_one(self, observation: BucketObservation) -> Verdict:
        reading = read(observation, self.kpi)
        forecast = self._model.forecast(bucket_index(observation))
        observed = reading.value if reading else 0.0
        detail: dict[str, object] = {"kpi": self.kpi, "n": reading.n if reading else 0}
        if self.warming_up or forecast is None:
            return Verdict(False, False, observed, forecast or 0.0, 0.0, warming_up=True, detail=detail)
        if reading is None or reading.n < self.min_count:
            return Verdict(False, False, observed, forecast, 0.0, detail={**detail, "reason": "too few items"})
        if self._evidence == "poisson":
            count, dispersion = int(reading.total), max(1.0, self._spread)
            low, high = count_lower_tail(count, forecast, dispersion), count_upper_tail(count, forecast, dispersion)
            detail["dispersion"] = dispersion
        else:
            error = math.sqrt(self._spread / reading.n)
            gap = observed - forecast
            # A series that never varied (spread 0) makes any change infinitely unlikely.
            z = gap / error if error > 0 else math.copysign(math.inf, gap) if gap else 0.0
            low, high = normal_lower_tail(z), normal_upper_tail(z)
            detail["z"] = z
        scale = abs(forecast) if forecast else math.inf
        if self.direction == "drop":
            p_value, change = low, (forecast - observed) / scale
        elif self.direction == "rise":
            p_value, change = high, (observed - forecast) / scale
        else:
            p_value, change = min(1.0, 2 * min(low, high)), abs(observed - forecast) / scale
        breached = change >= self.alert_threshold and p_value < self.significance
        return Verdict(
            True, breached, observed, forecast, change, detail={**detail, "p_value": p_value, "relative_change": change}
        )


class VolumeDropDetector(SeasonalDetector):
    """Exposures far below the seasonal forecast: a lost traffic source, a rule that stopped matching.

    >>> VolumeDropDetector().kind, VolumeDropDetector(forecaster="holt_winters").forecaster
    ('volume_drop', 'holt_winters')
    """

    kind = "volume_drop"

    def __init__(self, **params: object) -> None:
        params = {"kpi": "exposures", "alert_threshold": 0.25, **params}  # measured: bench/detection.py
        super().__init__(direction="drop", **params)  # type: ignore[arg-type]


class LatencyRegressionDetector(SeasonalDetector):
    """Decision latency per exposure far above its seasonal forecast.

    >>> LatencyRegressionDetector().kind
    'latency_regression'
    """

    kind = "latency_regression"

    def __init__(self, **params: object) -> None:
        params = {"kpi": "latency_ms", "alert_threshold": 0.2, "significance": 0.005, "min_count": 10, **params}
        super().__init__(direction="rise", **params)  # type: ignore[arg-type]


class RevenueShiftDetector(SeasonalDetector):
    """Revenue per exposure far from its forecast, either way (a pricing bug, a broken checkout, a spike).

    >>> RevenueShiftDetector().kind, RevenueShiftDetector().direction
    ('kpi_spike', 'both')
    """

    kind = "kpi_spike"

    def __init__(self, **params: object) -> None:
        # Revenue per exposure is a compound sum (a few conversions times skewed amounts): far from normal
        # in the tails, so only a large, high-volume move is trusted (measured: bench/detection.py).
        params = {"kpi": "revenue_per_exposure", "alert_threshold": 0.5, "min_count": 300, **params}
        super().__init__(direction="both", **params)  # type: ignore[arg-type]
