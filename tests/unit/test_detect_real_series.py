"""`pmon detect --csv` and its default detector on the real series installed packages ship (issue 15).

Each shipped series gets a planted spike, dip and lasting level shift; `pmon detect` (in process) must run
without an error and flag each. Besides: series as they come (out of order, repeated, blank values, gaps),
scale invariance of the calibrated score, and the tail calibration against closed forms.
"""

from __future__ import annotations

import csv
import io
import math
import random
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats

ROOT = Path(__file__).resolve().parents[2]

from bench.real_series import Series, load_series, noise_scale  # noqa: E402
from cli.main import pmon  # noqa: E402
from detectors.backtest import prepare_series, run_series  # noqa: E402
from detectors.base import BucketObservation, step  # noqa: E402
from detectors.robust_series import RobustSeriesDetector, _ARModel, _stationary  # noqa: E402
from detectors.tail_calibration import PeakCalibrator, TailCalibrator  # noqa: E402

SERIES = {s.name: s for s in load_series()}


def _five_minute(series: Series) -> Series:
    """The same values stamped 5 minutes apart: no package ships a 5-minute series."""
    t0 = datetime(2026, 11, 2, tzinfo=timezone.utc)
    return Series(f"{series.name}_5min", series.source, "5-minute",
                  [t0 + timedelta(minutes=5 * i) for i in range(len(series.values))], list(series.values),
                  list(series.known))


CASES = {**SERIES, "water_flow_5min": _five_minute(SERIES["water_flow"])}


def _planted(series: Series) -> tuple[list[float], dict[str, int]]:
    """A spike at 45 %, a 3-point dip at 65 % and a lasting level shift at 85 % of the series, clear of its
    known events."""
    values, n, sigma = list(series.values), len(series.values), noise_scale(series.values)
    at: dict[str, int] = {}
    for kind, fraction in (("spike", 0.45), ("dip", 0.65), ("level_shift", 0.85)):
        i = int(fraction * n)
        while any(a - 3 <= i < b + 3 for a, b in series.known):
            i += 1
        at[kind] = i
    values[at["spike"]] += 10 * sigma
    for i in range(at["dip"], at["dip"] + 3):
        values[i] -= 10 * sigma
    for i in range(at["level_shift"], n):
        values[i] += 8 * sigma
    return values, at


def _detect(tmp_path: Path, times: list[datetime], values: list[float | str], *args: str
            ) -> tuple[int, str, list[dict[str, str]]]:
    path = tmp_path / "series.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["timestamp", "value"])
        writer.writerows([t.isoformat(), v] for t, v in zip(times, values, strict=True))
    result = CliRunner().invoke(pmon, ["detect", "--csv", str(path), *args])
    rows = list(csv.DictReader(io.StringIO(result.stdout))) if result.exit_code == 0 else []
    return result.exit_code, result.stderr, rows


@pytest.mark.parametrize("name", sorted(CASES))
def test_detect_flags_a_planted_spike_dip_and_level_shift_in_every_shipped_series(name: str, tmp_path: Path) -> None:
    series = CASES[name]
    values, at = _planted(series)
    code, err, rows = _detect(tmp_path, series.times, values)
    assert code == 0, err
    assert len(rows) == len(values) and {row["alert"] for row in rows} <= {"true", "false"}
    assert all(0.0 <= float(row["anomaly_score"]) <= 1.0 for row in rows)
    alerts = [i for i, row in enumerate(rows) if row["alert"] == "true"]
    for kind, start in at.items():
        within = 12 if kind == "level_shift" else 4     # a shift's evidence gathers (a CUSUM)
        assert any(start <= i < start + within for i in alerts), f"{name}: {kind} at {start} missed; alerts {alerts}"
    assert "interval" in err and "warm-up 12 points" in err


def test_the_sampling_is_inferred_and_reported(tmp_path: Path) -> None:
    airline, water = SERIES["airline"], _five_minute(SERIES["water_flow"])
    _, monthly, _ = _detect(tmp_path, airline.times, airline.values)
    _, five, _ = _detect(tmp_path, water.times, water.values)
    assert "interval 31 days" in monthly and "interval 0:05:00" in five


