"""Turn a detector's statistic into a tail probability that means the same on every series.

`TailCalibrator` is a peaks-over-threshold model (Pickands; SPOT, Siffer et al.
2017) kept online in O(1) state: above a fixed level `u`, the excess of the
statistic is taken to be exponential (the generalised Pareto law of shape 0),
so

    P(X > x) = rate * exp(-(x - u) / excess)        for x > u

with `rate` = P(X > u) and `excess` = E[X - u | X > u], both learnt from the
series itself as exponentially weighted means that start from a prior (worth
`prior_weight` points and `prior_weight * prior_rate` exceedances). Below `u`
the probability runs linearly from 1 at 0 to `rate` at `u`: it is only a
placeholder there (a threshold lives in the tail). A statistic whose tail is
light (Gaussian) gets a conservative probability; a heavy-tailed one is
learnt as heavy, which is what makes one threshold give about the same false
alarm rate on a latency, a count or a revenue series. With `crowd_sigmas`, an
exceedance is not learnt while the exceedances of about the last
`crowd_window` points outnumber what the learnt rate makes likely (their
exponentially weighted count is more than `crowd_sigmas` standard deviations
above its mean): isolated large values (a heavy tail) teach the tail in full,
a burst the detector has not flagged teaches it a bounded amount, so one
missed anomaly cannot widen the tail enough to hide the next.

`PeakCalibrator` is the same model over the *peaks* of the statistic's
excursions above `u` (declustered): one long excursion -- a CUSUM over a
burst the detector missed -- is learnt once, winsorised, instead of once per
point, and its p-value is a rate of excursions per point.
"""

from __future__ import annotations

import math
from typing import Any

from scipy.stats import norm


class _ExponentialTail:
    """What both calibrators share: the tail above `u`, exponential with a learnt `rate` and `excess`."""

    __slots__ = ()
    u: float
    _rate: float
    _excess: float

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def excess(self) -> float:
        return self._excess

    def p_value(self, x: float) -> float:
        """P(X >= x) under the learnt tail (1.0 for x <= 0; linear from 1 to `rate` up to u); for
        `PeakCalibrator` the rate per point of an excursion reaching x.

        >>> c = TailCalibrator(1.0, 0.1, 0.5)
        >>> round(c.p_value(1.0), 6), round(c.p_value(2.0), 6), c.p_value(0.0)
        (0.1, 0.013534, 1.0)
        """
        if not x > 0:
            return 1.0
        if x <= self.u:
            return 1.0 - (1.0 - self._rate) * x / self.u
        return self._rate * math.exp(-(x - self.u) / self._excess)


class TailCalibrator(_ExponentialTail):
    """Online exponential tail above `u` of a non-negative statistic; `p_value(x)` = P(X >= x).

    Examples
    --------
    >>> import random
    >>> rng = random.Random(1)
    >>> calibrator = TailCalibrator.for_abs_normal(u=2.0)
    >>> round(calibrator.p_value(4.0), 5)      # the prior: a Gaussian's rate and excess above 2
    0.00021
    >>> for _ in range(5000):
    ...     calibrator.learn(abs(rng.gauss(0, 1)) * 2)     # a series twice as wide as assumed
    >>> calibrator.p_value(4.0) > 0.03                     # 4 is now ordinary: about 2 sigma
    True
    """

    __slots__ = ("u", "memory", "crowd_sigmas", "_weight", "_rate", "_excess", "_excess_weight", "_crowd", "_decay")

    def __init__(
        self,
        u: float,
        prior_rate: float,
        prior_excess: float,
        *,
        prior_weight: float = 50.0,
        memory: int = 500,
        crowd_sigmas: float | None = None,
        crowd_window: int = 30,
    ) -> None:
        if u <= 0 or not 0 < prior_rate < 1 or prior_excess <= 0 or prior_weight <= 0 or memory < 1:
            raise ValueError("need u > 0, 0 < prior_rate < 1, prior_excess > 0, prior_weight > 0, memory >= 1")
        if (crowd_sigmas is not None and crowd_sigmas <= 0) or crowd_window < 2:
            raise ValueError("need crowd_sigmas > 0 (or None) and crowd_window >= 2")
        self.u = u
        self.memory = memory
        self._weight = prior_weight  # points behind _rate (capped at memory)
        self._rate = prior_rate
        self._excess = prior_excess
        self._excess_weight = prior_weight * prior_rate  # exceedances behind _excess (capped)
        self.crowd_sigmas = crowd_sigmas
        self._crowd = 0.0  # exceedances seen, exponentially weighted over about crowd_window points
        self._decay = 1.0 - 1.0 / crowd_window

    @classmethod
    def for_abs_normal(cls, u: float = 2.0, **kwargs: Any) -> TailCalibrator:
        """A calibrator of |Z| whose prior is the standard normal's two-sided tail above `u`.

        >>> c = TailCalibrator.for_abs_normal(2.0)
        >>> round(c.rate, 4), round(c.excess, 3)
        (0.0455, 0.373)
        """
        tail = float(norm.sf(u))
        return cls(u, 2 * tail, float(norm.pdf(u)) / tail - u, **kwargs)

    def learn(self, x: float) -> None:
        """Fold one value of the statistic (an in-control one: alerts are not learnt); a crowded exceedance is
        skipped (see the module's text).

        >>> import random
        >>> rng = random.Random(5)
        >>> capped = TailCalibrator.for_abs_normal(2.0, crowd_sigmas=3.0, crowd_window=30)
        >>> free = TailCalibrator.for_abs_normal(2.0)
        >>> for x in [abs(rng.gauss(0, 1)) for _ in range(1000)] + [12.0] * 20:   # then a burst of twenty
        ...     capped.learn(x); free.learn(x)
        >>> round(capped.p_value(6.0), 4), round(free.p_value(6.0), 4)
        (0.0046, 0.0369)
        """
        above = x > self.u
        if self.crowd_sigmas is not None:
            self._crowd = self._crowd * self._decay + float(above)
            # Of independent Bernoulli(rate) exceedances, the count weighted by d^age has mean rate / (1 - d) and
            # variance rate (1 - rate) / (1 - d^2); only an exceedance needs the limit.
            if above:
                mean = self._rate / (1.0 - self._decay)
                sd = math.sqrt(self._rate * (1.0 - self._rate) / (1.0 - self._decay**2))
                if self._crowd > mean + self.crowd_sigmas * sd:
                    return
        self._weight = min(self._weight + 1.0, float(self.memory))
        self._rate += (float(above) - self._rate) / self._weight
        if above:
            self._excess_weight = min(self._excess_weight + 1.0, self.memory * self._rate + 1.0)
            # An infinite statistic (a constant series that moved) says nothing about the tail's width.
            if math.isfinite(x):
                self._excess += (x - self.u - self._excess) / self._excess_weight


