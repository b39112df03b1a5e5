"""Experiment readouts: every statistic against scipy or a closed form, the sequential test's error rate
under continuous monitoring (and the fixed-horizon test's inflation), power, the decision rule, change
events and the memo. Simulations are seeded and vectorised through the package's own kernels."""

from __future__ import annotations

import math
from datetime import datetime, timezone

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate
from scipy import stats as sps
from scipy.special import betaln

from experiments import stats
from experiments.decision import InvestigationFlag, decision_change, recommend
from experiments.exceptions import ExperimentError, InvalidEvent, InvalidStatisticInput, InvalidTotals
from experiments.memo import build_memo, render_memo
from experiments.readout import read_experiment
from experiments.spec import DecisionRules, ExperimentSpec, Guardrail, SuccessMetric
from experiments.state import MICROS, ExperimentTotals, UserRecord, VariantTotals, micros, observe_event
from incidents.model import IncidentEvent

ALPHA = 0.05
T0, T1 = datetime(2026, 11, 1, tzinfo=timezone.utc), datetime(2026, 11, 8, tzinfo=timezone.utc)


# The readout's mixing variance for a planned absolute effect d is TUNED x d^2 (power 0.8, alpha 0.05, one
# comparison): `stats.tuned_mixture_variance` is quadratic in the effect.
TUNED = stats.tuned_mixture_variance(1.0, 0.8, 0.05)

def rates(control: tuple[int, int], treatment: tuple[int, int], dims: dict | None = None) -> ExperimentTotals:
    """Totals of a conversion-only experiment: (users, converting users) per variant, one conversion each;
    `dims`: variant -> users by dimension."""
    dims = dims or {}
    def one(users: int, converting: int, name: str) -> VariantTotals:
        return VariantTotals(users=users, converting_users=converting, conversions=converting,
                             conversions_sq=converting, users_by_dimension=dims.get(name, {}))
    return ExperimentTotals({"control": one(*control, "control"), "treatment": one(*treatment, "treatment")})


def totals_from_users(variants: dict[str, tuple[np.ndarray, np.ndarray]]) -> ExperimentTotals:
    """Fold raw per-user conversions and revenue through `observe_event`, one event at a time."""
    totals = ExperimentTotals()
    for name, (conversions, revenue) in variants.items():
        for user_conversions, user_revenue in zip(conversions, revenue, strict=True):
            user, delta = observe_event(None, variant=name, event_type="exposure")
            totals += delta
            for _ in range(int(user_conversions)):   # the revenue split over the user's conversions
                share = float(user_revenue) / user_conversions
                user, delta = observe_event(user, variant=name, event_type="conversion", revenue=share)
                totals += delta
    return totals


def simulated_users(
    rng: np.random.Generator, n: int, rate: float, revenue_mean: float
) -> tuple[np.ndarray, np.ndarray]:
    conversions = rng.binomial(1, rate, n) * (1 + rng.poisson(0.3, n))
    # In cents, as revenue is (the sums are exact to the micro-unit).
    revenue = np.where(conversions > 0, np.round(rng.gamma(2.0, revenue_mean / 2.0, n), 2), 0.0)
    return conversions, revenue


# --------------------------------------------------------------------------- fixed-horizon tests vs scipy

@pytest.mark.parametrize(("x_a", "n_a", "x_b", "n_b"), [(100, 1000, 130, 1000), (37, 812, 29, 790),
                                                        (5012, 50000, 5230, 49800), (0, 40, 3, 45)])
def test_two_proportion_ztest_matches_the_closed_form(x_a: int, n_a: int, x_b: int, n_b: int) -> None:
    p_a, p_b, pooled = x_a / n_a, x_b / n_b, (x_a + x_b) / (n_a + n_b)
    z = (p_b - p_a) / math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    test = stats.two_proportion_ztest(x_a, n_a, x_b, n_b)
    assert test.statistic == pytest.approx(z, abs=1e-9)
    assert test.p_value == pytest.approx(2 * sps.norm.sf(abs(z)), abs=1e-6)
    se = math.sqrt(p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b)
    low, high = stats.difference_interval(test, ALPHA)
    assert (low, high) == pytest.approx((p_b - p_a - 1.959963985 * se, p_b - p_a + 1.959963985 * se), abs=1e-6)


def test_welch_from_streamed_sums_matches_scipy_ttest_on_the_raw_users() -> None:
    rng = np.random.default_rng(5)
    users = {"control": simulated_users(rng, 700, 0.12, 40.0), "treatment": simulated_users(rng, 650, 0.14, 44.0)}
    totals = totals_from_users(users)
    for metric, raw in (("revenue_per_user", 1), ("conversions_per_user", 0)):
        a, b = (totals.variants[v].moments(metric) for v in ("control", "treatment"))
        assert a.mean == pytest.approx(users["control"][raw].mean(), abs=1e-9)
        assert a.variance == pytest.approx(users["control"][raw].var(ddof=1), rel=1e-9)
        test = stats.welch_ttest(a.mean, a.variance, a.users, b.mean, b.variance, b.users)
        reference = sps.ttest_ind(users["treatment"][raw], users["control"][raw], equal_var=False)
        assert test.statistic == pytest.approx(reference.statistic, abs=1e-6)
        assert test.p_value == pytest.approx(reference.pvalue, abs=1e-6)
        interval = reference.confidence_interval(1 - ALPHA)
        assert stats.difference_interval(test, ALPHA) == pytest.approx((interval.low, interval.high), abs=1e-6)
    # The fixed-horizon readout tests the relative lift it shows: the Wald test with the delta-method standard
    # error on the raw users, its p-value and its interval one procedure.
    spec = ExperimentSpec(experiment="e", allocation={"control": 1, "treatment": 1},
                          success_metrics=(SuccessMetric(metric="revenue_per_user"),),
                          rules=DecisionRules(method="fixed_horizon"))
    comparison = read_experiment(spec, totals).comparison("treatment", "revenue_per_user")
    ra, rb = users["control"][1], users["treatment"][1]
    lift = rb.mean() / ra.mean() - 1
    se = math.sqrt(rb.var(ddof=1) / rb.size / ra.mean() ** 2
                   + rb.mean() ** 2 * ra.var(ddof=1) / ra.size / ra.mean() ** 4)
    assert comparison.relative_lift == pytest.approx(lift, abs=1e-9)
    assert comparison.p_value == pytest.approx(2 * sps.norm.sf(abs(lift) / se), abs=1e-9)
    z = sps.norm.isf(ALPHA / 2)
    assert (comparison.lift_low, comparison.lift_high) == pytest.approx((lift - z * se, lift + z * se), abs=1e-9)


