"""A lasting shift of a KPI's level, found by a River drift detector over standardized residuals.

A 10 % conversion drop is lost in one hour's noise (at 350 exposures the
rate's own relative noise is 16 %), but not in a day's: a drift detector
accumulates the evidence bucket after bucket. Each bucket's KPI becomes a
standardized residual against a slow reference (an exponentially weighted
pooled rate or mean over `reference_buckets`):

* a rate: z = (successes - n p) / sqrt(n p (1 - p)), p the reference rate;
* a mean over n items: z = (mean - reference) / sqrt(s2 / n), s2 the spread of one item;

a rate's z divided by the square root of its own running mean square (the
over-dispersion of real traffic, never below 1), so that z has unit variance
whatever the volume. The residuals, capped at 5 standard deviations, feed River's `drift.PageHinkley` (a CUSUM: it
accumulates residuals beyond `ph_delta` and fires past `ph_threshold`) or
`drift.ADWIN`. A bucket breaches when the drift detector, fed this bucket,
fires *and* the recent level (this bucket pooled with the last
`recent_buckets` learnt ones) differs from the reference by at least
`alert_threshold` in the watched direction.

`score_one` feeds a copy of the drift detector, so scoring changes nothing; the
real one only sees learnt (healthy) buckets.
"""

from __future__ import annotations

import copy
import math
from collections import deque
from typing import ClassVar, Literal

from detectors.base import BucketDetector, BucketObservation, Verdict
from detectors.kpis import Reading, check_kpi, read
from detectors.rate_change import OUTLIER_Z2
from detectors.stats import ewma_weight

Direction = Literal["drop", "rise", "both"]
_PH_MODE = {"drop": "down", "rise": "up", "both": "both"}
_Z_CAP = 5.0


def _capped(z: float) -> float:
    """One bucket tells the drift detector at most 5 standard deviations' worth.

    Page-Hinkley measures deviations from its running mean: four buckets of a +50 %
    spike (z ~ +15) learnt by a drop detector would lift that mean so far that the
    ordinary buckets after them look like a drop.
    """
    return max(-_Z_CAP, min(_Z_CAP, z))


