"""One initiative's KPI vector, scored by River's `anomaly.HalfSpaceTrees`.

The features of a bucket are the initiative's rates and means (click-through,
conversion, fallback rate, latency, revenue per exposure) and its volume as a
ratio to a seasonal forecast (`detectors.forecasters.SeasonalProfile`), so that
the night trough is not an anomaly. Half-space trees split [0, 1] per feature;
River's `preprocessing.MinMaxScaler` maps the range seen so far to [0, 1], and
that range is then squeezed into [0.25, 0.75] (and clipped to [0, 1]): with the
scaler alone, the healthy buckets fill the whole unit cube, a value beyond the
range seen lands in the edge cell among them, and nothing looks strange. A bucket breaches when its
score reaches the running `q` quantile of the scores of the healthy buckets
learnt so far (River's `stats.Quantile`), i.e. when it is stranger than all but
a share 1 - q of the past.

The trees are what is big: 10 trees of height 8 pickle to about 170 KB. That is
fine once per initiative and too much per series, so this detector watches the
initiative's total, not each series (`tests/unit/test_detector_contract.py` and
`bench/detection.py` print its measured size).
"""

from __future__ import annotations

from typing import ClassVar

from detectors.base import BucketDetector, BucketObservation, Verdict
from detectors.forecasters import SeasonalProfile
from detectors.kpis import read, validate
from detectors.seasonal import bucket_index

FEATURES = ("ctr", "cvr", "fallback_rate", "latency_ms", "revenue_per_exposure")


class MultiMetricDetector(BucketDetector):
    """Half-space trees over an initiative's KPI vector, with a running-quantile threshold.

    Parameters
    ----------
    n_trees, height, window_size, seed
        River's `anomaly.HalfSpaceTrees` hyperparameters.
    q
        The breach threshold: the running q quantile of the learnt buckets' scores.
    warmup_buckets
        Buckets to learn before judging any (the trees need a full reference window).
    season
        Buckets per season of the volume forecast.

    Examples
    --------
    >>> import random
    >>> from datetime import datetime, timedelta, timezone
    >>> rng = random.Random(5)
    >>> t0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
    >>> def bucket(h, ctr=0.12, fallback=0.02):
    ...     n = 3000
    ...     return BucketObservation("I", t0 + timedelta(hours=h), t0 + timedelta(hours=h + 1), n,
    ...                              clicks=round(n * ctr * rng.uniform(0.95, 1.05)),
    ...                              conversions=round(n * 0.08 * rng.uniform(0.95, 1.05)),
    ...                              revenue=n * rng.uniform(2.9, 3.1), fallbacks=round(n * fallback),
    ...                              latency_ms_sum=n * rng.uniform(43, 45))
    >>> detector = MultiMetricDetector(seed=1)
    >>> for h in range(168):
    ...     detector.learn_one(bucket(h))
    >>> detector.score_one(bucket(168)).breached, detector.score_one(bucket(169, ctr=0.03, fallback=0.4)).breached
    (False, True)
    """

    kind: ClassVar[str] = "multi_metric_anomaly"

    def __init__(
        self,
        n_trees: int = 10,
        height: int = 8,
        window_size: int = 48,
        q: float = 0.99,
        warmup_buckets: int = 96,
        season: int = 24,
        seed: int = 42,
    ) -> None:
        if not 0.5 <= q < 1:
            raise ValueError(f"q must be in [0.5, 1), got {q}")
        if warmup_buckets < window_size + season:
            raise ValueError("warmup_buckets must cover a season of volume and a window of the trees")
        self.n_trees = n_trees
        self.height = height
        self.window_size = window_size
        self.q = q
        self.warmup_buckets = warmup_buckets
        self.season = season
        self.seed = seed
        self._volume = SeasonalProfile(season=season)
        from river import anomaly, preprocessing, stats  # here, not at import: River's anomaly loads scipy.stats

        self._scaler = preprocessing.MinMaxScaler()
        self._trees = anomaly.HalfSpaceTrees(n_trees=n_trees, height=height, window_size=window_size, seed=seed)
        self._threshold = stats.Quantile(q)
        self._learnt = 0

    @property
    def warming_up(self) -> bool:
        return self._learnt < self.warmup_buckets

    def _features(self, observation: BucketObservation) -> dict[str, float] | None:
        validate(observation)
        forecast = self._volume.forecast(bucket_index(observation))
        if forecast is None:
            return None
        features = {name: reading.value if (reading := read(observation, name)) else 0.0 for name in FEATURES}
        features["volume_ratio"] = observation.exposures / forecast if forecast > 0 else 1.0
        return features

    def _scaled(self, features: dict[str, float]) -> dict[str, float]:
        return {
            name: min(1.0, max(0.0, 0.25 + 0.5 * value)) for name, value in self._scaler.transform_one(features).items()
        }

    def learn_one(self, observation: BucketObservation) -> None:
        features = self._features(observation)
        self._volume.learn(bucket_index(observation), observation.exposures)
        if features is None:
            return
        self._scaler.learn_one(features)
        scaled = self._scaled(features)
        self._threshold.update(self._trees.score_one(scaled))
        self._trees.learn_one(scaled)
        self._learnt = min(self._learnt + 1, self.warmup_buckets)

    def score_one(self, observation: BucketObservation) -> Verdict:
        features = self._features(observation)
        threshold = self._threshold.get() or 1.0
        if self.warming_up or features is None:
            return Verdict(False, False, 0.0, threshold, 0.0, warming_up=True)
        score = self._trees.score_one(self._scaled(features))
        return Verdict(
            True,
            score >= threshold,
            score,
            threshold,
            score,
            detail={"features": {k: round(v, 6) for k, v in features.items()}},
        )
