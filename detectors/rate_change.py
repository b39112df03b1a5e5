"""A rate (click-through, conversion, fallback) against its baseline, weighted by volume.

The generalisation of `ConversionDropDetector` to any binomial KPI and either
direction. The baseline is the pooled rate of the healthy buckets learnt so far,
exponentially weighted: successes and trials are each an exponentially weighted
mean with a centre of mass of `baseline_buckets` buckets, and the baseline rate
is their ratio (so a bucket of 3,000 exposures weighs ten times one of 300, as
in a pooled rate). Two floats instead of a window of buckets keep the state at a
few hundred bytes.

A bucket is a breach when its rate moved by at least `alert_threshold`
(relative) in the watched direction *and* the move is unlikely under the
baseline: the one-sided binomial tail, P(X <= successes) for a drop or
P(X >= successes) for a rise, with n = exposures and p = the baseline rate, is
below `significance`. The tail is what makes a rate over 12 exposures differ
from one over 12,000.

Real traffic is over-dispersed: the rate itself wanders a little from hour to
hour (and conversions of one hour's exposures land in the next), so at 3,000
exposures an hour the variance of a bucket's successes is 1.3 to 1.5 times the
binomial one: a binomial test at 0.005 then fires about three times as often as
it should, and the breach policy's second breach makes that nine times as many
incidents. The detector therefore estimates the intra-bucket correlation rho of
a beta-binomial, variance = n p (1 - p) (1 + (n - 1) rho), from the healthy
buckets: with z a bucket's binomial z-score, E[z^2 - 1] = (n - 1) rho, so rho is
the ratio of the exponentially weighted means of z^2 - 1 and of n - 1 (a ratio
of sums weighs busy buckets most, where rho shows; the mean of per-bucket
ratios would be ruled by the noise of quiet ones). Buckets beyond 4 standard
deviations are left out. The test is the beta-binomial tail, exactly the
binomial one while rho is 0.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from detectors.base import BucketDetector, BucketObservation, Verdict
from detectors.kpis import check_kpi, read
from detectors.stats import ewma_weight, rate_lower_tail, rate_upper_tail

Direction = Literal["drop", "rise"]
OUTLIER_Z2 = 16.0  # a squared standardized residual above this (4 standard deviations) is not learnt as noise


class RateChangeDetector(BucketDetector):
    """Flags a relative, significant move of a binomial KPI in one direction.

    Parameters
    ----------
    kpi
        A binomial KPI of `detectors.kpis`: "ctr", "cvr" or "fallback_rate".
    direction
        "drop" or "rise": the move that is bad news.
    alert_threshold
        The smallest relative move that may breach (0.2 = 20 %).
    significance
        The binomial tail below which the move counts as real.
    baseline_buckets
        Centre of mass, in buckets, of the exponentially weighted baseline.
    warmup_buckets
        Buckets of at least `min_exposures` to learn before judging any.
    min_exposures
        Buckets with fewer exposures are learnt but never judged.
    learn_outliers
        Whether a bucket beyond 4 standard deviations of the baseline is learnt into the
        baseline (it never is into the over-dispersion). False for the CUSUMs: an unseen
        spike learnt by a drop detector biases its baseline upwards for days, and a CUSUM
        tuned to a shift drifts towards its threshold once that bias nears half the shift.

    Examples
    --------
    >>> import random
    >>> from datetime import datetime, timedelta, timezone
    >>> rng = random.Random(7)
    >>> t0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
    >>> def bucket(h, ctr, n=1000):
    ...     clicks = sum(rng.random() < ctr for _ in range(n))
    ...     return BucketObservation("s", t0 + timedelta(hours=h), t0 + timedelta(hours=h + 1), n, clicks=clicks)
    >>> detector = CtrDropDetector(warmup_buckets=12)
    >>> for h in range(24):
    ...     detector.learn_one(bucket(h, 0.12))
    >>> detector.score_one(bucket(24, 0.12)).breached
    False
    >>> verdict = detector.score_one(bucket(25, 0.06))
    >>> verdict.breached, round(verdict.expected, 2), verdict.detail["p_value"] < 1e-6
    (True, 0.12, True)
    """

    kind: ClassVar[str] = "rate_change"

    # Defaults measured with bench/detection.py (see detectors/README.md).
    def __init__(
        self,
        kpi: str = "cvr",
        direction: Direction = "drop",
        alert_threshold: float = 0.15,
        significance: float = 0.005,
        baseline_buckets: int = 72,
        warmup_buckets: int = 24,
        min_exposures: int = 50,
        learn_outliers: bool = True,
    ) -> None:
        check_kpi(kpi, ("binomial",))
        if direction not in ("drop", "rise"):
            raise ValueError(f"direction must be 'drop' or 'rise', got {direction!r}")
        if not 0 < alert_threshold or (direction == "drop" and alert_threshold >= 1):
            raise ValueError(f"alert_threshold must be in (0, 1) for a drop, > 0 for a rise, got {alert_threshold}")
        if not 0 < significance < 0.5:
            raise ValueError(f"significance must be in (0, 0.5), got {significance}")
        if baseline_buckets < 1 or warmup_buckets < 1 or min_exposures < 1:
            raise ValueError("baseline_buckets, warmup_buckets and min_exposures must be positive")
        self.kpi = kpi
        self.direction = direction
        self.alert_threshold = alert_threshold
        self.significance = significance
        self.baseline_buckets = baseline_buckets
        self.warmup_buckets = warmup_buckets
        self.min_exposures = min_exposures
        self.learn_outliers = learn_outliers
        self._successes = 0.0  # exponentially weighted means of the learnt buckets' successes and trials
        self._trials = 0.0
        self._scorable = 0  # learnt buckets with at least min_exposures, capped at warmup_buckets
        self._excess = 0.0  # over-dispersion: weighted means of z^2 - 1 and of n - 1; rho is their ratio
        self._extra_trials = 0.0

    @property
    def warming_up(self) -> bool:
        return self._scorable < self.warmup_buckets

    def _rho(self) -> float:
        return max(0.0, self._excess / self._extra_trials) if self._extra_trials > 0 else 0.0

    def learn_one(self, observation: BucketObservation) -> None:
        reading = read(observation, self.kpi)
        if reading is None:
            return
        weight = ewma_weight(self.baseline_buckets)
        baseline = self._successes / self._trials if self._trials > 0 else 0.0
        if reading.n >= max(2, self.min_exposures) and 0.0 < baseline < 1.0:
            z2 = (reading.total - reading.n * baseline) ** 2 / (reading.n * baseline * (1.0 - baseline))
            # Buckets beyond 4 standard deviations of the current model say nothing about everyday
            # noise: a learnt outlier (a spike, to a drop detector) must not make the detector deaf for days.
            if z2 <= OUTLIER_Z2 * (1.0 + (reading.n - 1) * self._rho()):
                self._excess += weight * (z2 - 1.0 - self._excess)
                self._extra_trials += weight * (reading.n - 1 - self._extra_trials)
            elif not self.learn_outliers:
                # Nor into the baseline. The price: a lasting move beyond 4 sd against the watched
                # direction is never learnt either, so a return to the old level goes unseen.
                return
        self._successes += weight * (reading.total - self._successes)
        self._trials += weight * (reading.n - self._trials)
        if reading.n >= self.min_exposures:
            self._scorable = min(self._scorable + 1, self.warmup_buckets)

    def score_one(self, observation: BucketObservation) -> Verdict:
        reading = read(observation, self.kpi)
        expected = self._successes / self._trials if self._trials > 0 else 0.0
        n = reading.n if reading else 0
        observed = reading.value if reading else 0.0
        detail = {"kpi": self.kpi, "exposures": n, "successes": int(reading.total) if reading else 0}
        if self.warming_up or expected <= 0.0:
            return Verdict(False, False, observed, expected, 0.0, warming_up=True, detail=detail)
        if n < self.min_exposures:
            return Verdict(False, False, observed, expected, 0.0, detail={**detail, "reason": "too few exposures"})
        assert reading is not None  # n >= min_exposures >= 1
        successes, rho = int(reading.total), self._rho()
        if self.direction == "drop":
            change = 1.0 - observed / expected
            p_value = rate_lower_tail(successes, n, expected, rho)
        else:
            change = observed / expected - 1.0
            p_value = rate_upper_tail(successes, n, expected, rho)
        breached = change >= self.alert_threshold and p_value < self.significance
        return Verdict(
            True,
            breached,
            observed,
            expected,
            change,
            detail={**detail, "p_value": p_value, "relative_change": change, "rho": rho},
        )


class CtrDropDetector(RateChangeDetector):
    """A drop of the click-through rate (see `RateChangeDetector`).

    >>> CtrDropDetector().kind, CtrDropDetector().kpi
    ('ctr_drop', 'ctr')
    """

    kind = "ctr_drop"

    def __init__(self, **params: object) -> None:
        super().__init__(kpi="ctr", direction="drop", **params)  # type: ignore[arg-type]


class CvrDropDetector(RateChangeDetector):
    """A drop of the conversion rate: `ConversionDropDetector`'s test, with an exponentially weighted baseline.

    >>> CvrDropDetector().kind
    'conversion_drop'
    """

    kind = "conversion_drop"

    def __init__(self, **params: object) -> None:
        super().__init__(kpi="cvr", direction="drop", **params)  # type: ignore[arg-type]


class RateSpikeDetector(RateChangeDetector):
    """A sudden rise of click-through or conversion rate: a broken rule, bot traffic, a tracking bug.

    >>> RateSpikeDetector(kpi="ctr").kind
    'kpi_spike'
    """

    kind = "kpi_spike"

    def __init__(self, kpi: str = "ctr", alert_threshold: float = 0.2, **params: object) -> None:
        super().__init__(kpi=kpi, direction="rise", alert_threshold=alert_threshold, **params)  # type: ignore[arg-type]


class FallbackSurgeDetector(RateChangeDetector):
    """A rise of the share of exposures served by the fallback experience.

    >>> FallbackSurgeDetector().kind, FallbackSurgeDetector().direction
    ('fallback_surge', 'rise')
    """

    kind = "fallback_surge"

    def __init__(self, alert_threshold: float = 1.0, min_exposures: int = 30, **params: object) -> None:
        super().__init__(
            kpi="fallback_rate",
            direction="rise",
            alert_threshold=alert_threshold,
            min_exposures=min_exposures,
            **params,  # type: ignore[arg-type]
        )
