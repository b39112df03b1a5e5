"""Exact per-user experiment state, kept one event at a time and merged across partitions.

Tests of per-user metrics need per-user values: a user who converts twice is one
converting user, and revenue per user is a mean over users, not over events. The
stream keeps two things:

* a `UserRecord` per (experiment, user): the variant the user was first seen in,
  their conversions and revenue so far, and their conversions and revenue in the
  period before their first exposure (CUPED's covariates; a table keyed by user,
  so it is co-partitioned with the engagement topic);
* `ExperimentTotals` per experiment: per variant, the users, converting users,
  the sums and sums of squares of conversions and revenue per user, and the sums
  of the covariates, their squares and their products with the outcomes.

Every sum is an exact integer: counts are, and revenue is summed in micro-units
(1e-6 of the currency unit; a revenue is rounded to that once, when it is
read). Variances come from exact differences such as n sum x^2 - (sum x)^2, so
no mean is too large for them: with float sums, a revenue per user of 1e8 and a
spread of 1 loses every digit of the variance to cancellation. Integers too
large for JSON's 64 bits are written as decimal strings (`as_dict`).

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
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from experiments.exceptions import InvalidEvent, InvalidTotals

EventType = Literal["exposure", "click", "conversion"]
_EVENT_TYPES = frozenset(("exposure", "click", "conversion"))
MetricName = Literal["conversion", "revenue_per_user", "conversions_per_user"]
METRICS: tuple[str, ...] = ("conversion", "revenue_per_user", "conversions_per_user")
# How memos and reasons name each metric: one name per definition (the dashboard's CVR is per exposure).
METRIC_NAMES = {
    "conversion": "users converting",
    "revenue_per_user": "revenue per user",
    "conversions_per_user": "conversions per user",
}
MICROS = 1_000_000  # revenue units per currency unit in the sums
# Each metric's covariate (the same behaviour before exposure), by the names of the memo.
COVARIATE_NAMES = {
    "conversion": "conversions before exposure",
    "conversions_per_user": "conversions before exposure",
    "revenue_per_user": "revenue before exposure",
}


def metric_name(metric: str) -> str:
    """The metric as a memo names it.

    >>> metric_name("conversion")
    'users converting'
    """
    return METRIC_NAMES.get(metric, metric)


def micros(value: float) -> int:
    """A revenue in the sums' exact micro-units.

    >>> micros(29.99), micros(1e8)
    (29990000, 100000000000000)
    """
    return round(value * MICROS)


@dataclass(frozen=True, slots=True)
class UserRecord:
    """One user in one experiment: the variant of their first event, their outcomes so far, and their
    conversions and revenue before their first exposure (fixed at that event)."""

    variant: str
    conversions: int = 0
    revenue: float = 0.0
    pre_conversions: int = 0
    pre_revenue: float = 0.0

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
class CovariateMoments:
    """A metric's pre-exposure covariate in one variant: its mean and sample variance, and its sample
    covariance with the metric (ddof 1), for CUPED."""

    users: int
    mean: float
    variance: float
    covariance: float


# Per metric: the sums of (metric, metric squared, covariate, covariate squared, metric x covariate) and the
# scale of metric and covariate (micro-units for revenue).
_SUMS = {
    "conversion": (
        "converting_users",
        "converting_users",
        "pre_conversions",
        "pre_conversions_sq",
        "converting_pre_conversions",
        1,
        1,
    ),
    "conversions_per_user": (
        "conversions",
        "conversions_sq",
        "pre_conversions",
        "pre_conversions_sq",
        "conversions_pre_conversions",
        1,
        1,
    ),
    "revenue_per_user": (
        "revenue_micros",
        "revenue_sq_micros",
        "pre_revenue_micros",
        "pre_revenue_sq_micros",
        "revenue_pre_revenue_micros",
        MICROS,
        MICROS,
    ),
}
_JSON_INT = 2**63  # orjson's limit
_OLD_PICKLE_FIELDS = 8  # users ... users_by_dimension, before the CUPED sums and the micro-units


@dataclass(frozen=True, slots=True)
class VariantTotals:
    """Sums over one variant's users, all exact integers; every field adds up across partitions.

    Revenue sums are in micro-units (`revenue` and `revenue_sq` give them in currency units).
    `users_by_dimension` counts users by the dimension values of their first event
    (e.g. {"channel": {"web": 120, "app": 80}}), for the per-dimension sample-ratio test.
    The `pre_*` sums and the products are CUPED's. Treat it as read-only: totals are values.
    """

    users: int = 0
    converting_users: int = 0
    conversions: int = 0
    conversions_sq: int = 0
    revenue_micros: int = 0
    revenue_sq_micros: int = 0
    crossover_events: int = 0
    users_by_dimension: dict[str, dict[str, int]] = field(default_factory=dict)
    pre_conversions: int = 0
    pre_conversions_sq: int = 0
    converting_pre_conversions: int = 0
    conversions_pre_conversions: int = 0
    pre_revenue_micros: int = 0
    pre_revenue_sq_micros: int = 0
    revenue_pre_revenue_micros: int = 0

    def __post_init__(self) -> None:
        for name in _SUMMED:
            value = getattr(self, name)
            if type(value) is not int:
                if not isinstance(value, numbers.Integral) or isinstance(value, bool):
                    raise InvalidTotals(f"{name} must be a whole number >= 0, got {value!r}")
                value = int(value)  # numpy's fixed-width integers would overflow in the squares
                object.__setattr__(self, name, value)
            if value < 0:
                raise InvalidTotals(f"{name} must be a whole number >= 0, got {value!r}")
        # converting users <= users holds for merged totals, not for a delta (a returning user's first
        # conversion adds a converting user and no user): `check_consistent` is for the former.

    @property
    def revenue(self) -> float:
        return self.revenue_micros / MICROS

    @property
    def revenue_sq(self) -> float:
        return self.revenue_sq_micros / MICROS**2

    def check_consistent(self, variant: str) -> None:
        """Raise InvalidTotals unless these could be the totals of real users (not of a delta): counts in order,
        and no sum of squares below what its sum allows (Cauchy–Schwarz: n sum x^2 >= (sum x)^2; for whole
        conversion counts also sum c^2 >= sum c), which would be a negative variance."""
        if self.converting_users > self.users or self.conversions < self.converting_users:
            raise InvalidTotals(
                f"{variant}: {self.converting_users} converting users with {self.users} users "
                f"and {self.conversions} conversions"
            )
        if self.conversions_sq < self.conversions:
            raise InvalidTotals(
                f"{variant}: conversions_sq {self.conversions_sq} is impossible for "
                f"{self.conversions} conversions over {self.users} users"
            )
        for total, squares in (
            ("conversions", "conversions_sq"),
            ("revenue_micros", "revenue_sq_micros"),
            ("pre_conversions", "pre_conversions_sq"),
            ("pre_revenue_micros", "pre_revenue_sq_micros"),
        ):
            if self.users * getattr(self, squares) < getattr(self, total) ** 2 or (
                not self.users and getattr(self, total)
            ):
                raise InvalidTotals(
                    f"{variant}: {squares} {getattr(self, squares)} is impossible for {total} "
                    f"{getattr(self, total)} over {self.users} users (a negative variance)"
                )

    def __add__(self, other: VariantTotals) -> VariantTotals:
        dimensions = {name: dict(values) for name, values in self.users_by_dimension.items()}
        for name, values in other.users_by_dimension.items():
            merged = dimensions.setdefault(name, {})
            for value, count in values.items():
                merged[value] = merged.get(value, 0) + count
        return VariantTotals(
            **{name: getattr(self, name) + getattr(other, name) for name in _SUMMED}, users_by_dimension=dimensions
        )

    def moments(self, metric: str) -> MetricMoments:
        """Mean and sample variance of a per-user metric, from the sums (variance 0 below 2 users).

        >>> VariantTotals(users=4, converting_users=1, conversions=1, conversions_sq=1).moments("conversion")
        MetricMoments(users=4, mean=0.25, variance=0.25)
        """
        if metric not in _SUMS:
            raise KeyError(f"unknown metric {metric!r}; known: {METRICS}")
        y, y_sq, *_, scale, _ = _SUMS[metric]
        n = self.users
        if n == 0:
            return MetricMoments(0, math.nan, math.nan)
        total = getattr(self, y)
        # Exact integers until the one division (Python divides integers correctly rounded).
        variance = (n * getattr(self, y_sq) - total * total) / (n * (n - 1) * scale * scale) if n > 1 else 0.0
        return MetricMoments(n, total / (n * scale), variance)

    def covariate_moments(self, metric: str) -> CovariateMoments:
        """The pre-exposure covariate of `metric` (`COVARIATE_NAMES`): its mean, sample variance and its sample
        covariance with the metric, from the sums (NaN below 2 users).

        >>> t = VariantTotals(users=4, converting_users=2, conversions=2, conversions_sq=2, pre_conversions=3,
        ...                   pre_conversions_sq=5, converting_pre_conversions=3)
        >>> t.covariate_moments("conversion")
        CovariateMoments(users=4, mean=0.75, variance=0.9166666666666666, covariance=0.5)
        """
        y, _, x, x_sq, xy, scale_y, scale_x = _SUMS[metric]
        n = self.users
        if n < 2:
            return CovariateMoments(n, math.nan, math.nan, math.nan)
        total_x, total_y = getattr(self, x), getattr(self, y)
        pairs = n * (n - 1)
        return CovariateMoments(
            n,
            total_x / (n * scale_x),
            (n * getattr(self, x_sq) - total_x * total_x) / (pairs * scale_x * scale_x),
            (n * getattr(self, xy) - total_x * total_y) / (pairs * scale_x * scale_y),
        )

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for a table's value serializer); `from_dict` reads it back. Zero CUPED sums are
        left out; integers beyond 64 bits are decimal strings.

        >>> VariantTotals.from_dict(VariantTotals(users=2, revenue_micros=2 * 10**14,
        ...                                       revenue_sq_micros=2 * 10**28).as_dict()).revenue_sq
        2e+16
        """
        data: dict[str, Any] = {name: _json_int(getattr(self, name)) for name in _ALWAYS}
        data["users_by_dimension"] = {k: dict(v) for k, v in self.users_by_dimension.items()}
        for name in _CUPED:
            value = getattr(self, name)
            if value:
                data[name] = _json_int(value)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VariantTotals:
        """Read `as_dict`'s layout, or the one before the sums were exact (revenue and revenue_sq as floats in
        currency units), so that messages written by an older worker are still read right."""
        values = {name: int(value) for name, value in data.items() if name in _SUMMED}
        if "revenue" in data and "revenue_micros" not in data:
            values["revenue_micros"] = micros(data["revenue"])
            values["revenue_sq_micros"] = micros(data.get("revenue_sq", 0.0) * MICROS)
        return cls(**values, users_by_dimension={k: dict(v) for k, v in data.get("users_by_dimension", {}).items()})

    def __setstate__(self, state: list[Any]) -> None:
        # A pickle from before the exact sums holds 8 values, revenue and revenue_sq as floats in currency units.
        if len(state) == _OLD_PICKLE_FIELDS:
            users, converting, conversions, conversions_sq, revenue, revenue_sq, crossovers, dimensions = state
            state = [
                users,
                converting,
                conversions,
                conversions_sq,
                micros(revenue),
                micros(revenue_sq * MICROS),
                crossovers,
                dimensions,
            ] + [0] * (len(fields(self)) - _OLD_PICKLE_FIELDS)
        for field_info, value in zip(fields(self), state, strict=True):
            object.__setattr__(self, field_info.name, value)


