"""The detector API: learn and score one closed bucket at a time, River style.

A detector sees one series. `score_one` judges a closed bucket against what the
detector has learnt so far; `learn_one` folds a bucket into that knowledge. The
pipeline scores first and learns only from buckets that were not breaches, so
an ongoing dip never becomes the new normal. Detectors are plain picklable
objects: their state lives in a table between buckets.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from detectors.exceptions import InvalidObservation


@dataclass(frozen=True, slots=True)
class BucketObservation:
    """The counters of one series over one closed bucket."""

    series: str
    bucket_start: datetime
    bucket_end: datetime
    exposures: int
    clicks: int = 0
    conversions: int = 0
    revenue: float = 0.0
    fallbacks: int = 0
    latency_ms_sum: float = 0.0
    # A univariate KPI value (a backtest of an exported series, `pmon detect --csv`); None for counter buckets.
    value: float | None = None
    # Exposures of the series' whole initiative in the bucket (0: unknown), for the series' share of them.
    group_exposures: int = 0

    def __post_init__(self) -> None:
        for name in ("exposures", "clicks", "conversions", "fallbacks"):
            if getattr(self, name) < 0:
                raise InvalidObservation(f"{name}={getattr(self, name)} is negative in {self.series}")
        if self.bucket_end <= self.bucket_start:
            raise InvalidObservation(f"bucket ends ({self.bucket_end}) before it starts ({self.bucket_start})")


@dataclass(frozen=True, slots=True)
class Verdict:
    """A detector's judgement of one bucket.

    `scored` is False when the bucket could not be judged (warming up, too
    little volume); such a bucket is neither a breach nor a recovery.
    """

    scored: bool
    breached: bool
    observed: float
    expected: float
    score: float
    warming_up: bool = False
    detail: dict[str, Any] = field(default_factory=dict)


class BucketDetector(abc.ABC):
    """One series, one KPI; bounded state."""

    kind: ClassVar[str]

    @abc.abstractmethod
    def score_one(self, observation: BucketObservation) -> Verdict:
        """Judge a closed bucket without changing the detector."""

    @abc.abstractmethod
    def learn_one(self, observation: BucketObservation) -> None:
        """Fold a closed bucket into the baseline."""

    @property
    @abc.abstractmethod
    def warming_up(self) -> bool:
        """True until the detector has a baseline it may alert against."""

    def track_one(self, observation: BucketObservation, verdict: Verdict) -> None:  # noqa: B027 - a default, not abstract
        """Advance a statistic that runs over every bucket, breach or not (a CUSUM). Default: nothing."""


def step(detector: BucketDetector, observation: BucketObservation) -> Verdict:
    """The online protocol, one closed bucket: score, track, then learn only from a healthy bucket
    (so a dip never becomes the baseline)."""
    verdict = detector.score_one(observation)
    detector.track_one(observation, verdict)
    if not verdict.breached:
        detector.learn_one(observation)
    return verdict
