"""The detectors one by one: their statistics against scipy, their River parts, the checks beside them."""

from __future__ import annotations

import doctest
import importlib
import math
import pickle
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from scipy import stats

from detectors import stats as tails
from detectors.backtest import run_series, univariate_detectors
from detectors.base import BucketObservation
from detectors.conversion_drop import ConversionDropConfig, ConversionDropDetector
from detectors.exceptions import InvalidObservation
from detectors.forecasters import RiverForecaster, SeasonalProfile
from detectors.freshness import KIND as FRESHNESS_KIND
from detectors.freshness import check_freshness, objective_for_rate
from detectors.kpis import KPI_NAMES, read, read_all
from detectors.level_shift import LevelShiftDetector
from detectors.multi_metric import MultiMetricDetector
from detectors.rate_change import CtrDropDetector, CvrDropDetector, FallbackSurgeDetector, RateSpikeDetector
from detectors.registry import DETECTORS, PER_INITIATIVE, CheckedConversionDrop, detector_for_kpi
from detectors.seasonal import LatencyRegressionDetector, SeasonalDetector, VolumeDropDetector
from detectors.variant_share import VariantShareDetector

T0 = datetime(2026, 11, 2, tzinfo=timezone.utc)


def obs(hour: int, exposures: int, **counters: float) -> BucketObservation:
    start = T0 + timedelta(hours=hour)
    return BucketObservation("I|p|c|v", start, start + timedelta(hours=1), exposures, **counters)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- tails vs scipy
@pytest.mark.parametrize("k,n,p", [(0, 10, 0.3), (3, 10, 0.02), (61, 800, 0.1), (120, 1000, 0.12), (999, 1000, 0.5),
                                   (10, 10, 0.3), (11, 10, 0.3), (-1, 10, 0.3)])
def test_binomial_tails_are_scipys(k: int, n: int, p: float) -> None:
    assert tails.binom_lower_tail(k, n, p) == pytest.approx(stats.binom.cdf(k, n, p), rel=1e-9, abs=1e-300)
    assert tails.binom_upper_tail(k, n, p) == pytest.approx(stats.binom.sf(k - 1, n, p), rel=1e-9, abs=1e-300)


@pytest.mark.parametrize("k,mu", [(0, 3.0), (43, 73.0), (100, 73.0), (0, 0.0), (5, 0.0), (-1, 2.0)])
def test_poisson_tails_are_scipys(k: int, mu: float) -> None:
    assert tails.poisson_lower_tail(k, mu) == pytest.approx(stats.poisson.cdf(k, mu), rel=1e-9)
    assert tails.poisson_upper_tail(k, mu) == pytest.approx(stats.poisson.sf(k - 1, mu), rel=1e-9)


@pytest.mark.parametrize("k,n,p,rho", [(300, 3000, 0.12, 3e-4), (250, 2000, 0.08, 1e-3), (500, 4000, 0.12, 5e-5)])
def test_over_dispersed_rate_tails_are_scipys_beta_binomial(k: int, n: int, p: float, rho: float) -> None:
    a, b = p * (1 / rho - 1), (1 - p) * (1 / rho - 1)
    assert tails.rate_lower_tail(k, n, p, rho) == pytest.approx(stats.betabinom.cdf(k, n, a, b), rel=1e-9)
    assert tails.rate_upper_tail(k, n, p, rho) == pytest.approx(stats.betabinom.sf(k - 1, n, a, b), rel=1e-9)
    # its variance is the one the detector models, and its tails are heavier than the binomial's
    assert stats.betabinom.var(n, a, b) == pytest.approx(n * p * (1 - p) * (1 + (n - 1) * rho), rel=1e-9)
    assert tails.rate_lower_tail(int(0.8 * n * p), n, p, rho) > tails.binom_lower_tail(int(0.8 * n * p), n, p)
    assert tails.rate_lower_tail(k, n, p, 0.0) == tails.binom_lower_tail(k, n, p)


