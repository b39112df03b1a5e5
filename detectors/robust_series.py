"""`RobustSeriesDetector`: the general-purpose detector of one univariate series (`pmon detect`'s default).

Made for series as they come: any scale and sign, any sampling (even
irregular), a season or none. Per point, online, in bounded state:

1. **Forecast.** A few robust damped-trend Holt-Winters models run side by side
   (Gelper, Fried & Croux 2010: each value is pulled to within `HUBER` scales
   of the forecast before it is learnt, so an outlier moves nothing much): a
   fast and a slow level, each without a season and with each calendar cycle
   the sampling can show -- a day, a week, a year, in 4 to `MAX_BINS` bins
   placed by the timestamp, so gaps keep the phase; beside them an undamped
   slow model (`STEADY`: a steady trend, which a damped model lags) and an
   autoregression of the first differences fitted by recursive least squares
   (`AR_ORDER` lags: a cycle no calendar shows, a persistence). The cycle is
   found online: the model whose exponentially weighted absolute error is
   lowest is the one scored, a seasonal one only once it has seen two cycles
   and beats the unseasonal Holt-Winters ones by `SEASON_MARGIN`.
2. **Standardise.** z = residual / scale, the scale 1.4826 times a running
   median of |residual| (a stochastic-approximation tracker), floored at half
   the clipped exponentially weighted standard deviation.
3. **Calibrate.** Five statistics: |z| (a spike, a dip), a two-sided CUSUM of
   clipped z (a level shift), the same CUSUM of the slow reference's z (a
   ramp; the slow model of whichever season fits it best, chosen apart from
   the scored one), a CUSUM of min(z^2, 9) - `VARIANCE_DRIFT` (a burst of
   variance) and a CUSUM of the clipped log(|residual| / its long-run median)
   less its long-run mean and `LOG_DRIFT` (a wider noise, measured against a
   slow reference that the burst does not teach). The first four become tail
   probabilities by their own `detectors.tail_calibration.TailCalibrator`, the
   last by a `detectors.tail_calibration.PeakCalibrator` of its excursion
   peaks (a missed burst is learnt once, winsorised, not once per point), all
   learnt from the series' own healthy points (|z|'s tail skips crowded exceedances: a burst the detector
   missed does not widen it enough to hide the next; the ramp CUSUM's skips an excursion's points once it has
   stayed high for `RAMP_HOLD_POINTS`: a ramp it missed does not hide the next). score = 1 - min(1, min(p / w)),
   a weighted Bonferroni over the five (`WEIGHTS`, summing to 1): the same
   threshold is about the same false alarm rate on any series.
4. **Alert once.** A point is a breach when score >= `threshold`; the first
   breach of an episode is the alert (``detail["alert"]``), the others are
   not, and the episode ends after `cooldown` quiet points.
5. **A new normal.** Breaches are not learnt (an ongoing anomaly never becomes
   the baseline) -- until an episode has lasted `relearn_points` points and
   its last points lie within `SETTLE` scales of a line of their own: then
   every model restarts from those points (median level, Theil-Sen slope, MAD
   scale), so a lasting shift is the new normal after a bounded time. A
   transient on its way back (a drop and its recovery) is not relearnt as a
   slope; after 3 x `relearn_points` points the models restart anyway.
6. **Missing stretches.** The sampling interval is the median of the recent
   gaps; a gap longer than `GAP_FACTOR` intervals and half again the longest
   gap seen is an alert of its own (``detail["missing"]``, score 1).

No breach before `warmup_points` points are learnt. The evidence that chose
this design and its defaults is in `docs/benchmarks/real_series.md`.
"""

from __future__ import annotations

import itertools
import math
import operator
import statistics
from collections import deque
from typing import ClassVar

from detectors.base import BucketDetector, BucketObservation, Verdict
from detectors.kpis import check_kpi, read, validate
from detectors.tail_calibration import PeakCalibrator, TailCalibrator

