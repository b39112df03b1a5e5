"""The statistics of an experiment readout, as small numpy-vectorised kernels.

Every kernel takes the per-variant summaries a stream can keep exactly (users,
sums, sums of squares; see `experiments.state`), works element-wise on numpy
arrays as well as on floats (the simulations in `tests/unit/test_experiments.py`
read thousands of experiments at once through these very functions), and
returns floats for scalar input. Distributions come from `scipy`; what is
written here is only the algebra of each test. The assumptions of each test
are in `experiments/README.md`.

A comparison is always "variant minus control": `difference = mean_b - mean_a`
with `a` the control, and its variance `V = var_a / n_a + var_b / n_b`
(per-user variances, unpooled).

>>> round(two_proportion_ztest(100, 1000, 130, 1000).p_value, 6)
0.035488
>>> round(msprt_p_value(0.03, 0.0002, 0.0004), 6)
0.386473
>>> holm_adjusted([0.01, 0.04, 0.03]).round(3).tolist()
[0.03, 0.06, 0.06]
"""

from __future__ import annotations

import functools
import importlib.util
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from experiments.exceptions import InvalidStatisticInput


def _lazy(name: str) -> Any:
    """The standard library's lazy-import recipe: scipy (about a second to import) loads at the first
    statistic computed, not when a command that needs none (`--help`, a stored report) starts."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.loader is not None, f"{name} is not installed"
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module


integrate, optimize, special, stats = (_lazy(f"scipy.{name}") for name in ("integrate", "optimize", "special", "stats"))

ArrayLike = Any  # a float or a numpy array of floats, element-wise


# The normal's tails through scipy.special's ufuncs: the same functions scipy.stats.norm evaluates, without its
# argument checking, which costs ~100 times the evaluation and dominated the readouts at every bucket close.
def _norm_sf(x: ArrayLike) -> Any:
    return special.ndtr(-np.asarray(x))


def _norm_isf(q: ArrayLike) -> Any:
    return -special.ndtri(q)


def _norm_pdf(x: ArrayLike) -> Any:
    return np.exp(-0.5 * np.square(x)) / math.sqrt(2 * math.pi)


def _out(value: np.ndarray) -> Any:
    # Scalars in, floats out: the readout's pydantic models want plain floats.
    return float(value) if np.ndim(value) == 0 else value


@dataclass(frozen=True, slots=True)
class FixedHorizonTest:
    """A fixed-horizon test of "variant minus control": estimate, its standard error, the statistic and the
    two-sided p-value. `standard_error` is the unpooled one an interval is built from; the statistic of the
    two-proportion test uses the pooled one (the variance under the null)."""

    difference: Any
    standard_error: Any
    statistic: Any
    p_value: Any
    degrees_of_freedom: Any = math.inf


def _finite(function: str, **values: ArrayLike) -> list[np.ndarray]:
    """The arguments as float arrays; InvalidStatisticInput naming the first that holds a NaN or an infinity."""
    arrays = []
    for name, value in values.items():
        array = np.asarray(value, dtype=float)
        if not np.all(np.isfinite(array)):
            raise InvalidStatisticInput(f"{function}: {name} must be finite, got {value!r}")
        arrays.append(array)
    return arrays


def two_proportion_ztest(
    successes_a: ArrayLike, n_a: ArrayLike, successes_b: ArrayLike, n_b: ArrayLike
) -> FixedHorizonTest:
    """The two-sided two-proportion z-test with the pooled variance under the null.

    z = (p_b - p_a) / sqrt(p (1 - p) (1 / n_a + 1 / n_b)), p = (x_a + x_b) / (n_a + n_b).
    Both rates at 0 (or both at 1) give z = 0 and p-value 1: nothing to compare.

    >>> test = two_proportion_ztest(100, 1000, 130, 1000)
    >>> round(test.difference, 3), round(test.statistic, 4), round(test.p_value, 6)
    (0.03, 2.1027, 0.035488)
    """
    x_a, n_a, x_b, n_b = _finite(
        "two_proportion_ztest", successes_a=successes_a, n_a=n_a, successes_b=successes_b, n_b=n_b
    )
    if np.any(n_a <= 0) or np.any(n_b <= 0) or np.any((x_a < 0) | (x_a > n_a) | (x_b < 0) | (x_b > n_b)):
        raise InvalidStatisticInput("two_proportion_ztest needs 0 <= successes <= n and n > 0 in both arms")
    p_a, p_b = x_a / n_a, x_b / n_b
    pooled = (x_a + x_b) / (n_a + n_b)
    se_null = np.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    difference = p_b - p_a
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se_null > 0, difference / np.where(se_null > 0, se_null, 1.0), 0.0)
    se = np.sqrt(p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b)
    return FixedHorizonTest(_out(difference), _out(se), _out(z), _out(2 * _norm_sf(np.abs(z))))


def welch_ttest(
    mean_a: ArrayLike, variance_a: ArrayLike, n_a: ArrayLike, mean_b: ArrayLike, variance_b: ArrayLike, n_b: ArrayLike
) -> FixedHorizonTest:
    """Welch's two-sided t-test of the means from per-arm means, sample variances (ddof 1) and sizes.

    Degrees of freedom by Welch–Satterthwaite; identical to
    `scipy.stats.ttest_ind(b, a, equal_var=False)` on the raw values (tested).
    Zero variance in both arms gives t = 0 and p-value 1.

    >>> test = welch_ttest(2.0, 4.0, 400, 2.5, 9.0, 400)
    >>> round(test.statistic, 4), round(test.degrees_of_freedom, 1), round(test.p_value, 6)
    (2.7735, 695.2, 0.005694)
    """
    m_a, v_a, n_a, m_b, v_b, n_b = _finite(
        "welch_ttest", mean_a=mean_a, variance_a=variance_a, n_a=n_a, mean_b=mean_b, variance_b=variance_b, n_b=n_b
    )
    if np.any(n_a < 2) or np.any(n_b < 2) or np.any(v_a < 0) or np.any(v_b < 0):
        raise InvalidStatisticInput("welch_ttest needs at least 2 users per arm and non-negative variances")
    share_a, share_b = v_a / n_a, v_b / n_b
    variance = share_a + share_b
    difference = m_b - m_a
    positive = variance > 0
    safe = np.where(positive, variance, 1.0)
    t = np.where(positive, difference / np.sqrt(safe), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        df = np.where(positive, safe**2 / (share_a**2 / (n_a - 1) + share_b**2 / (n_b - 1)), np.inf)
    p_value = np.where(positive, 2 * stats.t.sf(np.abs(t), np.where(positive, df, 1.0)), 1.0)
    return FixedHorizonTest(_out(difference), _out(np.sqrt(variance)), _out(t), _out(p_value), _out(df))


def difference_interval(test: FixedHorizonTest, alpha: float) -> tuple[Any, Any]:
    """The two-sided 1 - alpha interval of the difference: normal (z-test) or Student t with Welch's df.

    >>> low, high = difference_interval(two_proportion_ztest(100, 1000, 130, 1000), 0.05)
    >>> round(low, 4), round(high, 4)
    (0.0021, 0.0579)
    """
    quantile = stats.t.isf(alpha / 2, test.degrees_of_freedom)
    margin = quantile * test.standard_error
    return _out(test.difference - margin), _out(test.difference + margin)


def relative_lift_variance(
    mean_a: ArrayLike, variance_a: ArrayLike, n_a: ArrayLike, mean_b: ArrayLike, variance_b: ArrayLike, n_b: ArrayLike
) -> Any:
    """Var(mean_b / mean_a - 1) by the delta method: var_b / (n_b mean_a^2) + mean_b^2 var_a / (n_a mean_a^4).

    The first-order expansion of the ratio of two independent means; nan when the control mean is 0.

    >>> round(relative_lift_variance(0.10, 0.09, 1000, 0.13, 0.1131, 1000), 5)
    0.02652
    """
    m_a, v_a, n_a, m_b, v_b, n_b = _finite(
        "relative_lift", mean_a=mean_a, variance_a=variance_a, n_a=n_a, mean_b=mean_b, variance_b=variance_b, n_b=n_b
    )
    if np.any(v_a < 0) or np.any(v_b < 0) or np.any(n_a < 1) or np.any(n_b < 1):
        raise InvalidStatisticInput("relative_lift needs non-negative variances and at least one user per arm")
    safe = np.where(m_a != 0, m_a, 1.0)
    return _out(np.where(m_a != 0, v_b / (n_b * safe**2) + m_b**2 * v_a / (n_a * safe**4), np.nan))


def relative_lift(
    mean_a: ArrayLike,
    variance_a: ArrayLike,
    n_a: ArrayLike,
    mean_b: ArrayLike,
    variance_b: ArrayLike,
    n_b: ArrayLike,
    alpha: float,
) -> tuple[Any, Any, Any]:
    """Relative lift mean_b / mean_a - 1 and its 1 - alpha interval by the delta method
    (`relative_lift_variance`, normal quantiles). nan when the control mean is 0.

    >>> lift, low, high = relative_lift(0.10, 0.09, 1000, 0.13, 0.1131, 1000, 0.05)
    >>> round(lift, 3), round(low, 4), round(high, 4)
    (0.3, -0.0192, 0.6192)
    """
    m_a, m_b = np.asarray(mean_a, dtype=float), np.asarray(mean_b, dtype=float)
    lift = np.where(m_a != 0, m_b / np.where(m_a != 0, m_a, 1.0) - 1, np.nan)
    se = np.sqrt(np.asarray(relative_lift_variance(mean_a, variance_a, n_a, mean_b, variance_b, n_b)))
    z = _norm_isf(alpha / 2)
    return _out(lift), _out(lift - z * se), _out(lift + z * se)


def relative_lift_test(
    mean_a: float, variance_a: float, n_a: int, mean_b: float, variance_b: float, n_b: int, alpha: float
) -> tuple[float, float, float, float]:
    """The fixed-horizon readout's one test: (lift, low, high, p) of the Wald test of the relative lift
    mean_b / mean_a - 1 with its delta-method standard error (`relative_lift_variance`). The interval is the
    test's own, so p < alpha exactly when it excludes 0.

    >>> lift, low, high, p = relative_lift_test(0.10, 0.09, 1000, 0.13, 0.1131, 1000, 0.05)
    >>> round(lift, 3), round(low, 4), round(high, 4), round(p, 4)
    (0.3, -0.0192, 0.6192, 0.0654)
    """
    lift, low, high = relative_lift(mean_a, variance_a, n_a, mean_b, variance_b, n_b, alpha)
    se = math.sqrt(relative_lift_variance(mean_a, variance_a, n_a, mean_b, variance_b, n_b))
    # No spread to test against (e.g. a variant with no conversion at all yet): no p-value, nan.
    p = float(2 * _norm_sf(abs(lift) / se)) if se > 0 else math.nan
    return float(lift), float(low), float(high), p


def one_sided_lift_bounds(
    mean_a: float, variance_a: float, n_a: int, mean_b: float, variance_b: float, n_b: int, alpha: float
) -> tuple[float, float]:
    """(lower, upper) one-sided 1 - alpha bounds of the relative lift, each by the delta method: the bounds a
    non-inferiority test at level alpha compares with its margin.

    >>> low, high = one_sided_lift_bounds(0.10, 0.09, 1000, 0.13, 0.1131, 1000, 0.05)
    >>> round(low, 4), round(high, 4)
    (0.0321, 0.5679)
    """
    lift, _, _ = relative_lift(mean_a, variance_a, n_a, mean_b, variance_b, n_b, alpha)
    se = math.sqrt(relative_lift_variance(mean_a, variance_a, n_a, mean_b, variance_b, n_b))
    z = float(_norm_isf(alpha))
    return float(lift - z * se), float(lift + z * se)


# --------------------------------------------------------------------------- CUPED


def cuped_theta(covariate_variance: float, covariance: float) -> float:
    """CUPED's coefficient theta = Cov(Y, X) / Var(X) of Deng, Xu, Kohavi and Walker (2013), from the pooled
    users of both arms: the regression slope of the metric on its pre-exposure covariate. 0 when the
    covariate does not vary (nothing to adjust with).

    >>> cuped_theta(2.0, 0.5)
    0.25
    """
    x_var, cov = _finite("cuped_theta", covariate_variance=covariate_variance, covariance=covariance)
    if x_var < 0:
        raise InvalidStatisticInput(f"cuped_theta: covariate_variance must be >= 0, got {covariate_variance!r}")
    return float(cov / x_var) if x_var > 0 else 0.0


def cuped_adjusted(
    mean: float,
    variance: float,
    covariate_mean: float,
    covariate_variance: float,
    covariance: float,
    theta: float,
    pooled_covariate_mean: float,
) -> tuple[float, float]:
    """One arm's CUPED-adjusted mean and per-user variance: the mean of Y - theta (X - mean of X over both
    arms), and Var(Y) + theta^2 Var(X) - 2 theta Cov(Y, X) (clamped at 0 against rounding).

    Randomisation makes X's mean the same in expectation in every arm, so the adjusted mean estimates the
    arm's mean; its variance is smaller by the share rho^2 that X explains.

    >>> cuped_adjusted(0.10, 0.09, 0.5, 1.0, 0.06, 0.06, 0.45)
    (0.097, 0.0864)
    """
    m, v, x_m, x_v, cov, th, pooled = _finite(
        "cuped_adjusted",
        mean=mean,
        variance=variance,
        covariate_mean=covariate_mean,
        covariate_variance=covariate_variance,
        covariance=covariance,
        theta=theta,
        pooled_covariate_mean=pooled_covariate_mean,
    )
    if v < 0 or x_v < 0:
        raise InvalidStatisticInput("cuped_adjusted needs non-negative variances")
    return float(m - th * (x_m - pooled)), float(max(0.0, v + th * th * x_v - 2 * th * cov))


# --------------------------------------------------------------------------- always-valid (mSPRT)


def msprt_log_likelihood_ratio(difference: ArrayLike, variance: ArrayLike, mixture_variance: ArrayLike) -> Any:
    """log of the normal-mixture SPRT statistic of Johari et al. (2017, 2022) for H0: difference = 0.

    With the estimate d ~ N(theta, V) and the mixing prior theta ~ N(0, tau^2):
    log Lambda = 1/2 log(V / (V + tau^2)) + tau^2 d^2 / (2 V (V + tau^2)).
    Under H0 Lambda is a martingale in the information 1 / V (the estimate is a Brownian
    motion in it), so P(Lambda ever exceeds 1 / alpha) <= alpha (Ville's inequality).

    >>> round(msprt_log_likelihood_ratio(0.03, 0.0002, 0.0004), 6)
    0.950694
    """
    d, v, tau2 = _finite("msprt", difference=difference, variance=variance, mixture_variance=mixture_variance)
    if np.any(v <= 0) or np.any(tau2 <= 0):
        raise InvalidStatisticInput("the mSPRT needs a positive variance and mixture variance")
    return _out(0.5 * np.log(v / (v + tau2)) + tau2 * d**2 / (2 * v * (v + tau2)))


def msprt_p_value(
    difference: ArrayLike, variance: ArrayLike, mixture_variance: ArrayLike, previous_p_value: ArrayLike = 1.0
) -> Any:
    """The always-valid p-value after one more look: min(previous, 1 / Lambda), capped at 1.

    Valid at any (data-dependent) stopping time, so it may be read after every batch.

    >>> p1 = msprt_p_value(0.03, 0.0002, 0.0004)
    >>> round(p1, 6), msprt_p_value(0.0, 0.0001, 0.0004, previous_p_value=p1) == p1
    (0.386473, True)
    """
    llr = np.asarray(msprt_log_likelihood_ratio(difference, variance, mixture_variance))
    return _out(np.minimum(np.asarray(previous_p_value, dtype=float), np.minimum(1.0, np.exp(-llr))))


def confidence_sequence_halfwidth(variance: ArrayLike, mixture_variance: ArrayLike, alpha: float) -> Any:
    """Half-width of the always-valid 1 - alpha interval of the difference: the values the mSPRT does not reject.

    Inverting log Lambda(d - theta0) < log(1 / alpha):
    |d - theta0| < sqrt(V (V + tau^2) / tau^2 (2 log(1 / alpha) + log((V + tau^2) / V))).

    >>> round(confidence_sequence_halfwidth(0.0002, 0.0004, 0.05), 5)
    0.04612
    """
    v, tau2 = _finite("confidence_sequence_halfwidth", variance=variance, mixture_variance=mixture_variance)
    if np.any(v <= 0) or np.any(tau2 <= 0) or not 0 < alpha < 1:
        raise InvalidStatisticInput("the confidence sequence needs V > 0, tau^2 > 0 and 0 < alpha < 1")
    return _out(np.sqrt(v * (v + tau2) / tau2 * (2 * math.log(1 / alpha) + np.log((v + tau2) / v))))


# --------------------------------------------------------------------------- power and sample size


def power_fixed_horizon(effect: ArrayLike, variance: ArrayLike, alpha: float) -> Any:
    """P(the two-sided level-alpha normal test finds a positive `effect` significant and positive),
    for an estimate of variance V: Phi(effect / sqrt(V) - z_{1 - alpha / 2}).

    >>> round(power_fixed_horizon(0.02, 0.0001, 0.05), 4)
    0.516
    """
    return _out(special.ndtr(np.asarray(effect) / np.sqrt(variance) - _norm_isf(alpha / 2)))


def power_sequential_at(effect: ArrayLike, variance: ArrayLike, mixture_variance: ArrayLike, alpha: float) -> Any:
    """P(the mSPRT rejects, in the positive direction, at a look where the estimate has variance V).

    Phi((effect - h(V)) / sqrt(V)) with h the confidence-sequence half-width: exact for a single
    look, a lower bound for the chance of having rejected by then when every batch is read.

    >>> round(power_sequential_at(0.02, 0.0001, 0.0004, 0.05), 4)
    0.1395
    """
    half = np.asarray(confidence_sequence_halfwidth(variance, mixture_variance, alpha))
    return _out(special.ndtr((np.asarray(effect) - half) / np.sqrt(variance)))


@functools.lru_cache(maxsize=64)  # a function of alpha alone, asked for at every readout
def optimal_mixture_ratio(alpha: float) -> float:
    """r* = tau^2 / V minimising the confidence sequence's half-width at variance V: the half-width is
    sqrt(V) c(r) with c(r)^2 = (1 + 1/r) (2 log(1/alpha) + log(1 + r)) (`confidence_sequence_halfwidth`),
    so r* depends on alpha alone (about 8 at alpha 0.05).

    >>> round(optimal_mixture_ratio(0.05), 3)
    8.212
    """
    if not 0 < alpha < 1:
        raise InvalidStatisticInput(f"optimal_mixture_ratio needs 0 < alpha < 1, got {alpha}")
    width = lambda log_r: (1 + math.exp(-log_r)) * (2 * math.log(1 / alpha) + math.log1p(math.exp(log_r)))  # noqa: E731
    return math.exp(optimize.minimize_scalar(width, bounds=(-10.0, 10.0), method="bounded", options={"xatol": 1e-10}).x)


def tuned_mixture_variance(effect: float, power: float, alpha: float) -> float:
    """The mSPRT's mixing variance tau^2 tuned to the planned sample: the confidence sequence is narrowest
    (ratio `optimal_mixture_ratio`) at the variance V* at which a true `effect` is found with `power`.

    With tau^2 = r* V, the sequential power Phi((effect - c(r*) sqrt(V)) / sqrt(V)) equals `power` at
    sqrt(V*) = effect / (c(r*) + z_power), in closed form; so tau^2 = r* V*. The same idea as tuning the
    mixture to an expected sample size (Howard et al. 2021, "Time-uniform, nonparametric, nonasymptotic
    confidence sequences", section 3.5; GrowthBook's `sequential_tuning_parameter`), here from the plan.

    >>> round(tuned_mixture_variance(0.01, 0.8, 0.05) / 0.01 ** 2, 4)
    0.5464
    """
    return optimal_mixture_ratio(alpha) * planned_variance(effect, power, alpha)


def planned_variance(effect: float, power: float, alpha: float) -> float:
    """V* = (effect / (c(r*) + z_power))^2: the variance at which the mSPRT with the tuned mixture
    (`tuned_mixture_variance`) finds a true `effect` with `power`. The root `required_variance` would find
    for that mixture, in closed form.

    >>> round(planned_variance(0.01, 0.8, 0.05) / 0.01 ** 2, 5)
    0.06654
    """
    if not effect > 0 or not 0 < power < 1:
        raise InvalidStatisticInput(f"the planned variance needs effect > 0 and 0 < power < 1, got {effect}, {power}")
    ratio = optimal_mixture_ratio(alpha)
    c = math.sqrt((1 + 1 / ratio) * (2 * math.log(1 / alpha) + math.log1p(ratio)))
    return (effect / (c + float(special.ndtri(power)))) ** 2


def required_variance(
    effect: float, power: float, alpha: float, *, sequential: bool, mixture_variance: float | None = None
) -> float:
    """The variance V of the estimate at which the test reaches `power` for a true `effect` (> 0).

    Fixed horizon: V = (effect / (z_{1 - alpha / 2} + z_power))^2. Sequential: the root of
    `power_sequential_at(effect, V) = power` (it falls as V grows), found by Brent's method on log V.
    Users needed: V = (var_a / share_a + var_b / share_b) / N for N users in all.

    >>> round(required_variance(0.02, 0.8, 0.05, sequential=False), 8)
    5.096e-05
    >>> round(required_variance(0.02, 0.8, 0.05, sequential=True, mixture_variance=0.0004), 8)
    2.63e-05
    """
    if not effect > 0 or not 0 < power < 1 or not 0 < alpha < 1:
        raise InvalidStatisticInput(f"need effect > 0, 0 < power < 1, 0 < alpha < 1; got {effect}, {power}, {alpha}")
    if not sequential:
        return float((effect / (_norm_isf(alpha / 2) + special.ndtri(power))) ** 2)
    if mixture_variance is None or not mixture_variance > 0:
        raise InvalidStatisticInput("the sequential sample size needs a positive mixture variance")

    def shortfall(log_v: float) -> float:
        return float(power_sequential_at(effect, math.exp(log_v), mixture_variance, alpha)) - power

    # At V = effect^2 * 1e-8 the power is 1; at V = effect^2 * 10 it is far below any useful power.
    return math.exp(optimize.brentq(shortfall, math.log(effect**2 * 1e-8), math.log(effect**2 * 10), xtol=1e-10))


# --------------------------------------------------------------------------- Bayesian


# Fixed Gauss-Legendre nodes on [-1, 1] for the Beta integral of posteriors with every parameter >= _FIXED_MIN: such
# a Beta is near normal, so the narrower one's density times the other's smooth tail is integrated over its mean +- 12
# standard deviations (their mass beyond is below 1e-15) to within the adaptive quadrature's own error, 1e-8 of the
# exact sum (a test), at a tenth of its cost: the readouts at every bucket close call it three times a comparison.
_FIXED_MIN, _FIXED_SDS = 30.0, 12.0
_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(64)


def beta_probability_to_beat(alpha_a: float, beta_a: float, alpha_b: float, beta_b: float) -> float:
    """P(p_b > p_a) for independent p_a ~ Beta(alpha_a, beta_a), p_b ~ Beta(alpha_b, beta_b).

    One-dimensional quadrature of f_a(x) P(p_b > x) over the bulk of p_a's density (its
    1e-15 quantiles), where the integrand is smooth even for posteriors of millions of users;
    with every parameter at least 30, a 64-point Gauss-Legendre rule over the narrower
    posterior's mean +- 12 standard deviations (`_FIXED_MIN`).

    >>> round(beta_probability_to_beat(1 + 100, 1 + 900, 1 + 130, 1 + 870), 4)
    0.9822
    >>> round(beta_probability_to_beat(1 + 10, 1 + 90, 1 + 13, 1 + 87), 4)      # the adaptive quadrature
    0.7425
    """
    for value in (alpha_a, beta_a, alpha_b, beta_b):
        if not value > 0:
            raise InvalidStatisticInput(f"Beta parameters must be positive, got {value}")
    if min(alpha_a, beta_a, alpha_b, beta_b) >= _FIXED_MIN:
        return _beta_beat_fixed(alpha_a, beta_a, alpha_b, beta_b)
    # scipy.special rather than frozen scipy.stats objects inside the integrand: the same functions at a
    # hundredth of the per-call cost, which a readout of many comparisons (and the tests' simulations) feels.
    log_norm_a = special.betaln(alpha_a, beta_a)

    def integrand(x: float) -> float:
        density_a = math.exp((alpha_a - 1) * math.log(x) + (beta_a - 1) * math.log1p(-x) - log_norm_a)
        return density_a * special.betaincc(alpha_b, beta_b, x)

    low, high = special.betaincinv(alpha_a, beta_a, 1e-15), special.betainccinv(alpha_a, beta_a, 1e-15)
    value, _ = integrate.quad(integrand, max(low, 1e-300), min(high, 1 - 1e-16), epsabs=1e-12, epsrel=1e-10, limit=200)
    return min(1.0, max(0.0, value))


def _beta_beat_fixed(alpha_a: float, beta_a: float, alpha_b: float, beta_b: float) -> float:
    """`beta_probability_to_beat` by fixed nodes: f_a(x) P(p_b > x) over p_a's bulk when p_a is the narrower
    posterior, else f_b(y) P(p_a < y) over p_b's (the other's tail is then smooth across the nodes)."""
    mean_a, mean_b = alpha_a / (alpha_a + beta_a), alpha_b / (alpha_b + beta_b)
    var_a = mean_a * (1 - mean_a) / (alpha_a + beta_a + 1)
    var_b = mean_b * (1 - mean_b) / (alpha_b + beta_b + 1)
    over_a = var_a <= var_b
    alpha, beta, mean, sd = (alpha_a, beta_a, mean_a, var_a**0.5) if over_a else (alpha_b, beta_b, mean_b, var_b**0.5)
    low, high = max(mean - _FIXED_SDS * sd, 0.0), min(mean + _FIXED_SDS * sd, 1.0)
    half = 0.5 * (high - low)
    x = low + half * (_NODES + 1.0)
    density = np.exp((alpha - 1) * np.log(x) + (beta - 1) * np.log1p(-x) - special.betaln(alpha, beta))
    other = special.betaincc(alpha_b, beta_b, x) if over_a else special.betainc(alpha_a, beta_a, x)
    return min(1.0, max(0.0, float(half * np.dot(_WEIGHTS, density * other))))


def beta_expected_loss(alpha_a: float, beta_a: float, alpha_b: float, beta_b: float) -> float:
    """E[max(p_a - p_b, 0)]: what choosing the variant b costs, in rate, when the control a is better.

    By size-biasing, E[p_a 1{p_a > p_b}] = E[p_a] P(Beta(alpha_a + 1, beta_a) > p_b), and likewise for p_b,
    so the loss is two `beta_probability_to_beat` integrals.

    >>> round(beta_expected_loss(1 + 100, 1 + 900, 1 + 130, 1 + 870), 6)
    9.2e-05
    """
    mean_a, mean_b = alpha_a / (alpha_a + beta_a), alpha_b / (alpha_b + beta_b)
    a_wins_biased = 1 - beta_probability_to_beat(alpha_a + 1, beta_a, alpha_b, beta_b)
    a_wins_b_biased = 1 - beta_probability_to_beat(alpha_a, beta_a, alpha_b + 1, beta_b)
    return max(0.0, mean_a * a_wins_biased - mean_b * a_wins_b_biased)


def normal_probability_to_beat(difference: ArrayLike, variance: ArrayLike) -> Any:
    """P(theta > 0) for the posterior theta ~ N(difference, V) (flat prior, normal approximation of means).

    >>> round(normal_probability_to_beat(0.5, 0.0325), 4)
    0.9972
    """
    return _out(special.ndtr(np.asarray(difference) / np.sqrt(variance)))


def relative_chance_to_win(
    mean_a: float, variance_a: float, n_a: int, mean_b: float, variance_b: float, n_b: int, *, inverse: bool = False
) -> tuple[float, float]:
    """GrowthBook's default Bayesian readout: a flat prior on the relative lift, so its posterior is the
    lift's delta-method normal, N(mean_b / mean_a - 1, `relative_lift_variance`). Returns (chance to win
    = P(lift > 0), expected relative loss of choosing b = E[max(-lift, 0)]); `inverse` for a metric meant to
    fall: P(lift < 0) and E[max(lift, 0)].

    >>> chance, loss = relative_chance_to_win(0.10, 0.09, 1000, 0.13, 0.1131, 1000)
    >>> round(chance, 4), round(loss, 5)
    (0.9673, 0.00209)
    """
    lift = mean_b / mean_a - 1 if mean_a else math.nan
    variance = float(relative_lift_variance(mean_a, variance_a, n_a, mean_b, variance_b, n_b))
    if not (math.isfinite(lift) and variance > 0):
        return 0.5, 0.0  # GrowthBook's uninformative answer: nothing to read yet
    good = -lift if inverse else lift
    return float(normal_probability_to_beat(good, variance)), float(normal_expected_loss(good, variance))


def normal_expected_loss(difference: ArrayLike, variance: ArrayLike) -> Any:
    """E[max(-theta, 0)] for theta ~ N(d, V): s phi(d / s) - d Phi(-d / s), s = sqrt(V).

    >>> round(normal_expected_loss(0.5, 0.0325), 6)
    0.00015
    """
    d, s = np.asarray(difference, dtype=float), np.sqrt(np.asarray(variance, dtype=float))
    return _out(s * _norm_pdf(d / s) - d * special.ndtr(-d / s))


# --------------------------------------------------------------------------- sample ratio, multiplicity


@dataclass(frozen=True, slots=True)
class SampleRatioTest:
    statistic: float
    p_value: float
    expected: tuple[float, ...]


def sample_ratio_test(counts: Mapping[str, int], allocation: Mapping[str, float]) -> SampleRatioTest:
    """Pearson's chi-square of the users per variant against the planned allocation (normalised).

    >>> result = sample_ratio_test({"control": 5000, "treatment": 5250}, {"control": 0.5, "treatment": 0.5})
    >>> round(result.statistic, 4), round(result.p_value, 6)
    (6.0976, 0.013537)
    """
    if set(counts) != set(allocation) or len(counts) < 2:
        raise InvalidStatisticInput(
            f"counts {sorted(counts)} and allocation {sorted(allocation)} must name the same two or more variants"
        )
    names = sorted(counts)
    negative = [name for name in names if not counts[name] >= 0]
    if negative:
        raise InvalidStatisticInput(
            f"sample_ratio_test: users of {negative[0]!r} must be a count >= 0, got {counts[negative[0]]!r}"
        )
    shares = np.array([allocation[name] for name in names], dtype=float)
    if np.any(~np.isfinite(shares)) or np.any(shares <= 0):
        raise InvalidStatisticInput(f"allocation shares must be positive: {dict(allocation)}")
    observed = np.array([counts[name] for name in names], dtype=float)
    expected = observed.sum() * shares / shares.sum()
    # Pearson's statistic and its chi-square tail (what scipy.stats.chisquare computes, without its overhead).
    statistic = float(np.sum((observed - expected) ** 2 / expected))
    p_value = float(special.chdtrc(len(names) - 1, statistic))
    return SampleRatioTest(statistic, p_value, tuple(float(e) for e in expected))


def _p_values(p_values: Sequence[float]) -> np.ndarray:
    p = np.asarray(p_values, dtype=float)
    if np.any((p < 0) | (p > 1)):
        raise InvalidStatisticInput(f"p-values must lie in [0, 1]: {p.tolist()}")
    return p


def holm_adjusted(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error rate), in the input order.

    The i-th smallest p is multiplied by (m - i + 1), then made non-decreasing in that order.

    >>> holm_adjusted([0.01, 0.04, 0.03, 0.5]).round(3).tolist()
    [0.04, 0.09, 0.09, 0.5]
    """
    p = _p_values(p_values)
    if p.size == 0:
        return p
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, np.maximum.accumulate(p[order] * np.arange(p.size, 0, -1)))
    adjusted = np.empty_like(p)
    adjusted[order] = scaled
    return adjusted


def benjamini_hochberg_adjusted(p_values: Sequence[float]) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (false discovery rate), by `scipy.stats.false_discovery_control`.

    >>> benjamini_hochberg_adjusted([0.01, 0.04, 0.03, 0.5]).round(4).tolist()
    [0.04, 0.0533, 0.0533, 0.5]
    """
    p = _p_values(p_values)
    if p.size == 0:
        return p
    return np.asarray(stats.false_discovery_control(p, method="bh"), dtype=float)