@pytest.mark.parametrize("k,mean,dispersion", [(43, 73.0, 2.35), (100, 73.0, 1.5), (0, 12.0, 3.0), (20, 12.0, 1.2)])
def test_over_dispersed_count_tails_are_scipys_negative_binomial(k: int, mean: float, dispersion: float) -> None:
    n, p = mean / (dispersion - 1), 1 / dispersion
    assert stats.nbinom.mean(n, p) == pytest.approx(mean) and stats.nbinom.var(n, p) == pytest.approx(mean * dispersion)
    assert tails.count_lower_tail(k, mean, dispersion) == pytest.approx(stats.nbinom.cdf(k, n, p), rel=1e-9)
    assert tails.count_upper_tail(k, mean, dispersion) == pytest.approx(stats.nbinom.sf(k - 1, n, p), rel=1e-9)
    assert tails.count_lower_tail(k, mean, 1.0) == tails.poisson_lower_tail(k, mean)


def test_normal_tails_are_scipys() -> None:
    for z in (-5.0, -1.3, 0.0, 2.2, 6.0):
        assert tails.normal_lower_tail(z) == pytest.approx(stats.norm.cdf(z), rel=1e-12)
        assert tails.normal_upper_tail(z) == pytest.approx(stats.norm.sf(z), rel=1e-12)


# ------------------------------------------------------------------------------------------- KPIs
def test_kpis_read_values_and_the_evidence_behind_them() -> None:
    bucket = obs(0, 1000, clicks=120, conversions=80, revenue=2400.0, fallbacks=20, latency_ms_sum=44_000.0)
    readings = read_all(bucket)
    assert set(readings) == set(KPI_NAMES)
    assert (readings["ctr"].total, readings["ctr"].n, readings["ctr"].evidence) == (120, 1000, "binomial")
    assert readings["latency_ms"].value == 44.0 and readings["latency_ms"].evidence == "mean"
    exposures = readings["exposures"]
    assert (exposures.value, exposures.n, exposures.evidence) == (1000, 1, "poisson")
    assert read(obs(0, 0), "ctr") is None and read(obs(0, 0), "exposures").value == 0.0
    # conversions of the previous hour's exposures may outnumber this hour's exposures: capped, not an error
    assert read(obs(0, 2, conversions=3), "cvr").value == 1.0


@pytest.mark.parametrize("bad", [dict(revenue=-1.0), dict(revenue=math.inf), dict(latency_ms_sum=math.nan),
                                 dict(fallbacks=11), dict(value=math.nan)])
def test_invalid_buckets_are_refused(bad: dict) -> None:
    with pytest.raises(InvalidObservation):
        read(obs(0, 10, **bad), "ctr")


# ------------------------------------------------------------------------------------------- rates
def test_rate_p_value_is_the_binomial_tail_while_there_is_no_over_dispersion() -> None:
    detector = CvrDropDetector(warmup_buckets=4)
    for hour in range(30):
        detector.learn_one(obs(hour, 1000, conversions=100))   # z = 0 every time: rho stays 0
    verdict = detector.score_one(obs(30, 800, conversions=55))
    assert verdict.detail["rho"] == 0.0 and verdict.expected == pytest.approx(0.1)
    assert verdict.detail["p_value"] == pytest.approx(stats.binom.cdf(55, 800, 0.1), rel=1e-9)
    assert verdict.score == pytest.approx(1 - (55 / 800) / 0.1) and verdict.breached
    # 61 of 800 is a 24 % drop too, but p = 0.012: not below the default 0.005
    assert not detector.score_one(obs(30, 800, conversions=61)).breached


