"""CUPED, large means and GrowthBook's Bayesian readout: each checked against a closed form or the reference."""

from __future__ import annotations

import math
import statistics
from fractions import Fraction

import numpy as np
import pytest
from gbstats.bayesian.tests import EffectBayesianABTest, EffectBayesianConfig
from gbstats.models.statistics import ProportionStatistic, SampleMeanStatistic
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from experiments.decision import recommend
from experiments.memo import build_memo, render_memo
from experiments.readout import read_experiment
from experiments.spec import DecisionRules, ExperimentSpec, SuccessMetric
from experiments.state import ExperimentTotals, VariantTotals, observe_event

ALPHA = 0.05


def fold(users: dict[str, list[tuple[int, float, int, float]]]) -> ExperimentTotals:
    """Totals of users given as (conversions, revenue, pre_conversions, pre_revenue), folded event by event."""
    totals = []
    for variant, rows in users.items():
        for conversions, revenue, pre_conversions, pre_revenue in rows:
            user, delta = observe_event(None, variant=variant, event_type="exposure", pre_conversions=pre_conversions,
                                        pre_revenue=pre_revenue)
            totals.append(delta)
            for _ in range(conversions):
                user, delta = observe_event(user, variant=variant, event_type="conversion",
                                            revenue=revenue / conversions if conversions else 0.0)
                totals.append(delta)
    return ExperimentTotals.total(totals)


def correlated_users(rng: np.random.Generator, n: int, lift: float) -> list[tuple[int, float, int, float]]:
    propensity = rng.lognormal(-0.4, 0.9, n)
    pre = rng.poisson(1.5 * propensity)
    conversions = rng.poisson(0.3 * propensity * (1 + lift))
    revenue = np.where(conversions > 0, np.round(rng.gamma(2.0, 15.0, n) * conversions, 2), 0.0)
    pre_revenue = np.where(pre > 0, np.round(rng.gamma(2.0, 15.0, n) * pre, 2), 0.0)
    return [(int(c), float(r), int(p), float(pr))
            for c, r, p, pr in zip(conversions, revenue, pre, pre_revenue, strict=True)]


def cuped_by_hand(rows_a, rows_b, y_index: int, x_index: int, to_y=lambda v: v):
    """CUPED from the raw users with numpy: theta from both arms pooled, then the arms' adjusted means and
    per-user variances of y - theta x."""
    ya, yb = (np.array([to_y(r[y_index]) for r in rows], dtype=float) for rows in (rows_a, rows_b))
    xa, xb = (np.array([r[x_index] for r in rows], dtype=float) for rows in (rows_a, rows_b))
    x, y = np.concatenate([xa, xb]), np.concatenate([ya, yb])
    theta = np.cov(x, y, ddof=1)[0, 1] / np.var(x, ddof=1)
    arms = []
    for ys, xs in ((ya, xa), (yb, xb)):
        adjusted = ys - theta * (xs - x.mean())
        arms.append((adjusted.mean(), adjusted.var(ddof=1), len(ys)))
    raw = ya.var(ddof=1) / len(ya) + yb.var(ddof=1) / len(yb)
    return theta, arms, 1 - (arms[0][1] / arms[0][2] + arms[1][1] / arms[1][2]) / raw


@pytest.mark.parametrize("metric, y_index, x_index, to_y", [
    ("conversion", 0, 2, lambda c: float(c > 0)), ("conversions_per_user", 0, 2, float),
    ("revenue_per_user", 1, 3, float)])