_SUMMED = tuple(f.name for f in fields(VariantTotals) if f.name != "users_by_dimension")
_CUPED = tuple(name for name in _SUMMED if "pre_" in name)
_ALWAYS = tuple(name for name in _SUMMED if name not in _CUPED)


def _json_int(value: int) -> int | str:
    return value if -_JSON_INT < value < _JSON_INT else str(value)


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
        acc = DeltaSum()
        for delta in deltas:
            for name, t in delta.variants.items():
                acc.add(name, [getattr(t, field_name) for field_name in _SUMMED], t.users_by_dimension)
        return acc.totals()

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping[str, Any]]) -> ExperimentTotals:
        return cls({name: VariantTotals.from_dict(values) for name, values in data.items()})


class DeltaSum:
    """Deltas of one experiment summed as they come (`fold_event`'s sums), made `ExperimentTotals` once.

    >>> acc = DeltaSum()
    >>> for _ in range(3):
    ...     _, variant, sums, dimensions = fold_event(None, variant="control", event_type="exposure",
    ...                                               dimensions={"channel": "web"})
    ...     acc.add(variant, sums, dimensions)
    >>> total = acc.totals().variants["control"]
    >>> total.users, total.users_by_dimension
    (3, {'channel': {'web': 3}})
    """

    __slots__ = ("_sums",)

    def __init__(self) -> None:
        self._sums: dict[str, tuple[list[int], dict[str, dict[str, int]]]] = {}

    def add(self, variant: str, sums: Sequence[int], dimensions: Mapping[str, Mapping[str, int]]) -> None:
        """Add one variant's sums, in `VariantTotals`' field order without `users_by_dimension`."""
        acc = self._sums.get(variant)
        if acc is None:
            acc = self._sums[variant] = ([0] * len(_SUMMED), {})
        totals, merged_dimensions = acc
        for i, summand in enumerate(sums):
            totals[i] += summand
        for dimension, values in dimensions.items():
            merged = merged_dimensions.setdefault(dimension, {})
            for value, count in values.items():
                merged[value] = merged.get(value, 0) + count

    def totals(self) -> ExperimentTotals:
        return ExperimentTotals(
            {
                name: VariantTotals(**dict(zip(_SUMMED, totals, strict=True)), users_by_dimension=dimensions)
                for name, (totals, dimensions) in self._sums.items()
            }
        )


