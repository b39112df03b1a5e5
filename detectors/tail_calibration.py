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
alarm rate on a latency, a count or a revenue series.
"""

from __future__ import annotations

import math
from typing import Any

from scipy.stats import norm


class TailCalibrator:
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

    __slots__ = ("u", "memory", "_weight", "_rate", "_excess", "_excess_weight")

    def __init__(self, u: float, prior_rate: float, prior_excess: float, *, prior_weight: float = 50.0,
                 memory: int = 500) -> None:
        if u <= 0 or not 0 < prior_rate < 1 or prior_excess <= 0 or prior_weight <= 0 or memory < 1:
            raise ValueError("need u > 0, 0 < prior_rate < 1, prior_excess > 0, prior_weight > 0, memory >= 1")
        self.u = u
        self.memory = memory
        self._weight = prior_weight                    # points behind _rate (capped at memory)
        self._rate = prior_rate
        self._excess = prior_excess
        self._excess_weight = prior_weight * prior_rate   # exceedances behind _excess (capped)

    @classmethod
    def for_abs_normal(cls, u: float = 2.0, **kwargs: Any) -> TailCalibrator:
        """A calibrator of |Z| whose prior is the standard normal's two-sided tail above `u`.

        >>> c = TailCalibrator.for_abs_normal(2.0)
        >>> round(c.rate, 4), round(c.excess, 3)
        (0.0455, 0.373)
        """
        tail = float(norm.sf(u))
        return cls(u, 2 * tail, float(norm.pdf(u)) / tail - u, **kwargs)

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def excess(self) -> float:
        return self._excess

    def p_value(self, x: float) -> float:
        """P(X >= x) under the learnt tail (1.0 for x <= 0).

        >>> c = TailCalibrator(1.0, 0.1, 0.5)
        >>> round(c.p_value(1.0), 6), round(c.p_value(2.0), 6), c.p_value(0.0)
        (0.1, 0.013534, 1.0)
        """
        if not x > 0:
            return 1.0
        if x <= self.u:
            return 1.0 - (1.0 - self._rate) * x / self.u
        return self._rate * math.exp(-(x - self.u) / self._excess)

    def learn(self, x: float) -> None:
        """Fold one value of the statistic (an in-control one: alerts are not learnt)."""
        self._weight = min(self._weight + 1.0, float(self.memory))
        above = x > self.u
        self._rate += (float(above) - self._rate) / self._weight
        if above:
            self._excess_weight = min(self._excess_weight + 1.0, self.memory * self._rate + 1.0)
            # An infinite statistic (a constant series that moved) says nothing about the tail's width.
            if math.isfinite(x):
                self._excess += (x - self.u - self._excess) / self._excess_weight