def test_relative_lift_interval_is_the_delta_method_on_the_raw_users() -> None:
    rng = np.random.default_rng(8)
    a, b = rng.gamma(2.0, 5.0, 900), rng.gamma(2.0, 5.6, 1100)
    lift, low, high = stats.relative_lift(a.mean(), a.var(ddof=1), a.size, b.mean(), b.var(ddof=1), b.size, ALPHA)
    # d(mb/ma) = dmb / ma - mb dma / ma^2, the two means independent.
    se = math.sqrt(b.var(ddof=1) / b.size / a.mean() ** 2 + b.mean() ** 2 * a.var(ddof=1) / a.size / a.mean() ** 4)
    assert lift == pytest.approx(b.mean() / a.mean() - 1, abs=1e-12)
    assert (low, high) == pytest.approx((lift - sps.norm.isf(ALPHA / 2) * se, lift + sps.norm.isf(ALPHA / 2) * se),
                                        abs=1e-9)


def test_sample_ratio_tests_match_scipy_chisquare_overall_and_per_dimension() -> None:
    spec = ExperimentSpec(experiment="e", allocation={"control": 0.6, "treatment": 0.4}, srm_dimensions=("channel",))
    totals = rates((6150, 600), (4400, 390), {"control": {"channel": {"web": 3000, "app": 3150}},
                                              "treatment": {"channel": {"web": 2300, "app": 2100}}})
    checks = {c.scope: c for c in read_experiment(spec, totals).sample_ratio}
    assert set(checks) == {"overall", "channel=app", "channel=web"}
    for scope, (control, treatment) in {"overall": (6150, 4400), "channel=app": (3150, 2100),
                                        "channel=web": (3000, 2300)}.items():
        total = control + treatment
        reference = sps.chisquare([control, treatment], [0.6 * total, 0.4 * total])
        assert checks[scope].p_value == pytest.approx(reference.pvalue, abs=1e-9)
        assert checks[scope].statistic == pytest.approx(reference.statistic, abs=1e-6)
        assert checks[scope].mismatch == (reference.pvalue < 0.001)
    assert checks["channel=web"].mismatch and not checks["channel=app"].mismatch   # web: p ~ 4e-7, app: 1


# --------------------------------------------------------------------------- Bayesian vs integration / Monte Carlo

def _beat_closed_form(a_a: int, b_a: int, a_b: int, b_b: int) -> float:
    """Evan Miller's exact sum for P(p_b > p_a), integer alpha_b."""
    i = np.arange(a_b)
    terms = betaln(a_a + i, b_a + b_b) - np.log(b_b + i) - betaln(1 + i, b_b) - betaln(a_a, b_a)
    return float(np.exp(terms).sum())


@pytest.mark.parametrize(("a", "b"), [((11, 91), (15, 87)), ((101, 901), (131, 871)),
                                      ((5013, 45000), (5201, 44800)), ((1, 1), (1, 1))])
def test_beta_probability_to_beat_matches_the_exact_sum(a: tuple[int, int], b: tuple[int, int]) -> None:
    assert stats.beta_probability_to_beat(*a, *b) == pytest.approx(_beat_closed_form(*a, *b), abs=1e-6)


def test_the_fixed_rule_for_large_posteriors_matches_the_exact_sum() -> None:
    """Every parameter >= 30 takes the 64-node rule (over either posterior, whichever is narrower): within 1e-8
    of the exact sum on posteriors of 60 to 200,000 users and rates of 0.2 % to 98 %, equal sizes or not."""
    rng = np.random.default_rng(5)
    checked = 0
    while checked < 150:
        n_a, n_b = rng.choice([60, 300, 2_000, 20_000, 200_000], 2)
        rate = rng.choice([0.002, 0.02, 0.1, 0.3, 0.5, 0.8, 0.98])
        c_a, c_b = round(n_a * rate), round(n_b * min(0.99, rate * rng.uniform(0.8, 1.25)))
        a, b = (1 + c_a, 1 + n_a - c_a), (1 + c_b, 1 + n_b - c_b)
        if min(*a, *b) < 30:
            continue
        assert stats.beta_probability_to_beat(*a, *b) == pytest.approx(_beat_closed_form(*a, *b), abs=1e-8), (a, b)
        checked += 1