def test_rows_as_they_come_are_sorted_averaged_and_reported_never_refused(tmp_path: Path) -> None:
    rng = random.Random(3)
    t0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
    times = [t0 + timedelta(hours=h) for h in range(300)]
    values: list[float | str] = [-50 + rng.gauss(0, 1) for _ in times]       # negative values
    values[200] = -80.0                                                       # a dip
    rows = list(zip(times, values, strict=True))
    rows[10], rows[11] = rows[11], rows[10]                                   # out of order
    rows.insert(50, (times[50], values[50]))                                  # repeated
    rows[120] = (times[120], "")                                              # a blank value
    code, err, out = _detect(tmp_path, [t for t, _ in rows], [v for _, v in rows])
    assert code == 0, err
    assert "1 repeated timestamps" in err and "1 out of order" in err and "1 blank or NaN values" in err
    stamps = [datetime.fromisoformat(row["timestamp"]) for row in out]
    assert stamps == sorted(stamps) and len(stamps) == 299
    assert [row["timestamp"] for row in out if row["alert"] == "true"] == [times[200].isoformat()]


def test_a_missing_stretch_is_an_alert_of_its_own_and_a_gappy_sampling_is_not() -> None:
    rng = random.Random(5)
    t0 = datetime(2026, 11, 2, tzinfo=timezone.utc)
    # Trading days: weekends are 3-day gaps, the sampling's own; then two missing weeks.
    days = [t0 + timedelta(days=d) for d in range(400) if (t0 + timedelta(days=d)).weekday() < 5]
    days = days[:200] + days[210:]
    out = list(run_series([(d, 1.0 + rng.gauss(0, 0.01)) for d in days]))
    assert [i for i, (*_, alert) in enumerate(out) if alert] == [200]


def test_the_score_does_not_depend_on_the_scale_or_the_offset() -> None:
    rng = random.Random(8)
    t0 = datetime(2026, 11, 2, tzinfo=timezone.utc)
    base = [math.sin(i / 5) + rng.gauss(0, 0.2) for i in range(400)]
    base[300] += 3
    rows = lambda scale, offset: [(t0 + timedelta(hours=i), offset + scale * v) for i, v in enumerate(base)]  # noqa: E731
    small = list(run_series(rows(1.0, 0.0)))
    large = list(run_series(rows(1e6, -3e7)))     # revenue in the millions, all negative
    assert [a for *_, a in small] == [a for *_, a in large]
    assert [s for _, _, s, _ in small] == pytest.approx([s for _, _, s, _ in large], abs=1e-6)
    assert small[300][3]


def test_a_constant_series_that_moves_alerts_without_a_division_by_zero() -> None:
    t0 = datetime(2026, 11, 2, tzinfo=timezone.utc)
    values = [7.0] * 50 + [8.0] + [7.0] * 10
    out = list(run_series([(t0 + timedelta(days=i), v) for i, v in enumerate(values)]))
    assert [i for i, (*_, alert) in enumerate(out) if alert] == [50]


def test_warm_up_is_a_setting_and_no_point_alerts_before_it_ends() -> None:
    t0 = datetime(2026, 11, 2, tzinfo=timezone.utc)
    detector = RobustSeriesDetector(warmup_points=30)
    verdicts = [step(detector, BucketObservation("s", t0 + timedelta(hours=i), t0 + timedelta(hours=i + 1), 0,
                                                 value=1000.0 if i == 20 else float(i % 3)))
                for i in range(40)]
    assert not any(v.breached for v in verdicts[:30]) and all(v.warming_up for v in verdicts[:30])
    assert not verdicts[30].warming_up


def test_prepare_series_reports_irregular_gaps() -> None:
    t0 = datetime(2026, 11, 2, tzinfo=timezone.utc)
    points, found = prepare_series([(t0 + timedelta(minutes=m), 1.0) for m in (0, 5, 10, 15, 40, 45, 47)])
    assert found.interval == timedelta(minutes=5) and found.irregular_gaps == 2 and len(points) == 7


