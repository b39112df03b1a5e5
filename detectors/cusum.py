"""Sequential tests: the CUSUM (Page 1954) of a rate against its baseline, of a count against its forecast.

One hour of a series with 300 exposures cannot tell a 20 % dip from noise; three
hours together can. The CUSUM adds up each bucket's evidence, the log-likelihood
ratio of "the rate fell by `shift`" against "it is at its baseline p0":

    llr = x ln(p1 / p0) + (n - x) ln((1 - p1) / (1 - p0)),   p1 = p0 (1 - shift)

for x successes out of n exposures (a rise: p1 = p0 (1 + shift)), and keeps
S = max(0, S + llr). S drifts to 0 on healthy traffic and climbs by about
n KL(p1 || p0) per bucket once the rate has moved, so evidence accumulates
across buckets in proportion to their volume: the test Lorden (1971) showed to
detect a change to p1 fastest for a given rate of false alarms. A bucket
breaches when S passes `threshold` (in nats; the false-alarm rate falls about as
exp(-threshold)) *and* the bucket's rate has itself moved by at least half the
`shift`, so that evidence left over from a past dip does not page on a bucket
that is fine.

Over-dispersion (see `detectors.rate_change`): real rates wander from hour to
hour, so each llr is divided by the variance inflation 1 + (n - 1) rho learnt
from healthy buckets (a quasi-likelihood), which keeps busy series, where it
shows most, from accumulating noise. S is capped at `2 * threshold`, so the
statistic recovers within a few healthy buckets after a long incident.

The baseline, warm-up and rho are `RateChangeDetector`'s. S advances on every
scored bucket, breach or not (`track_one`); the baseline learns healthy buckets
three buckets late, and S restarts after an alarm (`_Cusum`; learning late is
worth 0.04 to 0.07 recall in reach per detector, see `detectors/registry.py`).

A bucket beyond 4 standard deviations of the baseline is not learnt (`learn_outliers`
False): a CUSUM of a drop of `shift` has, under a baseline biased upwards by a relative
e, a drift per bucket of about n p0 shift (e - shift / 2) instead of -n p0 shift^2 / 2,
so once e nears half the shift the statistic walks to its threshold on healthy traffic.
An unseen +50 % spike of four hours, learnt, biased a busy series' baseline by about
4 % for two days and raised conversion-drop alerts there (bench/detection.py, seed 2).

`CvrSmallDropCusumDetector` is the same test tuned to a 10 % drop (only busy series can
show one); `JointSpikeCusumDetector` adds the click and conversion evidence of a spike
in one statistic.

A count (exposure volume) gets the Poisson CUSUM against its seasonal forecast
mu (`detectors.seasonal`): llr = x ln(mu1 / mu) + mu - mu1 with mu1 = mu (1 - shift),
divided by the count's learnt dispersion (variance / mean) for the same reason.
"""

from __future__ import annotations

import math
from collections import deque
from typing import ClassVar

from detectors.base import BucketDetector, BucketObservation, Verdict
from detectors.kpis import read, validate
from detectors.rate_change import Direction, RateChangeDetector
from detectors.seasonal import VolumeDropDetector, bucket_index


class _Cusum:
    """What the CUSUMs share: S, its restart after an alarm, and learning late.

    S restarts at 0 on the first bucket back at (or beyond) its baseline after S had
    passed the threshold (as Page's CUSUM restarts after an alarm): on a quiet series
    S would otherwise linger near the threshold for hours after an incident and page
    again on the next low bucket.

    A healthy bucket is learnt `learn_lag` buckets late, and the waiting ones are
    forgotten on a breach: a dip's first hours are healthy to the breach policy until
    S has crossed the threshold; learnt at once, they would pull the baseline down
    and widen the noise model just when the evidence is building.

    A subclass keeps `threshold`, `learn_lag`, `_s` and `_waiting` and gives
    `_advanced(observation)`: (new S, ...) or None for a bucket it cannot judge.
    """

    threshold: float
    learn_lag: int
    _s: float
    _waiting: deque

    def _next_s(self, llr: float, change: float) -> float:
        """S after a bucket of log-likelihood ratio `llr` (already scaled) and relative `change`."""
        if self._s > self.threshold and change <= 0.0:
            return 0.0
        return min(2 * self.threshold, max(0.0, self._s + llr))

    def track_one(self, observation: BucketObservation, verdict: Verdict) -> None:
        advanced = self._advanced(observation)  # type: ignore[attr-defined]
        if advanced is not None:
            self._s = advanced[0]
        if verdict.breached:
            self._waiting.clear()

    def learn_one(self, observation: BucketObservation) -> None:
        validate(observation)  # bad input fails now, not when its turn to be learnt comes
        self._waiting.append(observation)
        if len(self._waiting) > self.learn_lag:
            super().learn_one(self._waiting.popleft())  # type: ignore[misc]