def test_rate_p_value_is_the_beta_binomial_tail_once_over_dispersion_is_learnt() -> None:
    rng = np.random.default_rng(1)
    detector = CtrDropDetector()
    for hour in range(200):
        n = int(rng.integers(2000, 5000))
        detector.learn_one(obs(hour, n, clicks=int(rng.binomial(n, 0.12 * rng.lognormal(0, 0.05)))))
    verdict = detector.score_one(obs(200, 3000, clicks=300))
    rho, p = verdict.detail["rho"], verdict.expected
    assert 1e-4 < rho < 1e-2   # 5 % rate noise at ~3,000 exposures: rho ~ 0.05^2 p / (1 - p)
    a, b = p * (1 / rho - 1), (1 - p) * (1 / rho - 1)
    assert verdict.detail["p_value"] == pytest.approx(stats.betabinom.cdf(300, 3000, a, b), rel=1e-9)
    assert verdict.detail["p_value"] > stats.binom.cdf(300, 3000, p)


def test_rises_use_the_upper_tail_and_drops_are_not_rises() -> None:
    spike = RateSpikeDetector(kpi="ctr", warmup_buckets=4)
    surge = FallbackSurgeDetector(warmup_buckets=4)
    for hour in range(10):
        spike.learn_one(obs(hour, 1000, clicks=120))
        surge.learn_one(obs(hour, 1000, fallbacks=20))
    up = spike.score_one(obs(10, 1000, clicks=170))
    assert up.breached and up.detail["p_value"] == pytest.approx(stats.binom.sf(169, 1000, 0.12), rel=1e-9)
    assert not spike.score_one(obs(10, 1000, clicks=40)).breached
    assert surge.score_one(obs(10, 200, fallbacks=30)).breached
    assert not surge.score_one(obs(10, 30, fallbacks=2)).breached   # 2 of 30 at 2 %: p = 0.12


def test_volume_decides_the_same_relative_dip() -> None:
    detector = CvrDropDetector(warmup_buckets=4, min_exposures=10)
    for hour in range(10):
        detector.learn_one(obs(hour, 1000, conversions=100))
    assert detector.score_one(obs(10, 12_000, conversions=720)).breached   # 6 % of 12,000
    assert not detector.score_one(obs(10, 12, conversions=0)).breached     # 0 of 12: p = 0.28


def test_the_registered_conversion_drop_is_the_unchanged_detector_with_validation() -> None:
    legacy, checked = ConversionDropDetector(ConversionDropConfig(warmup_buckets=4)), DETECTORS["conversion_drop"](
        warmup_buckets=4)
    assert isinstance(checked, CheckedConversionDrop) and isinstance(checked, ConversionDropDetector)
    for hour, (n, c) in enumerate([(1000, 100), (1200, 130), (900, 80), (1000, 95), (1100, 105)]):
        legacy.learn_one(obs(hour, n, conversions=c))
        checked.learn_one(obs(hour, n, conversions=c))
    for probe in (obs(9, 1000, conversions=60), obs(9, 1000, conversions=100), obs(9, 150, conversions=3)):
        assert checked.score_one(probe) == legacy.score_one(probe)


# ------------------------------------------------------------------------------------------- seasonal
def seasonal_counts(days: int, scale: float = 500.0, seed: int = 2) -> list[BucketObservation]:
    rng = np.random.default_rng(seed)
    return [obs(h, int(rng.poisson(scale * (1 + 0.7 * math.sin(2 * math.pi * h / 24))))) for h in range(days * 24)]


def test_count_p_value_is_poisson_or_negative_binomial_around_the_forecast() -> None:
    detector = VolumeDropDetector()
    for bucket in seasonal_counts(5):
        detector.learn_one(bucket)
    verdict = detector.score_one(obs(5 * 24 + 6, 300))   # 6 am: the daily peak, ~850 expected
    f, dispersion = verdict.expected, verdict.detail["dispersion"]
    assert 700 < f < 1000 and dispersion >= 1.0 and verdict.breached
    expected = (stats.poisson.cdf(300, f) if dispersion == 1.0
                else stats.nbinom.cdf(300, f / (dispersion - 1), 1 / dispersion))
    assert verdict.detail["p_value"] == pytest.approx(expected, rel=1e-9)
    # zero exposures against a forecast of 4 is not news
    small = VolumeDropDetector()
    for bucket in seasonal_counts(5, scale=4.0):
        small.learn_one(bucket)
    quiet = small.score_one(obs(5 * 24 + 18, 0))   # 6 pm: the trough
    assert quiet.scored and not quiet.breached and quiet.detail["p_value"] > 0.01