def test_beta_probability_and_loss_agree_with_monte_carlo() -> None:
    rng = np.random.default_rng(11)
    draws = 400_000
    p_a, p_b = rng.beta(101, 901, draws), rng.beta(121, 881, draws)
    # Monte Carlo standard errors: sqrt(P (1 - P) / draws) <= 0.0008, sd(loss) / sqrt(draws); 5 of them.
    beat = (p_b > p_a).mean()
    assert stats.beta_probability_to_beat(101, 901, 121, 881) == pytest.approx(beat, abs=5 * math.sqrt(
        beat * (1 - beat) / draws))
    loss = np.maximum(p_a - p_b, 0.0)
    tolerance = 5 * loss.std() / math.sqrt(draws)
    assert stats.beta_expected_loss(101, 901, 121, 881) == pytest.approx(loss.mean(), abs=tolerance)


def test_normal_probability_and_loss_match_numerical_integration() -> None:
    d, v = 0.012, 0.0001
    density = sps.norm(d, math.sqrt(v))
    assert stats.normal_probability_to_beat(d, v) == pytest.approx(density.sf(0.0), abs=1e-9)
    loss, _ = integrate.quad(lambda t: -t * density.pdf(t), -1.0, 0.0, epsabs=1e-12)
    assert stats.normal_expected_loss(d, v) == pytest.approx(loss, abs=1e-8)


# --------------------------------------------------------------------------- multiplicity

def test_holm_and_benjamini_hochberg_by_hand() -> None:
    p = [0.010, 0.040, 0.030, 0.005, 0.200]
    # Holm: sorted 0.005, 0.010, 0.030, 0.040, 0.200 times 5, 4, 3, 2, 1 = .025 .04 .09 .08 .2; running max.
    assert stats.holm_adjusted(p).tolist() == pytest.approx([0.04, 0.09, 0.09, 0.025, 0.2], abs=1e-12)
    # BH: sorted times 5 / rank = .025 .025 .05 .05 .2; running min from the top.
    assert stats.benjamini_hochberg_adjusted(p).tolist() == pytest.approx([0.025, 0.05, 0.05, 0.025, 0.2],
                                                                          abs=1e-12)
    with pytest.raises(InvalidStatisticInput):
        stats.holm_adjusted([0.5, 1.2])


# --------------------------------------------------------------------------- the mixture SPRT

def test_msprt_statistic_is_the_normal_mixture_of_likelihood_ratios() -> None:
    d, v, tau2 = 0.021, 0.00009, 0.0004
    mixture, _ = integrate.quad(lambda t: sps.norm.pdf(d, t, math.sqrt(v)) / sps.norm.pdf(d, 0, math.sqrt(v))
                                * sps.norm.pdf(t, 0, math.sqrt(tau2)), -0.3, 0.3, epsabs=1e-12, points=[d])
    assert stats.msprt_log_likelihood_ratio(d, v, tau2) == pytest.approx(math.log(mixture), abs=1e-6)
    # The confidence sequence's edge is where the statistic of (d - theta0) is exactly 1 / alpha.
    half = stats.confidence_sequence_halfwidth(v, tau2, ALPHA)
    assert stats.msprt_log_likelihood_ratio(half, v, tau2) == pytest.approx(math.log(1 / ALPHA), abs=1e-9)


def test_sequential_readouts_are_the_msprt_at_each_look_and_its_confidence_sequence() -> None:
    rng = np.random.default_rng(2)
    spec = ExperimentSpec(experiment="e", allocation={"control": 0.5, "treatment": 0.5})
    x = np.cumsum(rng.binomial(300, [[0.10, 0.108]] * 12, size=(12, 2)), axis=0)
    n = 300 * np.arange(1, 13)
    readout = None
    for look in range(12):
        readout = read_experiment(spec, rates((n[look], x[look, 0]), (n[look], x[look, 1])), previous=readout)
        mean_a, mean_b = x[look] / n[look]
        var = (n[look] / (n[look] - 1)) * (mean_a * (1 - mean_a) + mean_b * (1 - mean_b)) / n[look]
        tau2 = TUNED * (spec.mde * (mean_a + mean_b) / 2) ** 2
        expected = stats.msprt_p_value(mean_b - mean_a, var, tau2)
        comparison = readout.comparison("treatment", "conversion")
        assert comparison.p_value == pytest.approx(expected, abs=1e-12)
        half = stats.confidence_sequence_halfwidth(var, tau2, spec.rules.alpha) / mean_a
        lift = mean_b / mean_a - 1
        assert (comparison.lift_low, comparison.relative_lift, comparison.lift_high) == \
            pytest.approx((lift - half, lift, lift + half), abs=1e-12)
        # One procedure: the interval excludes zero exactly when the p-value is below alpha.
        assert (comparison.lift_low > 0 or comparison.lift_high < 0) == (comparison.p_value < spec.rules.alpha)
    assert readout.look == 12


def _aa_rejections(seed: int, runs: int, looks: int, batch: int, rate: float, mde: float):
    """Reject flags of `runs` A/A experiments read after every batch: (sequential, fixed-horizon), each (runs,)."""
    rng = np.random.default_rng(seed)
    x = np.cumsum(rng.binomial(batch, rate, size=(looks, 2, runs)), axis=0).astype(float)
    n = (batch * np.arange(1, looks + 1, dtype=float))[:, None]
    x_a, x_b = x[:, 0], x[:, 1]
    p_a, p_b = x_a / n, x_b / n
    variance = (n / (n - 1)) * (p_a * (1 - p_a) + p_b * (1 - p_b)) / n
    tau2 = TUNED * (mde * (p_a + p_b) / 2) ** 2
    always_valid = np.ones(runs)
    for look in range(looks):   # the running minimum is the readout's `previous` chaining
        always_valid = stats.msprt_p_value(p_b[look] - p_a[look], variance[look], tau2[look], always_valid)
    fixed = stats.two_proportion_ztest(x_a, n, x_b, n).p_value          # (looks, runs): a test at every look
    return always_valid < ALPHA, (fixed < ALPHA).any(axis=0)