def observe_event(
    user: UserRecord | None,
    *,
    variant: str,
    event_type: str,
    revenue: float = 0.0,
    dimensions: Mapping[str, str] | None = None,
    pre_conversions: int = 0,
    pre_revenue: float = 0.0,
) -> tuple[UserRecord, ExperimentTotals]:
    """Fold one engagement event of one user into their record; return the new record and the totals' delta.

    `user` is the record so far (None on the user's first event in the experiment).
    `dimensions` (e.g. channel, profile) are recorded from the first event only, and so are
    `pre_conversions` and `pre_revenue`: the user's behaviour before their first exposure, CUPED's covariates.
    A click only assigns; an exposure only assigns; a conversion adds one conversion and its revenue.

    >>> user, delta = observe_event(UserRecord("control", conversions=1, revenue=5.0), variant="control",
    ...                             event_type="conversion", revenue=3.0)
    >>> user.conversions, user.revenue, delta.variants["control"].revenue_sq, delta.variants["control"].converting_users
    (2, 8.0, 39.0, 0)
    >>> user, delta = observe_event(None, variant="control", event_type="exposure", pre_conversions=2,
    ...                             pre_revenue=40.0)
    >>> user, delta = observe_event(user, variant="control", event_type="conversion", revenue=30.0)
    >>> d = delta.variants["control"]
    >>> d.converting_pre_conversions, d.conversions_pre_conversions, d.revenue_pre_revenue_micros / 10**12
    (2, 2, 1200.0)
    """
    after, of_variant, sums, dimension_counts = fold_event(
        user,
        variant=variant,
        event_type=event_type,
        revenue=revenue,
        dimensions=dimensions,
        pre_conversions=pre_conversions,
        pre_revenue=pre_revenue,
    )
    acc = DeltaSum()  # the one place sums become VariantTotals
    acc.add(of_variant, sums, dimension_counts)
    return after, acc.totals()


