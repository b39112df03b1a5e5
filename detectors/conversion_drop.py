"""`conversion_drop`: the KPI threshold test (`detectors.kpi_threshold`) on the conversion rate, as a detector
of its own kind; `PMON_SERIES_DETECTORS` may list it beside the default choice."""

from __future__ import annotations

from detectors.kpi_threshold import KpiThresholdConfig, KpiThresholdDetector

ConversionDropConfig = KpiThresholdConfig


class ConversionDropDetector(KpiThresholdDetector):
    """The threshold test on conversions per exposure, reported as `conversion_drop`.

    >>> ConversionDropDetector(KpiThresholdConfig(kpi="ctr")).config.kpi
    'cvr'
    """

    kind = "conversion_drop"

    def __init__(self, config: KpiThresholdConfig | None = None) -> None:
        super().__init__((config or KpiThresholdConfig()).model_copy(update={"kpi": "cvr"}))