def test_continuous_monitoring_keeps_the_sequential_error_rate_and_inflates_the_fixed_horizon_one() -> None:
    runs = 1000
    sequential, fixed = _aa_rejections(seed=20261124, runs=runs, looks=40, batch=250, rate=0.10, mde=0.05)
    # The upper end of the 99 % binomial interval of a false-positive count at exactly alpha.
    upper = sps.binom.ppf(0.995, runs, ALPHA) / runs
    assert sequential.mean() <= upper, f"sequential FPR {sequential.mean():.3f} above {upper:.3f}"
    assert fixed.mean() > upper, f"fixed-horizon FPR under peeking {fixed.mean():.3f} not above {upper:.3f}"
    assert fixed.mean() > 3 * ALPHA   # 40 looks: the textbook inflation is to ~0.25-0.3


def test_continuous_monitoring_of_a_skewed_revenue_per_user_keeps_the_sequential_error_rate() -> None:
    """The same on revenue per user (20 % of users buy, gamma-distributed baskets): the normal approximation
    behind the mSPRT and Welch's test holds from the first batch of 250 users per arm on."""
    rng = np.random.default_rng(3)
    runs, looks, batch = 1000, 40, 250
    sums, squares = np.zeros((2, runs)), np.zeros((2, runs))
    always_valid, fixed = np.ones(runs), np.zeros(runs, dtype=bool)
    for look in range(looks):   # one look's users at a time: the per-user draws never all sit in memory
        revenue = np.where(rng.random((2, runs, batch)) < 0.2, rng.gamma(2.0, 25.0, (2, runs, batch)), 0.0)
        sums += revenue.sum(axis=-1)
        squares += (revenue ** 2).sum(axis=-1)
        n = batch * (look + 1)
        mean = sums / n
        variance = (squares - n * mean ** 2) / (n - 1)
        tau2 = TUNED * (0.05 * mean.mean(axis=0)) ** 2
        always_valid = stats.msprt_p_value(mean[1] - mean[0], (variance[0] + variance[1]) / n, tau2, always_valid)
        fixed |= stats.welch_ttest(mean[0], variance[0], n, mean[1], variance[1], n).p_value < ALPHA
    upper = sps.binom.ppf(0.995, runs, ALPHA) / runs
    assert (always_valid < ALPHA).mean() <= upper < fixed.mean()


# --------------------------------------------------------------------------- power