# ----------------------------------------------------------------------------------------- the calibration
def test_the_tail_is_the_closed_form_exponential_and_the_prior_the_normals() -> None:
    calibrator = TailCalibrator(1.5, 0.08, 0.7)
    for x in (1.6, 2.5, 4.0, 9.0):
        assert calibrator.p_value(x) == pytest.approx(0.08 * stats.expon.sf(x - 1.5, scale=0.7), rel=1e-12)
    prior = TailCalibrator.for_abs_normal(2.0)
    assert prior.p_value(2.0) == pytest.approx(2 * stats.norm.sf(2.0), rel=1e-9)
    # The normal's mean excess above 2, E[|Z| - 2 | |Z| > 2], by numerical integration.
    excess = stats.truncnorm(2.0, math.inf).mean() - 2.0
    assert prior.excess == pytest.approx(excess, rel=1e-9)


def test_a_learnt_laplace_tail_matches_the_exact_one() -> None:
    # |Laplace(b)| is exponential: the tail model is exact, so what is learnt must be the truth.
    rng = random.Random(11)
    calibrator = TailCalibrator.for_abs_normal(2.0, memory=5000)
    b = 1.3
    for _ in range(40_000):
        calibrator.learn(rng.expovariate(1 / b))
    for x in (3.0, 6.0, 9.0):
        assert calibrator.p_value(x) == pytest.approx(stats.expon.sf(x, scale=b), rel=0.2)


def test_a_crowd_limit_keeps_a_heavy_tail_and_bounds_what_a_burst_teaches() -> None:
    """The exceedances of an iid heavy tail seldom crowd: capped, the tail learns the same Laplace tail as free.
    A burst (forty values far out, after normal ones) teaches the free tail a width that would hide the next
    burst; the capped tail stays narrow."""
    rng = random.Random(12)
    capped = TailCalibrator.for_abs_normal(2.0, memory=5000, crowd_sigmas=3.0, crowd_window=30)
    free = TailCalibrator.for_abs_normal(2.0, memory=5000)
    for _ in range(40_000):
        x = rng.expovariate(1 / 1.3)
        capped.learn(x)
        free.learn(x)
    for x in (3.0, 6.0, 9.0):
        assert capped.p_value(x) == pytest.approx(free.p_value(x), rel=0.1)
        assert capped.p_value(x) == pytest.approx(stats.expon.sf(x, scale=1.3), rel=0.2)
    capped = TailCalibrator.for_abs_normal(2.0, crowd_sigmas=3.0, crowd_window=30)
    free = TailCalibrator.for_abs_normal(2.0)
    for x in [abs(rng.gauss(0, 1)) for _ in range(2000)] + [abs(rng.gauss(0, 10)) for _ in range(40)]:
        capped.learn(x)
        free.learn(x)
    assert free.p_value(15.0) > 10 * capped.p_value(15.0), (free.p_value(15.0), capped.p_value(15.0))
    with pytest.raises(ValueError, match="crowd"):
        TailCalibrator(2.0, 0.05, 0.5, crowd_sigmas=0.0)


def test_one_threshold_is_about_one_false_alarm_rate_on_different_noise() -> None:
    """After learning, P(p < 0.001) is 0.001 for exponential tails, below it for the normal's (conservative),
    and within 5x above it for a Student t of 3 degrees of freedom (a polynomial tail: the known limit)."""
    expected = {"laplace": (25, 90), "normal": (5, 60), "t3": (100, 250)}
    draws = {"laplace": lambda r: r.expovariate(1.0), "normal": lambda r: r.gauss(0, 1),
             "t3": lambda r: stats.t.ppf(r.random(), 3)}
    for name, draw in draws.items():
        rng = random.Random(21)
        calibrator = TailCalibrator.for_abs_normal(2.0, memory=5000)
        for _ in range(5000):
            calibrator.learn(abs(draw(rng)))
        hits = sum(calibrator.p_value(abs(draw(rng))) < 0.001 for _ in range(50_000))   # 50 if exact
        low, high = expected[name]
        assert low <= hits <= high, (name, hits)