DAY = 86_400.0
CYCLES: tuple[tuple[str, float], ...] = (("day", DAY), ("week", 7 * DAY), ("year", 365.2425 * DAY))
MAX_BINS = 168  # bins of one cycle at most: an hourly week; finer samplings share bins
HUBER = 2.0  # a value is learnt at most this many scales from the forecast
CLIP = 3.0  # |z| at most this much into the scale and the CUSUM: one spike is not a shift
CUSUM_DRIFT = 0.5  # the CUSUM's allowance k: it finds shifts of about 2k = 1 scale
VARIANCE_DRIFT = 4.5  # the variance CUSUM's allowance on z^2 (clipped at CLIP^2): finds a scale about 3 times wider
SEASON_MARGIN = 0.85  # a seasonal model must cut the error of the unseasonal ones by 15 %
GAP_FACTOR = 3.0  # a gap of more than 3 intervals may be a missing stretch
LEVELS: tuple[tuple[float, float], ...] = ((0.9, 0.3), (0.5, 0.1), (0.1, 0.02))  # (alpha, beta): fast to slow
STEADY = (0.1, 0.02)  # (alpha, beta) of the undamped slow model: a steady trend, which the damped ones lag
AR_ORDER = 6  # lags of the autoregression of first differences
AR_FORGET = 0.995  # its recursive least squares' forgetting factor: a memory of about 200 points
AR_PRIOR = 100.0  # its initial coefficient covariance (its numbers are in units of a first difference)
AR_PULL, AR_PULLS = 0.98, 10  # how far a root is pulled inside the unit circle per step, and steps at most
AR_MAX_STEPS = 50  # a gap longer than this is forecast as if it were this long
_AR = len(LEVELS) + 1  # the models' order: LEVELS', the steady one, the autoregression, then the seasonal ones
_PLAIN = _AR + 1  # the unseasonal models
SETTLE = 3.0  # a lasting change is relearnt once its points lie within SETTLE scales of their own line
GAMMA = 0.2  # the seasonal smoothing
DAMPING = 0.95  # the trend's damping per step
SCALE_WEIGHT = 0.05  # the spread's exponential weight
MEDIAN_STEP = 0.03  # the median tracker's step in log space
ERROR_WEIGHT = 0.05  # the model error's exponential weight (which model is scored)
LOG_CLIP = (-3.0, 1.5)  # log(|residual| / its long-run median) is clipped to this: one spike moves it 1.5 at most
LOG_DRIFT = 0.5  # the log-scale CUSUM's allowance: finds a noise scale about e^1 = 2.7 times the usual
LONG_STEP = 0.01  # the long-run median |residual|'s step in log space (slow: a burst does not teach it)
LONG_WEIGHT = 0.01  # the long-run mean log ratio's exponential weight
LOG_WARMUP = 20  # healthy points before the log-scale CUSUM runs (its two references settle first)
# |z|'s tail learns no exceedance while those of about the last CROWD_WINDOW points are more than CROWD_SIGMAS
# standard deviations above what its learnt rate gives: a missed burst would widen the tail until the next burst
# slipped in too. Only |z|: a CUSUM's exceedances crowd by nature, and so capped its tail is too light.
CROWD_SIGMAS, CROWD_WINDOW = 3.0, 30
# The ramp CUSUM's tail learns none of an excursion's points once it has stayed above RAMP_HOLD_LEVEL for more than
# RAMP_HOLD_POINTS learnt points: a ramp the detector has not flagged yet, or a slow reference biased by a lasting
# slope, climbs for tens of points, and taught to the tail it would hide the next ramp (traced on KO's returns: the
# tail had learnt a CUSUM of 82 as a 1-in-37 value). Short excursions, the CUSUM's everyday ones, are all learnt.
# Until each cycle of at most RAMP_HOLD_CYCLE samples has been seen twice, every point is learnt: the unseasonal slow
# reference lags such a cycle by a long excursion each half cycle (a daily cycle of 5-minute samples), which is no
# ramp. A longer cycle moves by at most 2 pi / 30 of its amplitude within the slow model's memory (1 / alpha = 10).
RAMP_HOLD_LEVEL, RAMP_HOLD_POINTS, RAMP_HOLD_CYCLE = 5.0, 10, 300
# The share of the false alarm rate each statistic may spend (a weighted Bonferroni; they sum to 1): the log-scale
# CUSUM is calibrated on excursion peaks, whose learnt tail is lighter than the points', so it gets a small share.
WEIGHTS = {"point": 0.2475, "shift": 0.2475, "drift": 0.2475, "spread": 0.2475, "logvar": 0.01}
# E[min(|Z|, CLIP)] for a standard normal Z: makes the clipped mean absolute residual a standard deviation.
_CLIPPED_MEAN_ABS = 2 * (
    0.3989422804014327 - math.exp(-CLIP * CLIP / 2) / math.sqrt(2 * math.pi)
) + 2 * CLIP * 0.5 * math.erfc(CLIP / math.sqrt(2))


def _huber(x: float, c: float) -> float:
    # max(-c, min(c, x)) without the calls: this runs for every model at every point.
    x = x if x < c else c
    return x if x > -c else -c