def _ab_readouts(spec: ExperimentSpec, runs: int, n: int, rate_a: float, rate_b: float, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    x_a, x_b = rng.binomial(n, rate_a, runs), rng.binomial(n, rate_b, runs)
    return [recommend(spec, read_experiment(spec, rates((n, a), (n, b)))).state for a, b in zip(x_a, x_b, strict=True)]


def _binomial_band(runs: int, p: float, slack: float = 0.02) -> tuple[float, float]:
    # 99 % of the ship count around the expected power, widened by `slack` for the plug-in variance and
    # mixture scale the readout estimates where the closed form uses the true rates.
    return (sps.binom.ppf(0.005, runs, p) / runs - slack, sps.binom.ppf(0.995, runs, p) / runs + slack)


@pytest.mark.parametrize(("method", "n"), [("sequential", 30_000), ("fixed_horizon", 10_000)])
def test_a_known_lift_ships_at_the_expected_power_and_a_null_at_most_alpha(method: str, n: int) -> None:
    rate_a, rate_b, runs = 0.10, 0.11, 300
    spec = ExperimentSpec(experiment="e", allocation={"control": 0.5, "treatment": 0.5}, mde=0.10,
                          rules=DecisionRules(method=method, stop_at_planned_sample=False))
    variance = (rate_a * (1 - rate_a) + rate_b * (1 - rate_b)) / n
    tau2 = TUNED * (spec.mde * (rate_a + rate_b) / 2) ** 2
    if method == "sequential":
        power = stats.power_sequential_at(rate_b - rate_a, variance, tau2, ALPHA)
    else:
        power = stats.power_fixed_horizon(rate_b - rate_a, variance, ALPHA)
    assert power > 0.6
    states = _ab_readouts(spec, runs, n, rate_a, rate_b, seed=7)
    low, high = _binomial_band(runs, power)
    assert low <= states.count("ship") / runs <= high, (power, states.count("ship") / runs)
    null = _ab_readouts(spec, runs, n, rate_a, rate_a, seed=8)
    assert null.count("ship") / runs <= sps.binom.ppf(0.995, runs, ALPHA) / runs


def test_reading_every_batch_sequentially_reaches_at_least_the_single_look_power() -> None:
    runs, looks, batch, rate_a, rate_b, mde = 1000, 30, 1000, 0.10, 0.11, 0.10
    rng = np.random.default_rng(99)
    x = np.cumsum(np.stack([rng.binomial(batch, rate_a, (looks, runs)), rng.binomial(batch, rate_b, (looks, runs))],
                           axis=1), axis=0).astype(float)
    n = (batch * np.arange(1, looks + 1, dtype=float))[:, None]
    p_a, p_b = x[:, 0] / n, x[:, 1] / n
    variance = (n / (n - 1)) * (p_a * (1 - p_a) + p_b * (1 - p_b)) / n
    p_value = np.ones(runs)
    for look in range(looks):
        p_value = stats.msprt_p_value(p_b[look] - p_a[look], variance[look],
                                      TUNED * (mde * (p_a[look] + p_b[look]) / 2) ** 2, p_value)
    final_n = batch * looks
    single_look = stats.power_sequential_at(rate_b - rate_a, (rate_a * (1 - rate_a) + rate_b * (1 - rate_b)) / final_n,
                                            TUNED * (mde * (rate_a + rate_b) / 2) ** 2, ALPHA)
    assert ((p_value < ALPHA) & (p_b[-1] > p_a[-1])).mean() >= _binomial_band(runs, single_look)[0]


def test_the_planned_sample_is_the_inverse_of_the_power() -> None:
    effect, power = 0.01, 0.8
    for sequential in (False, True):
        v = stats.required_variance(effect, power, ALPHA, sequential=sequential, mixture_variance=1e-4)
        achieved = (stats.power_sequential_at(effect, v, 1e-4, ALPHA) if sequential
                    else stats.power_fixed_horizon(effect, v, ALPHA))
        assert achieved == pytest.approx(power, abs=1e-6)


# --------------------------------------------------------------------------- per-user state

def test_streamed_state_equals_the_batch_computation_and_merges_across_partitions() -> None:
    rng = np.random.default_rng(4)
    conversions, revenue = simulated_users(rng, 300, 0.2, 30.0)
    totals = totals_from_users({"treatment": (conversions, revenue)})
    t = totals.variants["treatment"]
    assert (t.users, t.converting_users, t.conversions) == (300, int((conversions > 0).sum()), int(conversions.sum()))
    assert t.conversions_sq == int((conversions ** 2).sum())
    assert (t.revenue, t.revenue_sq) == pytest.approx((revenue.sum(), (revenue ** 2).sum()), rel=1e-9)
    # Two partitions, each with half the users, add up to the same totals, in either order.
    half = 150
    first = totals_from_users({"treatment": (conversions[:half], revenue[:half])})
    second = totals_from_users({"treatment": (conversions[half:], revenue[half:])})
    for merged in (first + second, second + first):
        m = merged.variants["treatment"]
        assert (m.users, m.converting_users, m.conversions, m.conversions_sq) == (
            t.users, t.converting_users, t.conversions, t.conversions_sq)
        assert m.revenue_sq == pytest.approx(t.revenue_sq, rel=1e-12)
    assert ExperimentTotals.from_dict(totals.as_dict()) == totals


def test_a_user_keeps_the_first_variant_and_crossovers_are_counted() -> None:
    user, first = observe_event(None, variant="control", event_type="exposure", dimensions={"channel": "web"})
    user, crossed = observe_event(user, variant="treatment", event_type="conversion", revenue=12.0)
    assert user == UserRecord("control", conversions=1, revenue=12.0)
    totals = (first + crossed).variants
    assert set(totals) == {"control"} and totals["control"].crossover_events == 1
    assert totals["control"].users_by_dimension == {"channel": {"web": 1}}


@pytest.mark.parametrize("kwargs", [dict(event_type="purchase"), dict(event_type="conversion", revenue=-1.0),
                                    dict(event_type="click", revenue=3.0),
                                    dict(event_type="conversion", revenue=math.nan)])
def test_invalid_events_are_refused(kwargs: dict) -> None:
    with pytest.raises(InvalidEvent):
        observe_event(None, variant="control", **kwargs)


def test_impossible_totals_are_refused_at_readout() -> None:
    spec = ExperimentSpec(experiment="e", allocation={"control": 0.5, "treatment": 0.5})
    with pytest.raises(InvalidTotals):
        read_experiment(spec, rates((10, 11), (10, 1)))
    assert issubclass(InvalidTotals, ExperimentError) and issubclass(InvalidEvent, ValueError)


# --------------------------------------------------------------------------- the decision rule

SPEC = ExperimentSpec(experiment="checkout-v2", initiative="Checkout", allocation={"control": 0.5, "treatment": 0.5},
                      guardrails=(Guardrail(metric="revenue_per_user", margin=0.05),), srm_dimensions=("channel",))


def with_revenue(users: int, converting: int, revenue_per_converter: float, spread: float = 20.0,
                 dims: dict | None = None) -> VariantTotals:
    # Converters spend revenue_per_converter on average with sd `spread`: sums and sums of squares.
    revenue = converting * revenue_per_converter
    return VariantTotals(users=users, converting_users=converting, conversions=converting, conversions_sq=converting,
                         revenue_micros=micros(revenue),
                         revenue_sq_micros=micros(converting * (revenue_per_converter ** 2 + spread ** 2) * MICROS),
                         users_by_dimension=dims or {})


def decide(control: VariantTotals, treatment: VariantTotals, spec: ExperimentSpec = SPEC, flags=()):
    readout = read_experiment(spec, ExperimentTotals({"control": control, "treatment": treatment}))
    return readout, recommend(spec, readout, flags)


def test_ship_needs_a_significant_success_metric_and_non_inferior_guardrails() -> None:
    readout, rec = decide(with_revenue(20000, 2000, 50.0), with_revenue(20000, 2400, 50.0))
    assert rec.state == "ship" and rec.variant == "treatment"
    assert rec.rollout[0].startswith("ramp treatment to 5% of traffic") and "100%" in rec.rollout[-1]
    assert any("revenue per user non-inferior" in reason for reason in rec.reasons)
    # The same conversion lift with revenue per converter down 30 %: the guardrail fails beyond its margin.
    readout, rec = decide(with_revenue(20000, 2000, 50.0), with_revenue(20000, 2400, 29.0))
    guardrail = readout.comparison("treatment", "revenue_per_user")
    assert guardrail.inferior_beyond_margin and rec.state == "roll_back" and rec.variant == "treatment"


def test_a_guardrail_that_cannot_yet_be_shown_non_inferior_keeps_the_experiment_running() -> None:
    readout, rec = decide(with_revenue(5000, 500, 50.0, spread=60.0), with_revenue(5000, 650, 50.0, spread=60.0))
    assert readout.comparison("treatment", "conversion").improved
    assert rec.state == "keep_running"
    assert any(r.startswith("users converting of treatment improves") for r in rec.reasons)
    assert any("not yet non-inferior" in r for r in rec.reasons)


def test_a_significantly_worse_success_metric_rolls_back() -> None:
    _readout, rec = decide(with_revenue(20000, 2400, 50.0), with_revenue(20000, 2000, 50.0))
    assert rec.state == "roll_back" and rec.variant == "treatment" and "worsens" in rec.reasons[0]


def test_no_recommendation_before_the_minimum_sample_and_the_memo_says_what_is_missing() -> None:
    readout, rec = decide(with_revenue(120, 20, 50.0), with_revenue(90, 30, 50.0))
    assert rec.state == "keep_running"
    assert rec.reasons == ("minimum sample not reached: control: 20 of 25 converting users",
                           "minimum sample not reached: treatment: 90 of 100 users")
    assert "Minimum sample not reached" in render_memo(build_memo(SPEC, readout, rec))


def test_keep_running_estimates_the_remaining_sample_and_stops_at_the_planned_one() -> None:
    readout, rec = decide(with_revenue(5000, 500, 50.0), with_revenue(5000, 505, 50.0))
    assert rec.state == "keep_running" and readout.planned is not None
    required = readout.planned.required_users_per_variant["treatment"]
    assert rec.remaining_users_per_variant == {"control": required - 5000, "treatment": required - 5000}
    # Closed form of the per-variant sample for the sequential test at the planned 5 % lift.
    p_a, p_b = 0.1, 0.105
    v = stats.required_variance(p_a * SPEC.mde, 0.8, ALPHA, sequential=True,
                                mixture_variance=TUNED * (SPEC.mde * 0.1) ** 2)
    assert required == math.ceil((p_a * (1 - p_a) + p_b * (1 - p_b)) / v)
    reached = required + 1000   # past the plan, both arms at 10 %: nothing to ship
    readout, rec = decide(with_revenue(reached, reached // 10, 50.0), with_revenue(reached, reached // 10, 50.0))
    assert rec.state == "roll_back" and rec.variant is None and "planned sample reached" in rec.reasons[0]


def test_sample_ratio_mismatch_and_caller_flags_mean_investigate() -> None:
    control = with_revenue(20000, 2000, 50.0, dims={"channel": {"web": 10000, "app": 10000}})
    treatment = with_revenue(19300, 2400, 50.0, dims={"channel": {"web": 9300, "app": 10000}})
    readout, rec = decide(control, treatment)
    assert [c.scope for c in readout.sample_ratio_mismatch] == ["overall", "channel=web"]
    assert rec.state == "investigate" and rec.flags[0].kind == "sample_ratio_mismatch"
    suppression = InvestigationFlag(kind="variant_suppression", variant="treatment", incident_id="inc-1",
                                    summary="treatment got 3 % of exposures on app", evidence={"share": 0.03})
    readout, rec = decide(with_revenue(20000, 2000, 50.0), with_revenue(20000, 2400, 50.0), flags=[suppression])
    assert rec.state == "investigate" and rec.flags == (suppression,)
    assert rec.reasons == ("variant_suppression: treatment got 3 % of exposures on app",)


def test_holm_correction_across_variants_and_metrics_decides_significance() -> None:
    spec = ExperimentSpec(experiment="e", allocation={"control": 1, "b": 1, "c": 1},
                          success_metrics=(SuccessMetric(metric="conversion"),
                                           SuccessMetric(metric="conversions_per_user")),
                          rules=DecisionRules(method="fixed_horizon"))
    totals = ExperimentTotals({"control": VariantTotals(users=4000, converting_users=400, conversions=400,
                                                        conversions_sq=400),
                               "b": VariantTotals(users=4000, converting_users=460, conversions=460,
                                                  conversions_sq=460),
                               "c": VariantTotals(users=4000, converting_users=410, conversions=410,
                                                  conversions_sq=410)})
    readout = read_experiment(spec, totals)
    raw = [c.p_value for c in readout.comparisons]
    assert [c.adjusted_p_value for c in readout.comparisons] == pytest.approx(stats.holm_adjusted(raw).tolist())
    b = readout.comparison("b", "conversion")
    assert b.p_value < ALPHA and b.adjusted_p_value > ALPHA and not b.improved   # significant only uncorrected


# --------------------------------------------------------------------------- change events and the memo

def test_a_recommendation_change_is_an_experiment_decision_incident_with_a_deterministic_id() -> None:
    readout, ship = decide(with_revenue(20000, 2000, 50.0), with_revenue(20000, 2400, 50.0))
    change = decision_change(None, ship, readout, window_start=T0, window_end=T1)
    again = decision_change(None, ship, readout, window_start=T0, window_end=T1)
    assert change.changed and change.previous_state == "keep_running" and change.event == again.event
    event = change.event
    assert (event.kind, event.owner, event.transition, event.severity) == ("experiment_decision", "Testing Lead",
                                                                           "opened", "warning")
    assert event.series == ["checkout-v2|ship|treatment"] and event.period == "2026-11-08T00:00"
    assert event.evidence.score == pytest.approx(0.2) and event.evidence.detail["state"] == "ship"
    assert IncidentEvent.model_validate_json(event.model_dump_json()) == event
    assert not decision_change(ship, ship, readout, window_start=T0, window_end=T1).changed
    _, flagged = decide(with_revenue(20000, 2000, 50.0), with_revenue(20000, 2400, 50.0),
                        flags=[InvestigationFlag(kind="integrity_breach", summary="rule changed mid-test")])
    investigate = decision_change(ship, flagged, readout, window_start=T0, window_end=T1)
    assert investigate.changed and investigate.event.severity == "critical"
    assert investigate.event.incident_id != event.incident_id
    # Nothing to say while a fresh experiment keeps running.
    _, running = decide(with_revenue(50, 5, 50.0), with_revenue(50, 5, 50.0))
    assert not decision_change(None, running, readout, window_start=T0, window_end=T1).changed


def test_the_memo_embeds_summary_and_detail_and_renders_markdown() -> None:
    readout, rec = decide(with_revenue(20000, 2000, 50.0), with_revenue(20000, 2400, 50.0))
    memo = build_memo(SPEC, readout, rec)
    assert memo.summary.state == "ship" and memo.summary.primary_lift == pytest.approx(0.2)
    assert type(memo).model_validate_json(memo.model_dump_json()) == memo
    summary, full = render_memo(memo, detail="summary"), render_memo(memo)
    assert summary.startswith("## Experiment checkout-v2: SHIP treatment") and "| variant |" not in summary
    assert "Holm" in full and "revenue_per_user" in full and "Sample ratio" in full and full.startswith(summary[:40])


@settings(max_examples=300, deadline=None)
@given(method=st.sampled_from(["fixed_horizon", "sequential"]),
       n_a=st.integers(2, 50_000), n_b=st.integers(2, 50_000),
       rate_a=st.floats(0.001, 0.999), rate_b=st.floats(0.001, 0.999), mde=st.floats(0.01, 0.5))
def test_one_procedure_per_readout_decision_interval_and_estimate_agree(method, n_a, n_b, rate_a, rate_b,
                                                                         mde) -> None:
    """For any totals, in every mode: the estimate lies inside its interval; the interval excludes zero exactly
    when the p-value is below alpha; ship or roll back only with an interval on the side claimed."""
    x_a, x_b = max(1, round(n_a * rate_a)), round(n_b * rate_b)
    spec = ExperimentSpec(experiment="e", allocation={"control": 0.5, "treatment": 0.5}, mde=mde,
                          rules=DecisionRules(method=method, min_users_per_variant=2))
    readout = read_experiment(spec, rates((n_a, min(x_a, n_a)), (n_b, min(x_b, n_b))))
    comparison = readout.comparison("treatment", "conversion")
    if comparison is None:
        return   # not computable (a variance of zero): nothing is shown or decided
    assert comparison.lift_low <= comparison.relative_lift <= comparison.lift_high
    excludes_zero = comparison.lift_low > 0 or comparison.lift_high < 0
    assert excludes_zero == (comparison.p_value < spec.rules.alpha) or \
        math.isclose(comparison.p_value, spec.rules.alpha, rel_tol=1e-9)
    assert comparison.difference_low <= comparison.difference <= comparison.difference_high
    recommendation = recommend(spec, readout)
    if recommendation.state == "ship":
        assert comparison.lift_low > 0, (recommendation, comparison)
    if recommendation.state == "roll_back" and comparison.worsened:
        assert comparison.lift_high < 0, (recommendation, comparison)
    memo = build_memo(spec, readout, recommendation)
    if memo.summary.primary_lift is not None:
        assert memo.summary.primary_lift_low <= memo.summary.primary_lift <= memo.summary.primary_lift_high
        assert (memo.summary.primary_lift, memo.summary.primary_lift_low, memo.summary.primary_lift_high) == (
            comparison.relative_lift, comparison.lift_low, comparison.lift_high)
    # The decision event of this look carries the very numbers the memo shows.
    change = decision_change(None, recommendation, readout, window_start=T0, window_end=T1)
    if change.changed and change.event.evidence.detail.get("metric") == "conversion":
        detail = change.event.evidence.detail
        assert detail["lift_interval"] == [comparison.lift_low, comparison.lift_high]
        assert (detail["p_value"], detail["look"]) == (comparison.p_value, readout.look)
        assert change.event.evidence.score == comparison.relative_lift


_any_float = st.floats(allow_nan=True, allow_infinity=True)


@settings(max_examples=300, deadline=None)
@given(mean_a=_any_float, variance_a=_any_float, n_a=st.integers(-3, 10_000), mean_b=_any_float,
       variance_b=_any_float, n_b=st.integers(-3, 10_000))
def test_statistics_refuse_bad_inputs_with_their_own_error_or_give_valid_numbers(
        mean_a, variance_a, n_a, mean_b, variance_b, n_b) -> None:
    for function in (stats.welch_ttest, stats.relative_lift_variance):
        try:
            result = function(mean_a, variance_a, n_a, mean_b, variance_b, n_b)
        except InvalidStatisticInput as exc:
            assert str(exc)   # names what was wrong
            continue
        if function is stats.welch_ttest:
            assert 0.0 <= result.p_value <= 1.0 or math.isnan(result.p_value), result


@settings(max_examples=300, deadline=None)
@given(users=st.integers(-2, 1000), converting=st.integers(-2, 1000), conversions=st.integers(-2, 3000),
       conversions_sq=st.integers(-2, 10_000), revenue=st.integers(-2, 10**12) | _any_float,
       revenue_sq=st.integers(-2, 10**26) | _any_float)
def test_totals_are_refused_with_the_field_named_unless_real_users_could_have_them(
        users, converting, conversions, conversions_sq, revenue, revenue_sq) -> None:
    try:
        totals = VariantTotals(users=users, converting_users=converting, conversions=conversions,
                               conversions_sq=conversions_sq, revenue_micros=revenue, revenue_sq_micros=revenue_sq)
        totals.check_consistent("control")
    except InvalidTotals as exc:
        assert any(name in str(exc) for name in ("users", "conversions", "revenue", "crossover")), exc
        return
    for metric in ("conversion", "conversions_per_user", "revenue_per_user"):
        moments = totals.moments(metric)
        if users >= 2:
            assert math.isfinite(moments.mean) and moments.variance >= 0.0, (metric, moments)


def test_an_impossible_variance_and_nan_revenue_are_refused_naming_the_field() -> None:
    with pytest.raises(InvalidTotals, match=r"revenue_sq_micros .* is impossible"):
        VariantTotals(users=10, converting_users=5, conversions=5, conversions_sq=5, revenue_micros=micros(100.0),
                      revenue_sq_micros=micros(500.0) * MICROS).check_consistent("control")   # sum^2 / n = 1000 > 500
    with pytest.raises(InvalidTotals, match="revenue_micros must be a whole number"):
        VariantTotals(users=10, revenue_micros=math.nan)
    with pytest.raises(InvalidStatisticInput, match="users of 'treatment' must be a count"):
        stats.sample_ratio_test({"control": 10, "treatment": -1}, {"control": 0.5, "treatment": 0.5})
    with pytest.raises(InvalidStatisticInput, match="mean_b must be finite"):
        stats.welch_ttest(1.0, 1.0, 10, math.nan, 1.0, 10)


def test_the_mixture_is_tuned_so_the_sequential_test_has_its_power_at_the_planned_sample() -> None:
    """tau^2 = r* V*: at V* the planned effect is found with the planned power (closed form), and r* is where the
    confidence sequence's half-width is least (checked on a grid against the closed-form half-width)."""
    effect, power = 0.004, 0.8
    tau2 = stats.tuned_mixture_variance(effect, power, ALPHA)
    v_star = stats.required_variance(effect, power, ALPHA, sequential=True, mixture_variance=tau2)
    assert float(stats.power_sequential_at(effect, v_star, tau2, ALPHA)) == pytest.approx(power, abs=1e-6)
    # The readout's planned sample takes V* in closed form: the same root.
    for e, p, alpha in ((effect, power, ALPHA), (0.3, 0.9, 0.01), (12.0, 0.5, 0.1)):
        root = stats.required_variance(e, p, alpha, sequential=True, mixture_variance=stats.tuned_mixture_variance(
            e, p, alpha))
        assert stats.planned_variance(e, p, alpha) == pytest.approx(root, rel=1e-8)
    ratio = stats.optimal_mixture_ratio(ALPHA)
    assert tau2 / v_star == pytest.approx(ratio, rel=1e-6)
    widths = {r: float(stats.confidence_sequence_halfwidth(1.0, r, ALPHA)) for r in np.geomspace(0.5, 100, 400)}
    assert min(widths, key=widths.get) == pytest.approx(ratio, rel=0.02)


def test_a_guardrail_is_tested_one_sided_at_the_level_the_memo_names() -> None:
    """Non-inferiority at alpha: the one-sided bound lift - z_(1-alpha) se (closed form), not the two-sided interval's
    end (alpha / 2 per side). A lower bound between the two is non-inferior at 5 % one-sided."""
    a, b = rates((4000, 2000), (4000, 1960)).variants.values()
    ma, va, mb, vb = a.moments("conversion").mean, a.moments("conversion").variance, \
        b.moments("conversion").mean, b.moments("conversion").variance
    lift = mb / ma - 1
    se = math.sqrt(stats.relative_lift_variance(ma, va, 4000, mb, vb, 4000))
    low, high = stats.one_sided_lift_bounds(ma, va, 4000, mb, vb, 4000, ALPHA)
    assert (low, high) == pytest.approx((lift - sps.norm.isf(ALPHA) * se, lift + sps.norm.isf(ALPHA) * se), abs=1e-12)
    margin = -(lift - 1.8 * se)   # between the one-sided (1.645 se) and the two-sided (1.96 se) bound
    spec = ExperimentSpec(experiment="e", allocation={"control": 0.5, "treatment": 0.5},
                          success_metrics=(SuccessMetric(metric="conversions_per_user"),),
                          guardrails=(Guardrail(metric="conversion", margin=margin),),
                          rules=DecisionRules(method="fixed_horizon"))
    readout = read_experiment(spec, rates((4000, 2000), (4000, 1960)))
    guardrail = readout.comparison("treatment", "conversion")
    assert guardrail.lift_low < -margin < guardrail.bounds[0] and guardrail.non_inferior
    assert "one-sided bound" in render_memo(build_memo(spec, readout, recommend(spec, readout)))
