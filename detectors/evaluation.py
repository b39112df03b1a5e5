"""One closed bucket of one series through its detector and the breach policy."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from detectors.base import BucketDetector, BucketObservation, Verdict, step
from incidents.breach_policy import BreachPolicy, BreachState
from incidents.model import Evidence, IncidentEvent


@dataclass(frozen=True, slots=True)
class Evaluation:
    verdict: Verdict
    breach_state: BreachState
    incidents: list[IncidentEvent]


def evaluate_bucket(
    detector: BucketDetector,
    breach_state: BreachState,
    policy: BreachPolicy,
    observation: BucketObservation,
    *,
    initiative: str,
) -> Evaluation:
    """One step of the online protocol (`detectors.base.step`), then the breach policy.

    Unscored buckets (warm-up, too little volume) leave the breach state as it is.
    """
    verdict = step(detector, observation)
    if not verdict.scored:
        return Evaluation(verdict, breach_state, [])
    evidence = evidence_of(verdict, observation.bucket_start, observation.bucket_end)
    state, incidents = policy.observe(
        breach_state,
        initiative=initiative,
        kind=detector.kind,
        series=observation.series,
        breached=verdict.breached,
        evidence=evidence,
    )
    return Evaluation(verdict, state, incidents)


def evidence_of(verdict: Verdict, start: datetime, end: datetime, **detail: object) -> Evidence:
    """A verdict as an incident's evidence over [start, end), `detail` added to the verdict's own."""
    return Evidence(
        observed=verdict.observed,
        expected=verdict.expected,
        score=verdict.score,
        bucket_start=start,
        bucket_end=end,
        detail={**verdict.detail, **detail},
    )
