"""A variant's share of its group's exposures against its planned allocation.

Within one group (an initiative's profile x channel), every exposure goes to
one of the experiment's variants with the planned allocation, so a variant's
exposures out of the group's N are Binomial(N, allocation). A variant is
suppressed when its share is at least `alert_threshold` below its allocation
(relative: 0.5 = under half of it) *and* the lower binomial tail
P(X <= exposures) is below `significance`. Zero exposures is the extreme case
of the same test: P(X = 0) = (1 - a)^N, about 1e-31 for a = 0.5 and N = 100, and
0.8 for a = 0.2 and N = 1, which is why one exposure missing says nothing.

The allocation is the plan's (experiment configuration); without one the
detector learns the shares from healthy buckets and warms up first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from detectors.base import Verdict
from detectors.exceptions import InvalidObservation
from detectors.stats import binom_lower_tail, ewma_weight


class VariantShareDetector:
    """Per group: each variant's exposures vs its allocation, one Verdict per variant.

    Parameters
    ----------
    allocation
        Planned share per variant (normalised); None to learn the shares.
    alert_threshold
        The smallest relative shortfall of a share that may breach.
    significance
        The binomial tail below which the shortfall counts as real.
    min_exposures
        A group with fewer exposures in the bucket is not judged.
    warmup_buckets, baseline_buckets
        When learning shares: buckets to learn first, and the centre of mass of the learnt shares.

    Examples
    --------
    >>> detector = VariantShareDetector({"control": 0.5, "treatment": 0.5})
    >>> detector.score_one({"control": 180, "treatment": 170})["treatment"].breached
    False
    >>> verdict = detector.score_one({"control": 350, "treatment": 0})["treatment"]
    >>> verdict.breached, verdict.observed, verdict.expected, verdict.detail["p_value"] < 1e-100
    (True, 0.0, 0.5, True)
    >>> detector.score_one({"control": 3, "treatment": 0})["treatment"].scored   # too few to tell
    False
    """

    kind: ClassVar[str] = "variant_suppression"

    def __init__(
        self,
        allocation: Mapping[str, float] | None = None,
        alert_threshold: float = 0.5,
        significance: float = 0.001,
        min_exposures: int = 10,
        warmup_buckets: int = 24,
        baseline_buckets: int = 168,
    ) -> None:
        if allocation is not None:
            if not allocation or any(not share > 0 for share in allocation.values()):
                raise ValueError(f"allocation must give every variant a positive share, got {dict(allocation)}")
            total = sum(allocation.values())
            allocation = {variant: share / total for variant, share in allocation.items()}
        if not 0 < alert_threshold <= 1 or not 0 < significance < 0.5 or min_exposures < 1:
            raise ValueError("alert_threshold must be in (0, 1], significance in (0, 0.5), min_exposures >= 1")
        self.allocation = allocation
        self.alert_threshold = alert_threshold
        self.significance = significance
        self.min_exposures = min_exposures
        self.warmup_buckets = warmup_buckets
        self.baseline_buckets = baseline_buckets
        self._shares: dict[str, float] = {}  # learnt shares, when no allocation is planned
        self._learnt = 0

    @property
    def warming_up(self) -> bool:
        return self.allocation is None and self._learnt < self.warmup_buckets

    def _checked(self, exposures: Mapping[str, int]) -> dict[str, int]:
        counts = dict(exposures)
        for variant, count in counts.items():
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise InvalidObservation(f"exposures of variant {variant!r} must be a count, got {count!r}")
        if self.allocation is not None:
            unknown = sorted(set(counts) - set(self.allocation))
            if unknown:
                raise InvalidObservation(f"variants {unknown} are not in the allocation {sorted(self.allocation)}")
            return {variant: counts.get(variant, 0) for variant in self.allocation}
        return counts

    def learn_one(self, exposures: Mapping[str, int]) -> None:
        counts = self._checked(exposures)
        total = sum(counts.values())
        if self.allocation is not None or total < self.min_exposures:
            return
        weight = 1.0 if not self._shares else ewma_weight(self.baseline_buckets)
        for variant in set(counts) | set(self._shares):
            share = self._shares.get(variant, 0.0)
            self._shares[variant] = share + weight * (counts.get(variant, 0) / total - share)
        self._learnt = min(self._learnt + 1, self.warmup_buckets)

    def score_one(self, exposures: Mapping[str, int]) -> dict[str, Verdict]:
        counts = self._checked(exposures)
        expected_shares = self.allocation if self.allocation is not None else self._shares
        total = sum(counts.values())
        verdicts = {}
        for variant in sorted(set(counts) | set(expected_shares)):
            count, planned = counts.get(variant, 0), expected_shares.get(variant, 0.0)
            observed = count / total if total else 0.0
            detail = {"exposures": count, "group_exposures": total}
            if self.warming_up or planned <= 0:
                verdicts[variant] = Verdict(False, False, observed, planned, 0.0, warming_up=True, detail=detail)
                continue
            if total < self.min_exposures:
                verdicts[variant] = Verdict(
                    False, False, observed, planned, 0.0, detail={**detail, "reason": "too few exposures"}
                )
                continue
            shortfall = 1.0 - observed / planned
            p_value = binom_lower_tail(count, total, planned)
            verdicts[variant] = Verdict(
                True,
                shortfall >= self.alert_threshold and p_value < self.significance,
                observed,
                planned,
                shortfall,
                detail={**detail, "p_value": p_value, "relative_change": shortfall},
            )
        return verdicts