class LevelShiftDetector(BucketDetector):
    """Flags a lasting shift of a rate or a mean, River drift detector over standardized residuals.

    Parameters
    ----------
    kpi
        A rate ("ctr", "cvr", "fallback_rate") or a mean ("latency_ms", "revenue_per_exposure", "value")
        without a daily cycle: the reference is flat (rates have no daily cycle; volume has, and is
        `detectors.seasonal`'s business).
    direction
        "drop", "rise" or "both".
    drift_detector
        "page_hinkley" (River's `drift.PageHinkley`) or "adwin" (`drift.ADWIN`).
    alert_threshold
        The smallest relative shift of the recent level that may breach.
    reference_buckets
        Centre of mass, in buckets, of the slow reference level.
    recent_buckets
        Learnt buckets pooled with the scored one to measure the recent level.
    warmup_buckets
        Buckets of at least `min_count` items to learn before judging any.
    min_count
        Fewer trials or items: learnt into the reference, not fed to the drift detector, not judged.
    ph_delta, ph_threshold
        Page-Hinkley's tolerated drift per bucket and detection threshold, in units of z.
    adwin_delta
        ADWIN's confidence parameter.

    Examples
    --------
    >>> import random
    >>> from datetime import datetime, timedelta, timezone
    >>> rng = random.Random(11)
    >>> t0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
    >>> def bucket(h, cvr, n=2000):
    ...     conv = sum(rng.random() < cvr for _ in range(n))
    ...     return BucketObservation("s", t0 + timedelta(hours=h), t0 + timedelta(hours=h + 1), n, conversions=conv)
    >>> detector = LevelShiftDetector(kpi="cvr")
    >>> for h in range(72):
    ...     detector.learn_one(bucket(h, 0.10))
    >>> breaches = []
    >>> for h in range(72, 96):             # a 12 % lower conversion rate from now on: found in half a day
    ...     b = bucket(h, 0.088)
    ...     if detector.score_one(b).breached:
    ...         breaches.append(h - 72)
    ...     else:
    ...         detector.learn_one(b)
    >>> breaches[:2]
    [10, 12]
    """

    kind: ClassVar[str] = "level_shift"

    def __init__(
        self,
        kpi: str = "cvr",
        direction: Direction = "drop",
        drift_detector: str = "page_hinkley",
        alert_threshold: float = 0.05,
        reference_buckets: int = 168,
        recent_buckets: int = 6,
        warmup_buckets: int = 48,
        min_count: int = 50,
        ph_delta: float = 0.5,
        ph_threshold: float = 7.0,
        adwin_delta: float = 0.002,
    ) -> None:
        self._evidence = check_kpi(kpi, ("binomial", "mean")).evidence
        if direction not in _PH_MODE:
            raise ValueError(f"direction must be 'drop', 'rise' or 'both', got {direction!r}")
        if drift_detector not in ("page_hinkley", "adwin"):
            raise ValueError(f"drift_detector must be 'page_hinkley' or 'adwin', got {drift_detector!r}")
        if alert_threshold < 0 or min(reference_buckets, recent_buckets, warmup_buckets, min_count) < 1:
            raise ValueError("alert_threshold must be >= 0; the bucket counts and min_count positive")
        self.kpi = kpi
        self.direction = direction
        self.drift_detector = drift_detector
        self.alert_threshold = alert_threshold
        self.reference_buckets = reference_buckets
        self.recent_buckets = recent_buckets
        self.warmup_buckets = warmup_buckets
        self.min_count = min_count
        self.ph_delta = ph_delta
        self.ph_threshold = ph_threshold
        self.adwin_delta = adwin_delta
        from river import drift  # here, not at import: River's drift package loads scipy.stats (about a second)

        # ADWIN looks for a cut every `clock` values, and only cuts off windows of `min_window_length`:
        # with hourly buckets that must be every bucket, and a new level two buckets long may be cut off.
        self._drift = (
            drift.PageHinkley(delta=ph_delta, threshold=ph_threshold, mode=_PH_MODE[direction])
            if drift_detector == "page_hinkley"
            else drift.ADWIN(delta=adwin_delta, clock=1, min_window_length=2)
        )
        self._total = 0.0  # the reference: exponentially weighted successes (or sums) and trials (items)
        self._n = 0.0
        self._spread = 0.0  # a mean KPI's per-item variance
        self._dispersion = 1.0  # a rate's running mean of its binomial z^2
        self._recent: deque[tuple[float, int]] = deque(maxlen=recent_buckets)
        self._learnt = 0

    @property
    def warming_up(self) -> bool:
        return self._learnt < self.warmup_buckets

    def _reference(self) -> float:
        return self._total / self._n if self._n > 0 else 0.0

    def _residual(self, reading: Reading) -> float:
        reference = self._reference()
        if self._evidence == "binomial":
            variance = reading.n * reference * (1.0 - reference)
            raw = (reading.total - reading.n * reference) / math.sqrt(variance) if variance > 0 else 0.0
        else:
            error = math.sqrt(self._spread / reading.n)
            raw = (reading.value - reference) / error if error > 0 else 0.0
        return raw / math.sqrt(self._dispersion)

    def learn_one(self, observation: BucketObservation) -> None:
        reading = read(observation, self.kpi)
        if reading is None:
            return
        self._recent.append((reading.total, reading.n))
        # An outlier (beyond 4 standard deviations: a spike, to a drop detector) is not everyday noise
        # and not the level: it moves neither the reference nor the spread (see detectors.rate_change).
        outlier = False
        if reading.n >= self.min_count and self._n > 0:
            z = self._residual(reading)
            self._drift.update(_capped(z))
            self._learnt = min(self._learnt + 1, self.warmup_buckets)
            outlier = z * z > OUTLIER_Z2 and self._learnt >= self.warmup_buckets // 2
            if self._evidence == "binomial" and not outlier:  # a rate's over-dispersion, never below binomial
                weight = ewma_weight(self.reference_buckets)
                self._dispersion = max(1.0, self._dispersion + weight * (z * z * self._dispersion - self._dispersion))
        if outlier:
            return
        if self._evidence == "mean" and self._n > 0:  # a mean's spread is measured directly
            weight = 1.0 if self._spread == 0 else ewma_weight(self.reference_buckets)
            self._spread += weight * (reading.n * (reading.value - self._reference()) ** 2 - self._spread)
        weight = ewma_weight(self.reference_buckets)
        self._total += weight * (reading.total - self._total)
        self._n += weight * (reading.n - self._n)

    def score_one(self, observation: BucketObservation) -> Verdict:
        reading = read(observation, self.kpi)
        reference = self._reference()
        observed = reading.value if reading else 0.0
        detail: dict[str, object] = {"kpi": self.kpi, "n": reading.n if reading else 0}
        if self.warming_up or reference == 0.0:
            return Verdict(False, False, observed, reference, 0.0, warming_up=True, detail=detail)
        if reading is None or reading.n < self.min_count:
            return Verdict(False, False, observed, reference, 0.0, detail={**detail, "reason": "too few items"})
        z = self._residual(reading)
        probe = copy.deepcopy(self._drift)
        probe.update(_capped(z))
        recent = (sum(t for t, _ in self._recent) + reading.total) / (sum(n for _, n in self._recent) + reading.n)
        shift = recent / reference - 1.0
        change = {"drop": -shift, "rise": shift, "both": abs(shift)}[self.direction]
        breached = probe.drift_detected and change >= self.alert_threshold
        return Verdict(
            True,
            breached,
            observed,
            reference,
            change,
            detail={**detail, "z": z, "drift": probe.drift_detected, "recent_level": recent, "relative_change": change},
        )