# ----------------------------------------------------------------------------------------- variance, determinism
def test_a_burst_of_variance_is_alerted_by_the_variance_cusum() -> None:
    """30 points with three times the noise (the benchmark's variance kind, no point beyond 4 scales): one alert,
    inside the burst, raised by the variance statistic (p_spread), none before it."""
    rng = random.Random(12)
    t0 = datetime(2026, 11, 2, tzinfo=timezone.utc)
    detector = RobustSeriesDetector()
    verdicts = []
    for i in range(400):
        noise = rng.gauss(0, 1)
        if 300 <= i < 330:
            noise = max(-4.0, min(4.0, 3 * rng.gauss(0, 1)))
        observation = BucketObservation("s", t0 + timedelta(hours=i), t0 + timedelta(hours=i + 1), 0,
                                        value=100 + 0.01 * i + noise)
        verdicts.append(step(detector, observation))
    alerts = [i for i, v in enumerate(verdicts) if v.detail.get("alert")]
    assert len(alerts) == 1 and 300 <= alerts[0] < 330, alerts
    first = verdicts[alerts[0]].detail
    assert first["p_spread"] == min(first["p_point"], first["p_shift"], first["p_drift"], first["p_spread"])


def test_ramps_after_the_first_are_found_as_the_first_is() -> None:
    """Stacked ramps of 0.42 first-difference scales a point on white noise (the benchmark's trend kind): the
    ramp CUSUM's tail does not learn the long excursions of a ramp it has not flagged yet, so the later ramps
    are found within the 23 points a hit may take (before that, 4 of the 24 later ones were)."""
    starts = [250, 400, 550, 700, 850]
    found = 0
    for seed in range(1, 7):
        rng = random.Random(seed)
        slopes = [0.6 * rng.choice((-1, 1)) for _ in starts]
        t0 = datetime(2020, 1, 1, tzinfo=timezone.utc)
        detector, alerts = RobustSeriesDetector(), []
        for i in range(1000):
            y = rng.gauss(0, 1) + sum(s * (i - a + 1) for a, s in zip(starts, slopes, strict=True) if i >= a)
            observation = BucketObservation("s", t0 + timedelta(days=i), t0 + timedelta(days=i + 1), 0, value=y)
            if step(detector, observation).detail.get("alert"):
                alerts.append(i)
        found += sum(any(a <= x < a + 23 for x in alerts) for a in starts[1:])
    assert found >= 18, f"{found} of 24 later ramps found"


def test_the_variance_cusums_prior_is_its_simulated_tail() -> None:
    """The prior of the variance CUSUM (min(z^2, 9) - 4.5 of normal z) against a fresh simulation."""
    rng = random.Random(4)
    s, above, excess, n = 0.0, 0, 0.0, 300_000
    for _ in range(n):
        z = rng.gauss(0, 1)
        s = max(0.0, s + min(z * z, 9.0) - 4.5)
        if s > 3.0:
            above, excess = above + 1, excess + s - 3.0
    prior = RobustSeriesDetector()._spread
    assert prior.rate == pytest.approx(above / n, rel=0.15)
    assert prior.excess == pytest.approx(excess / above, rel=0.15)


_DETERMINISM_PROBE = """
import hashlib, random
from bench.real_series import load_series, noise_scale
from detectors.backtest import prepare_series, run_series
out = hashlib.sha256()
for series in load_series():
    rng = random.Random(series.name)
    values = list(series.values)
    sigma = noise_scale(values)
    for i in range(len(values) // 5, len(values), 97):
        values[i] += rng.choice((-6, 6)) * sigma
    points, _ = prepare_series(zip(series.times, values))
    for when, value, score, alert in run_series(points):
        out.update(f"{when.isoformat()} {score!r} {alert}".encode())
print(out.hexdigest())
"""