class PeakCalibrator(_ExponentialTail):
    """Online exponential tail of the *peaks* of a statistic's excursions above `u`; `p_value(x)` = the rate per
    point of an excursion that reaches x.

    An excursion starts when the statistic rises above `u` and ends when it falls back; only its peak is learnt
    (declustering, as in peaks-over-threshold on dependent data). So a long excursion -- a CUSUM over a burst of
    variance, a window statistic over a ramp -- counts once, not once per point, and its points never teach the
    tail while it lasts. With `rate` the upcrossings per point and `excess` the mean excess of the peaks,

        p(x) = rate * exp(-(x - u) / excess)        for x > u

    is the expected number of excursions per point that reach x: a threshold on it is a false alarm rate. An
    excursion interrupted by an alert (`discard`) is not learnt. A peak's excess is learnt winsorised at
    `WINSOR` times the current excess (the mean of an exponential so cut, then rescaled): an anomaly the
    detector missed moves the tail by a bounded amount.

    Examples
    --------
    >>> import random
    >>> rng = random.Random(3)
    >>> calibrator = PeakCalibrator(3.0, 0.01, 1.0)
    >>> round(calibrator.p_value(3.0), 5), round(calibrator.p_value(5.0), 5)
    (0.01, 0.00135)
    >>> s = 0.0
    >>> for _ in range(20_000):                       # a CUSUM of standard normal increments, allowance 0.5
    ...     s = max(0.0, s + rng.gauss(0, 1) - 0.5)
    ...     calibrator.learn(s)
    >>> 0.003 < calibrator.rate < 0.03 and 0.5 < calibrator.excess < 2.5
    True
    """

    WINSOR = 4.0

    __slots__ = ("u", "memory", "peak_memory", "_weight", "_rate", "_excess", "_peaks", "_peak", "_above")

    def __init__(
        self,
        u: float,
        prior_rate: float,
        prior_excess: float,
        *,
        prior_weight: float = 200.0,
        prior_peaks: float = 5.0,
        memory: int = 2000,
        peak_memory: int = 30,
    ) -> None:
        if (
            u <= 0
            or not 0 < prior_rate < 1
            or prior_excess <= 0
            or prior_weight <= 0
            or prior_peaks <= 0
            or memory < 1
            or peak_memory < 1
        ):
            raise ValueError("need u > 0, 0 < prior_rate < 1, prior_excess > 0, positive weights and memories")
        self.u = u
        self.memory = memory
        self.peak_memory = peak_memory
        self._weight = min(prior_weight, float(memory))
        self._rate = prior_rate
        self._excess = prior_excess
        self._peaks = min(prior_peaks, float(peak_memory))
        self._peak = 0.0  # the open excursion's peak (0: none open)
        self._above = False  # the last learnt value was above u

    def learn(self, x: float) -> None:
        """Fold one in-control value: an upcrossing counts to the rate, an excursion's end teaches its peak."""
        above = x > self.u
        self._weight = min(self._weight + 1.0, float(self.memory))
        self._rate += (float(above and not self._above) - self._rate) / self._weight
        if above:
            if math.isfinite(x):
                self._peak = max(self._peak, x)
        elif self._above:
            self._close()
        self._above = above

    def discard(self) -> None:
        """Forget the open excursion (an alert interrupted it: it is not in control)."""
        self._peak = 0.0
        self._above = False

    def _close(self) -> None:
        if self._peak > self.u:
            self._peaks = min(self._peaks + 1.0, float(self.peak_memory))
            cut = self.WINSOR * self._excess
            excess = min(self._peak - self.u, cut) / (1.0 - math.exp(-self.WINSOR))
            self._excess += (excess - self._excess) / self._peaks
        self._peak = 0.0