class RateCusumDetector(_Cusum, RateChangeDetector):
    """A binomial CUSUM on a rate, one direction.

    Parameters
    ----------
    kpi, direction, baseline_buckets, warmup_buckets, min_exposures
        As `RateChangeDetector`.
    shift
        The relative change the test is tuned to find fastest (0.2 = a 20 % drop or rise).
    threshold
        S, in nats, past which a bucket may breach.

    Examples
    --------
    >>> import random
    >>> from datetime import datetime, timedelta, timezone
    >>> rng = random.Random(3)
    >>> t0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
    >>> def bucket(h, cvr, n=400):
    ...     conversions = sum(rng.random() < cvr for _ in range(n))
    ...     return BucketObservation("s", t0 + timedelta(hours=h), t0 + timedelta(hours=h + 1), n,
    ...                              conversions=conversions)
    >>> detector = CvrCusumDetector(warmup_buckets=12)
    >>> from detectors.base import step
    >>> [step(detector, bucket(h, 0.10)).breached for h in range(36)].count(True)
    0
    >>> [step(detector, bucket(36 + h, 0.07)).breached for h in range(4)]   # a 30 % dip, 400 exposures an hour
    [False, True, True, True]
    """

    kind: ClassVar[str] = "rate_cusum"

    def __init__(
        self,
        kpi: str = "cvr",
        direction: Direction = "drop",
        shift: float = 0.2,
        threshold: float = 5.0,
        baseline_buckets: int = 72,
        warmup_buckets: int = 24,
        min_exposures: int = 20,
        learn_lag: int = 3,
        learn_outliers: bool = False,
    ) -> None:
        if not 0 < shift or (direction == "drop" and shift >= 1):
            raise ValueError(f"shift must be in (0, 1) for a drop, > 0 for a rise, got {shift}")
        if not threshold > 0:
            raise ValueError(f"threshold must be positive, got {threshold}")
        super().__init__(
            kpi=kpi,
            direction=direction,
            alert_threshold=shift / 2,
            baseline_buckets=baseline_buckets,
            warmup_buckets=warmup_buckets,
            min_exposures=min_exposures,
            learn_outliers=learn_outliers,
        )
        self.shift = shift
        self.threshold = threshold
        self.learn_lag = learn_lag
        self._s = 0.0  # the CUSUM statistic, in nats
        self._waiting: deque[BucketObservation] = deque()

    def _advanced(self, observation: BucketObservation) -> tuple[float, float, float, int] | None:
        """(new S, this bucket's relative change, baseline, n), or None when the bucket cannot be judged."""
        reading = read(observation, self.kpi)
        p0 = self._successes / self._trials if self._trials > 0 else 0.0
        if self.warming_up or reading is None or reading.n < self.min_exposures or not 0.0 < p0 < 1.0:
            return None
        p1 = min(p0 * (1 - self.shift if self.direction == "drop" else 1 + self.shift), 1 - 1e-9)
        x, n = reading.total, reading.n
        llr = x * math.log(p1 / p0) + (n - x) * math.log((1 - p1) / (1 - p0))
        moved = reading.value / p0 - 1.0
        change = -moved if self.direction == "drop" else moved
        return self._next_s(llr / (1.0 + (n - 1) * self._rho()), change), change, p0, n

    def score_one(self, observation: BucketObservation) -> Verdict:
        reading = read(observation, self.kpi)
        observed = reading.value if reading else 0.0
        expected = self._successes / self._trials if self._trials > 0 else 0.0
        detail: dict[str, object] = {"kpi": self.kpi, "exposures": reading.n if reading else 0}
        if self.warming_up or expected <= 0.0:
            return Verdict(False, False, observed, expected, 0.0, warming_up=True, detail=detail)
        advanced = self._advanced(observation)
        if advanced is None:
            return Verdict(False, False, observed, expected, 0.0, detail={**detail, "reason": "too few exposures"})
        s, change, _, _ = advanced
        breached = s > self.threshold and change >= self.alert_threshold
        return Verdict(
            True,
            breached,
            observed,
            expected,
            s / self.threshold,
            detail={**detail, "cusum": s, "threshold": self.threshold, "relative_change": change, "rho": self._rho()},
        )