def test_cuped_matches_the_closed_form_on_the_raw_users(metric, y_index, x_index, to_y) -> None:
    rng = np.random.default_rng(11)
    rows = {"control": correlated_users(rng, 1500, 0.0), "treatment": correlated_users(rng, 1400, 0.1)}
    totals = fold(rows)
    _theta, ((mean_a, var_a, n_a), (mean_b, var_b, n_b)), reduction = cuped_by_hand(
        rows["control"], rows["treatment"], y_index, x_index, to_y)
    for method in ("fixed_horizon", "sequential"):
        spec = ExperimentSpec(experiment="e", allocation={"control": 0.5, "treatment": 0.5},
                              success_metrics=(SuccessMetric(metric=metric),), rules=DecisionRules(method=method))
        c = read_experiment(spec, totals).comparison("treatment", metric)
        if method == "fixed_horizon":
            fixed = c
        assert (c.control_mean, c.variant_mean) == pytest.approx((mean_a, mean_b), rel=1e-9)
        assert c.variance_reduction == pytest.approx(reduction, abs=1e-9) and c.variance_reduction > 0.02
        if method == "fixed_horizon":
            lift = mean_b / mean_a - 1
            se = math.sqrt(var_b / (n_b * mean_a ** 2) + mean_b ** 2 * var_a / (n_a * mean_a ** 4))
            assert c.relative_lift == pytest.approx(lift, rel=1e-9)
            assert c.p_value == pytest.approx(2 * sps.norm.sf(abs(lift) / se), abs=1e-6)
            assert (c.lift_low, c.lift_high) == pytest.approx((lift - 1.959963985 * se, lift + 1.959963985 * se),
                                                              abs=1e-6)
    # And off: the unadjusted readout, whose interval is the wider.
    spec = ExperimentSpec(experiment="e", allocation={"control": 0.5, "treatment": 0.5},
                          success_metrics=(SuccessMetric(metric=metric),),
                          rules=DecisionRules(method="fixed_horizon", cuped=False))
    plain = read_experiment(spec, totals).comparison("treatment", metric)
    assert plain.variance_reduction is None
    assert plain.lift_high - plain.lift_low > fixed.lift_high - fixed.lift_low


def test_the_memo_reports_cuped_and_names_the_prior() -> None:
    rng = np.random.default_rng(3)
    totals = fold({"control": correlated_users(rng, 1500, 0.0), "treatment": correlated_users(rng, 1500, 0.2)})
    spec = ExperimentSpec(experiment="e", allocation={"control": 0.5, "treatment": 0.5})
    readout = read_experiment(spec, totals)
    text = render_memo(build_memo(spec, readout, recommend(spec, readout)), detail="full")
    reduction = readout.comparison("treatment", "conversion").variance_reduction
    assert f"CUPED: conversions before exposure removed {reduction:.1%} of the variance" in text
    assert "uniform Beta(1, 1) prior" in text


def test_no_covariate_means_no_adjustment() -> None:
    rows = [(1, 5.0, 0, 0.0)] * 30 + [(0, 0.0, 0, 0.0)] * 70
    totals = fold({"control": rows, "treatment": rows[:40] + rows[30:]})
    spec = ExperimentSpec(experiment="e", allocation={"control": 0.5, "treatment": 0.5},
                          rules=DecisionRules(method="fixed_horizon"))
    c = read_experiment(spec, totals).comparison("treatment", "conversion")
    assert c.variance_reduction is None and c.control_mean == pytest.approx(0.3)


@settings(max_examples=60, deadline=None)
@given(mean=st.sampled_from([1.0, 1e4, 1e8, 3e9]), spread=st.sampled_from([0.01, 1.0, 100.0]),
       n=st.integers(3, 60), seed=st.integers(0, 2**32 - 1))
