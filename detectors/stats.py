"""Tail probabilities the detectors test with, as plain floats.

`scipy.special`'s ufuncs compute the same values as `scipy.stats.binom.cdf`,
`poisson.cdf` and `norm.cdf` (the tests check that) at a fiftieth of the cost:
the benchmark calls them a few hundred thousand times. The wrappers also fix
the edges where the ufuncs return nan (a count above n, a negative count).
scipy is imported at each function's first call, not with the module: loading
it is most of a command's start-up, and `pmon --help` or a stored report needs none.

>>> round(binom_lower_tail(61, 800, 0.1), 6), round(binom_upper_tail(3, 10, 0.02), 6)
(0.012322, 0.000864)
>>> round(poisson_lower_tail(0, 3.0), 6), poisson_upper_tail(0, 3.0)
(0.049787, 1.0)
>>> round(count_lower_tail(43, 73.0), 6), round(count_lower_tail(43, 73.0, dispersion=2.35), 6)
(0.000102, 0.006165)
"""

from __future__ import annotations

import math


def binom_lower_tail(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p)."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    from scipy.special import bdtr  # at first use (module docstring)

    return float(bdtr(k, n, p))


def binom_upper_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    if k <= 0:
        return 1.0
    if k > n or p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    from scipy.special import bdtrc  # at first use (module docstring)

    return float(bdtrc(k - 1, n, p))


def rate_lower_tail(k: int, n: int, p: float, rho: float = 0.0) -> float:
    """P(X <= k) for k successes out of n at rate p, over-dispersed by an intra-bucket correlation rho.

    Binomial when rho is 0; above, the beta-binomial of mean n p and variance
    n p (1 - p) (1 + (n - 1) rho): what a binomial count becomes when its rate
    itself wanders a little from bucket to bucket.
    """
    if rho <= 0.0 or k < 0 or k >= n or not 0.0 < p < 1.0:
        return binom_lower_tail(k, n, p)
    a, b = p * (1.0 / rho - 1.0), (1.0 - p) * (1.0 / rho - 1.0)
    from scipy.stats import betabinom  # at first use (module docstring)

    return float(betabinom.cdf(k, n, a, b))


def rate_upper_tail(k: int, n: int, p: float, rho: float = 0.0) -> float:
    """P(X >= k) for k successes out of n at rate p, over-dispersed by rho (see `rate_lower_tail`)."""
    if rho <= 0.0 or k <= 0 or k > n or not 0.0 < p < 1.0:
        return binom_upper_tail(k, n, p)
    a, b = p * (1.0 / rho - 1.0), (1.0 - p) * (1.0 / rho - 1.0)
    from scipy.stats import betabinom  # at first use (module docstring)

    return float(betabinom.sf(k - 1, n, a, b))


def poisson_lower_tail(k: int, mu: float) -> float:
    """P(X <= k) for X ~ Poisson(mu)."""
    if k < 0:
        return 0.0
    if mu <= 0.0:
        return 1.0
    from scipy.special import pdtr  # at first use (module docstring)

    return float(pdtr(k, mu))


def poisson_upper_tail(k: int, mu: float) -> float:
    """P(X >= k) for X ~ Poisson(mu)."""
    if k <= 0:
        return 1.0
    if mu <= 0.0:
        return 0.0
    from scipy.special import pdtrc  # at first use (module docstring)

    return float(pdtrc(k - 1, mu))


def count_lower_tail(k: int, mean: float, dispersion: float = 1.0) -> float:
    """P(X <= k) for a count of this mean and variance = dispersion x mean.

    Poisson when dispersion is 1; above, the negative binomial with that mean and
    variance (n = mean / (dispersion - 1) successes, success probability 1 / dispersion),
    which is what a Poisson count becomes when its own mean is uncertain.
    """
    if dispersion <= 1.0 + 1e-9:
        return poisson_lower_tail(k, mean)
    if k < 0:
        return 0.0
    if mean <= 0.0:
        return 1.0
    from scipy.special import betainc  # at first use (module docstring)

    return float(betainc(mean / (dispersion - 1.0), k + 1, 1.0 / dispersion))


def count_upper_tail(k: int, mean: float, dispersion: float = 1.0) -> float:
    """P(X >= k) for a count of this mean and variance = dispersion x mean (see `count_lower_tail`)."""
    if dispersion <= 1.0 + 1e-9:
        return poisson_upper_tail(k, mean)
    if k <= 0:
        return 1.0
    if mean <= 0.0:
        return 0.0
    from scipy.special import betainc  # at first use (module docstring)

    return float(betainc(k, mean / (dispersion - 1.0), 1.0 - 1.0 / dispersion))


def normal_lower_tail(z: float) -> float:
    """P(Z <= z) for a standard normal Z."""
    from scipy.special import ndtr  # at first use (module docstring)

    return float(ndtr(z))


def normal_upper_tail(z: float) -> float:
    """P(Z >= z) for a standard normal Z."""
    from scipy.special import ndtr  # at first use (module docstring)

    return float(ndtr(-z))


def ewma_weight(span: int) -> float:
    """The weight of a new value in an exponentially weighted mean whose centre of mass is a `span`-long window.

    >>> ewma_weight(1), round(ewma_weight(71), 4)
    (1.0, 0.0278)
    """
    return 2.0 / (span + 1.0)


def finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