def test_mean_p_value_is_the_normal_tail_of_z() -> None:
    rng = np.random.default_rng(4)
    detector = LatencyRegressionDetector()
    for hour in range(72):
        n = 2000
        detector.learn_one(obs(hour, n, latency_ms_sum=float(rng.normal(44.0 * n, 21.0 * math.sqrt(n)))))
    verdict = detector.score_one(obs(72, 2000, latency_ms_sum=2000 * 60.0))
    assert verdict.breached and verdict.detail["z"] > 10
    assert verdict.detail["p_value"] == pytest.approx(stats.norm.sf(verdict.detail["z"]), rel=1e-9, abs=1e-300)
    assert not detector.score_one(obs(72, 2000, latency_ms_sum=2000 * 30.0)).breached   # faster is not a regression


def test_profile_and_holt_winters_forecast_a_daily_cycle() -> None:
    buckets = seasonal_counts(6, scale=2000.0)
    for forecaster in (SeasonalProfile(), RiverForecaster("holt_winters")):
        errors = []
        for hour, bucket in enumerate(buckets):
            forecast = forecaster.forecast(hour)
            if hour >= 72:
                errors.append(abs(forecast - bucket.exposures) / bucket.exposures)
            forecaster.learn(hour, bucket.exposures)
        assert np.median(errors) < 0.05


def test_river_forecaster_keeps_the_phase_across_buckets_it_did_not_learn() -> None:
    shape = [30, 10, 50, 30] * 30   # first = last value: River's HoltWinters reads no trend into it
    model = RiverForecaster("holt_winters", season=4)
    for index, y in enumerate(shape):
        if index % 11 not in (5, 6):   # holes, as when breaches are not learnt
            model.learn(index, y)
    last = len(shape) - 1 if (len(shape) - 1) % 11 not in (5, 6) else len(shape) - 3
    assert [round(model.forecast(last + h)) for h in (1, 2, 3, 4)] == [shape[(last + h) % 4] for h in (1, 2, 3, 4)]


def test_a_backtested_value_may_be_negative() -> None:
    detector = SeasonalDetector(kpi="value", direction="both", warmup_buckets=48)
    for hour in range(72):
        detector.learn_one(obs(hour, 0, value=-50.0 + 20 * math.sin(2 * math.pi * hour / 24) + (hour % 3 - 1)))
    assert not detector.score_one(obs(72, 0, value=-50.0 + 1)).breached
    assert detector.score_one(obs(72, 0, value=-5.0)).breached


# ------------------------------------------------------------------------------------------- level shifts
# ADWIN (not registered) needs a bigger shift and more time: what the benchmark measured too.
@pytest.mark.parametrize("drift_detector,rate,within", [("page_hinkley", 0.072, 12), ("adwin", 0.068, 24)])
def test_level_shift_finds_a_lasting_drop_that_no_single_bucket_shows(drift_detector: str, rate: float,
                                                                      within: int) -> None:
    rng = np.random.default_rng(8)
    drop, shift = CvrDropDetector(), LevelShiftDetector(kpi="cvr", drift_detector=drift_detector)

    def bucket(hour: int, rate: float) -> BucketObservation:
        return obs(hour, 3000, conversions=int(rng.binomial(3000, rate * rng.lognormal(0, 0.03))))

    for hour in range(96):
        b = bucket(hour, 0.08)
        drop.learn_one(b)
        shift.learn_one(b)
    found = []
    for hour in range(96, 96 + 48):
        b = bucket(hour, rate)
        for detector in (drop, shift):
            verdict = detector.score_one(b)
            if verdict.breached:
                found.append((detector.kind, hour - 96))
            else:
                detector.learn_one(b)
    shifts = [h for kind, h in found if kind == "level_shift"]
    assert shifts and shifts[0] <= within, found
    if rate == 0.072:   # a 10 % drop: each bucket alone is within the noise
        assert not [h for kind, h in found if kind == "conversion_drop"]


