"""Exact per-user experiment state, kept one event at a time and merged across partitions.

Tests of per-user metrics need per-user values: a user who converts twice is one
converting user, and revenue per user is a mean over users, not over events. The
stream keeps two things:

* a `UserRecord` per (experiment, user): the variant the user was first seen in,
  their conversions and revenue so far (a table keyed by user, so it is
  co-partitioned with the engagement topic);
* `ExperimentTotals` per experiment: per variant, the users, converting users,
  and the sums and sums of squares of conversions and revenue per user.

`observe_event` turns one event into the user's new record and a *delta* of
totals: when a user's revenue goes from R to R + r, the sum moves by r and the
sum of squares by (R + r)^2 - R^2. Totals are a commutative monoid under `+`
(the empty totals are the identity), so each partition may keep its own and a
readout adds them up; replaying an event twice is the caller's concern (the
stream's exactly-once processing), as for every other table.

A user keeps the variant of their first event (intent to treat): an event of
the same user in another variant is counted in their variant's
`crossover_events`, a sign of broken assignment that the memo reports.

>>> user, delta = observe_event(None, variant="treatment", event_type="exposure", dimensions={"channel": "web"})
>>> user, delta2 = observe_event(user, variant="treatment", event_type="conversion", revenue=30.0)
>>> user, delta3 = observe_event(user, variant="treatment", event_type="conversion", revenue=10.0)
>>> totals = delta + delta2 + delta3
>>> t = totals.variants["treatment"]
>>> t.users, t.converting_users, t.conversions, t.conversions_sq, t.revenue, t.revenue_sq
(1, 1, 2, 4, 40.0, 1600.0)
>>> t.users_by_dimension
{'channel': {'web': 1}}
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from experiments.exceptions import InvalidEvent, InvalidTotals

EventType = Literal["exposure", "click", "conversion"]
_EVENT_TYPES = frozenset(("exposure", "click", "conversion"))
MetricName = Literal["conversion", "revenue_per_user", "conversions_per_user"]
METRICS: tuple[str, ...] = ("conversion", "revenue_per_user", "conversions_per_user")
# How memos and reasons name each metric: one name per definition (the dashboard's CVR is per exposure).
METRIC_NAMES = {"conversion": "users converting", "revenue_per_user": "revenue per user",
                "conversions_per_user": "conversions per user"}


def metric_name(metric: str) -> str:
    """The metric as a memo names it.

    >>> metric_name("conversion")
    'users converting'
    """
    return METRIC_NAMES.get(metric, metric)


@dataclass(frozen=True, slots=True)
class UserRecord:
    """One user in one experiment: the variant of their first event and their outcomes so far."""

    variant: str
    conversions: int = 0
    revenue: float = 0.0

    @property
    def converted(self) -> bool:
        return self.conversions > 0


@dataclass(frozen=True, slots=True)
class MetricMoments:
    """Users, mean and sample variance (ddof 1) of one per-user metric in one variant."""

    users: int
    mean: float
    variance: float


@dataclass(frozen=True, slots=True)
class VariantTotals:
    """Sums over one variant's users; every field adds up across partitions.

    `users_by_dimension` counts users by the dimension values of their first event
    (e.g. {"channel": {"web": 120, "app": 80}}), for the per-dimension sample-ratio test.
    Treat it as read-only: totals are values.
    """

    users: int = 0
    converting_users: int = 0
    conversions: int = 0
    conversions_sq: int = 0
    revenue: float = 0.0
    revenue_sq: float = 0.0
    crossover_events: int = 0
    users_by_dimension: dict[str, dict[str, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("users", "converting_users", "conversions", "conversions_sq", "crossover_events", "revenue",
                     "revenue_sq"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise InvalidTotals(f"{name} must be finite and >= 0, got {value!r}")
        # converting users <= users holds for merged totals, not for a delta (a returning user's first
        # conversion adds a converting user and no user): `check_consistent` is for the former.

    def check_consistent(self, variant: str) -> None:
        """Raise InvalidTotals unless these could be the totals of real users (not of a delta): counts in order,
        and no sum of squares below what its sum allows (Cauchy–Schwarz: sum x^2 >= (sum x)^2 / n; for whole
        conversion counts also sum c^2 >= sum c), which would be a negative variance."""
        if self.converting_users > self.users or self.conversions < self.converting_users:
            raise InvalidTotals(f"{variant}: {self.converting_users} converting users with {self.users} users "
                                f"and {self.conversions} conversions")
        if self.users and (self.conversions_sq < self.conversions
                           or self.conversions_sq * self.users < self.conversions ** 2):
            raise InvalidTotals(f"{variant}: conversions_sq {self.conversions_sq} is impossible for {self.conversions} "
                                f"conversions over {self.users} users")
        # Rounding in a float sum of squares may undershoot by a few ulps: a relative tolerance.
        if self.users and self.revenue_sq * self.users < self.revenue * self.revenue * (1 - 1e-9):
            raise InvalidTotals(f"{variant}: revenue_sq {self.revenue_sq!r} is impossible for revenue {self.revenue!r} "
                                f"over {self.users} users (a negative variance)")

    def __add__(self, other: VariantTotals) -> VariantTotals:
        dimensions = {name: dict(values) for name, values in self.users_by_dimension.items()}
        for name, values in other.users_by_dimension.items():
            merged = dimensions.setdefault(name, {})
            for value, count in values.items():
                merged[value] = merged.get(value, 0) + count
        return VariantTotals(
            users=self.users + other.users, converting_users=self.converting_users + other.converting_users,
            conversions=self.conversions + other.conversions, conversions_sq=self.conversions_sq + other.conversions_sq,
            revenue=self.revenue + other.revenue, revenue_sq=self.revenue_sq + other.revenue_sq,
            crossover_events=self.crossover_events + other.crossover_events, users_by_dimension=dimensions)

    def moments(self, metric: str) -> MetricMoments:
        """Mean and sample variance of a per-user metric, from the sums (variance 0 below 2 users).

        >>> VariantTotals(users=4, converting_users=1, conversions=1, conversions_sq=1).moments("conversion")
        MetricMoments(users=4, mean=0.25, variance=0.25)
        """
        n = self.users
        if metric == "conversion":     # a 0/1 value per user: its square is itself
            total, total_sq = float(self.converting_users), float(self.converting_users)
        elif metric == "revenue_per_user":
            total, total_sq = self.revenue, self.revenue_sq
        elif metric == "conversions_per_user":
            total, total_sq = float(self.conversions), float(self.conversions_sq)
        else:
            raise KeyError(f"unknown metric {metric!r}; known: {METRICS}")
        if n == 0:
            return MetricMoments(0, math.nan, math.nan)
        mean = total / n
        # Sums of squares lose digits to cancellation only when the mean dwarfs the spread
        # (not the case for rates and revenue per user); the clamp keeps rounding from going negative.
        variance = max(0.0, (total_sq - n * mean * mean) / (n - 1)) if n > 1 else 0.0
        return MetricMoments(n, mean, variance)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for a table's value serializer); `from_dict` reads it back."""
        return {"users": self.users, "converting_users": self.converting_users, "conversions": self.conversions,
                "conversions_sq": self.conversions_sq, "revenue": self.revenue, "revenue_sq": self.revenue_sq,
                "crossover_events": self.crossover_events,
                "users_by_dimension": {k: dict(v) for k, v in self.users_by_dimension.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VariantTotals:
        return cls(**{**data, "users_by_dimension": {k: dict(v) for k, v in data.get("users_by_dimension", {}).items()}})


@dataclass(frozen=True, slots=True)
class ExperimentTotals:
    """Variant -> `VariantTotals` of one experiment; `+` merges partitions or folds in a delta.

    >>> a = ExperimentTotals({"control": VariantTotals(users=3)})
    >>> b = ExperimentTotals({"control": VariantTotals(users=2), "treatment": VariantTotals(users=4)})
    >>> {name: t.users for name, t in (a + b).variants.items()}
    {'control': 5, 'treatment': 4}
    """

    variants: dict[str, VariantTotals] = field(default_factory=dict)

    def __add__(self, other: ExperimentTotals) -> ExperimentTotals:
        merged = dict(self.variants)
        for name, totals in other.variants.items():
            merged[name] = merged[name] + totals if name in merged else totals
        return ExperimentTotals(merged)

    def as_dict(self) -> dict[str, Any]:
        return {name: totals.as_dict() for name, totals in sorted(self.variants.items())}

    @classmethod
    def total(cls, deltas: Iterable[ExperimentTotals]) -> ExperimentTotals:
        """The sum of many totals in one pass (`+` one at a time copies every intermediate sum).

        >>> one = ExperimentTotals({"control": VariantTotals(users=1, users_by_dimension={"channel": {"web": 1}})})
        >>> total = ExperimentTotals.total([one, one, one])
        >>> total.variants["control"].users, total.variants["control"].users_by_dimension
        (3, {'channel': {'web': 3}})
        """
        sums: dict[str, list[Any]] = {}
        for delta in deltas:
            for name, t in delta.variants.items():
                acc = sums.get(name)
                if acc is None:
                    acc = sums[name] = [0, 0, 0, 0, 0.0, 0.0, 0, {}]
                acc[0] += t.users
                acc[1] += t.converting_users
                acc[2] += t.conversions
                acc[3] += t.conversions_sq
                acc[4] += t.revenue
                acc[5] += t.revenue_sq
                acc[6] += t.crossover_events
                for dimension, values in t.users_by_dimension.items():
                    merged = acc[7].setdefault(dimension, {})
                    for value, count in values.items():
                        merged[value] = merged.get(value, 0) + count
        return cls({name: VariantTotals(*acc) for name, acc in sums.items()})

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping[str, Any]]) -> ExperimentTotals:
        return cls({name: VariantTotals.from_dict(values) for name, values in data.items()})


