"""What the detection benchmark measures beside the monitor's own detectors: the registry's other detectors,
unregistered alternatives (the CUSUMs' neighbouring thresholds and variants, ADWIN) and the static-threshold
baselines. All run in the product as shadow detectors (`monitor.initiative_stage.InitiativeStage`'s
`shadow_detectors`): judged on the buckets the pipeline closes, through its breach policy, raising no incident.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

from detectors.base import BucketDetector, BucketObservation, Verdict
from detectors.cusum import (
    CtrCusumDetector,
    CvrCusumDetector,
    CvrSmallDropCusumDetector,
    JointSpikeCusumDetector,
    VolumeCusumDetector,
    VolumeShareCusumDetector,
)
from detectors.kpis import read
from detectors.level_shift import LevelShiftDetector
from detectors.registry import DETECTORS, PER_INITIATIVE
from incidents.playbooks import PLAYBOOKS
from monitor.settings import Settings

# Registered detectors of a univariate `value` (for `pmon detect --csv`); nothing to measure here.
UNIVARIATE_ONLY = ("seasonal_profile", "seasonal_holt_winters", "robust_series")
# Measured alternatives that are not registered: ADWIN needs more than the contract's two buckets to
# find even a 50 % drop, and finds level shifts later and less often than Page-Hinkley (see the report).
ALTERNATIVES: dict[str, Any] = {
    # the CUSUMs' neighbouring thresholds (see detectors/cusum.py for the chosen ones)
    **{f"ctr_cusum_h{h}": partial(CtrCusumDetector, threshold=h) for h in (4, 6)},
    **{f"cvr_cusum_h{h}": partial(CvrCusumDetector, threshold=h) for h in (5, 7)},
    **{f"volume_cusum_h{h}": partial(VolumeCusumDetector, threshold=h) for h in (7, 9)},
    **{f"volume_share_cusum_h{h}": partial(VolumeShareCusumDetector, threshold=h) for h in (7, 9)},
    **{f"cvr_cusum_small_h{h}": partial(CvrSmallDropCusumDetector, threshold=h) for h in (8, 10)},
    **{f"spike_joint_cusum_h{h}": partial(JointSpikeCusumDetector, threshold=h) for h in (7, 9)},
    "ctr_cusum_no_lag": partial(CtrCusumDetector, learn_lag=0),
    # the CUSUMs' baselines as before: buckets beyond 4 standard deviations (an unseen spike) learnt
    "ctr_cusum_learn_outliers": partial(CtrCusumDetector, learn_outliers=True),
    "cvr_cusum_learn_outliers": partial(CvrCusumDetector, learn_outliers=True),
    "cvr_cusum_no_lag": partial(CvrCusumDetector, learn_lag=0),
    "volume_cusum_no_lag": partial(VolumeCusumDetector, learn_lag=0),
    "ctr_level_shift_adwin": partial(LevelShiftDetector, kpi="ctr", drift_detector="adwin"),
    "cvr_level_shift_adwin": partial(LevelShiftDetector, kpi="cvr", drift_detector="adwin"),
}


class StaticThreshold(BucketDetector):
    """The baseline to beat: a KPI `threshold` below (or above) its trailing 24-bucket mean, no statistics.

    Its `kind` is that of the detectors it stands against (the breach policy names incidents by kind).
    """

    def __init__(self, kind: str, kpi: str, direction: str, threshold: float, min_count: int = 1,
                 window: int = 24) -> None:
        self.kind = kind  # type: ignore[misc]  # per instance: one class stands against several kinds
        self.kpi, self.direction, self.threshold, self.min_count = kpi, direction, threshold, min_count
        self._values: deque[float] = deque(maxlen=window)

    @property
    def warming_up(self) -> bool:
        return len(self._values) < (self._values.maxlen or 0)

    def learn_one(self, observation: BucketObservation) -> None:
        reading = read(observation, self.kpi)
        if reading is not None and reading.n >= self.min_count:
            self._values.append(reading.value)

    def score_one(self, observation: BucketObservation) -> Verdict:
        reading = read(observation, self.kpi)
        mean = statistics.fmean(self._values) if self._values else 0.0
        if self.warming_up or reading is None or reading.n < self.min_count or mean <= 0:
            return Verdict(False, False, reading.value if reading else 0.0, mean, 0.0, warming_up=self.warming_up)
        change = 1 - reading.value / mean if self.direction == "drop" else reading.value / mean - 1
        return Verdict(True, change >= self.threshold, reading.value, mean, change)


# The same relative thresholds and volume floors as the detectors they stand against.
STATIC: dict[str, tuple[str, str, str, float, int]] = {
    "static_ctr_drop": ("ctr_drop", "ctr", "drop", 0.2, 200),
    "static_cvr_drop": ("conversion_drop", "cvr", "drop", 0.2, 200),
    "static_ctr_spike": ("kpi_spike", "ctr", "rise", 0.3, 200),
    "static_cvr_spike": ("kpi_spike", "cvr", "rise", 0.3, 200),
    "static_fallback": ("fallback_surge", "fallback_rate", "rise", 1.0, 200),
    "static_volume": ("volume_drop", "exposures", "drop", 0.3, 1),
    "static_latency": ("latency_regression", "latency_ms", "rise", 0.2, 30),
    "static_revenue": ("kpi_spike", "revenue_per_exposure", "rise", 0.3, 100),
}
STATIC_FOR_KPI = {"ctr": ("static_ctr_drop", "static_ctr_spike"), "cvr": ("static_cvr_drop", "static_cvr_spike"),
                  "fallback_rate": ("static_fallback",), "exposures": ("static_volume",),
                  "latency_ms": ("static_latency",), "revenue_per_exposure": ("static_revenue",)}

# Every per-series candidate by name (the per-initiative half-space trees have no per-series loop in the
# product to run in: `detectors/README.md`, "measured, not run").
CANDIDATES: dict[str, Any] = {name: factory for name, factory in {**DETECTORS, **ALTERNATIVES}.items()
                              if name not in PER_INITIATIVE and name not in UNIVARIATE_ONLY}


def shadow_detectors(settings: Settings) -> dict[str, Callable[[], BucketDetector]]:
    """Every candidate and static baseline the settings do not already run, as the stage's shadow detectors.

    The threshold tests are built with the settings' `PMON_*` tuning, as the stage builds them.
    """
    tuned = settings.detector_config().model_dump()
    shadows: dict[str, Callable[[], BucketDetector]] = {
        name: partial(factory, **tuned) if name in ("kpi_threshold", "conversion_drop") else factory
        for name, factory in CANDIDATES.items()}
    shadows.update({name: partial(StaticThreshold, *args) for name, args in STATIC.items()})
    for name in settings.series_detectors:
        shadows.pop(name, None)
    for name, factory in shadows.items():
        # The breach policy names an incident by its kind's playbook: a kind without one would make the stage's
        # step fail on the first breach, which the driver turns into monitoring_degraded, hours into a run.
        kind = factory().kind
        if kind not in PLAYBOOKS:
            raise ValueError(f"candidate {name!r} has kind {kind!r}, which has no playbook: give it the kind it "
                             "stands for (a subclass of the registered detector)")
    return shadows
