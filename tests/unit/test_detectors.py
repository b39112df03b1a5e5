"""The conversion-drop detector and `evaluate_bucket`: exact statistics on fixed numbers, warm-up, volume."""

from __future__ import annotations

import math
import pickle
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from scipy.stats import binom

from detectors.base import BucketObservation
from detectors.conversion_drop import ConversionDropConfig, ConversionDropDetector
from detectors.evaluation import evaluate_bucket
from incidents.breach_policy import BreachPolicy, BreachPolicyConfig, BreachState

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
SERIES = "PLG Onboarding|new_user|web|control"


def obs(hour: int, exposures: int, conversions: int, series: str = SERIES) -> BucketObservation:
    start = T0 + timedelta(hours=hour)
    return BucketObservation(series, start, start + timedelta(hours=1), exposures, conversions=conversions)


def warm_detector(buckets: list[tuple[int, int]], **config: object) -> ConversionDropDetector:
    """A detector that has learnt `buckets` (exposures, conversions), hours 0, 1, ..."""
    detector = ConversionDropDetector(ConversionDropConfig(**config))
    for hour, (exposures, conversions) in enumerate(buckets):
        detector.learn_one(obs(hour, exposures, conversions))
    return detector


# ------------------------------------------------------------------------ statistics on fixed numbers
def test_p_value_is_the_binomial_lower_tail_under_the_baseline() -> None:
    detector = warm_detector([(1000, 100)] * 4, warmup_buckets=2, baseline_buckets=4)
    verdict = detector.score_one(obs(10, 800, 61))
    assert verdict.scored
    assert verdict.expected == pytest.approx(0.1, abs=1e-15)
    assert verdict.detail["p_value"] == pytest.approx(float(binom.cdf(61, 800, 0.1)), rel=0, abs=1e-12)
    assert verdict.detail["relative_drop"] == pytest.approx(1 - (61 / 800) / 0.1, abs=1e-12)
    assert verdict.observed == pytest.approx(61 / 800, abs=1e-15)


def test_p_value_uses_the_pooled_baseline_rate_not_a_mean_of_rates() -> None:
    # Unequal volumes: the pooled rate (sum of conversions / sum of exposures) differs from the mean of rates.
    detector = warm_detector([(400, 60), (1600, 120)], warmup_buckets=2, baseline_buckets=5)
    pooled = (60 + 120) / (400 + 1600)  # 0.09, while the mean of the rates is 0.1125
    verdict = detector.score_one(obs(5, 900, 50))
    assert verdict.expected == pytest.approx(pooled, abs=1e-15)
    assert verdict.detail["p_value"] == pytest.approx(float(binom.cdf(50, 900, pooled)), rel=0, abs=1e-12)


def test_baseline_is_the_pooled_rate_of_the_last_baseline_buckets_only() -> None:
    learnt = [(1000, 500), (1000, 100), (500, 40), (2000, 300), (800, 120)]
    detector = warm_detector(learnt, warmup_buckets=2, baseline_buckets=3)
    verdict = detector.score_one(obs(10, 1000, 100))
    # The last three: (500, 40), (2000, 300), (800, 120); the first two fell out of the baseline.
    assert verdict.detail["baseline_exposures"] == 500 + 2000 + 800
    assert verdict.expected == pytest.approx((40 + 300 + 120) / (500 + 2000 + 800), abs=1e-15)


# ------------------------------------------------------------------------ warm-up and volume
def test_no_breach_while_warming_up_even_on_a_deep_dip_and_warm_up_ends_exactly_at_the_count() -> None:
    detector = ConversionDropDetector(ConversionDropConfig(warmup_buckets=5, min_exposures=200))
    dip = obs(100, 1000, 0)  # conversions vanished: a breach for any warm detector
    for hour in range(4):
        detector.learn_one(obs(hour, 1000, 100))
        assert detector.warming_up
        verdict = detector.score_one(dip)
        assert (verdict.scored, verdict.breached, verdict.warming_up) == (False, False, True)
    # A bucket below min_exposures is learnt but does not count towards the warm-up.
    detector.learn_one(obs(4, 199, 20))
    assert detector.warming_up
    detector.learn_one(obs(5, 1000, 100))  # the fifth scorable bucket
    assert not detector.warming_up
    verdict = detector.score_one(dip)
    assert (verdict.scored, verdict.breached, verdict.warming_up) == (True, True, False)


def test_a_bucket_with_too_few_exposures_is_not_scored() -> None:
    detector = warm_detector([(1000, 100)] * 3, warmup_buckets=3, min_exposures=200)
    assert not detector.warming_up
    verdict = detector.score_one(obs(5, 199, 0))
    assert not verdict.scored and not verdict.breached and not verdict.warming_up
    assert verdict.detail["reason"] == "too few exposures"
    assert detector.score_one(obs(5, 200, 0)).scored  # the limit itself is enough


def test_volume_matters_a_40_percent_dip_on_1000_exposures_breaches_on_20_it_does_not() -> None:
    detector = warm_detector([(1000, 100)] * 4, warmup_buckets=4, min_exposures=10)
    big = detector.score_one(obs(10, 1000, 60))  # 6 % against 10 %: a 40 % relative dip
    assert big.scored and big.breached
    assert big.score == pytest.approx(0.4, abs=1e-12)
    assert big.detail["p_value"] < 0.001
    # 20 exposures cannot show 1.2 conversions; 1 conversion (5 %) is an even deeper, 50 % dip.
    small = detector.score_one(obs(10, 20, 1))
    assert small.scored and not small.breached
    assert small.score >= 0.4
    assert small.detail["p_value"] == pytest.approx(float(binom.cdf(1, 20, 0.1)), abs=1e-12)
    assert small.detail["p_value"] > 0.3