class CtrCusumDetector(RateCusumDetector):
    """A click-through drop, sequentially (see `RateCusumDetector`).

    >>> CtrCusumDetector().kind, CtrCusumDetector().kpi
    ('ctr_drop', 'ctr')
    """

    kind = "ctr_drop"

    def __init__(self, **params: object) -> None:
        super().__init__(kpi="ctr", direction="drop", **params)  # type: ignore[arg-type]


class CvrCusumDetector(RateCusumDetector):
    """A conversion drop, sequentially (see `RateCusumDetector`). A higher threshold than clicks':
    conversions are fewer and more over-dispersed (measured: bench/detection.py).

    >>> CvrCusumDetector().kind, CvrCusumDetector().threshold
    ('conversion_drop', 6.0)
    """

    kind = "conversion_drop"

    def __init__(self, **params: object) -> None:
        super().__init__(kpi="cvr", direction="drop", **{"threshold": 6.0, **params})  # type: ignore[arg-type]


class CvrSmallDropCusumDetector(CvrCusumDetector):
    """A 10 % conversion drop, sequentially: the binomial CUSUM tuned to `shift` = 0.1.

    Only a series of thousands of exposures an hour can show a 10 % dip of its conversions
    within hours (at 3,000 an hour and an 8 % rate, about 1.2 nats of evidence an hour, a third
    of a 20 % dip's); the 20 % CUSUM adds evidence too slowly there, because each hour of a 10 %
    dip is closer to its baseline than to its 20 % alternative. The higher threshold pays for the
    smaller drift: noise and baseline error climb more easily to a threshold when the shift
    tested is small (measured: bench/detection.py; see `detectors/registry.py`).

    >>> import random
    >>> from datetime import datetime, timedelta, timezone
    >>> from detectors.base import step
    >>> rng = random.Random(11)
    >>> t0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
    >>> def bucket(h, cvr, n=3000):
    ...     conversions = sum(rng.random() < cvr for _ in range(n))
    ...     return BucketObservation("s", t0 + timedelta(hours=h), t0 + timedelta(hours=h + 1), n,
    ...                              conversions=conversions)
    >>> detector = CvrSmallDropCusumDetector()
    >>> detector.kind, detector.shift, detector.threshold
    ('conversion_drop', 0.1, 9.0)
    >>> [step(detector, bucket(h, 0.08)).breached for h in range(48)].count(True)
    0
    >>> breaches = [step(detector, bucket(48 + h, 0.072)).breached for h in range(12)]   # a 10 % dip
    >>> any(breaches), breaches[:3]
    (True, [False, False, False])
    """

    def __init__(self, **params: object) -> None:
        super().__init__(**{"shift": 0.1, "threshold": 9.0, **params})


class VolumeCusumDetector(_Cusum, VolumeDropDetector):
    """Exposures below their seasonal forecast, sequentially: the Poisson CUSUM (see the module).

    Parameters
    ----------
    shift
        The relative drop the test is tuned to find fastest (0.5 = half the forecast).
    threshold
        S, in nats, past which a bucket may breach.
    **params
        As `VolumeDropDetector` (forecaster, season, warm-up, dispersion span).

    Examples
    --------
    >>> import math, random
    >>> from datetime import datetime, timedelta, timezone
    >>> from detectors.base import step
    >>> rng = random.Random(5)
    >>> t0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
    >>> def bucket(h, factor=1.0):
    ...     mean = 60 * (1 + 0.7 * math.sin(2 * math.pi * h / 24)) * factor
    ...     n = round(rng.gauss(mean, math.sqrt(mean)))
    ...     return BucketObservation("s", t0 + timedelta(hours=h), t0 + timedelta(hours=h + 1), max(0, n))
    >>> detector = VolumeCusumDetector()
    >>> [step(detector, bucket(h)).breached for h in range(96)].count(True)
    0
    >>> [step(detector, bucket(96 + h, factor=0.5)).breached for h in range(3)]   # half the volume
    [False, True, True]
    """

    def __init__(self, shift: float = 0.5, threshold: float = 8.0, learn_lag: int = 3, **params: object) -> None:
        if not 0 < shift < 1 or not threshold > 0:
            raise ValueError(f"shift must be in (0, 1) and threshold positive, got {shift}, {threshold}")
        super().__init__(**{"alert_threshold": shift / 2, **params})
        self.shift = shift
        self.threshold = threshold
        self.learn_lag = learn_lag
        self._s = 0.0
        self._waiting: deque[BucketObservation] = deque()

    def _advanced(self, observation: BucketObservation) -> tuple[float, float, float] | None:
        """(new S, the bucket's relative drop, forecast), or None when the bucket cannot be judged."""
        reading = read(observation, self.kpi)
        forecast = self._model.forecast(bucket_index(observation))
        if self.warming_up or reading is None or forecast is None or forecast <= 0:
            return None
        llr = reading.total * math.log(1 - self.shift) + forecast * self.shift
        change = 1.0 - reading.total / forecast
        return self._next_s(llr / max(1.0, self._spread), change), change, forecast

    def score_one(self, observation: BucketObservation) -> Verdict:
        advanced = self._advanced(observation)
        if advanced is None:
            return super().score_one(observation)  # warming up, or nothing to judge: the same verdict
        s, change, forecast = advanced
        breached = s > self.threshold and change >= self.alert_threshold
        return Verdict(
            True,
            breached,
            observation.exposures,
            forecast,
            s / self.threshold,
            detail={
                "kpi": self.kpi,
                "n": 1,
                "cusum": s,
                "threshold": self.threshold,
                "relative_change": change,
                "dispersion": max(1.0, self._spread),
            },
        )