def test_revenue_variance_is_exact_whatever_the_mean(mean: float, spread: float, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = [round(float(v), 2) for v in rng.normal(mean, spread, n).clip(0)]
    totals = fold({"control": [(1, v, 0, 0.0) for v in values]})
    moments = totals.variants["control"].moments("revenue_per_user")
    exact = statistics.variance([Fraction(str(v)) for v in values])   # exact rationals
    assert moments.variance == pytest.approx(float(exact), rel=1e-9, abs=1e-12)
    assert moments.mean == pytest.approx(float(sum(Fraction(str(v)) for v in values) / n), rel=1e-12)


def test_the_issues_example_a_revenue_mean_of_1e8_with_sd_1() -> None:
    rng = np.random.default_rng(0)
    values = [round(float(v), 2) for v in rng.normal(1e8, 1.0, 1000)]
    totals = fold({"control": [(1, v, 0, 0.0) for v in values[:500]],
                   "treatment": [(1, v, 0, 0.0) for v in values[500:]]})
    for name, chunk in (("control", values[:500]), ("treatment", values[500:])):
        exact = float(statistics.variance([Fraction(str(v)) for v in chunk]))
        assert totals.variants[name].moments("revenue_per_user").variance == pytest.approx(exact, rel=1e-12)
        assert 0.8 < exact < 1.2


@settings(max_examples=80, deadline=None)
@given(n_a=st.integers(50, 20_000), n_b=st.integers(50, 20_000), rate_a=st.floats(0.01, 0.6),
       rate_b=st.floats(0.01, 0.6), higher_is_better=st.booleans())
def test_flat_relative_prior_reproduces_growthbooks_chance_to_win_on_rates(n_a, n_b, rate_a, rate_b,
                                                                          higher_is_better) -> None:
    x_a, x_b = max(1, round(n_a * rate_a)), max(1, round(n_b * rate_b))
    totals = ExperimentTotals({"control": VariantTotals(users=n_a, converting_users=x_a, conversions=x_a,
                                                        conversions_sq=x_a),
                               "treatment": VariantTotals(users=n_b, converting_users=x_b, conversions=x_b,
                                                          conversions_sq=x_b)})
    spec = ExperimentSpec(experiment="e", allocation={"control": 0.5, "treatment": 0.5},
                          success_metrics=(SuccessMetric(metric="conversion", higher_is_better=higher_is_better),),
                          rules=DecisionRules(prior="flat_relative", min_converting_users_per_variant=0))
    c = read_experiment(spec, totals).comparison("treatment", "conversion")
    reference = EffectBayesianABTest(ProportionStatistic(n=n_a, sum=x_a), ProportionStatistic(n=n_b, sum=x_b),
                                     EffectBayesianConfig(inverse=not higher_is_better)).compute_result()
    assert c.probability_to_beat_control == pytest.approx(reference.chance_to_win, abs=1e-3)
    assert c.expected_loss_relative == pytest.approx(reference.risk[1], abs=1e-3)


def test_flat_relative_prior_reproduces_growthbooks_chance_to_win_on_means() -> None:
    rng = np.random.default_rng(8)
    rows = {"control": correlated_users(rng, 900, 0.0), "treatment": correlated_users(rng, 800, 0.15)}
    totals = fold(rows)
    spec = ExperimentSpec(experiment="e", allocation={"control": 0.5, "treatment": 0.5},
                          success_metrics=(SuccessMetric(metric="revenue_per_user"),),
                          rules=DecisionRules(prior="flat_relative", cuped=False))
    c = read_experiment(spec, totals).comparison("treatment", "revenue_per_user")
    stat = {name: SampleMeanStatistic(n=len(r), sum=sum(u[1] for u in r), sum_squares=sum(u[1] ** 2 for u in r))
            for name, r in rows.items()}
    reference = EffectBayesianABTest(stat["control"], stat["treatment"], EffectBayesianConfig()).compute_result()
    assert c.probability_to_beat_control == pytest.approx(reference.chance_to_win, abs=1e-3)
    assert c.expected_loss_relative == pytest.approx(reference.risk[1], abs=1e-3)
    assert c.expected_loss == pytest.approx(reference.risk[1] * c.control_mean, abs=1e-3 * c.control_mean)
    assert 0.0 < c.probability_to_beat_control < 1.0


def test_totals_written_before_the_exact_sums_are_read_in_micro_units() -> None:
    import pickle

    old_message = {"users": 2, "converting_users": 1, "conversions": 1, "conversions_sq": 1, "revenue": 29.99,
                   "revenue_sq": 29.99 ** 2, "crossover_events": 0, "users_by_dimension": {"channel": {"web": 2}}}
    read = VariantTotals.from_dict(old_message)
    assert (read.revenue_micros, read.revenue, read.users_by_dimension) == (29_990_000, 29.99, {"channel": {"web": 2}})
    assert read.moments("revenue_per_user").variance == pytest.approx(statistics.variance([0.0, 29.99]), rel=1e-12)
    # A pickle of the old class held eight values in this order: the new class reads them the same way.
    old_state = [2, 1, 1, 1, 29.99, 29.99 ** 2, 0, {"channel": {"web": 2}}]
    revived = VariantTotals.__new__(VariantTotals)
    revived.__setstate__(old_state)
    assert revived == read
    assert pickle.loads(pickle.dumps(read)) == read