def test_volume_matters_with_an_exact_40_percent_dip_at_a_25_percent_baseline() -> None:
    detector = warm_detector([(1000, 250)] * 4, warmup_buckets=4, min_exposures=10)
    big, small = detector.score_one(obs(10, 1000, 150)), detector.score_one(obs(10, 20, 3))
    assert big.score == pytest.approx(0.4, abs=1e-12) and small.score == pytest.approx(0.4, abs=1e-12)
    assert big.breached and not small.breached


def test_no_false_breach_on_30_days_of_clean_seeded_binomial_data() -> None:
    """720 hourly buckets at a constant 10 % rate, 5,000-10,000 exposures each (a daily cycle).

    Why zero breaches is the right expectation, and not ~0.7 (= 720 x 0.001): a breach
    needs BOTH p < 0.001 AND a relative drop of at least 20 %. At n >= 5,000 and p = 0.1
    the 20 % condition binds: P(X <= 0.8 n p) = Phi(-0.2 sqrt(n p / (1 - p))) <= Phi(-4.7),
    about 1e-6 per bucket, so a union bound over the 720 buckets (computed exactly below)
    is far below 1 %; the baseline is pooled over 72 x >= 5,000 exposures, so its own
    noise (about 0.5 % relative) does not change this. The data are seeded: the test is
    deterministic, and a breach here means the detector is wrong, not unlucky.
    """
    rate = 0.10
    hours = np.arange(720)
    exposures = (7500 + 2500 * np.sin(2 * np.pi * hours / 24)).astype(int)
    conversions = np.random.default_rng(20261101).binomial(exposures, rate)
    union_bound = sum(float(binom.cdf(math.floor(0.8 * rate * n), n, rate)) for n in exposures)
    assert union_bound < 1e-3

    detector = ConversionDropDetector(ConversionDropConfig())  # the defaults: 20 %, 0.001, 72 / 24 buckets
    policy, state = BreachPolicy(BreachPolicyConfig()), BreachState()
    scored = breaches = 0
    incidents = []
    for hour, (n, c) in enumerate(zip(exposures.tolist(), conversions.tolist(), strict=True)):
        evaluation = evaluate_bucket(detector, state, policy, obs(hour, n, c), initiative="PLG Onboarding")
        state = evaluation.breach_state
        scored += evaluation.verdict.scored
        breaches += evaluation.verdict.breached
        incidents += evaluation.incidents
    assert scored == 720 - 24  # everything after the warm-up was judged
    assert breaches == 0
    assert incidents == [] and state == BreachState()


# ------------------------------------------------------------------------ evaluate_bucket
def test_evaluate_bucket_does_not_learn_from_a_breached_bucket() -> None:
    detector = warm_detector([(1000, 100)] * 4, warmup_buckets=4)
    policy = BreachPolicy(BreachPolicyConfig())
    probe = obs(50, 1000, 95)
    before = detector.score_one(probe)
    evaluation = evaluate_bucket(detector, BreachState(), policy, obs(10, 1000, 40), initiative="I")
    assert evaluation.verdict.breached
    assert evaluation.breach_state.status == "pending"
    after = detector.score_one(probe)
    assert after == before  # same baseline, same exposures behind it, same p-value
    assert after.expected == pytest.approx(0.1, abs=1e-15)


def test_evaluate_bucket_learns_from_a_healthy_bucket() -> None:
    detector = warm_detector([(1000, 100)] * 4, warmup_buckets=4, baseline_buckets=10)
    policy = BreachPolicy(BreachPolicyConfig())
    evaluation = evaluate_bucket(detector, BreachState(), policy, obs(10, 2000, 230), initiative="I")
    assert evaluation.verdict.scored and not evaluation.verdict.breached
    assert evaluation.breach_state == BreachState() and evaluation.incidents == []
    after = detector.score_one(obs(11, 1000, 100))
    assert after.detail["baseline_exposures"] == 6000
    assert after.expected == pytest.approx((400 + 230) / 6000, abs=1e-15)


def test_evaluate_bucket_leaves_the_breach_state_alone_on_an_unscored_bucket() -> None:
    detector = warm_detector([(1000, 100)] * 4, warmup_buckets=4, min_exposures=200)
    policy = BreachPolicy(BreachPolicyConfig())
    pending = evaluate_bucket(detector, BreachState(), policy, obs(10, 1000, 40), initiative="I").breach_state
    evaluation = evaluate_bucket(detector, pending, policy, obs(11, 50, 0), initiative="I")
    assert not evaluation.verdict.scored
    assert evaluation.breach_state is pending and evaluation.incidents == []


# ------------------------------------------------------------------------ state
def test_detector_pickles_to_an_equal_behaving_object() -> None:
    detector = warm_detector([(1000, 100), (1200, 130), (900, 80)] * 3, warmup_buckets=5, baseline_buckets=6)
    clone = pickle.loads(pickle.dumps(detector))
    assert clone is not detector and clone.config == detector.config
    assert clone.warming_up == detector.warming_up
    for probe in (obs(20, 1000, 60), obs(20, 1000, 100), obs(20, 150, 3)):
        assert clone.score_one(probe) == detector.score_one(probe)
    # And they stay in step as they keep learning (the deque keeps its maxlen through pickling).
    for hour in range(21, 30):
        clone.learn_one(obs(hour, 500, 75))
        detector.learn_one(obs(hour, 500, 75))
    assert clone.score_one(obs(40, 1000, 120)) == detector.score_one(obs(40, 1000, 120))
    assert clone.score_one(obs(40, 1000, 120)).expected == pytest.approx(0.15, abs=1e-15)