class _Model:
    """One robust damped-trend Holt-Winters model (plain floats and a list: pickles small)."""

    __slots__ = (
        "alpha",
        "beta",
        "period",
        "bins",
        "level",
        "trend",
        "season",
        "visits",
        "scale",
        "spread",
        "mad",
        "error",
        "n",
        "time",
        "phi",
    )

    def __init__(self, alpha: float, beta: float, period: float = 0.0, bins: int = 0, phi: float = DAMPING) -> None:
        self.alpha, self.beta, self.period, self.bins, self.phi = alpha, beta, period, bins, phi
        self.level = self.trend = 0.0
        self.season = [0.0] * bins
        self.visits = [0] * bins
        self.scale = 0.0  # what z is in: the MAD-type scale, floored by half the spread
        self.spread = 0.0  # clipped mean absolute residual / E[min(|Z|, CLIP)]: a standard deviation
        self.mad = 0.0  # the median absolute residual, tracked by stochastic approximation
        self.error = 0.0
        self.n = 0
        self.time = 0.0  # timestamp of the last value learnt

    def __getstate__(self) -> tuple:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __setstate__(self, state: tuple) -> None:
        self.phi = DAMPING  # a state saved before the slot existed
        for name, value in zip(self.__slots__, state, strict=False):  # unchanged: a shorter state sets the first slots
            setattr(self, name, value)

    def bin(self, ts: float) -> int:
        # Rounded, not floored: month starts (28 to 31 days apart) land in 12 distinct bins of a year.
        return round((ts % self.period) / self.period * self.bins) % self.bins if self.bins else 0

    def damped(self, steps: float) -> float:
        """The trend's sum over `steps` steps ahead: phi + phi^2 + ... + phi^steps."""
        phi = self.phi
        return self.trend * steps if phi >= 1.0 else self.trend * phi * (1 - phi**steps) / (1 - phi)

    def forecast(self, ts: float, steps: float) -> float:
        return self.level + self.damped(steps) + (self.season[self.bin(ts)] if self.bins else 0.0)

    def seasoned(self) -> bool:
        """True once two cycles' worth of bins were each seen twice (or it has no season)."""
        return not self.bins or (self.n >= 2 * self.bins and min(self.visits) >= 2)

    def learn(self, ts: float, y: float, steps: float) -> None:
        if self.n == 0:
            self.level, self.n, self.time = y, 1, ts
            return
        cleaned = self._track(y, self.forecast(ts, steps))
        self._update(ts, y, cleaned, steps)
        self.n = min(self.n + 1, 1_000_000)
        self.time = ts

    def _track(self, y: float, forecast: float) -> float:
        """Fold one residual into the error, the spread and the scale; returns the value to learn, Huber-cleaned."""
        # min and max written out: this runs for every model at every point.
        residual = y - forecast
        size, n, scale = abs(residual), self.n, self.scale
        clipped = size if size < CLIP * scale else CLIP * scale  # min(|residual|, CLIP scales)
        if n >= 3 and scale > 0:
            cleaned = forecast + scale * _huber(residual / scale, HUBER)
            self.error += ERROR_WEIGHT * (clipped - self.error)
        else:
            cleaned = y
            self.error += (size - self.error) / n
        weight = 1.0 / n if 1.0 / n > SCALE_WEIGHT else SCALE_WEIGHT
        bounded = size if n < 5 or scale == 0 else clipped
        self.spread += weight * (bounded / _CLIPPED_MEAN_ABS - self.spread)
        if n < 5 or self.mad == 0:
            self.mad = 0.6745 * self.spread  # the normal's median |Z| over its standard deviation
        else:
            # Robbins-Monro in log space: up when above, down when below, so it settles at the median.
            self.mad *= math.exp(MEDIAN_STEP if size > self.mad else -MEDIAN_STEP)
        mad_scale, half_spread = 1.4826 * self.mad, 0.5 * self.spread
        self.scale = half_spread if half_spread > mad_scale else mad_scale
        return cleaned

    def _update(self, ts: float, y: float, cleaned: float, steps: float) -> None:
        """Holt-Winters' level, trend and season after one value (`cleaned`: Huber-cleaned)."""
        previous = self.level + self.damped(steps)
        index = self.bin(ts)
        seasonal = self.season[index] if self.bins else 0.0
        self.level = self.alpha * (cleaned - seasonal) + (1 - self.alpha) * previous
        # Early on the trend takes whatever the first differences say; then it settles to beta.
        beta = max(self.beta, 1.0 / self.n) if self.n < 10 else self.beta
        self.trend = (
            beta * (self.level - previous + self.damped(steps)) / max(steps, 1.0)
            + (1 - beta) * self.trend * self.phi**steps
        )
        if self.bins:
            self.visits[index] = min(self.visits[index] + 1, 255)
            gamma = max(GAMMA, 1.0 / self.visits[index])
            self.season[index] += gamma * (cleaned - self.level - self.season[index])

    def fit(self, points: list[tuple[float, float]], steps_per_second: float) -> tuple[float, float, float]:
        """The points' level at the last one, slope per step (Theil-Sen) and median absolute deviation from that
        line, after this model's season."""
        deseasoned = [(ts, y - (self.season[self.bin(ts)] if self.bins else 0.0)) for ts, y in points]
        slopes = [
            (b[1] - a[1]) / ((b[0] - a[0]) * steps_per_second)
            for i, a in enumerate(deseasoned)
            for b in deseasoned[i + 1 :]
            if b[0] > a[0]
        ]
        slope = statistics.median(slopes) if slopes else 0.0
        last = deseasoned[-1][0]
        level = statistics.median(y + slope * (last - ts) * steps_per_second for ts, y in deseasoned)
        spread = statistics.median(abs(y + slope * (last - ts) * steps_per_second - level) for ts, y in deseasoned)
        return level, slope, spread

    def restart(self, points: list[tuple[float, float]], steps_per_second: float) -> None:
        """Start again from the last points of a lasting change: median level, Theil-Sen slope, MAD scale."""
        level, slope, spread = self.fit(points, steps_per_second)
        self.level, self.trend, self.time = level, slope, points[-1][0]
        self._widen(spread)

    def _widen(self, spread: float) -> None:
        self.scale = max(self.scale, 1.4826 * spread)
        self.spread = max(self.spread, 1.4826 * spread)
        self.mad = max(self.mad, spread)
        self.error = max(self.error, spread)


