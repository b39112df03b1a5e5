"""Fallback rate per rule (initiative x channel x rule), against a threshold and against its own usual rate.

A rule falls back when its decision tree cannot decide (missing profile data,
a failing feature service, no consent) and serves the default experience. Per
closed bucket, a rule breaches when its fallback count is significantly above
what either bound allows (one-sided exact binomial test, `significance`):

- the threshold: k fallbacks of n exposures against rate `threshold`;
- a jump: against the rule's own usual rate p0 (an exponentially weighted
  pool of its healthy buckets), when k / n is also at least `jump_factor` x p0.

Significance, not the raw rate, because a rule with 12 exposures an hour shows
25 % by chance. Breaches go through the breach policy (the second opens an
incident `rule_fallback`); the jump test is armed after `warmup_buckets`
buckets with exposures.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from detectors.stats import binom_upper_tail
from governance.exceptions import InvalidPolicy
from incidents.breach_policy import BreachState


@dataclass(frozen=True, slots=True)
class FallbackVerdict:
    breached: bool
    rate: float
    expected: float  # the bound that was crossed, or the threshold
    p_value: float
    reason: str


@dataclass(slots=True)
class RuleFallbackState:
    """A rule's usual rate (pooled counts, decayed) and its breach state: a table value."""

    pooled_fallbacks: float = 0.0
    pooled_exposures: float = 0.0
    buckets: int = 0
    breach: BreachState = field(default_factory=BreachState)
    evaluated_until: float = float("-inf")


@dataclass(frozen=True, slots=True)
class FallbackRatePolicy:
    """
    >>> policy = FallbackRatePolicy(threshold=0.10)
    >>> v = policy.judge(RuleFallbackState(), fallbacks=40, exposures=200)
    >>> v.breached, round(v.rate, 2), v.reason.startswith("20.0% over the 10.0% threshold")
    (True, 0.2, True)
    >>> policy.judge(RuleFallbackState(), fallbacks=3, exposures=12).breached   # 25 %, but 12 exposures
    False
    """

    threshold: float = 0.10
    significance: float = 0.001
    jump_factor: float = 3.0
    min_exposures: int = 30
    warmup_buckets: int = 6
    half_life_buckets: float = 72.0

    def __post_init__(self) -> None:
        if not 0 < self.threshold < 1 or not 0 < self.significance < 0.5:
            raise InvalidPolicy(
                f"fallback threshold {self.threshold} must be in (0, 1) and significance "
                f"{self.significance} in (0, 0.5)"
            )
        if self.jump_factor <= 1 or self.min_exposures < 1 or self.warmup_buckets < 1 or self.half_life_buckets <= 0:
            raise InvalidPolicy("jump_factor must exceed 1; min_exposures, warmup_buckets, half_life_buckets positive")

    def judge(self, state: RuleFallbackState, *, fallbacks: int, exposures: int) -> FallbackVerdict:
        if exposures < self.min_exposures:
            return FallbackVerdict(
                False,
                fallbacks / exposures if exposures else 0.0,
                self.threshold,
                1.0,
                f"{exposures} exposures: fewer than {self.min_exposures}, not judged",
            )
        rate = fallbacks / exposures
        p_threshold = binom_upper_tail(fallbacks, exposures, self.threshold)
        if rate > self.threshold and p_threshold < self.significance:
            return FallbackVerdict(
                True,
                rate,
                self.threshold,
                p_threshold,
                f"{rate:.1%} over the {self.threshold:.1%} threshold (p = {p_threshold:.2g})",
            )
        if state.buckets >= self.warmup_buckets and state.pooled_exposures > 0:
            usual = max(state.pooled_fallbacks / state.pooled_exposures, 0.5 / state.pooled_exposures)
            p_jump = binom_upper_tail(fallbacks, exposures, usual)
            if rate >= self.jump_factor * usual and p_jump < self.significance:
                return FallbackVerdict(
                    True, rate, usual, p_jump, f"{rate:.1%} jumped from its usual {usual:.2%} (p = {p_jump:.2g})"
                )
        return FallbackVerdict(False, rate, self.threshold, p_threshold, "within bounds")

    def learn(self, state: RuleFallbackState, *, fallbacks: int, exposures: int) -> RuleFallbackState:
        """Pool a healthy bucket into the usual rate (breached buckets are not learnt)."""
        if exposures == 0:
            return state
        keep = 0.5 ** (1.0 / self.half_life_buckets)
        return RuleFallbackState(
            state.pooled_fallbacks * keep + fallbacks,
            state.pooled_exposures * keep + exposures,
            state.buckets + 1,
            state.breach,
            state.evaluated_until,
        )
