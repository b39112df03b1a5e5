"""Every detector by name, and the ones chosen for each KPI, by measurement.

`DETECTORS` maps a name to a factory (keyword arguments override the measured
defaults); every entry keeps the contract of `tests/test_detector_contract.py`.
`detector_for_kpi(kpi)` names what the monitor runs on each series for a KPI;
`PER_INITIATIVE` names the detectors that watch an initiative's total instead
(half-space trees pickle to ~170 KB: fine once per initiative, not per series).

The evidence, from `bench/detection.py` (4 seeds x 10 days, 22 series, 540
labelled incidents; the kinds each KPI's detectors answer; all series | series
with >= 1,000 exposures an hour; P R F1 median delay in buckets, * = chosen):

    ctr (dips of 10/20/40 %, spikes, level shifts)
      * ctr_drop               1.00 0.10 0.18 2 | 1.00 0.47 0.64 1
      * ctr_spike              1.00 0.05 0.09 1 | 1.00 0.22 0.36 1
      * ctr_level_shift_ph     1.00 0.08 0.14 4 | 1.00 0.36 0.53 4
        ctr_level_shift_adwin  1.00 0.02 0.04 6 | 1.00 0.14 0.24 6   (not registered)
        multi_metric_hst       1.00 0.08 0.15 2 | 1.00 0.06 0.11 13
        static_ctr_drop        0.55 0.22 0.31 2 | 1.00 0.42 0.59 2
    cvr (dips of 10/20/40 %, spikes, level shifts)
        conversion_drop        0.94 0.07 0.13 2 | 0.92 0.32 0.47 2   (the pipeline's)
      * cvr_drop               0.94 0.07 0.13 2 | 0.93 0.34 0.50 2
      * cvr_spike              1.00 0.05 0.09 1 | 1.00 0.21 0.35 1
      * cvr_level_shift_ph     0.95 0.09 0.16 4 | 0.94 0.39 0.56 4
        cvr_level_shift_adwin  1.00 0.02 0.04 5 | 1.00 0.13 0.23 5   (not registered)
        static_cvr_drop        0.44 0.16 0.24 3 | 0.82 0.37 0.51 2
    revenue_per_exposure (conversion dips, spikes)
      * revenue_profile        1.00 0.01 0.01 1 | 1.00 0.03 0.06 1
        static_revenue         0.20 0.17 0.18 3 | 0.89 0.25 0.39 1
    fallback_rate (fallback surges)
      * fallback_surge         1.00 0.64 0.78 1 | 1.00 1.00 1.00 1
        static_fallback        0.94 0.34 0.50 1 | 1.00 1.00 1.00 1
    latency_ms (latency regressions)
      * latency_profile        1.00 0.78 0.88 1 | 1.00 1.00 1.00 1
        latency_holt_winters   0.92 0.76 0.83 1 | 1.00 1.00 1.00 1
        latency_snarimax       0.97 0.83 0.89 1 | 1.00 1.00 1.00 1
        static_latency         1.00 0.72 0.84 1 | 1.00 1.00 1.00 1
    exposures (volume drops, feed gaps, variant suppression)
      * volume_profile         1.00 0.76 0.86 1 | 1.00 1.00 1.00 1
        volume_holt_winters    0.99 0.77 0.87 1 | 1.00 1.00 1.00 1
        volume_snarimax        1.00 0.78 0.88 1 | 1.00 1.00 1.00 1
        static_volume          0.16 0.39 0.22 0 | 0.17 0.45 0.25 1

Why these: the rate detectors and Page-Hinkley are complementary (a sudden
dip, a slow shift); ADWIN finds shifts later and less often, and needs more
than two buckets for even a 50 % drop. For the seasonal KPIs, River's
HoltWinters and SNARIMAX are within 0.01-0.02 of the hour-of-day profile's F1
(either side), but raised false alerts (latency: 0.83 and 0.28 per 100
series-days, volume: 0.28 and 0; the profile: 0 and 0; over the earlier tuning
runs the profile was also the quietest), pickle to 1.2 and 2.2 KB against 0.7,
and SNARIMAX costs ten times the time: on a false-alert budget shared by ten
detectors per series, the profile wins. Revenue per exposure has no incident
of its own in the simulator; its detector is deliberately conservative (a
compound sum of a few skewed amounts is far from normal in the tails). Half-
space trees (per initiative) find little the others miss, and matched to any
label of their initiative their precision is flattering: measured, offered,
not chosen.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from detectors.base import BucketDetector, BucketObservation, Verdict
from detectors.conversion_drop import ConversionDropConfig, ConversionDropDetector
from detectors.cusum import CtrCusumDetector, CvrCusumDetector, RateSpikeCusumDetector, VolumeCusumDetector
from detectors.kpis import KPI_NAMES, validate
from detectors.level_shift import LevelShiftDetector
from detectors.multi_metric import MultiMetricDetector
from detectors.rate_change import (CtrDropDetector, CvrDropDetector, FallbackSurgeDetector,
                                   RateSpikeDetector)
from detectors.seasonal import (LatencyRegressionDetector, RevenueShiftDetector, SeasonalDetector,
                                VolumeDropDetector)


class CheckedConversionDrop(ConversionDropDetector):
    """`ConversionDropDetector` (unchanged; the pipeline uses it directly) refusing invalid buckets like the others."""

    def learn_one(self, observation: BucketObservation) -> None:
        validate(observation)
        super().learn_one(observation)

    def score_one(self, observation: BucketObservation) -> Verdict:
        validate(observation)
        return super().score_one(observation)


def _conversion_drop(**config: object) -> ConversionDropDetector:
    return CheckedConversionDrop(ConversionDropConfig(**config))  # type: ignore[arg-type]


DETECTORS: dict[str, Callable[..., BucketDetector]] = {
    # rates against their baseline: binomial tail + relative change
    "conversion_drop": _conversion_drop,
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
    # sequential: binomial CUSUM against the baseline
    "ctr_cusum": CtrCusumDetector,
    "cvr_cusum": CvrCusumDetector,
    "volume_cusum": VolumeCusumDetector,
    "ctr_spike_cusum": partial(RateSpikeCusumDetector, kpi="ctr"),
    "cvr_spike_cusum": partial(RateSpikeCusumDetector, kpi="cvr"),
    # drift detectors over standardized residuals
    "ctr_level_shift_ph": partial(LevelShiftDetector, kpi="ctr"),
    "cvr_level_shift_ph": partial(LevelShiftDetector, kpi="cvr"),
    # one per initiative: ~170 KB
    "multi_metric_hst": MultiMetricDetector,
}

PER_INITIATIVE: frozenset[str] = frozenset({"multi_metric_hst"})
"""Detectors that watch an initiative's total, not each series (too big per series)."""

_CHOICE: dict[str, tuple[str, ...]] = {
    "ctr": ("ctr_drop", "ctr_cusum", "ctr_spike", "ctr_level_shift_ph"),
    "cvr": ("cvr_drop", "cvr_cusum", "cvr_spike", "cvr_level_shift_ph"),
    "revenue_per_exposure": ("revenue_profile",),
    "fallback_rate": ("fallback_surge",),
    "latency_ms": ("latency_profile",),
    "exposures": ("volume_cusum",),
}


def detector_for_kpi(kpi: str) -> tuple[str, ...]:
    """The registered detectors the monitor runs on a series for `kpi`."""
    try:
        return _CHOICE[kpi]
    except KeyError:
        raise ValueError(f"unknown KPI {kpi!r}; known: {list(KPI_NAMES)}") from None