def test_the_detector_does_not_depend_on_the_hash_seed() -> None:
    """The same alerts and scores, to the last bit, on every shipped series under two PYTHONHASHSEEDs."""
    import os
    import subprocess

    digests = []
    for seed in ("0", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run([sys.executable, "-c", _DETERMINISM_PROBE], cwd=ROOT, env=env, capture_output=True,
                              check=False, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        digests.append(done.stdout.strip())
    assert len(digests[0]) == 64 and digests[0] == digests[1]


def test_the_log_scale_cusums_prior_is_its_simulated_upcrossing_rate() -> None:
    """The log-scale CUSUM's prior: upcrossings of 3 per point as simulated for normal residuals; its peak excess
    deliberately heavier than the simulation's (about 0.6)."""
    rng = random.Random(5)
    n = 300_000
    draws = [abs(rng.gauss(0, 1)) for _ in range(n)]
    ratios = [max(-3.0, min(1.5, math.log(d / 0.6745))) for d in draws]
    mean = sum(ratios) / n
    s, above, ups, peaks, peak = 0.0, False, 0, [], 0.0
    for r in ratios:
        s = max(0.0, s + r - mean - 0.5)
        if s > 3.0:
            ups += not above
            peak = max(peak, s)
        elif above:
            peaks.append(peak - 3.0)
            peak = 0.0
        above = s > 3.0
    prior = RobustSeriesDetector()._logvar
    assert prior.rate == pytest.approx(ups / n, rel=0.25)
    assert prior.excess >= sum(peaks) / len(peaks)


def test_a_peak_calibrator_learns_a_long_excursion_once() -> None:
    """Thirty points far above u are one upcrossing and one winsorised peak, not thirty exceedances; an
    excursion an alert interrupted is not learnt at all."""
    calibrator, twin = PeakCalibrator(3.0, 0.01, 1.0), PeakCalibrator(3.0, 0.01, 1.0)
    for x in [0.0] * 50 + [30.0] * 30 + [0.0]:
        calibrator.learn(x)
    assert calibrator.excess <= 1.0 + (4.0 / (1 - math.exp(-4.0)) - 1.0) / 6 + 1e-9   # one peak among 6
    assert calibrator.rate < 0.02
    for x in [0.0] * 50 + [30.0] * 30:
        twin.learn(x)
    twin.discard()
    twin.learn(0.0)
    assert twin.excess == 1.0


# ----------------------------------------------------------------------------------------- the autoregression
def test_stationarity_by_step_down_matches_the_roots() -> None:
    """`_stationary` against numpy: x_t = sum a_i x_{t-i} is stationary iff every root of
    z^p - a_1 z^(p-1) - ... - a_p lies inside the unit circle."""
    rng = np.random.default_rng(3)
    checked = {True: 0, False: 0}
    for _ in range(2000):
        order = int(rng.integers(1, 7))
        coef = list(rng.uniform(-1.5, 1.5, order) / np.arange(1, order + 1))
        roots = np.roots([1.0, *(-c for c in coef)])
        if abs(max(abs(roots)) - 1) < 1e-9:
            continue  # on the circle: either answer is a rounding
        expected = bool(max(abs(roots)) < 1)
        assert _stationary(coef) == expected, (coef, roots)
        checked[expected] += 1
    assert min(checked.values()) > 300, checked  # both answers were exercised


def test_every_model_stays_finite_and_the_autoregression_stationary_on_every_shipped_series() -> None:
    """A series that repeats its value (the approval polls) once drove the autoregression's coefficients to
    -10 and its error to NaN: its covariance grew without excitation and it learnt only its own clipped values."""
    for name, series in SERIES.items():
        detector = RobustSeriesDetector()
        for t, v in zip(series.times, series.values, strict=True):
            step(detector, BucketObservation("s", t, t + timedelta(seconds=1), 0, value=v))
        for model in detector._models:
            assert all(math.isfinite(x) for x in (model.level, model.trend, model.scale, model.error)), (name, model)
        ar = next(m for m in detector._models if isinstance(m, _ARModel))
        assert _stationary(ar.coef[1:]) and all(math.isfinite(c) for c in ar.coef), (name, ar.coef)
