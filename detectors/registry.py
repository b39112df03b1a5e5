"""Every detector by name, and the ones chosen for each KPI, by measurement.

`DETECTORS` maps a name to a factory (keyword arguments override the measured
defaults); every entry keeps the contract of `tests/unit/test_detector_contract.py`.
`detector_for_kpi(kpi)` names what the monitor runs on each series for a KPI;
`PER_INITIATIVE` names the detectors that watch an initiative's total instead
(half-space trees pickle to ~170 KB: fine once per initiative, not per series).

The evidence behind each choice is measured by the benchmarks, which write their own pages:
`docs/benchmarks/detection.md` (`bench/detection.py`, the simulator's labelled incidents) and
`docs/benchmarks/real_series.md` (`bench/real_series.py`); `detectors/README.md` says why each was chosen.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from detectors.base import BucketDetector, BucketObservation, Verdict
from detectors.conversion_drop import ConversionDropDetector
from detectors.cusum import (
    CtrCusumDetector,
    CvrCusumDetector,
    CvrSmallDropCusumDetector,
    JointSpikeCusumDetector,
    RateSpikeCusumDetector,
    VolumeCusumDetector,
    VolumeShareCusumDetector,
)
from detectors.kpi_threshold import KpiThresholdConfig, KpiThresholdDetector
from detectors.kpis import KPI_NAMES, validate
from detectors.level_shift import LevelShiftDetector
from detectors.multi_metric import MultiMetricDetector
from detectors.rate_change import CtrDropDetector, CvrDropDetector, FallbackSurgeDetector, RateSpikeDetector
from detectors.robust_series import RobustSeriesDetector
from detectors.seasonal import LatencyRegressionDetector, RevenueShiftDetector, SeasonalDetector, VolumeDropDetector


class _Checked:
    """A threshold detector refusing invalid buckets like the others (the class the pipeline runs)."""

    def learn_one(self, observation: BucketObservation) -> None:
        validate(observation)
        super().learn_one(observation)  # type: ignore[misc]

    def score_one(self, observation: BucketObservation) -> Verdict:
        validate(observation)
        return super().score_one(observation)  # type: ignore[misc]


class CheckedConversionDrop(_Checked, ConversionDropDetector):
    pass


class CheckedKpiThreshold(_Checked, KpiThresholdDetector):
    pass


def _conversion_drop(**config: object) -> ConversionDropDetector:
    return CheckedConversionDrop(KpiThresholdConfig(**config))


def _kpi_threshold(**config: object) -> KpiThresholdDetector:
    return CheckedKpiThreshold(KpiThresholdConfig(**config))


DETECTORS: dict[str, Callable[..., BucketDetector]] = {
    # rates against their baseline: binomial tail + relative change
    "conversion_drop": _conversion_drop,
    "kpi_threshold": _kpi_threshold,  # PMON_ALERT_THRESHOLD on PMON_ALERT_KPI: runs on every series, always
    "cvr_drop": CvrDropDetector,
    "ctr_drop": CtrDropDetector,
    "ctr_spike": partial(RateSpikeDetector, kpi="ctr"),
    "cvr_spike": partial(RateSpikeDetector, kpi="cvr"),
    "fallback_surge": FallbackSurgeDetector,
    # seasonal forecast: Poisson (counts) or z (means) + relative change
    "volume_profile": VolumeDropDetector,
    "volume_holt_winters": partial(VolumeDropDetector, forecaster="holt_winters"),
    "volume_snarimax": partial(VolumeDropDetector, forecaster="snarimax"),
    "latency_profile": LatencyRegressionDetector,
    "latency_holt_winters": partial(LatencyRegressionDetector, forecaster="holt_winters"),
    "latency_snarimax": partial(LatencyRegressionDetector, forecaster="snarimax"),
    "revenue_profile": RevenueShiftDetector,
    "seasonal_profile": partial(SeasonalDetector, kpi="value", direction="both"),
    "seasonal_holt_winters": partial(SeasonalDetector, kpi="value", direction="both", forecaster="holt_winters"),
    # any univariate series, no assumed scale or season: `pmon detect`'s default
    "robust_series": RobustSeriesDetector,
    # sequential: binomial CUSUM against the baseline
    "ctr_cusum": CtrCusumDetector,
    "cvr_cusum": CvrCusumDetector,
    "cvr_cusum_small": CvrSmallDropCusumDetector,
    "volume_cusum": VolumeCusumDetector,
    "volume_share_cusum": VolumeShareCusumDetector,
    "ctr_spike_cusum": partial(RateSpikeCusumDetector, kpi="ctr"),
    "cvr_spike_cusum": partial(RateSpikeCusumDetector, kpi="cvr"),
    "spike_joint_cusum": JointSpikeCusumDetector,
    # drift detectors over standardized residuals
    "ctr_level_shift_ph": partial(LevelShiftDetector, kpi="ctr"),
    "cvr_level_shift_ph": partial(LevelShiftDetector, kpi="cvr"),
    # one per initiative: ~170 KB
    "multi_metric_hst": MultiMetricDetector,
}

PER_INITIATIVE: frozenset[str] = frozenset({"multi_metric_hst"})
"""Detectors that watch an initiative's total, not each series (too big per series)."""

_CHOICE: dict[str, tuple[str, ...]] = {
    "ctr": ("ctr_cusum", "ctr_spike", "spike_joint_cusum"),
    "cvr": ("cvr_cusum", "cvr_cusum_small", "cvr_spike"),
    "revenue_per_exposure": ("revenue_profile",),
    "fallback_rate": ("fallback_surge",),
    "latency_ms": ("latency_profile",),
    "exposures": ("volume_cusum", "volume_share_cusum"),
}


def monitored() -> tuple[str, ...]:
    """Every per-series detector the monitor runs by default: the choice for all six KPIs.

    >>> monitored()
    ('ctr_cusum', 'ctr_spike', 'spike_joint_cusum', 'cvr_cusum', 'cvr_cusum_small', 'cvr_spike', 'revenue_profile', 'fallback_surge', 'latency_profile', 'volume_cusum', 'volume_share_cusum')
    """  # noqa: E501 - doctest output, on one line as Python prints it
    return tuple(dict.fromkeys(name for names in _CHOICE.values() for name in names))


def detector_for_kpi(kpi: str) -> tuple[str, ...]:
    """The registered detectors the monitor runs on a series for `kpi`."""
    try:
        return _CHOICE[kpi]
    except KeyError:
        raise ValueError(f"unknown KPI {kpi!r}; known: {list(KPI_NAMES)}") from None