def observe_event(user: UserRecord | None, *, variant: str, event_type: str, revenue: float = 0.0,
                  dimensions: Mapping[str, str] | None = None) -> tuple[UserRecord, ExperimentTotals]:
    """Fold one engagement event of one user into their record; return the new record and the totals' delta.

    `user` is the record so far (None on the user's first event in the experiment).
    `dimensions` (e.g. channel, profile) are recorded from the first event only.
    A click only assigns; an exposure only assigns; a conversion adds one conversion and its revenue.

    >>> user, delta = observe_event(UserRecord("control", conversions=1, revenue=5.0), variant="control",
    ...                             event_type="conversion", revenue=3.0)
    >>> user, delta.variants["control"].revenue_sq, delta.variants["control"].converting_users
    (UserRecord(variant='control', conversions=2, revenue=8.0), 39.0, 0)
    """
    if event_type not in _EVENT_TYPES:
        raise InvalidEvent(f"event type {event_type!r} is not one of {sorted(_EVENT_TYPES)}")
    if not math.isfinite(revenue) or revenue < 0:
        raise InvalidEvent(f"revenue {revenue} must be finite and non-negative")
    if revenue and event_type != "conversion":
        raise InvalidEvent(f"revenue {revenue} on a {event_type}; only conversions carry revenue")
    if not variant:
        raise InvalidEvent("an experiment event needs a variant")
    new_user = user is None
    record = UserRecord(variant) if user is None else user
    crossover = 0 if record.variant == variant else 1
    if event_type != "conversion":
        after = record
    else:
        after = UserRecord(record.variant, record.conversions + 1, record.revenue + revenue)
    delta = VariantTotals(
        users=1 if new_user else 0,
        converting_users=1 if after.converted and not record.converted else 0,
        conversions=after.conversions - record.conversions,
        conversions_sq=after.conversions ** 2 - record.conversions ** 2,
        revenue=after.revenue - record.revenue,
        revenue_sq=after.revenue ** 2 - record.revenue ** 2,
        crossover_events=crossover,
        users_by_dimension={name: {value: 1} for name, value in (dimensions or {}).items()} if new_user else {})
    return after, ExperimentTotals({record.variant: delta})
