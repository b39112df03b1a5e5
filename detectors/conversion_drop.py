"""Conversion rate against its trailing baseline, weighted by volume.

The baseline is the pooled rate (conversions / exposures) of the last
`baseline_buckets` healthy buckets. A bucket is a breach when its rate is at
least `alert_threshold` below the baseline (relative drop) *and* the drop is
unlikely under the baseline: the one-sided binomial tail P(X <= conversions)
with n = exposures and p = baseline rate is below `significance`. The second
condition is what makes a rate over 12 exposures differ from one over 12,000.
Assumes conversions are independent given the rate within a bucket.
"""

from __future__ import annotations

from collections import deque

from pydantic import BaseModel, ConfigDict, Field
from scipy.stats import binom

from detectors.base import BucketDetector, BucketObservation, Verdict


class ConversionDropConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    alert_threshold: float = Field(0.2, gt=0, lt=1)
    baseline_buckets: int = Field(72, ge=2)
    warmup_buckets: int = Field(24, ge=1)
    min_exposures: int = Field(200, ge=1)
    significance: float = Field(0.001, gt=0, lt=0.5)


class ConversionDropDetector(BucketDetector):
    """Flags a relative, significant drop of a series' conversion rate.

    >>> from datetime import datetime, timedelta, timezone
    >>> import random
    >>> rng = random.Random(7)
    >>> t0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
    >>> def bucket(h, rate):
    ...     n = 1000
    ...     conv = sum(rng.random() < rate for _ in range(n))
    ...     return BucketObservation("s", t0 + timedelta(hours=h), t0 + timedelta(hours=h + 1), n, conversions=conv)
    >>> detector = ConversionDropDetector(ConversionDropConfig(warmup_buckets=12))
    >>> for h in range(24):
    ...     detector.learn_one(bucket(h, 0.10))
    >>> detector.score_one(bucket(24, 0.10)).breached
    False
    >>> verdict = detector.score_one(bucket(25, 0.05))
    >>> verdict.breached, round(verdict.expected, 2)
    (True, 0.1)
    """

    kind = "conversion_drop"

    def __init__(self, config: ConversionDropConfig | None = None) -> None:
        self.config = config or ConversionDropConfig()
        self._history: deque[tuple[int, int]] = deque(maxlen=self.config.baseline_buckets)
        self._scorable_buckets = 0

    @property
    def warming_up(self) -> bool:
        return self._scorable_buckets < self.config.warmup_buckets

    def _baseline(self) -> tuple[int, int]:
        exposures = sum(n for n, _ in self._history)
        conversions = sum(c for _, c in self._history)
        return exposures, conversions

    def learn_one(self, observation: BucketObservation) -> None:
        if observation.exposures <= 0:
            return
        self._history.append((observation.exposures, observation.conversions))
        if observation.exposures >= self.config.min_exposures:
            self._scorable_buckets = min(self._scorable_buckets + 1, self.config.warmup_buckets)

    def score_one(self, observation: BucketObservation) -> Verdict:
        n, conversions = observation.exposures, observation.conversions
        observed = conversions / n if n else 0.0
        base_n, base_conversions = self._baseline()
        expected = base_conversions / base_n if base_n else 0.0
        detail = {"kpi": "cvr", "exposures": n, "conversions": conversions, "baseline_exposures": base_n}
        if self.warming_up or expected <= 0.0:
            return Verdict(False, False, observed, expected, 0.0, warming_up=True, detail=detail)
        if n < self.config.min_exposures:
            return Verdict(False, False, observed, expected, 0.0, detail={**detail, "reason": "too few exposures"})
        relative_drop = 1.0 - observed / expected
        p_value = float(binom.cdf(conversions, n, expected))
        breached = relative_drop >= self.config.alert_threshold and p_value < self.config.significance
        return Verdict(True, breached, observed, expected, relative_drop,
                       detail={**detail, "p_value": p_value, "relative_drop": relative_drop})