def fold_event(
    user: UserRecord | None,
    *,
    variant: str,
    event_type: str,
    revenue: float = 0.0,
    dimensions: Mapping[str, str] | None = None,
    pre_conversions: int = 0,
    pre_revenue: float = 0.0,
) -> tuple[UserRecord, str, tuple[int, ...], dict[str, dict[str, int]]]:
    """`observe_event` without building the delta: the new record, the variant the delta is of, the delta's
    sums in `VariantTotals`' field order without `users_by_dimension`, and that field (for `DeltaSum`)."""
    if event_type not in _EVENT_TYPES:
        raise InvalidEvent(f"event type {event_type!r} is not one of {sorted(_EVENT_TYPES)}")
    if not math.isfinite(revenue) or revenue < 0:
        raise InvalidEvent(f"revenue {revenue} must be finite and non-negative")
    if revenue and event_type != "conversion":
        raise InvalidEvent(f"revenue {revenue} on a {event_type}; only conversions carry revenue")
    if not variant:
        raise InvalidEvent("an experiment event needs a variant")
    if pre_conversions < 0 or not (math.isfinite(pre_revenue) and pre_revenue >= 0):
        raise InvalidEvent(
            f"pre-exposure conversions {pre_conversions} and revenue {pre_revenue} must be finite and non-negative"
        )
    new_user = user is None
    record = UserRecord(variant, pre_conversions=pre_conversions, pre_revenue=pre_revenue) if user is None else user
    crossover = 0 if record.variant == variant else 1
    if event_type != "conversion":
        after = record
    else:
        after = UserRecord(
            record.variant, record.conversions + 1, record.revenue + revenue, record.pre_conversions, record.pre_revenue
        )
    x_conversions, x_revenue = record.pre_conversions, micros(record.pre_revenue)
    converted = 1 if after.converted and not record.converted else 0
    conversions = after.conversions - record.conversions
    before_micros, after_micros = micros(record.revenue), micros(after.revenue)
    sums = (  # in _SUMMED's order
        1 if new_user else 0,  # users
        converted,  # converting_users
        conversions,
        after.conversions**2 - record.conversions**2,  # conversions_sq
        after_micros - before_micros,  # revenue_micros
        after_micros * after_micros - before_micros * before_micros,  # revenue_sq_micros
        crossover,  # crossover_events
        x_conversions if new_user else 0,  # pre_conversions
        x_conversions * x_conversions if new_user else 0,  # pre_conversions_sq
        converted * x_conversions,  # converting_pre_conversions
        conversions * x_conversions,  # conversions_pre_conversions
        x_revenue if new_user else 0,  # pre_revenue_micros
        x_revenue * x_revenue if new_user else 0,  # pre_revenue_sq_micros
        (after_micros - before_micros) * x_revenue,  # revenue_pre_revenue_micros
    )
    dimension_counts = {name: {value: 1} for name, value in (dimensions or {}).items()} if new_user else {}
    return after, record.variant, sums, dimension_counts