def test_level_shift_watches_one_direction_and_one_bucket_is_not_a_level() -> None:
    detector = LevelShiftDetector(kpi="ctr")
    for hour in range(72):
        detector.learn_one(obs(hour, 3000, clicks=360 + (hour % 5) * 4 - 8))
    rises = [detector.score_one(obs(72, 3000, clicks=clicks)).breached for clicks in (450, 600, 3000)]
    assert rises == [False, False, False]   # a rise, to a drop detector
    first = detector.score_one(obs(72, 3000, clicks=150))
    assert first.detail["z"] < -10 and not first.breached   # a single bucket tells Page-Hinkley 5 sigma at most
    detector.learn_one(obs(72, 3000, clicks=150))
    assert detector.score_one(obs(73, 3000, clicks=150)).breached   # the second makes it a level


# ------------------------------------------------------------------------------------------- multi-metric
def test_half_space_trees_are_an_initiative_detector_by_size() -> None:
    assert PER_INITIATIVE == {name for name, factory in DETECTORS.items() if isinstance(factory(), MultiMetricDetector)}
    detector = MultiMetricDetector()
    for hour in range(72):   # River grows the trees' masses as it learns
        detector.learn_one(obs(hour, 3000, clicks=360, conversions=240, fallbacks=60, latency_ms_sum=132_000.0))
    size = len(pickle.dumps(detector))
    assert size > 150 * 1024   # 10 trees of height 8: why it watches an initiative, not each series


# ------------------------------------------------------------------------------------------- variant share
def test_variant_share_tests_the_binomial_lower_tail_against_the_allocation() -> None:
    detector = VariantShareDetector({"control": 1, "treatment": 4})   # normalised to 0.2 / 0.8
    assert detector.allocation == {"control": 0.2, "treatment": 0.8} and not detector.warming_up
    verdicts = detector.score_one({"control": 20, "treatment": 180})
    assert verdicts["control"].detail["p_value"] == pytest.approx(stats.binom.cdf(20, 200, 0.2), rel=1e-9)
    assert verdicts["control"].breached and not verdicts["treatment"].breached
    assert verdicts["control"].score == pytest.approx(0.5)
    zero = detector.score_one({"control": 12, "treatment": 0})["treatment"]
    assert zero.breached and zero.detail["p_value"] == pytest.approx(0.2 ** 12, rel=1e-9)
    assert not detector.score_one({"control": 3, "treatment": 0})["treatment"].breached   # 0.2^3 = 0.008
    assert not detector.score_one({"control": 1})["treatment"].scored                      # too few to judge


def test_variant_share_learns_shares_when_no_allocation_is_planned() -> None:
    detector = VariantShareDetector(warmup_buckets=5)
    for _ in range(5):
        assert detector.warming_up
        assert not any(v.breached for v in detector.score_one({"a": 0, "b": 300}).values())
        detector.learn_one({"a": 150, "b": 150})
    assert not detector.warming_up
    assert detector.score_one({"a": 0, "b": 300})["a"].breached


@pytest.mark.parametrize("bad", [{"control": -1, "treatment": 5}, {"control": 1.5, "treatment": 5},
                                 {"control": 5, "treatment": 5, "other": 1}])
def test_variant_share_refuses_invalid_counts(bad: dict) -> None:
    with pytest.raises(InvalidObservation):
        VariantShareDetector({"control": 0.5, "treatment": 0.5}).score_one(bad)


