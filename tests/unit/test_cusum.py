"""The CUSUM detectors' statistic against the closed-form log-likelihood ratio, and the benchmark's oracle."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import pytest
from scipy.stats import binom, poisson

import bench.detection_labels as bench
from detectors.base import BucketObservation, step
from detectors.cusum import CvrCusumDetector, CvrSmallDropCusumDetector, VolumeCusumDetector
from detectors.rate_change import CvrDropDetector

T0 = datetime(2026, 11, 2, tzinfo=timezone.utc)


def bucket(hour: int, exposures: int, conversions: int = 0) -> BucketObservation:
    return BucketObservation("s", T0 + timedelta(hours=hour), T0 + timedelta(hours=hour + 1), exposures,
                             conversions=conversions)


def warmed_cvr(p0: float = 0.1, n: int = 500, detector: CvrCusumDetector | None = None) -> CvrCusumDetector:
    detector = detector or CvrCusumDetector(warmup_buckets=12)
    for hour in range(24):   # exactly at the rate: no over-dispersion is learnt (rho = 0)
        step(detector, bucket(hour, n, round(n * p0)))
    assert detector._rho() == 0.0 and detector._s == 0.0
    return detector


@pytest.mark.parametrize("conversions", [20, 35, 42])
def test_one_bucket_adds_the_binomial_log_likelihood_ratio(conversions: int) -> None:
    detector, n, p0 = warmed_cvr(), 500, 0.1
    verdict = step(detector, bucket(24, n, conversions))
    p1 = p0 * (1 - detector.shift)
    llr = binom.logpmf(conversions, n, p1) - binom.logpmf(conversions, n, p0)
    assert verdict.detail["cusum"] == pytest.approx(min(2 * detector.threshold, max(0.0, llr)), abs=1e-9)
    assert detector._s == pytest.approx(verdict.detail["cusum"], abs=1e-12)


@pytest.mark.parametrize("conversions", [400, 450, 480])
def test_the_small_shift_cusum_adds_the_binomial_log_likelihood_ratio_of_a_10_percent_drop(conversions: int) -> None:
    detector, n, p0 = warmed_cvr(n=5000, detector=CvrSmallDropCusumDetector(warmup_buckets=12)), 5000, 0.1
    verdict = step(detector, bucket(24, n, conversions))
    llr = binom.logpmf(conversions, n, p0 * 0.9) - binom.logpmf(conversions, n, p0)
    assert detector.shift == 0.1
    assert verdict.detail["cusum"] == pytest.approx(min(2 * detector.threshold, max(0.0, llr)), abs=1e-9)


def test_a_bucket_beyond_four_standard_deviations_is_not_learnt_into_a_cusum_baseline() -> None:
    cusum, plain = warmed_cvr(), CvrDropDetector(warmup_buckets=12)
    for hour in range(24):
        step(plain, bucket(hour, 500, 50))
    # A spike: 80 conversions where 50 +- 6.7 (binomial) are expected, 4.5 standard deviations.
    z = (80 - 50) / math.sqrt(500 * 0.1 * 0.9)
    assert z > 4
    for hour in range(24, 28):
        step(cusum, bucket(hour, 500, 80))
        step(plain, bucket(hour, 500, 80))
    assert cusum._successes / cusum._trials == pytest.approx(0.1)    # waited learn_lag buckets, then left out
    assert plain._successes / plain._trials > 0.1                    # the per-bucket test learns it, as before
    assert cusum._rho() == 0.0


def test_the_statistic_runs_over_breached_buckets_and_the_dip_is_never_learnt() -> None:
    detector = warmed_cvr()
    baseline = detector._successes / detector._trials
    first = step(detector, bucket(24, 500, 25))            # a 50 % dip: 4.9 nats, below 6: healthy, waits
    assert not first.breached and first.detail["cusum"] > 4.5
    verdicts = [step(detector, bucket(25 + h, 500, 25)) for h in range(2)]
    assert [v.breached for v in verdicts] == [True, True]
    assert detector._s == 2 * detector.threshold           # capped
    # The first dipped hour waited to be learnt; the breach dropped it: the baseline never saw the dip.
    assert detector._successes / detector._trials == baseline


def test_after_an_alarm_the_statistic_restarts_on_the_first_bucket_back_at_baseline() -> None:
    detector = warmed_cvr()
    for h in range(3):
        step(detector, bucket(24 + h, 500, 25))
    assert detector._s == 2 * detector.threshold
    back = step(detector, bucket(27, 500, 52))             # at (above) the baseline of 50
    assert back.detail["cusum"] == 0.0 and not back.breached
    # Healthy buckets are learnt three buckets late.
    learnt = detector._trials
    step(detector, bucket(28, 500, 50))
    assert len(detector._waiting) == 2 and detector._trials == learnt


def test_the_count_cusum_adds_the_poisson_log_likelihood_ratio() -> None:
    detector = VolumeCusumDetector(warmup_buckets=48, season=24)
    for hour in range(72):
        step(detector, bucket(hour, 200))
    forecast = detector._model.forecast(72 + int(T0.timestamp() // 3600))
    assert forecast == pytest.approx(200.0)
    dispersion = max(1.0, detector._spread)
    verdict = step(detector, bucket(72, 150))
    mu1 = forecast * (1 - detector.shift)
    llr = poisson.logpmf(150, mu1) - poisson.logpmf(150, forecast)
    assert verdict.detail["cusum"] == pytest.approx(max(0.0, llr / dispersion), abs=1e-9)


@pytest.mark.parametrize("n, p0", [(300, 0.1), (2000, 0.08), (40, 0.3)])
def test_the_oracle_uses_the_largest_critical_region_of_size_alpha(n: int, p0: float) -> None:
    k = bench._lower_critical(binom(n, p0))
    assert binom.cdf(k, n, p0) <= bench.ORACLE_ALPHA < binom.cdf(k + 1, n, p0)


def test_the_oracle_power_of_a_rate_drop_is_the_exact_binomial_power() -> None:
    label = bench.Label(1, "conversion_drop", 0.2, "I", ("s",), 0, 6, 1000.0, (1000.0,) * 6, "cvr")
    rates = {"ctr": 0.1, "cvr": 0.08, "fallback_rate": 0.02}
    k = max(x for x in range(6001) if binom.cdf(x, 6000, 0.08) <= bench.ORACLE_ALPHA)   # brute force
    assert bench.oracle_power(label, rates, 0.47) == pytest.approx(binom.cdf(k, 6000, 0.064), abs=1e-12)
    spike = bench.Label(1, "spike", 0.5, "I", ("s",), 0, 4, 50.0, (50.0,) * 4, "ctr")
    k_up = min(x for x in range(201) if binom.sf(x - 1, 200, 0.1) <= bench.ORACLE_ALPHA)
    assert bench.oracle_power(spike, rates, 0.47) == pytest.approx(binom.sf(k_up - 1, 200, 0.15), abs=1e-12)
    gap = bench.Label(1, "feed_gap", 1.0, "I", ("s",), 0, 3, 2.0, (2.0,) * 3, "exposures")
    assert bench.oracle_power(gap, rates, 0.47) == (1.0 if math.exp(-6.0) <= bench.ORACLE_ALPHA else 0.0)


def test_the_share_cusum_adds_the_binomial_log_likelihood_ratio_of_a_halved_share() -> None:
    from detectors.cusum import VolumeShareCusumDetector

    def share_bucket(hour: int, exposures: int, initiative: int) -> BucketObservation:
        return BucketObservation("s", T0 + timedelta(hours=hour), T0 + timedelta(hours=hour + 1), exposures,
                                 group_exposures=initiative)

    detector = VolumeShareCusumDetector(warmup_buckets=12)
    for hour in range(24):   # a quarter of the initiative, whatever its daily cycle
        total = 400 * (1 + hour % 3)
        step(detector, share_bucket(hour, total // 4, total))
    assert detector._rho() == 0.0
    verdict = step(detector, share_bucket(24, 60, 800))
    llr = binom.logpmf(60, 800, 0.125) - binom.logpmf(60, 800, 0.25)
    assert verdict.detail["cusum"] == pytest.approx(min(2 * detector.threshold, llr), abs=1e-9)
    assert verdict.breached   # 60 of 800 against a quarter: about 20 nats, over the threshold of 8
    unknown = step(detector, share_bucket(25, 100, 0))   # the initiative's volume unknown: not judged
    assert not unknown.scored