class RateSpikeCusumDetector(RateCusumDetector):
    """A click-through or conversion rate far above its baseline, sequentially: a broken rule,
    bot traffic, a tracking bug (see `RateCusumDetector`; tuned to a rise of `shift` = 50 %).

    >>> RateSpikeCusumDetector(kpi="ctr").kind, RateSpikeCusumDetector(kpi="cvr").direction
    ('kpi_spike', 'rise')
    """

    kind = "kpi_spike"

    def __init__(self, kpi: str = "ctr", **params: object) -> None:
        super().__init__(kpi=kpi, direction="rise", **{"shift": 0.5, **params})  # type: ignore[arg-type]


class JointSpikeCusumDetector(BucketDetector):
    """Clicks and conversions far above their baselines together: one CUSUM over both rates' evidence.

    A broken rule or a tracking bug that double-counts moves clicks and conversions at once. On a
    small series neither rate alone says much in an hour (130 exposures at 6 % click-through: 8
    clicks expected, 14 after an 80 % spike, a tail of 0.02), but the evidence adds up, across
    hours as in every CUSUM and across the two rates: each bucket adds

        llr = llr_ctr + llr_cvr,
        llr_k = (x_k ln(p1_k / p0_k) + (n - x_k) ln((1 - p1_k) / (1 - p0_k))) / (1 + (n - 1) rho_k)

    with p1_k = p0_k (1 + `shift`): the log-likelihood ratio of "both rates rose by `shift`" when
    clicks and conversions are drawn independently given the exposures (each term a binomial
    llr, quasi-likelihood scaled by that rate's learnt over-dispersion, as `RateCusumDetector`).
    Where conversions only follow clicks the two counts are positively correlated and the sum
    overstates the evidence; the threshold is measured, not derived (bench/detection.py). A
    click-only surge (bot traffic) still adds up, more slowly: the conversions then subtract
    about n KL(p0 || p1) per bucket; the per-bucket spike test stays for that.

    Each rate keeps its own baseline, over-dispersion and late learning: two `RateCusumDetector`
    (rise) whose statistics are not used. A bucket breaches when S passes `threshold` and one of
    the two rates has itself moved up by at least half the `shift`.

    Parameters
    ----------
    shift
        The relative rise of both rates the test is tuned to find fastest.
    threshold
        S, in nats, past which a bucket may breach.
    **params
        As `RateCusumDetector` (baseline, warm-up, minimum exposures, learning lag) for each rate.

    Examples
    --------
    >>> import random
    >>> from datetime import datetime, timedelta, timezone
    >>> from detectors.base import step
    >>> rng = random.Random(3)
    >>> t0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
    >>> def bucket(h, factor=1.0, n=130):
    ...     clicks = sum(rng.random() < 0.06 * factor for _ in range(n))
    ...     conversions = sum(rng.random() < 0.03 * factor for _ in range(n))
    ...     return BucketObservation("s", t0 + timedelta(hours=h), t0 + timedelta(hours=h + 1), n, clicks, conversions)
    >>> detector = JointSpikeCusumDetector()
    >>> [step(detector, bucket(h)).breached for h in range(96)].count(True)
    0
    >>> [step(detector, bucket(96 + h, factor=1.8)).breached for h in range(6)]   # both rates up 80 %
    [False, False, False, True, True, True]
    """

    kind: ClassVar[str] = "kpi_spike"
    kpi = "ctr"  # the rate it is filed under (the contract plants a click-through spike)
    kpis = ("ctr", "cvr")
    direction: Direction = "rise"

    def __init__(self, shift: float = 0.5, threshold: float = 8.0, **params: object) -> None:
        if not shift > 0 or not threshold > 0:
            raise ValueError(f"shift and threshold must be positive, got {shift}, {threshold}")
        self.shift = shift
        self.threshold = threshold
        self._rates = tuple(
            RateCusumDetector(kpi=kpi, direction="rise", shift=shift, threshold=threshold, **params)  # type: ignore[arg-type]
            for kpi in self.kpis
        )
        self._s = 0.0

    @property
    def warming_up(self) -> bool:
        return any(rate.warming_up for rate in self._rates)

    def _advanced(self, observation: BucketObservation) -> tuple[float, float] | None:
        """(new S, the larger of the two rates' relative rises), or None when the bucket cannot be judged."""
        llr, rises = 0.0, []
        for rate in self._rates:
            reading = read(observation, rate.kpi)
            p0 = rate._successes / rate._trials if rate._trials > 0 else 0.0
            if rate.warming_up or reading is None or reading.n < rate.min_exposures or not 0.0 < p0 < 1.0:
                return None
            p1 = min(p0 * (1 + self.shift), 1 - 1e-9)
            x, n = reading.total, reading.n
            llr += (x * math.log(p1 / p0) + (n - x) * math.log((1 - p1) / (1 - p0))) / (1.0 + (n - 1) * rate._rho())
            rises.append(reading.value / p0 - 1.0)
        rise = max(rises)
        if self._s > self.threshold and rise <= 0.0:  # back at baseline after an alarm: restart (see `_Cusum`)
            return 0.0, rise
        return min(2 * self.threshold, max(0.0, self._s + llr)), rise

    def score_one(self, observation: BucketObservation) -> Verdict:
        validate(observation)
        detail: dict[str, object] = {"kpi": "ctr+cvr", "exposures": observation.exposures}
        if self.warming_up:
            return Verdict(False, False, 0.0, 0.0, 0.0, warming_up=True, detail=detail)
        reading = read(observation, "ctr")
        observed = reading.value if reading else 0.0
        expected = self._rates[0]._successes / self._rates[0]._trials
        advanced = self._advanced(observation)
        if advanced is None:
            return Verdict(False, False, observed, expected, 0.0, detail={**detail, "reason": "too few exposures"})
        s, rise = advanced
        return Verdict(
            True,
            s > self.threshold and rise >= self.shift / 2,
            observed,
            expected,
            s / self.threshold,
            detail={
                **detail,
                "cusum": s,
                "threshold": self.threshold,
                "relative_change": rise,
                "rho": [rate._rho() for rate in self._rates],
            },
        )

    def track_one(self, observation: BucketObservation, verdict: Verdict) -> None:
        advanced = self._advanced(observation)
        if advanced is not None:
            self._s = advanced[0]
        for rate in self._rates:  # their own S is not used; this forgets their waiting buckets on a breach
            rate.track_one(observation, verdict)

    def learn_one(self, observation: BucketObservation) -> None:
        for rate in self._rates:
            rate.learn_one(observation)


class VolumeShareCusumDetector(RateCusumDetector):
    """A series' exposures falling as a share of its initiative's: the binomial CUSUM of a halved share.

    The share needs no seasonal forecast: the daily and weekly cycles move a series and its
    initiative together, so the baseline is a steady rate learnt from the healthy buckets,
    and a small series is judged against its initiative's volume, not its own noisy profile.
    A drop of the whole initiative leaves every share as it was: that is `VolumeCusumDetector`'s
    and the feed freshness check's to find.

    >>> VolumeShareCusumDetector().kind, VolumeShareCusumDetector().kpi
    ('volume_drop', 'exposure_share')
    """

    kind = "volume_drop"

    def __init__(self, **params: object) -> None:
        super().__init__(kpi="exposure_share", direction="drop", **{"shift": 0.5, "threshold": 8.0, **params})  # type: ignore[arg-type]