# ------------------------------------------------------------------------------------------- freshness
def test_freshness_verdicts() -> None:
    now = T0 + timedelta(hours=5)
    verdicts = check_freshness({"a": now - timedelta(minutes=16), "b": now - timedelta(minutes=14), "c": None,
                                "d": now + timedelta(seconds=5)}, now, {"a": timedelta(minutes=15),
                                                                      "b": timedelta(minutes=15),
                                                                      "c": timedelta(minutes=15),
                                                                      "d": timedelta(minutes=15)})
    assert [verdicts[f].breached for f in "abcd"] == [True, False, False, False]
    assert verdicts["a"].observed == 960.0 and verdicts["a"].expected == 900.0
    assert verdicts["c"].warming_up and not verdicts["c"].scored
    assert verdicts["d"].observed == 0.0
    assert FRESHNESS_KIND == "feed_stale"
    with pytest.raises(InvalidObservation):
        check_freshness({"a": now}, now, {})
    with pytest.raises(InvalidObservation):
        check_freshness({"a": now.replace(tzinfo=None)}, now, timedelta(minutes=1))


def test_freshness_objective_is_the_silence_a_rate_shows_with_the_given_chance() -> None:
    objective = objective_for_rate(60.0, significance=1e-4)
    hours = objective.total_seconds() / 3600
    assert math.exp(-60.0 * hours) <= 1e-4 < math.exp(-60.0 * (hours - 1 / 3600))
    assert objective_for_rate(1e6) == timedelta(minutes=5)


# ------------------------------------------------------------------------------------------- backtest
def series_rows(days: int = 5) -> list[tuple[datetime, float]]:
    rng = np.random.default_rng(9)
    return [(T0 + timedelta(hours=h), 100 + 30 * math.sin(2 * math.pi * h / 24) + float(rng.normal(0, 2)))
            for h in range(days * 24)]


def test_backtest_finds_a_dip_online_and_learns_only_what_did_not_alert() -> None:
    rows = series_rows()
    for hour in range(100, 103):
        rows[hour] = (rows[hour][0], rows[hour][1] * 0.4)   # three hours at 40 %
    out = list(run_series(rows, "seasonal_profile"))
    assert [r[0] for r in out] == [r[0] for r in rows] and [r[1] for r in out] == [r[1] for r in rows]
    alerts = [i for i, (_, _, _, alert) in enumerate(out) if alert]
    assert alerts == [100, 101, 102]   # the third is still an alert: the dip was never learnt
    assert all(score == 0.0 for _, _, score, _ in out[:48])   # warming up


def test_backtest_reads_counts_for_count_detectors_and_refuses_rates() -> None:
    rows = [(t, round(v)) for t, v in series_rows()]
    assert sum(alert for *_, alert in run_series(rows, "volume_profile")) == 0
    with pytest.raises(InvalidObservation):
        list(run_series([(T0, 1.5), (T0 + timedelta(hours=1), 2.0)], "volume_profile"))
    with pytest.raises(ValueError, match="needs more than one number"):
        list(run_series(rows, "ctr_drop"))
    with pytest.raises(InvalidObservation, match="increase"):
        list(run_series([(T0, 1.0), (T0, 2.0)], "seasonal_profile"))
    assert "seasonal_profile" in univariate_detectors() and "ctr_drop" not in univariate_detectors()


# ------------------------------------------------------------------------------------------- registry
def test_every_kpi_has_a_registered_choice() -> None:
    for kpi in KPI_NAMES:
        names = detector_for_kpi(kpi)
        assert names and all(name in DETECTORS for name in names)
        # Volume is also judged as the series' share of its initiative's exposures.
        answers = {kpi, "exposure_share"} if kpi == "exposures" else {kpi}
        assert all(getattr(DETECTORS[name](), "kpi", None) in answers for name in names)
    with pytest.raises(ValueError, match="unknown KPI"):
        detector_for_kpi("bounce_rate")


# ------------------------------------------------------------------------------------------- doctests
@pytest.mark.parametrize("module", ["stats", "kpis", "forecasters", "rate_change", "seasonal", "level_shift",
                                    "multi_metric", "variant_share", "freshness", "backtest",
                                    "kpi_threshold", "conversion_drop"])
def test_the_seeded_examples_in_the_docstrings_hold(module: str) -> None:
    result = doctest.testmod(importlib.import_module(f"detectors.{module}"))
    assert result.attempted > 0 and result.failed == 0