def _stationary(coef: list[float]) -> bool:
    """Whether x_t = sum(coef[i] x_{t-1-i}) + noise is stationary: every reflection coefficient of the
    Levinson step-down recursion inside (-1, 1) (the polynomial's roots outside the unit circle).

    >>> _stationary([1.3, -0.6]), _stationary([2 * math.cos(1 / 3), -1.0]), _stationary([0.5, 0.6])
    (True, False, False)
    """
    phi = list(coef)
    for k in range(len(phi) - 1, -1, -1):
        kappa = phi[k]
        if not abs(kappa) < 1:
            return False
        phi = [(phi[i] + kappa * phi[k - 1 - i]) / (1 - kappa * kappa) for i in range(k)]
    return True


class _ARModel(_Model):
    """An autoregression of first differences, fitted online by recursive least squares with forgetting.

    It forecasts what no calendar cycle shows -- a quasi-periodic cycle (the sunspots' eleven years, El Nino),
    a persistence -- one step at a time, a gap by iterating its own forecasts. Its regression learns the same
    Huber-cleaned values, and it keeps the same error and scale, as the Holt-Winters models; its `level` is the
    last value.

    >>> model = _ARModel(2)
    >>> for t in range(200):                      # y = 10 + 5 sin(t / 3): its differences are an AR(2)
    ...     model.learn(float(t), 10 + 5 * math.sin(t / 3), 1.0)
    >>> round(model.forecast(200.0, 1.0), 2), round(10 + 5 * math.sin(200 / 3), 2)
    (6.81, 6.8)
    """

    __slots__ = ("coef", "cov", "lags", "unit")
    _STATE = _Model.__slots__ + __slots__

    def __init__(self, order: int) -> None:
        super().__init__(1.0, 0.0)
        self.coef = [0.0] * (order + 1)  # the intercept, then one per lag
        self.cov = [[AR_PRIOR if i == j else 0.0 for j in range(order + 1)] for i in range(order + 1)]
        self.lags = [0.0] * order  # the last differences in units of `unit`, the latest first
        self.unit = 0.0  # the first difference's size: keeps the regression's numbers near 1 on any scale

    def __getstate__(self) -> tuple:
        return tuple(getattr(self, name) for name in self._STATE)

    def __setstate__(self, state: tuple) -> None:
        for name, value in zip(self._STATE, state, strict=True):
            setattr(self, name, value)

    def _next(self, lags: list[float]) -> float:
        coef = self.coef
        return coef[0] + sum(map(operator.mul, coef[1:], lags))

    def forecast(self, ts: float, steps: float) -> float:
        lags, value = self.lags, self.level
        for _ in range(min(int(steps), AR_MAX_STEPS) if self.unit else 0):
            d = self._next(lags)
            value += d * self.unit
            lags = [d, *lags[:-1]]
        return value

    def _update(self, ts: float, y: float, cleaned: float, steps: float) -> None:
        """The regression learns the Huber-cleaned difference; the next forecast starts from the value itself, so
        the model stays anchored to the series (a model that learnt only its clipped values could drift away)."""
        if not self.unit:
            self.unit = abs(y - self.level) or abs(self.level) * 1e-3 or 1.0
        for _ in range(min(int(steps), AR_MAX_STEPS) - 1):  # a gap: its points are taken to be the forecasts
            d = self._next(self.lags)
            self.level += d * self.unit
            self.lags = [d, *self.lags[:-1]]
        x = [1.0, *self.lags]
        # map(operator.mul) rather than generators: the same sums, in the same order, at half the cost.
        px = [sum(map(operator.mul, row, x)) for row in self.cov]
        denominator = AR_FORGET + sum(map(operator.mul, x, px))
        gain = [v / denominator for v in px]
        target = (cleaned - self.level) / self.unit
        error = target - self._next(self.lags)
        coef = [c + g * error for c, g in zip(self.coef, gain, strict=True)]
        cov = [
            [(r - g * p) / AR_FORGET for r, p in zip(row, px, strict=True)]
            for g, row in zip(gain, self.cov, strict=True)
        ]
        # Forgetting without excitation (a series that repeats its value) inflates the covariance without bound:
        # it is capped at the prior's.
        trace = sum(cov[i][i] for i in range(len(x)))
        if trace > AR_PRIOR * len(x):
            cov = [[v * AR_PRIOR * len(x) / trace for v in row] for row in cov]
        if math.isfinite(trace) and all(map(math.isfinite, coef)):
            # Roots on or outside the unit circle (a cycle fitted too well, a burst) would make the differences
            # explode: they are pulled inside (each lag's coefficient times r^lag multiplies every root by r); an
            # update still outside after AR_PULLS pulls is not taken.
            for _ in range(AR_PULLS):
                if _stationary(coef[1:]):
                    self.coef, self.cov = coef, cov
                    break
                coef = [coef[0], *(c * AR_PULL ** (i + 1) for i, c in enumerate(coef[1:]))]
        self.lags = [target, *self.lags[:-1]]
        self.level = y

    def restart(self, points: list[tuple[float, float]], steps_per_second: float) -> None:
        """Start again from the last points: the last value, their differences as the lags."""
        diffs = [b - a for (_, a), (_, b) in itertools.pairwise(points)]
        self.level, self.time = points[-1][1], points[-1][0]
        if self.unit:
            lags = [d / self.unit for d in reversed(diffs)]
            self.lags = (lags + [0.0] * len(self.lags))[: len(self.lags)]
        self._widen(statistics.median(map(abs, diffs)) if diffs else 0.0)


