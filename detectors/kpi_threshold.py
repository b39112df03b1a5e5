"""A KPI rate against its trailing baseline: the user's `alert_threshold`, weighted by volume.

The baseline is the pooled rate (events / exposures) of the last
`baseline_buckets` healthy buckets; the KPI is conversions (`cvr`) or clicks
(`ctr`) per exposure. A bucket is a breach when its rate is at least
`alert_threshold` below the baseline (relative drop) *and* the drop is
unlikely under the baseline: the one-sided binomial tail P(X <= events)
with n = exposures and p = baseline rate is below `significance`. The second
condition is what makes a rate over 12 exposures differ from one over 12,000.
Assumes events are independent given the rate within a bucket. No correction
for the many series and buckets tested: `significance` is per test, and the
breach policy's "twice within the span" is what keeps pages rare.
"""

from __future__ import annotations

from collections import deque
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from detectors.base import BucketDetector, BucketObservation, Verdict


class KpiThresholdConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    alert_threshold: float = Field(0.2, gt=0, lt=1)
    kpi: Literal["cvr", "ctr"] = "cvr"
    baseline_buckets: int = Field(72, ge=2)
    warmup_buckets: int = Field(24, ge=1)
    min_exposures: int = Field(200, ge=1)
    significance: float = Field(0.001, gt=0, lt=0.5)


class KpiThresholdDetector(BucketDetector):
    """Flags a relative, significant drop of a series' conversion (or click-through) rate.

    >>> from datetime import datetime, timedelta, timezone
    >>> import random
    >>> rng = random.Random(7)
    >>> t0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
    >>> def bucket(h, rate):
    ...     n = 1000
    ...     conv = sum(rng.random() < rate for _ in range(n))
    ...     return BucketObservation("s", t0 + timedelta(hours=h), t0 + timedelta(hours=h + 1), n, conversions=conv)
    >>> detector = KpiThresholdDetector(KpiThresholdConfig(warmup_buckets=12))
    >>> for h in range(24):
    ...     detector.learn_one(bucket(h, 0.10))
    >>> detector.score_one(bucket(24, 0.10)).breached
    False
    >>> verdict = detector.score_one(bucket(25, 0.05))
    >>> verdict.breached, round(verdict.expected, 2)
    (True, 0.1)
    """

    kind = "kpi_threshold"

    def __init__(self, config: KpiThresholdConfig | None = None) -> None:
        self.config = config or KpiThresholdConfig()
        self._history: deque[tuple[int, int]] = deque(maxlen=self.config.baseline_buckets)
        self._scorable_buckets = 0

    @property
    def kpi(self) -> str:
        return self.config.kpi

    @property
    def warming_up(self) -> bool:
        return self._scorable_buckets < self.config.warmup_buckets

    def _events(self, observation: BucketObservation) -> int:
        return observation.conversions if self.config.kpi == "cvr" else observation.clicks

    def learn_one(self, observation: BucketObservation) -> None:
        if observation.exposures <= 0:
            return
        self._history.append((observation.exposures, self._events(observation)))
        if observation.exposures >= self.config.min_exposures:
            self._scorable_buckets = min(self._scorable_buckets + 1, self.config.warmup_buckets)

    def score_one(self, observation: BucketObservation) -> Verdict:
        n, events = observation.exposures, self._events(observation)
        observed = events / n if n else 0.0
        base_n = sum(b for b, _ in self._history)
        expected = sum(e for _, e in self._history) / base_n if base_n else 0.0
        detail = {
            "kpi": self.config.kpi,
            "exposures": n,
            "events": events,
            "baseline_exposures": base_n,
            "alert_threshold": self.config.alert_threshold,
        }
        if self.warming_up or not 0.0 < expected < 1.0:
            return Verdict(False, False, observed, expected, 0.0, warming_up=self.warming_up, detail=detail)
        if n < self.config.min_exposures:
            return Verdict(False, False, observed, expected, 0.0, detail={**detail, "reason": "too few exposures"})
        relative_drop = 1.0 - observed / expected
        from scipy.stats import binom  # here, not at import: see experiments.stats._lazy

        p_value = float(binom.cdf(events, n, expected))
        breached = relative_drop >= self.config.alert_threshold and p_value < self.config.significance
        return Verdict(
            True,
            breached,
            observed,
            expected,
            relative_drop,
            detail={**detail, "p_value": p_value, "relative_drop": relative_drop},
        )