class RobustSeriesDetector(BucketDetector):
    """A univariate series (a `BucketObservation.value`, or a KPI) against its robust forecast, calibrated.

    Parameters
    ----------
    kpi
        What to read: ``value`` (a backtested series) or a mean or count KPI.
    warmup_points
        Points learnt before the first may breach; also the points of a lasting change after which it is
        the new normal, unless `relearn_points` says otherwise.
    threshold
        The score from which a point is a breach (score = 1 - p, p the calibrated tail probability).
    cooldown
        Quiet points that end an episode: a breach within them raises no new alert.

    Examples
    --------
    >>> import math, random
    >>> from datetime import datetime, timedelta, timezone
    >>> from detectors.base import step
    >>> rng = random.Random(7)
    >>> t0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
    >>> def point(i, shift=0.0):       # 5-minute samples of a daily cycle, in the thousands
    ...     t = t0 + timedelta(minutes=5 * i)
    ...     y = 5000 + 800 * math.sin(2 * math.pi * i / 288) + rng.gauss(0, 40) + shift
    ...     return BucketObservation("s", t, t + timedelta(minutes=5), 0, value=y)
    >>> detector = RobustSeriesDetector()
    >>> verdicts = [step(detector, point(i)) for i in range(600)]       # two days
    >>> sum(v.detail.get("alert", False) for v in verdicts)             # no false alarm
    0
    >>> verdict = step(detector, point(600, shift=-600))                 # a dip of 15 scales
    >>> verdict.detail["alert"], verdict.score > 0.999
    (True, True)
    >>> verdicts = [step(detector, point(i)) for i in range(601, 610)]
    >>> [step(detector, point(i, shift=300)).detail["alert"] for i in range(610, 650)].count(True)
    1
    >>> step(detector, point(650, shift=300)).breached                  # the shift is the new normal
    False
    """

    kind: ClassVar[str] = "kpi_spike"

    def __init__(
        self,
        kpi: str = "value",
        warmup_points: int = 12,
        threshold: float = 0.999,
        cooldown: int = 3,
        relearn_points: int | None = None,
    ) -> None:
        check_kpi(kpi, ("mean", "poisson"))
        if warmup_points < 2 or not 0 < threshold < 1 or cooldown < 1:
            raise ValueError("warmup_points must be >= 2, threshold in (0, 1) and cooldown >= 1")
        relearn = warmup_points if relearn_points is None else relearn_points
        if relearn < 3:
            raise ValueError("relearn_points must be >= 3")
        self.kpi = kpi
        self.warmup_points = warmup_points
        self.threshold = threshold
        self.cooldown = cooldown
        self.relearn_points = relearn
        # The damped models of LEVELS (each gets seasonal variants), the steady one, the autoregression.
        self._models = [_Model(alpha, beta) for alpha, beta in LEVELS]
        self._models += [_Model(*STEADY, phi=1.0), _ARModel(AR_ORDER)]
        self._best = 0
        self._learnt = 0
        self._point = TailCalibrator.for_abs_normal(2.0, crowd_sigmas=CROWD_SIGMAS, crowd_window=CROWD_WINDOW)
        # Two-sided CUSUM of N(0, 1) increments with drift -k: P(S > x) ~ 2 exp(-2k (x + 0.583)) (Siegmund).
        self._shift = TailCalibrator(3.0, min(0.5, 2 * math.exp(-2 * CUSUM_DRIFT * 3.583)), 1 / (2 * CUSUM_DRIFT))
        self._drift = TailCalibrator(3.0, min(0.5, 2 * math.exp(-2 * CUSUM_DRIFT * 3.583)), 1 / (2 * CUSUM_DRIFT))
        self._slow = len(LEVELS) - 1  # the slow reference (best slow model of any season): shows a ramp
        # Two-sided CUSUMs of the scored model's z and of the slow model's: up, down, slow up, slow down; then the
        # variance CUSUM of the scored model's z^2.
        # CUSUM of min(z^2, 9) - 4.5 of N(0, 1) z, simulated (2e6 points): P(S > 3) = 0.0069, E[S - 3 | S > 3] = 1.09.
        self._spread = TailCalibrator(3.0, 0.0069, 1.09)
        # CUSUM of clip(log(|r| / median |r|)) - mean - 0.5 of normal r, simulated (2e6 points): upcrossings of 3 per
        # point 0.00305 (kept), mean peak excess 0.61 (doubled: real residuals' volatility clusters).
        self._logvar = PeakCalibrator(3.0, 0.00305, 1.2)
        self._cusum = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        self._drift_run = 0  # learnt points the ramp CUSUM has stayed above RAMP_HOLD_LEVEL
        self._abs_median = 0.0  # long-run median |residual| of the scored model (tracked in log space)
        self._log_mean = 0.0  # long-run mean of the clipped log(|residual| / _abs_median)
        self._long_n = 0  # healthy points behind the two
        self._gaps: deque[float] = deque(maxlen=31)
        self._interval: float | None = None
        self._longest = 0.0
        self._last: float | None = None  # timestamp of the last point seen
        self._quiet = 0  # quiet points since the episode's last breach
        self._episode = 0  # points in the current episode (0: none)
        self._recent: deque[tuple[float, float]] = deque(maxlen=relearn)

    # ------------------------------------------------------------------------------------- reading
    @property
    def warming_up(self) -> bool:
        return self._learnt < self.warmup_points

    @property
    def interval(self) -> float | None:
        """The sampling interval in seconds: the median of the last 31 gaps (None before the second point)."""
        return self._interval

    @property
    def season(self) -> str:
        """The cycle of the model being scored: "none", "day", "week" or "year".

        >>> RobustSeriesDetector().season
        'none'
        """
        model = self._models[self._best]
        return next((name for name, period in CYCLES if model.bins and period == model.period), "none")

    def _value(self, observation: BucketObservation) -> float | None:
        reading = read(observation, self.kpi)
        return None if reading is None else reading.value

    def _steps(self, model: _Model, ts: float) -> float:
        interval = self.interval
        return max(1.0, round((ts - model.time) / interval)) if interval else 1.0

    def _log_ratio(self, ts: float, y: float) -> float | None:
        """log(|residual| / its long-run median), clipped to LOG_CLIP (None until LOG_WARMUP healthy points)."""
        if self._long_n < LOG_WARMUP or self._abs_median <= 0:
            return None
        model = self._models[self._best]
        residual = abs(y - model.forecast(ts, self._steps(model, ts)))
        low, high = LOG_CLIP
        ratio = math.log(residual / self._abs_median) if residual > 0 else low
        return max(low, min(high, ratio))

    def _z(self, ts: float, y: float, index: int | None = None) -> float:
        model = self._models[self._best if index is None else index]
        residual = y - model.forecast(ts, self._steps(model, ts))
        if model.scale > 0:
            return residual / model.scale
        return 0.0 if residual == 0 else math.copysign(math.inf, residual)

    # ------------------------------------------------------------------------------------- the API
    def score_one(self, observation: BucketObservation) -> Verdict:
        validate(observation)
        y = self._value(observation)
        ts = observation.bucket_start.timestamp()
        if y is None or self.warming_up:
            return Verdict(
                False, False, y or 0.0, 0.0, 0.0, warming_up=self.warming_up, detail={"kpi": self.kpi, "alert": False}
            )
        model = self._models[self._best]
        expected = model.forecast(ts, self._steps(model, ts))
        z, z_slow = self._z(ts, y), self._z(ts, y, self._slow)
        ratio = self._log_ratio(ts, y)
        cusum = self._advance(z, z_slow, ratio)
        p_point = self._point.p_value(abs(z))
        p_shift = self._shift.p_value(max(cusum[:2]))
        p_drift = self._drift.p_value(max(cusum[2:4]))
        p_spread = self._spread.p_value(cusum[4])
        p_logvar = self._logvar.p_value(cusum[5])
        ps = {"point": p_point, "shift": p_shift, "drift": p_drift, "spread": p_spread, "logvar": p_logvar}
        p_value = min(1.0, min(ps[name] / WEIGHTS[name] for name in WEIGHTS))
        score = 1.0 - p_value
        breached = score >= self.threshold
        gap = ts - self._last if self._last is not None else 0.0
        interval = self.interval
        missing = interval is not None and interval != 0 and gap > max(GAP_FACTOR * interval, 1.5 * self._longest)
        alert = (breached and self._episode == 0) or missing
        return Verdict(
            True,
            breached,
            y,
            expected,
            1.0 if missing else score,
            detail={
                "kpi": self.kpi,
                "z": z,
                "z_slow": z_slow,
                "p_point": p_point,
                "p_shift": p_shift,
                "p_drift": p_drift,
                "p_spread": p_spread,
                "p_logvar": p_logvar,
                "p_value": p_value,
                "cusum": cusum,
                "logvar_before": self._cusum[5],
                "alert": alert,
                "missing": missing,
                "season": self.season,
                "interval_seconds": interval,
            },
        )

    def track_one(self, observation: BucketObservation, verdict: Verdict) -> None:
        """Advance what runs over every point: the clock, the CUSUM, the episode, a lasting change's restart."""
        ts = observation.bucket_start.timestamp()
        self._clock(ts, learnt=not verdict.breached)
        if not verdict.scored:
            return
        self._cusum = verdict.detail["cusum"]
        noise = verdict.detail["p_logvar"] / WEIGHTS["logvar"] <= verdict.detail["p_value"]
        if verdict.breached and not noise:
            # Another statistic's breach (a spike, a dip, a shift) is no evidence of noise: the log-scale CUSUM
            # does not take it.
            self._cusum = (*self._cusum[:5], verdict.detail["logvar_before"])
        if verdict.breached:
            self._discard()
            self._episode += 1
            self._quiet = 0
            self._recent.append((ts, verdict.observed))
            if self._episode >= self.relearn_points:
                self._restart_if_settled()
        elif self._episode:
            self._episode += 1
            self._quiet += 1
            self._recent.append((ts, verdict.observed))
            if self._quiet >= self.cooldown:
                self._episode = self._quiet = 0
                self._recent.clear()

    def learn_one(self, observation: BucketObservation) -> None:
        validate(observation)
        y = self._value(observation)
        ts = observation.bucket_start.timestamp()
        self._clock(ts, learnt=True)
        if y is None:
            return
        if not self.warming_up:
            z = self._z(ts, y)
            if math.isfinite(z):
                self._point.learn(abs(z))
                self._shift.learn(max(self._cusum[:2]))
                drift = max(self._cusum[2:4])
                self._drift_run = self._drift_run + 1 if drift > RAMP_HOLD_LEVEL else 0
                if self._drift_run <= RAMP_HOLD_POINTS or not self._short_cycles_seen():
                    self._drift.learn(drift)
                self._spread.learn(self._cusum[4])
                if self._log_ratio(ts, y) is not None:
                    self._logvar.learn(self._cusum[5])
            self._learn_long(ts, y)
        for model in self._models:
            if ts > model.time or model.n == 0:
                model.learn(ts, y, self._steps(model, ts))
        self._learnt = min(self._learnt + 1, self.warmup_points)
        if not self.warming_up and len(self._models) == _PLAIN and self.interval:
            self._add_seasons()
        self._choose()

    # ------------------------------------------------------------------------------------- internals
    def _clock(self, ts: float, *, learnt: bool) -> None:
        if self._last is not None and ts > self._last:
            gap = ts - self._last
            interval = self.interval
            # A gap is learnt as the sampling's when it is not a missing stretch.
            if learnt and (not interval or gap <= max(GAP_FACTOR * interval, 1.5 * self._longest)):
                self._longest = max(self._longest, gap)
            self._gaps.append(gap)
            self._interval = statistics.median(self._gaps)
        if self._last is None or ts > self._last:
            self._last = ts

    def _learn_long(self, ts: float, y: float) -> None:
        """The long-run references of the log-scale CUSUM (healthy points only)."""
        self._long_n = min(self._long_n + 1, 1_000_000)
        step = max(LONG_STEP, 1.0 / self._long_n)
        model = self._models[self._best]
        residual = abs(y - model.forecast(ts, self._steps(model, ts)))
        ratio = self._log_ratio(ts, y)
        if ratio is not None:
            self._log_mean += max(LONG_WEIGHT, 1.0 / (self._long_n - LOG_WARMUP + 1)) * (ratio - self._log_mean)
        if self._abs_median <= 0:
            self._abs_median = residual
        elif residual != self._abs_median:
            self._abs_median *= math.exp(step if residual > self._abs_median else -step)

    def _add_seasons(self) -> None:
        """Once the interval is known: a candidate model per cycle the sampling can show."""
        interval = self.interval or 0.0
        for _name, period in CYCLES:
            samples = period / interval
            if samples < 4 or samples > 20 * MAX_BINS:  # too coarse to show it, or too long to learn it
                continue
            for template in self._models[: len(LEVELS)]:
                model = _Model(template.alpha, template.beta, period, min(MAX_BINS, round(samples)), template.phi)
                model.level, model.trend, model.scale = template.level, template.trend, template.scale
                model.spread, model.mad = template.spread, template.mad
                model.error, model.n, model.time = template.error, 3, template.time
                self._models.append(model)

    def _advance(
        self, z: float, z_slow: float, ratio: float | None = None
    ) -> tuple[float, float, float, float, float, float]:
        """The CUSUMs after this point's z (clipped: one spike is not a shift)."""
        up, down, slow_up, slow_down, spread, logvar = self._cusum
        logvar = 0.0 if ratio is None else max(0.0, logvar + ratio - self._log_mean - LOG_DRIFT)
        if not math.isfinite(z_slow):
            z_slow = z
        return (
            max(0.0, up + min(z, CLIP) - CUSUM_DRIFT),
            max(0.0, down - max(z, -CLIP) - CUSUM_DRIFT),
            max(0.0, slow_up + min(z_slow, CLIP) - CUSUM_DRIFT),
            max(0.0, slow_down - max(z_slow, -CLIP) - CUSUM_DRIFT),
            max(0.0, spread + min(z * z, CLIP * CLIP) - VARIANCE_DRIFT),
            logvar,
        )

    def _choose(self) -> None:
        # A season must beat the unseasonal Holt-Winters models by the margin; the autoregression competes on its
        # error alone (were it the bar, a season it forecasts nearly as well would never be chosen, and its
        # multi-step forecasts across an episode are the worse).
        plain = min(range(_AR), key=lambda i: self._models[i].error)
        best, best_error = plain, self._models[plain].error
        if self._models[_AR].error < best_error:
            best, best_error = _AR, self._models[_AR].error
        for i, model in enumerate(self._models[_PLAIN:], start=_PLAIN):
            # The errors first: `seasoned` walks every bin.
            if (
                model.error < SEASON_MARGIN * self._models[plain].error
                and model.error < best_error
                and model.seasoned()
            ):
                best, best_error = i, model.error
        self._best = best
        # The slow reference is chosen on its own error: the scored model may be a fast unseasonal one (a smooth
        # series) while only a seasonal slow model forecasts well enough for its CUSUM to show a ramp.
        slow = [i for i, m in enumerate(self._models) if m.alpha == LEVELS[-1][0]]
        plain_slow = slow[0]
        self._slow = min(
            (
                i
                for i in slow
                if i == plain_slow
                or (
                    self._models[i].error < SEASON_MARGIN * self._models[plain_slow].error
                    and self._models[i].seasoned()
                )
            ),
            key=lambda i: self._models[i].error,
        )

    def _short_cycles_seen(self) -> bool:
        """Whether each cycle of at most RAMP_HOLD_CYCLE samples that a slow model was given has lasted twice."""
        interval = self.interval or 1.0
        slow = LEVELS[-1][0]
        return all(
            model.n * interval >= 2 * model.period
            for model in self._models[_PLAIN:]
            if model.alpha == slow and model.period <= RAMP_HOLD_CYCLE * interval
        )

    def _discard(self) -> None:
        """An alert interrupts the open excursion of the peak-calibrated statistic: it is not learnt."""
        self._logvar.discard()

    def _restart_if_settled(self) -> None:
        """Relearn from the episode's last points once they lie near a line of their own (a new level or slope);
        while they still scatter (a transient on its way back), wait, up to 3 x relearn_points, then relearn anyway
        with the scale they show."""
        points = list(self._recent)
        steps_per_second = 1.0 / (self.interval or 1.0)
        holt = min(self._models[:_AR], key=lambda m: m.error)  # the best model that fits a line
        _, _, spread = holt.fit(points, steps_per_second)
        settled = 1.4826 * spread <= SETTLE * holt.scale
        if not settled and self._episode < 3 * self.relearn_points:
            return
        for model in self._models:
            model.restart(points, steps_per_second)
        self._cusum = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        self._episode = self._quiet = 0
        self._recent.clear()
