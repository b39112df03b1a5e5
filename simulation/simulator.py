"""Deterministic traffic simulator of a personalization program, with labelled incidents.

The simulator produces what the three input topics would carry for a program of
initiatives over a number of days: engagement (exposure, click, conversion),
consent (grants and revocations) and rule changes. It is pure Python: no broker,
no faust or aiokafka, only ``random.Random`` instances derived from the seed,
so the same :class:`SimulationSpec` always yields the same records, byte for byte
once written with :func:`write_jsonl`.

How traffic is made, and why:

* A *series* is ``initiative|profile|channel|variant``. Each series gets a share
  of its initiative's exposures (profile weight x channel weight x variant
  allocation), so traffic is uneven: PLG Onboarding's ``new_user|web`` series
  carry the bulk of it.
* Exposures of a series in one hour are a Poisson process whose mean follows a
  daily curve (night trough at about 30 % of the daily mean, evening peak) and
  a mild weekday effect. Click and conversion rates are stable apart from small
  per-hour noise, so a detector comparing a series to its trailing baseline sees
  a steady baseline outside the injected incidents.
* A click follows its exposure by seconds to minutes, a conversion by minutes
  (never more than 55), so follow-ups land in the same or the next hour. Records
  are generated hour by hour, sorted within the hour, and the follow-ups that
  belong to the next hour are carried over: the output is globally ordered by
  event time.
* Users have a stable cohort (signup ISO week) and region, a stable profile per
  initiative and a stable experiment variant (a hash of experiment and user, not
  of the seed, as an assignment service would do). Only users with a running
  personalization consent are exposed, and their consent holds for the hour
  their follow-ups may take, so clean traffic never breaches consent; only a
  ``consent_violation`` injection does.
* Every random draw of one series in one hour comes from its own generator
  (seeded with seed, hour and series), so an injection changes the events of the
  series and hours it labels and nothing else.
* An injection changes generation inside ``[start, start + hours)`` by *event
  time*: a conversion drop lowers the probability of conversions whose own time
  falls in the window, a feed gap drops every engagement event timed in it.
  Besides the traffic kinds, three governance kinds exist so that the privacy and
  change-control checks have ground truth too: ``consent_violation`` (a share of
  exposures goes to users without a running consent),
  ``unapproved_rule_change`` (a rule updated and rolled out with no approver and
  no ticket) and ``experiment_rule_change`` (an approved update of a rule that
  serves a live experiment). Clean traffic has none: routine approved updates
  only touch rules that serve no experiment.
* Consent and rule-change events are validated by their models. Engagement
  events, ~97 % of the records, are built from values that are valid by
  construction without running validation (see ``_trusted_builder``), which
  makes generation about 1.5 times faster; the tests validate them.

Typical use::

    spec = SimulationSpec(seed=7, days=14)        # the default program and incidents
    truth = labels(spec)                           # JSON-ready ground truth
    count = write_jsonl(simulate(spec), Path("run.jsonl"))
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import math
import operator
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from statistics import NormalDist
from typing import Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from incidents.series import build_key
from monitor.events import INPUT_MODELS, ConsentEvent, EngagementEvent, RuleChangeEvent
from pmon_errors import PmonError

_ModelT = TypeVar("_ModelT", bound=BaseModel)

__all__ = [
    "DEFAULT_START",
    "INJECTION_KINDS",
    "InitiativeSpec",
    "Injection",
    "JsonlFormatError",
    "SimulatedRecord",
    "SimulationSpec",
    "default_injections",
    "default_program",
    "demo_program",
    "labels",
    "read_jsonl",
    "simulate",
    "traffic_factor",
    "write_jsonl",
]

logger = logging.getLogger(__name__)

DEFAULT_START = datetime(2026, 11, 1, tzinfo=timezone.utc)
"""Sunday 2026-11-01 00:00 UTC: the fixed start of the default run."""

INJECTION_KINDS: frozenset[str] = frozenset(
    {
        "conversion_drop",  # conversion rate down by `magnitude`
        "ctr_drop",  # click rate down by `magnitude`
        "spike",  # click and conversion rates up by `magnitude`
        "volume_drop",  # exposures down by `magnitude`
        "fallback_surge",  # fallback flag on for a share `magnitude` of exposures
        "variant_suppression",  # the variant gets no exposures (magnitude 1.0)
        "feed_gap",  # no engagement event at all (magnitude 1.0)
        "consent_violation",  # a share `magnitude` of exposures go to users without consent
        "unapproved_rule_change",  # a rule updated and rolled out without approver or ticket (magnitude 1.0)
        "experiment_rule_change",  # an approved update of a rule serving a live experiment (magnitude 1.0)
    }
)
_WHOLE_KINDS = frozenset({"variant_suppression", "feed_gap", "unapproved_rule_change", "experiment_rule_change"})
_RULE_KINDS = frozenset({"unapproved_rule_change", "experiment_rule_change"})

_HOUR_MS = 3_600_000
_FOREVER_MS = 1 << 62
_MAX_CLICK_DELAY_MS = 10 * 60_000
_CONVERSION_DELAY_MEAN_MS = 9 * 60_000
# Below an hour, so that every follow-up lands in its exposure's hour or the next one.
_MAX_CONVERSION_DELAY_MS = 55 * 60_000
CONSENT_BOOTSTRAP = timedelta(minutes=2)  # the initial grants are spread over the run's first two minutes
_CONSENT_BOOTSTRAP_MS = CONSENT_BOOTSTRAP // timedelta(milliseconds=1)
_USER_PICK_ATTEMPTS = 40
_QUANTILE_TABLE_SIZE = 4096
_REVENUE_SIGMA = 0.6
# The schema's bounds; draws never get near them, the clamp only makes sure.
_MAX_LATENCY_MS = 600_000.0
_MAX_REVENUE = 1_000_000.0
_MAX_NAME = 128

# Relative traffic by UTC hour of day (EU afternoon + US evening peak, night trough),
# normalised below to a mean of 1.0: the trough is ~0.30, the peak ~1.80.
_HOURLY_SHAPE = (
    0.75,
    0.60,
    0.45,
    0.36,
    0.31,
    0.30,
    0.32,
    0.40,
    0.55,
    0.75,
    0.95,
    1.10,
    1.20,
    1.25,
    1.28,
    1.32,
    1.40,
    1.55,
    1.70,
    1.78,
    1.72,
    1.50,
    1.20,
    0.95,
)
_HOURLY_FACTOR = tuple(value * 24 / sum(_HOURLY_SHAPE) for value in _HOURLY_SHAPE)
# Monday..Sunday; mean 1.0, weekends a little quieter.
_WEEKDAY_FACTOR = (1.05, 1.05, 1.05, 1.05, 1.05, 0.88, 0.87)

# Per series-hour multiplicative noise on the rates (log-normal sigma): small, so a
# trailing baseline is stable, but not zero, so the traffic does not look synthetic.
_RATE_NOISE_SIGMA = 0.03

_AUTHORS = ("a.kim", "m.rossi", "s.okafor", "l.nguyen", "p.schmidt")
_APPROVERS = ("j.ortiz", "r.patel", "e.larsen")


def traffic_factor(moment: datetime) -> float:
    """Seasonal traffic multiplier (daily curve x weekday effect) at ``moment`` (UTC).

    The daily curve averages 1.0 over 24 hours; the weekday effect averages 1.0 over a week.

    >>> round(traffic_factor(datetime(2026, 11, 2, 5, tzinfo=timezone.utc)), 2)   # Monday night
    0.32
    >>> round(traffic_factor(datetime(2026, 11, 2, 19, tzinfo=timezone.utc)), 2)  # Monday evening
    1.89
    """
    utc = moment.astimezone(timezone.utc)
    return _HOURLY_FACTOR[utc.hour] * _WEEKDAY_FACTOR[utc.weekday()]


def _utc_hour_aligned(value: datetime, what: str) -> None:
    if value.tzinfo is None or value.utcoffset() != timedelta(0):
        raise ValueError(f"{what} must be timezone-aware UTC, got {value!r}")
    if (value.minute, value.second, value.microsecond) != (0, 0, 0):
        raise ValueError(f"{what} must be aligned to the hour, got {value.isoformat()}")


def _is_name(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= _MAX_NAME and value == value.strip() and "|" not in value


def _iso_z(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class InitiativeSpec:
    """One personalization initiative: its series, traffic and rates.

    ``ctr`` and ``cvr`` are the rates (clicks, conversions per exposure) of the
    reference series; a series' rates are these times its profile and channel
    factors (and, for conversions, its variant's lift). Weight and allocation
    tuples are aligned with ``profiles``, ``channels`` and ``variants`` and are
    normalised, so only their ratios matter. ``rule_ids`` holds the rule serving
    each channel. ``allocation`` is what the assignment service does;
    ``planned_allocation`` (empty: the same) is what the experiment planned: a
    difference is an injected sample ratio mismatch. ``launch_day`` is the day of
    the run the initiative starts serving on (0: from the start); its users have a
    history in the other initiatives by then, the behaviour before exposure that
    CUPED adjusts a readout with.

    >>> spec = default_program()[0]
    >>> spec.name, len(spec.series_keys())
    ('PLG Onboarding', 8)
    """

    name: str
    profiles: tuple[str, ...]
    channels: tuple[str, ...]
    variants: tuple[str, ...]
    experiment: str | None
    exposures_per_hour: float
    ctr: float
    cvr: float
    profile_weights: tuple[float, ...] = ()
    channel_weights: tuple[float, ...] = ()
    allocation: tuple[float, ...] = ()
    planned_allocation: tuple[float, ...] = ()
    profile_rate_factors: tuple[float, ...] = ()
    channel_rate_factors: tuple[float, ...] = ()
    variant_cvr_lifts: tuple[float, ...] = ()
    revenue_mean: float = 0.0
    fallback_share: float = 0.02
    latency_median_ms: float = 40.0
    latency_sigma: float = 0.45
    rule_ids: tuple[str, ...] = ()
    launch_day: int = 0

    def __post_init__(self) -> None:
        def fill(name: str, values: tuple[float, ...], size: int) -> None:
            # Empty means even weights / neutral factors; set on the frozen instance once.
            if not values:
                object.__setattr__(self, name, (1.0,) * size)
            elif len(values) != size:
                raise ValueError(f"{self.name}: {name} has {len(values)} values for {size} entries")
            elif any(not (v > 0 and math.isfinite(v)) for v in values):
                raise ValueError(f"{self.name}: {name} must be positive and finite, got {values}")

        # Names go into events built without validation: they must be what the schema accepts
        # (1..128 characters, no surrounding blanks), and without '|', the series key separator.
        if not _is_name(self.name):
            raise ValueError(
                f"initiative name must be 1..{_MAX_NAME} characters without '|' or surrounding "
                f"blanks, got {self.name!r}"
            )
        for what, names in (("profiles", self.profiles), ("channels", self.channels), ("variants", self.variants)):
            if not names or len(set(names)) != len(names) or not all(_is_name(n) for n in names):
                raise ValueError(
                    f"{self.name}: {what} must be distinct names of 1..{_MAX_NAME} characters "
                    f"without '|' or surrounding blanks, got {names}"
                )
        if self.experiment is not None and not _is_name(self.experiment):
            raise ValueError(f"{self.name}: experiment name {self.experiment!r} is not a valid name")
        if (self.experiment is None) != (self.variants == ("none",)):
            raise ValueError(f"{self.name}: variants must be ('none',) exactly when there is no experiment")
        fill("profile_weights", self.profile_weights, len(self.profiles))
        fill("channel_weights", self.channel_weights, len(self.channels))
        fill("allocation", self.allocation, len(self.variants))
        if not self.planned_allocation:
            object.__setattr__(self, "planned_allocation", self.allocation)
        fill("planned_allocation", self.planned_allocation, len(self.variants))
        fill("profile_rate_factors", self.profile_rate_factors, len(self.profiles))
        fill("channel_rate_factors", self.channel_rate_factors, len(self.channels))
        fill("variant_cvr_lifts", self.variant_cvr_lifts, len(self.variants))
        if not self.rule_ids:
            slug = "-".join(self.name.lower().split())
            object.__setattr__(self, "rule_ids", tuple(f"{slug}-{channel}" for channel in self.channels))
        elif len(self.rule_ids) != len(self.channels):
            raise ValueError(f"{self.name}: rule_ids needs one rule per channel")
        if not all(_is_name(rule_id) for rule_id in self.rule_ids):
            raise ValueError(f"{self.name}: rule ids must be valid names, got {self.rule_ids}")
        if not self.exposures_per_hour > 0:
            raise ValueError(f"{self.name}: exposures_per_hour must be positive")
        if not (0 < self.ctr < 1 and 0 < self.cvr < 1):
            raise ValueError(f"{self.name}: ctr and cvr must be in (0, 1)")
        if not 0 <= self.fallback_share < 1:
            raise ValueError(f"{self.name}: fallback_share must be in [0, 1)")
        if self.revenue_mean < 0 or self.latency_median_ms <= 0 or self.latency_sigma < 0:
            raise ValueError(f"{self.name}: revenue_mean, latency_median_ms and latency_sigma must be sane")
        if isinstance(self.launch_day, bool) or not isinstance(self.launch_day, int) or self.launch_day < 0:
            raise ValueError(f"{self.name}: launch_day must be a whole day >= 0, got {self.launch_day!r}")

    def series_keys(self) -> list[str]:
        """Every series of the initiative, profiles outermost, variants innermost."""
        return [build_key(self.name, p, c, v) for p in self.profiles for c in self.channels for v in self.variants]

    def exposure_share(self, profile: str, channel: str, variant: str) -> float:
        """The share of the initiative's exposures that goes to one series.

        >>> round(default_program()[0].exposure_share("new_user", "web", "control"), 4)
        0.2188
        """
        p = self.profile_weights[self.profiles.index(profile)] / sum(self.profile_weights)
        c = self.channel_weights[self.channels.index(channel)] / sum(self.channel_weights)
        v = self.allocation[self.variants.index(variant)] / sum(self.allocation)
        return p * c * v


@dataclass(frozen=True)
class Injection:
    """One injected incident, and so one ground-truth label.

    ``magnitude`` is a relative change (0.45 = 45 % drop, or rise for ``spike``),
    a share of exposures for ``fallback_surge`` and ``consent_violation``, and 1.0
    for the all-or-nothing kinds. ``profile``, ``channel`` and ``variant`` narrow
    the affected series; None means all of them.

    >>> hit = Injection("conversion_drop", "PLG Onboarding", datetime(2026, 11, 11, 13, tzinfo=timezone.utc),
    ...                 6, 0.45, profile="new_user", channel="web", variant="treatment")
    >>> hit.series(), hit.end.hour
    (['PLG Onboarding|new_user|web|treatment'], 19)
    """

    kind: str
    initiative: str
    start: datetime
    hours: int
    magnitude: float
    profile: str | None = None
    channel: str | None = None
    variant: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in INJECTION_KINDS:
            raise ValueError(f"unknown injection kind {self.kind!r}; expected one of {sorted(INJECTION_KINDS)}")
        _utc_hour_aligned(self.start, "injection start")
        if isinstance(self.hours, bool) or not isinstance(self.hours, int) or self.hours < 1:
            raise ValueError(f"injection hours must be a positive int, got {self.hours!r}")
        if self.kind in _WHOLE_KINDS:
            if self.magnitude != 1.0:
                raise ValueError(f"{self.kind} is all-or-nothing: magnitude must be 1.0, got {self.magnitude}")
        elif self.kind == "spike":
            if not 0 < self.magnitude <= 10:
                raise ValueError(f"spike magnitude must be in (0, 10], got {self.magnitude}")
        elif not 0 < self.magnitude <= 1:
            raise ValueError(f"{self.kind} magnitude must be in (0, 1], got {self.magnitude}")
        if self.kind == "variant_suppression" and self.variant is None:
            raise ValueError("variant_suppression needs the variant it suppresses")

    @property
    def end(self) -> datetime:
        """The exclusive end of the window, ``start + hours``."""
        return self.start + timedelta(hours=self.hours)

    def series(self, initiatives: Sequence[InitiativeSpec] | None = None) -> list[str]:
        """The affected series keys, looked up in ``initiatives`` (default: :func:`default_program`)."""
        spec = _initiative_named(initiatives if initiatives is not None else default_program(), self.initiative)
        for what, wanted, names in (
            ("profile", self.profile, spec.profiles),
            ("channel", self.channel, spec.channels),
            ("variant", self.variant, spec.variants),
        ):
            if wanted is not None and wanted not in names:
                raise ValueError(f"injection {self.kind}: {self.initiative} has no {what} {wanted!r}; it has {names}")
        return [
            build_key(spec.name, p, c, v)
            for p in spec.profiles
            if self.profile in (None, p)
            for c in spec.channels
            if self.channel in (None, c)
            for v in spec.variants
            if self.variant in (None, v)
        ]


def _initiative_named(initiatives: Sequence[InitiativeSpec], name: str) -> InitiativeSpec:
    for spec in initiatives:
        if spec.name == name:
            return spec
    raise ValueError(f"unknown initiative {name!r}; known: {[spec.name for spec in initiatives]}")


def default_program() -> tuple[InitiativeSpec, ...]:
    """PLG Onboarding (the main initiative, 8 series, with an experiment) and two smaller ones.

    >>> [(spec.name, spec.exposures_per_hour) for spec in default_program()]
    [('PLG Onboarding', 1600.0), ('Pricing Page Recs', 200.0), ('Win-back Emails', 200.0)]
    """
    return (
        InitiativeSpec(
            name="PLG Onboarding",
            profiles=("new_user", "returning"),
            channels=("web", "email"),
            variants=("control", "treatment"),
            experiment="onboarding-checklist",
            exposures_per_hour=1600.0,
            ctr=0.12,
            cvr=0.10,
            # new_user|web carries 44 % of the initiative: ~350 exposures/hour per variant.
            profile_weights=(0.625, 0.375),
            channel_weights=(0.70, 0.30),
            allocation=(0.5, 0.5),
            profile_rate_factors=(1.0, 0.8),
            channel_rate_factors=(1.0, 0.6),
            variant_cvr_lifts=(1.0, 1.06),  # the checklist works a little: the readout has a lift to find
            revenue_mean=29.0,
            rule_ids=("plg-checklist-web", "plg-nurture-email"),
        ),
        InitiativeSpec(
            name="Pricing Page Recs",
            profiles=("free_tier", "trial"),
            channels=("web",),
            variants=("none",),
            experiment=None,
            exposures_per_hour=200.0,
            ctr=0.09,
            cvr=0.03,
            profile_weights=(0.7, 0.3),
            profile_rate_factors=(1.0, 1.3),
            revenue_mean=120.0,
            rule_ids=("pricing-recs-web",),
        ),
        InitiativeSpec(
            name="Win-back Emails",
            profiles=("lapsed_30d", "lapsed_90d"),
            channels=("email", "push"),
            variants=("control", "treatment"),
            experiment="winback-incentive",
            exposures_per_hour=200.0,
            ctr=0.06,
            cvr=0.025,
            profile_weights=(0.6, 0.4),
            channel_weights=(0.75, 0.25),
            allocation=(0.2, 0.8),
            profile_rate_factors=(1.0, 0.7),
            channel_rate_factors=(1.0, 1.4),
            variant_cvr_lifts=(1.0, 1.15),
            revenue_mean=35.0,
            latency_median_ms=55.0,
            rule_ids=("winback-email", "winback-push"),
        ),
    )


def demo_program(days: int = 14) -> tuple[InitiativeSpec, ...]:
    """The default program and two experiments with a known outcome, for the demo's experiment memos.

    The onboarding checklist works better than in the default program (+10 % conversions, enough for
    its planned sample to show), Win-back's incentive wins (+15 %), Checkout Upsell's bundle loses (-20 %), and Search
    Ranking's assignment service puts 56 % of users in control where the plan says half: a sample ratio
    mismatch. Both launch half-way through a run of ``days``: their users bring a history from the
    other initiatives, which CUPED adjusts the readouts with. (The detection benchmark keeps to
    `default_program`.)

    >>> [(spec.name, spec.experiment, spec.launch_day) for spec in demo_program()[3:]]
    [('Checkout Upsell', 'upsell-bundle', 7), ('Search Ranking', 'ranking-v2', 7)]
    """
    onboarding, *others = default_program()
    return (
        replace(onboarding, variant_cvr_lifts=(1.0, 1.10)),
        *others,
        InitiativeSpec(
            name="Checkout Upsell",
            profiles=("buyer",),
            channels=("web",),
            variants=("control", "treatment"),
            experiment="upsell-bundle",
            exposures_per_hour=700.0,
            ctr=0.08,
            cvr=0.08,
            allocation=(0.5, 0.5),
            variant_cvr_lifts=(1.0, 0.8),
            revenue_mean=45.0,
            rule_ids=("upsell-bundle-web",),
            launch_day=days // 2,
        ),
        InitiativeSpec(
            name="Search Ranking",
            profiles=("searcher",),
            channels=("web",),
            variants=("control", "treatment"),
            experiment="ranking-v2",
            exposures_per_hour=250.0,
            ctr=0.15,
            cvr=0.03,
            allocation=(0.56, 0.44),
            planned_allocation=(0.5, 0.5),
            revenue_mean=20.0,
            rule_ids=("ranking-v2-web",),
            launch_day=days // 2,
        ),
    )


# (day, hour of day, kind, initiative, hours, magnitude, profile, channel, variant) of the 14-day default run.
_DEFAULT_SCHEDULE: tuple[tuple[int, int, str, str, int, float, str | None, str | None, str | None], ...] = (
    (4, 14, "ctr_drop", "Pricing Page Recs", 5, 0.5, "free_tier", "web", "none"),
    (5, 18, "fallback_surge", "PLG Onboarding", 4, 0.35, None, "web", "treatment"),
    (6, 2, "feed_gap", "Win-back Emails", 3, 1.0, None, None, None),
    (7, 9, "volume_drop", "PLG Onboarding", 5, 0.6, "returning", "web", None),
    (8, 15, "variant_suppression", "PLG Onboarding", 3, 1.0, None, None, "treatment"),
    (9, 19, "spike", "Win-back Emails", 4, 0.8, "lapsed_30d", "email", "treatment"),
    (10, 13, "conversion_drop", "PLG Onboarding", 6, 0.45, "new_user", "web", "treatment"),
    (11, 10, "consent_violation", "PLG Onboarding", 2, 0.03, "new_user", "email", None),
    (12, 16, "unapproved_rule_change", "Pricing Page Recs", 1, 1.0, None, "web", None),
    (12, 10, "experiment_rule_change", "Win-back Emails", 1, 1.0, None, "email", None),
)
_DEFAULT_SCHEDULE_DAYS = 14


def default_injections(start: datetime = DEFAULT_START, days: int = 14) -> tuple[Injection, ...]:
    """The labelled incidents of the default run: one of each kind, one at a time.

    Days 0-3 are a clean warm-up and the last day is clean, so detectors have a
    baseline before and a recovery after. The headline incident is a 45 %
    conversion drop for 6 hours on PLG Onboarding's biggest series
    (``new_user|web|treatment``) on day 10. For a run of another length the
    schedule is stretched or squeezed in proportion; a run shorter than 4 days
    gets no default incident.

    >>> drop = [i for i in default_injections() if i.kind == "conversion_drop"][0]
    >>> drop.start.isoformat(), drop.hours, drop.magnitude, drop.series()
    ('2026-11-11T13:00:00+00:00', 6, 0.45, ['PLG Onboarding|new_user|web|treatment'])
    """
    _utc_hour_aligned(start, "start")
    if days < 4:
        return ()
    injections = []
    for day, hour, kind, initiative, hours, magnitude, profile, channel, variant in _DEFAULT_SCHEDULE:
        offset_hours = (day * 24 + hour) * days // _DEFAULT_SCHEDULE_DAYS
        injections.append(
            Injection(
                kind,
                initiative,
                start + timedelta(hours=offset_hours),
                hours,
                magnitude,
                profile=profile,
                channel=channel,
                variant=variant,
            )
        )
    return tuple(injections)


@dataclass(frozen=True)
class SimulationSpec:
    """Everything that decides a simulated run; equal specs give identical records.

    ``injections=None`` (the default) means :func:`default_injections` for this
    run's start and length; after construction ``injections`` is always a tuple
    (so ``dataclasses.replace(spec, days=...)`` keeps the resolved schedule: pass
    ``injections=None`` with it to get the schedule of the new length).
    EU users opt in (a share ``eu_decline_share`` never grants at the start),
    US users are opted in by default; ``revocation_share`` of granted users revoke
    during the run, some of them grant again later. Each user has a propensity to
    convert, log-normal with mean 1 and log-sd ``propensity_sigma``, the same in every
    initiative: a user who converted before an experiment converts more in it, the
    correlation CUPED uses. Buckets hold many users, so a series' rates stay what
    its initiative sets.

    >>> spec = SimulationSpec(days=2, injections=())
    >>> spec.end.isoformat(), spec.injections
    ('2026-11-03T00:00:00+00:00', ())
    """

    seed: int = 7
    start: datetime = DEFAULT_START
    days: int = 14
    users: int = 20_000
    initiatives: tuple[InitiativeSpec, ...] = field(default_factory=default_program)
    injections: tuple[Injection, ...] | None = None
    eu_share: float = 0.4
    eu_decline_share: float = 0.15
    revocation_share: float = 0.03
    propensity_sigma: float = 0.5

    def __post_init__(self) -> None:
        _utc_hour_aligned(self.start, "start")
        # One tzinfo for every event time, the one validation would give (timezone.utc).
        object.__setattr__(self, "start", self.start.astimezone(timezone.utc))
        if isinstance(self.days, bool) or not isinstance(self.days, int) or self.days < 1:
            raise ValueError(f"days must be a positive int, got {self.days!r}")
        if self.users < 10 or self.users > 999_999:
            raise ValueError(f"users must be in 10..999999 (ids are u000000..u999999), got {self.users}")
        for name in ("eu_share", "eu_decline_share", "revocation_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0 <= self.propensity_sigma <= 2:
            raise ValueError(f"propensity_sigma must be in [0, 2], got {self.propensity_sigma}")
        names = [spec.name for spec in self.initiatives]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"initiatives must be non-empty with distinct names, got {names}")
        # Frozen: the resolved default is set once, here, so every reader sees a tuple.
        object.__setattr__(self, "initiatives", tuple(self.initiatives))
        injections = tuple(default_injections(self.start, self.days) if self.injections is None else self.injections)
        object.__setattr__(self, "injections", injections)
        for initiative in self.initiatives:
            if initiative.launch_day >= self.days:
                raise ValueError(
                    f"{initiative.name} launches on day {initiative.launch_day} of a "
                    f"{self.days}-day run: it would serve nothing"
                )
        for injection in injections:
            injection.series(self.initiatives)  # raises on an unknown initiative/profile/channel/variant
            launch = self.start + timedelta(days=_initiative_named(self.initiatives, injection.initiative).launch_day)
            if injection.start < launch:
                raise ValueError(
                    f"injection {injection.kind} on {injection.initiative} starts at "
                    f"{_iso_z(injection.start)}, before the initiative launches ({_iso_z(launch)})"
                )
            if (
                injection.kind in _RULE_KINDS
                and injection.channel is None
                and len(_initiative_named(self.initiatives, injection.initiative).channels) > 1
            ):
                raise ValueError(
                    f"{injection.kind} on {injection.initiative}: say which channel's rule "
                    "(rules are per channel, and the label must name the series it serves)"
                )
            if injection.start < self.start or injection.end > self.end:
                raise ValueError(
                    f"injection {injection.kind} on {injection.initiative} "
                    f"[{_iso_z(injection.start)}, {_iso_z(injection.end)}) "
                    f"is outside the run [{_iso_z(self.start)}, {_iso_z(self.end)})"
                )

    @property
    def end(self) -> datetime:
        """The exclusive end of the run."""
        return self.start + timedelta(days=self.days)

    @property
    def hours(self) -> int:
        """The run's length in hours."""
        return self.days * 24


@dataclass(frozen=True, slots=True)
class SimulatedRecord:
    """One record for one input topic; ``key`` is the Kafka key (user id, or initiative for rule changes)."""

    topic: Literal["engagement", "consent", "rule-changes"]
    key: str
    event: EngagementEvent | ConsentEvent | RuleChangeEvent

    def to_json(self) -> dict[str, Any]:
        """The JSONL form: ``{"topic": ..., "key": ..., "value": {...event...}}``."""
        return {"topic": self.topic, "key": self.key, "value": self.event.model_dump(mode="json")}


def labels(spec: SimulationSpec) -> list[dict[str, Any]]:
    """Ground truth of a run, one JSON-ready dict per injection, in the spec's order.

    >>> first = labels(SimulationSpec())[0]
    >>> first["kind"], first["series"], first["start"], first["end"], first["magnitude"]
    ('ctr_drop', ['Pricing Page Recs|free_tier|web|none'], '2026-11-05T14:00:00Z', '2026-11-05T19:00:00Z', 0.5)
    """
    assert spec.injections is not None  # resolved in SimulationSpec.__post_init__
    return [
        {
            "kind": injection.kind,
            "initiative": injection.initiative,
            "series": injection.series(spec.initiatives),
            "start": _iso_z(injection.start),
            "end": _iso_z(injection.end),
            "hours": injection.hours,
            "magnitude": injection.magnitude,
        }
        for injection in spec.injections
    ]


# ----------------------------------------------------------------------------------------------
# Generation


def _unit_hash(salt: str, user_id: str) -> float:
    # A stable hash in [0, 1): Python's hash() of a str changes per process, blake2b does not.
    digest = hashlib.blake2b(f"{salt}:{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def _thresholds(weights: Sequence[float]) -> list[float]:
    """Cumulative shares of ``weights`` but the last: bisecting a unit in them picks an index."""
    total, cumulative, thresholds = sum(weights), 0.0, []
    for weight in weights[:-1]:
        cumulative += weight / total
        thresholds.append(cumulative)
    return thresholds


@dataclass(slots=True)
class _Users:
    ids: list[str]
    cohorts: list[str]
    regions: list[str]
    # Per user, the [from, to) intervals of running personalization consent, in ms since the run start.
    consent_intervals: list[tuple[tuple[int, int], ...]]
    # Per user, when a consent that is never revoked starts (most users), else _FOREVER_MS:
    # the hot loop's one-comparison check, with consent_intervals for the others.
    steady_consent_from: list[int]
    ever_without_consent: list[bool]
    propensity: list[float]  # multiplies the user's conversion probability


@dataclass(slots=True)
class _Cell:
    """One series with everything its generation loop needs, precomputed."""

    index: int
    key: str
    initiative: InitiativeSpec
    profile: str
    channel: str
    variant: str
    rule_id: str
    mean_per_hour: float
    pool: list[int]
    pool_without_consent: list[int]
    ctr: list[float]  # per hour of the run, noise and injections applied
    cvr: list[float]
    volume: list[float]  # exposure multiplier per hour (0 = none)
    fallback_share: list[float]
    violation_share: list[float]
    gap: list[bool]  # no engagement event at all in that hour
    latency_table: tuple[float, ...]
    # Every field of an engagement event; the generation loop copies one and sets what varies.
    exposure_template: dict[str, Any]
    click_template: dict[str, Any]
    conversion_template: dict[str, Any]


def _engagement_template(
    event_type: str, initiative: InitiativeSpec, profile: str, channel: str, variant: str
) -> dict[str, Any]:
    # In the models' field order, so that the dict is what validation would have produced.
    return {
        "event_id": "",
        "event_type": event_type,
        "event_time": None,
        "user_id": "",
        "initiative": initiative.name,
        "profile": profile,
        "channel": channel,
        "cohort": "",
        "experiment": initiative.experiment,
        "variant": variant,
        "rule_id": None,
        "fallback": False,
        "decision_latency_ms": 0.0,
        "revenue": 0.0,
        "region": None,
    }


def _cohort_of(signup: date) -> str:
    iso = signup.isocalendar()
    return f"{iso.year}-W{iso.week:02d}"


def _make_users(spec: SimulationSpec, rng: random.Random) -> tuple[_Users, list[tuple[int, SimulatedRecord]]]:
    """Users with stable attributes and their consent history, plus the consent records."""
    run_ms = spec.hours * _HOUR_MS
    start_day = spec.start.date()
    ids, cohorts, regions, intervals, steady_from, ever_without = [], [], [], [], [], []
    cohort_by_days_before: dict[int, str] = {}
    changes: list[tuple[int, int, str, str]] = []  # (ms, user index, status, source)
    for index in range(spec.users):
        user_id = f"u{index:06d}"
        eu = rng.random() < spec.eu_share
        # Signups of the last 26 weeks, more of them recent (a growing product).
        days_before = int(182 * (1.0 - math.sqrt(rng.random())))
        ids.append(user_id)
        if days_before not in cohort_by_days_before:
            cohort_by_days_before[days_before] = _cohort_of(start_day - timedelta(days=days_before + 1))
        cohorts.append(cohort_by_days_before[days_before])
        regions.append("EU" if eu else "US")
        user_intervals: list[tuple[int, int]] = []
        if eu and rng.random() < spec.eu_decline_share:
            # Declined at the start; a third accept the banner later in the run.
            if rng.random() < 1 / 3:
                granted_at = rng.randrange(_HOUR_MS, run_ms)
                changes.append((granted_at, index, "granted", "consent_banner"))
                user_intervals.append((granted_at, _FOREVER_MS))
        else:
            granted_at = rng.randrange(0, _CONSENT_BOOTSTRAP_MS)
            changes.append((granted_at, index, "granted", "consent_banner" if eu else "signup_default"))
            if rng.random() < spec.revocation_share and run_ms > 2 * _HOUR_MS:
                revoked_at = rng.randrange(_HOUR_MS, run_ms)
                changes.append((revoked_at, index, "revoked", "privacy_center"))
                user_intervals.append((granted_at, revoked_at))
                regranted_at = revoked_at + rng.randrange(_HOUR_MS, 72 * _HOUR_MS)
                if rng.random() < 0.4 and regranted_at < run_ms:
                    changes.append((regranted_at, index, "granted", "privacy_center"))
                    user_intervals.append((regranted_at, _FOREVER_MS))
            else:
                user_intervals.append((granted_at, _FOREVER_MS))
        intervals.append(tuple(user_intervals))
        steady = len(user_intervals) == 1 and user_intervals[0][1] == _FOREVER_MS
        steady_from.append(user_intervals[0][0] if steady else _FOREVER_MS)
        ever_without.append(not (steady and user_intervals[0][0] < _CONSENT_BOOTSTRAP_MS))
    changes.sort()
    records = []
    for number, (ms, index, status, source) in enumerate(changes):
        event = ConsentEvent(
            event_id=f"{spec.seed}-consent-{number}",
            event_time=spec.start + timedelta(milliseconds=ms),
            user_id=ids[index],
            purpose="personalization",
            status=status,
            source=source,
            region=regions[index],
        )
        records.append((ms, SimulatedRecord("consent", ids[index], event)))
    # A stream of its own, so that every other draw of the run stays what it was.
    propensity_rng = random.Random(f"{spec.seed}:propensity")
    sigma = spec.propensity_sigma
    propensity = [propensity_rng.lognormvariate(-(sigma**2) / 2, sigma) for _ in ids]
    return _Users(ids, cohorts, regions, intervals, steady_from, ever_without, propensity), records


def _make_rule_changes(spec: SimulationSpec, rng: random.Random) -> list[tuple[int, SimulatedRecord]]:
    """Rule history: every rule created and rolled out at the start, a few approved updates, and the
    unapproved changes the injections ask for."""
    run_ms = spec.hours * _HOUR_MS
    planned: list[tuple[int, str, str, str, str, str | None, str | None]] = []
    for initiative in spec.initiatives:
        for rule_id in initiative.rule_ids:
            ticket: str | None = f"PERS-{rng.randrange(1000, 9999)}"
            approver: str | None = rng.choice(_APPROVERS)
            author = rng.choice(_AUTHORS)
            planned.append((0, initiative.name, rule_id, "created", author, approver, ticket))
            planned.append((0, initiative.name, rule_id, "rolled_out", author, approver, ticket))
        # A handful of approved updates per initiative, in working hours, rolled out a little later;
        # not of a rule serving a live experiment: that is the `experiment_rule_change` injection.
        for _ in range(min(4, spec.days) if initiative.experiment is None else 0):
            rule_id = rng.choice(initiative.rule_ids)
            day = rng.randrange(spec.days)
            updated_at = day * 24 * _HOUR_MS + rng.randrange(9 * _HOUR_MS, 17 * _HOUR_MS)
            rolled_at = updated_at + rng.randrange(15 * 60_000, 90 * 60_000)
            if rolled_at >= run_ms:
                continue
            ticket = f"PERS-{rng.randrange(1000, 9999)}"
            approver = rng.choice(_APPROVERS)
            author = rng.choice(_AUTHORS)
            planned.append((updated_at, initiative.name, rule_id, "updated", author, approver, ticket))
            planned.append((rolled_at, initiative.name, rule_id, "rolled_out", author, approver, ticket))
    assert spec.injections is not None
    for injection in spec.injections:
        if injection.kind not in _RULE_KINDS:
            continue
        initiative = _initiative_named(spec.initiatives, injection.initiative)
        channel_index = initiative.channels.index(injection.channel) if injection.channel else 0
        rule_id = initiative.rule_ids[channel_index]
        window_ms = int((injection.start - spec.start).total_seconds() * 1000)
        author = rng.choice(_AUTHORS)
        approver, ticket = (
            (rng.choice(_APPROVERS), f"PERS-{rng.randrange(1000, 9999)}")
            if injection.kind == "experiment_rule_change"
            else (None, None)
        )
        planned.append((window_ms + 5 * 60_000, initiative.name, rule_id, "updated", author, approver, ticket))
        planned.append((window_ms + 20 * 60_000, initiative.name, rule_id, "rolled_out", author, approver, ticket))
    planned.sort(key=lambda item: item[0])  # stable: same-instant changes keep their planned order
    experiments = {initiative.name: initiative.experiment for initiative in spec.initiatives}
    records = []
    for number, (ms, initiative_name, rule_id, action, author, approver, ticket) in enumerate(planned):
        event = RuleChangeEvent(
            event_id=f"{spec.seed}-rule-{number}",
            event_time=spec.start + timedelta(milliseconds=ms),
            initiative=initiative_name,
            rule_id=rule_id,
            action=action,
            author=author,
            approver=approver,
            ticket=ticket,
            experiment=experiments[initiative_name],
        )
        records.append((ms, SimulatedRecord("rule-changes", initiative_name, event)))
    return records


def _make_cells(spec: SimulationSpec, users: _Users, rng: random.Random) -> list[_Cell]:
    hours = spec.hours
    seasonal = [traffic_factor(spec.start + timedelta(hours=h)) for h in range(hours)]
    cells: list[_Cell] = []
    for initiative in spec.initiatives:
        latency_table = tuple(
            min(_MAX_LATENCY_MS, round(value, 1))
            for value in _lognormal_quantiles(initiative.latency_median_ms, initiative.latency_sigma)
        )
        pools: dict[tuple[str, str], list[int]] = {(p, v): [] for p in initiative.profiles for v in initiative.variants}
        profile_thresholds = _thresholds(initiative.profile_weights)
        variant_thresholds = _thresholds(initiative.allocation)
        for index, user_id in enumerate(users.ids):
            profile = initiative.profiles[
                bisect.bisect_right(profile_thresholds, _unit_hash(f"{initiative.name}/profile", user_id))
            ]
            variant = (
                initiative.variants[bisect.bisect_right(variant_thresholds, _unit_hash(initiative.experiment, user_id))]
                if initiative.experiment
                else "none"
            )
            pools[(profile, variant)].append(index)
        for (profile, variant), pool in pools.items():
            if not pool:
                raise ValueError(
                    f"{initiative.name}: no user falls in profile {profile!r}, variant {variant!r}; "
                    f"raise SimulationSpec.users (now {spec.users})"
                )
        for p_index, profile in enumerate(initiative.profiles):
            for c_index, channel in enumerate(initiative.channels):
                for v_index, variant in enumerate(initiative.variants):
                    rate_factor = initiative.profile_rate_factors[p_index] * initiative.channel_rate_factors[c_index]
                    ctr = min(0.95, initiative.ctr * rate_factor)
                    cvr = min(0.95, initiative.cvr * rate_factor * initiative.variant_cvr_lifts[v_index])
                    pool = pools[(profile, variant)]
                    mean = initiative.exposures_per_hour * initiative.exposure_share(profile, channel, variant)
                    cells.append(
                        _Cell(
                            index=len(cells),
                            key=build_key(initiative.name, profile, channel, variant),
                            initiative=initiative,
                            profile=profile,
                            channel=channel,
                            variant=variant,
                            rule_id=initiative.rule_ids[c_index],
                            mean_per_hour=mean,
                            pool=pool,
                            pool_without_consent=[u for u in pool if users.ever_without_consent[u]],
                            ctr=[ctr * rng.lognormvariate(0.0, _RATE_NOISE_SIGMA) for _ in range(hours)],
                            cvr=[cvr * rng.lognormvariate(0.0, _RATE_NOISE_SIGMA) for _ in range(hours)],
                            volume=[
                                0.0 if h < initiative.launch_day * 24 else factor for h, factor in enumerate(seasonal)
                            ],
                            fallback_share=[initiative.fallback_share] * hours,
                            violation_share=[0.0] * hours,
                            gap=[False] * hours,
                            latency_table=latency_table,
                            exposure_template=_engagement_template("exposure", initiative, profile, channel, variant),
                            click_template=_engagement_template("click", initiative, profile, channel, variant),
                            conversion_template=_engagement_template(
                                "conversion", initiative, profile, channel, variant
                            ),
                        )
                    )
    by_key = {cell.key: cell for cell in cells}
    assert spec.injections is not None
    for injection in spec.injections:
        first = int((injection.start - spec.start).total_seconds()) // 3600
        window = range(first, first + injection.hours)
        m = injection.magnitude
        for key in injection.series(spec.initiatives):
            cell = by_key[key]
            for h in window:
                if injection.kind == "conversion_drop":
                    cell.cvr[h] *= 1 - m
                elif injection.kind == "ctr_drop":
                    cell.ctr[h] *= 1 - m
                elif injection.kind == "spike":
                    cell.ctr[h] = min(0.99, cell.ctr[h] * (1 + m))
                    cell.cvr[h] = min(0.99, cell.cvr[h] * (1 + m))
                elif injection.kind == "volume_drop":
                    cell.volume[h] *= 1 - m
                elif injection.kind == "variant_suppression":
                    cell.volume[h] = 0.0
                elif injection.kind == "feed_gap":
                    cell.volume[h] = 0.0
                    cell.gap[h] = True
                elif injection.kind == "fallback_surge":
                    cell.fallback_share[h] = max(cell.fallback_share[h], m)
                elif injection.kind == "consent_violation":
                    cell.violation_share[h] = m
            if injection.kind == "consent_violation" and not cell.pool_without_consent:
                logger.warning("consent_violation on %s: every user of the series consents; nothing to inject", key)
    return cells


def _trusted_builder(model: type[_ModelT]) -> Callable[[dict[str, Any]], _ModelT]:
    """A constructor that skips validation, for values valid by construction.

    Validation costs about 4 us per event, a third of the generation time for the
    ~0.8 M events of a default run (and ``model_construct`` is no faster: it walks
    every field). This
    does what ``model_construct`` ends with when given every field: set the
    instance's ``__dict__`` and pydantic's bookkeeping. The values come from
    checked specs (names), clamped draws (latency, revenue) and aware UTC times, so
    they are what validation would produce; the tests validate samples. If this
    pydantic's internals ever differ, a self-check at import falls back to
    ``model_construct``.
    """
    new, set_attribute = object.__new__, object.__setattr__
    all_fields = set(model.model_fields)  # shared: pydantic copies it before any change (model_copy)

    def build(values: dict[str, Any]) -> _ModelT:
        instance = new(model)
        set_attribute(instance, "__dict__", values)
        set_attribute(instance, "__pydantic_fields_set__", all_fields)
        set_attribute(instance, "__pydantic_extra__", None)
        set_attribute(instance, "__pydantic_private__", None)
        return instance

    sample = {
        "event_id": "self-check",
        "event_type": "conversion",
        "event_time": DEFAULT_START,
        "user_id": "u000000",
        "initiative": "i",
        "profile": "p",
        "channel": "c",
        "cohort": "2026-W44",
        "experiment": None,
        "variant": "none",
        "rule_id": None,
        "fallback": False,
        "decision_latency_ms": 0.0,
        "revenue": 1.5,
        "region": "EU",
    }
    try:
        built, validated = build(dict(sample)), model.model_validate(sample)
        if (
            built == validated
            and built.model_dump(mode="json") == validated.model_dump(mode="json")
            and built.model_fields_set == validated.model_fields_set
        ):
            return build
    except Exception:  # noqa: BLE001 - any surprise from pydantic's internals means: do not take the shortcut
        pass
    logger.warning("pydantic internals differ from what the simulator expects; using model_construct (slower)")
    return lambda values: model.model_construct(**values)


_build_engagement = _trusted_builder(EngagementEvent)


def _has_consent(intervals: tuple[tuple[int, int], ...], since_ms: int, until_ms: int) -> bool:
    """Whether a running consent covers ``[since_ms, until_ms]``."""
    for granted, revoked in intervals:  # noqa: SIM110 - a plain loop: any() over a generator is slower on this hot path
        if granted <= since_ms and until_ms < revoked:
            return True
    return False


def _lognormal_quantiles(median: float, sigma: float, size: int = _QUANTILE_TABLE_SIZE) -> tuple[float, ...]:
    """``size`` equally likely values of a log-normal: its quantiles at (i + 0.5) / size.

    Drawing ``table[int(random() * size)]`` is inverse-transform sampling on a fine
    grid: one C call instead of a Gaussian draw and an ``exp`` per exposure.
    """
    standard = NormalDist()
    return tuple(median * math.exp(sigma * standard.inv_cdf((i + 0.5) / size)) for i in range(size))


# Click delays: log-normal, median 25 s, capped at 10 minutes.
_CLICK_DELAYS_MS = tuple(min(_MAX_CLICK_DELAY_MS, int(value)) for value in _lognormal_quantiles(25_000.0, 1.0))


def _generate_cell_hour(
    spec: SimulationSpec,
    users: _Users,
    cell: _Cell,
    hour: int,
    now: list[tuple[int, SimulatedRecord]],
    later: list[tuple[int, SimulatedRecord]],
) -> None:
    """Engagement of one series in one hour, appended as (ms, record) to ``now`` (this hour) or ``later``.

    This loop runs once per exposure, about 700 000 times in the default run, so it
    is kept flat, with every constant bound to a local name, event fields copied
    from per-series templates and the cheapest exact form of each draw.
    """
    mean = cell.mean_per_hour * cell.volume[hour]
    if mean <= 0.0:
        return
    rng = random.Random(f"{spec.seed}:{hour}:{cell.index}")
    rand, gauss = rng.random, rng.gauss
    log, exp = math.log, math.exp
    to_datetime, utc = datetime.fromtimestamp, timezone.utc
    build, record = _build_engagement, SimulatedRecord
    hour_ms = hour * _HOUR_MS
    end_ms = hour_ms + _HOUR_MS
    run_end_ms = spec.hours * _HOUR_MS
    # Event times are made from epoch seconds: a float keeps the millisecond exactly up to
    # 2106 (half an ulp of 2**32 s is 0.24 us, and fromtimestamp rounds to the microsecond).
    start_s = spec.start.timestamp()
    revenue_mean = cell.initiative.revenue_mean
    # Log-normal revenue with the configured mean: mu = ln(mean) - sigma^2 / 2.
    revenue_mu = math.log(revenue_mean) - _REVENUE_SIGMA**2 / 2 if revenue_mean > 0 else 0.0
    ctr_now, cvr_now = cell.ctr[hour], cell.cvr[hour]
    has_next = hour + 1 < spec.hours
    ctr_next = cell.ctr[hour + 1] if has_next else 0.0
    cvr_next = cell.cvr[hour + 1] if has_next else 0.0
    gap_next = cell.gap[hour + 1] if has_next else True
    ctr_max, cvr_max = max(ctr_now, ctr_next), max(cvr_now, cvr_next)
    fallback_share, violation_share = cell.fallback_share[hour], cell.violation_share[hour]
    rule_id = cell.rule_id
    pool, pool_size = cell.pool, len(cell.pool)
    offenders = cell.pool_without_consent
    ids, cohorts, intervals, regions = users.ids, users.cohorts, users.consent_intervals, users.regions
    steady_from, has_consent = users.steady_consent_from, _has_consent
    propensity = users.propensity
    latencies, latency_slots = cell.latency_table, len(cell.latency_table)
    click_delays, click_delay_slots = _CLICK_DELAYS_MS, len(_CLICK_DELAYS_MS)
    new_exposure, new_click, new_conversion = (
        cell.exposure_template.copy,
        cell.click_template.copy,
        cell.conversion_template.copy,
    )
    id_prefix = f"{spec.seed}-{hour}-{cell.index}-"
    mean_gap_ms = _HOUR_MS / mean
    attempts = range(_USER_PICK_ATTEMPTS)
    consent_horizon_ms = _HOUR_MS  # consent must hold until the last possible follow-up
    max_conversion_delay, conversion_delay_ms = _MAX_CONVERSION_DELAY_MS, _CONVERSION_DELAY_MEAN_MS
    max_revenue = _MAX_REVENUE

    exposure_number = 0
    # A Poisson process: exponential gaps (inverse CDF of 1 - U, which is never 0).
    t = hour_ms + int(-log(1.0 - rand()) * mean_gap_ms)
    while t < end_ms:
        exposure_number += 1
        # Who sees it: a user of this profile and variant whose consent runs through the follow-ups.
        user = -1
        violating = False
        if violation_share > 0.0 and offenders and rand() < violation_share:
            for _ in attempts:
                candidate = offenders[int(rand() * len(offenders))]
                if not has_consent(intervals[candidate], t, t):
                    user, violating = candidate, True
                    break
        if user < 0:
            for _ in attempts:
                candidate = pool[int(rand() * pool_size)]
                if steady_from[candidate] <= t or has_consent(intervals[candidate], t, t + consent_horizon_ms):
                    user = candidate
                    break
        if user < 0:
            # Nobody eligible (only in the first seconds of the run, before the grants): no exposure.
            t += int(-log(1.0 - rand()) * mean_gap_ms) + 1
            continue
        user_id, cohort = ids[user], cohorts[user]
        fallback = (not violating) and rand() < fallback_share
        served_rule = rule_id  # on a fallback, the rule that fell back
        event_id = f"{id_prefix}{exposure_number}"
        values = new_exposure()
        values["event_id"] = event_id
        values["event_time"] = to_datetime(start_s + t / 1000, utc)
        values["user_id"] = user_id
        values["cohort"] = cohort
        values["rule_id"] = served_rule
        values["fallback"] = fallback
        values["decision_latency_ms"] = latencies[int(rand() * latency_slots)]
        values["region"] = regions[user]
        now.append((t, record("engagement", user_id, build(values))))

        # Follow-ups: decide with the rate in force at the follow-up's own time, drawing the
        # uniform first so that the delay is drawn only when a follow-up is possible at all.
        draw = rand()
        if draw < ctr_max:
            at = t + 1 + click_delays[int(rand() * click_delay_slots)]
            in_next = at >= end_ms
            if draw < (ctr_next if in_next else ctr_now) and not (in_next and gap_next) and at < run_end_ms:
                values = new_click()
                values["event_id"] = event_id + "-click"
                values["event_time"] = to_datetime(start_s + at / 1000, utc)
                values["user_id"] = user_id
                values["cohort"] = cohort
                values["rule_id"] = served_rule
                values["fallback"] = fallback
                (later if in_next else now).append((at, record("engagement", user_id, build(values))))
        draw = rand()
        lift = propensity[user]
        if draw < cvr_max * lift:
            delay = int(-log(1.0 - rand()) * conversion_delay_ms)
            at = t + 1000 + (delay if delay < max_conversion_delay else max_conversion_delay)
            in_next = at >= end_ms
            if draw < (cvr_next if in_next else cvr_now) * lift and not (in_next and gap_next) and at < run_end_ms:
                values = new_conversion()
                values["event_id"] = event_id + "-conv"
                values["event_time"] = to_datetime(start_s + at / 1000, utc)
                values["user_id"] = user_id
                values["cohort"] = cohort
                values["rule_id"] = served_rule
                values["fallback"] = fallback
                if revenue_mean > 0:
                    revenue = int(exp(revenue_mu + _REVENUE_SIGMA * gauss()) * 100.0 + 0.5) / 100.0  # cents
                    values["revenue"] = revenue if revenue < max_revenue else max_revenue
                (later if in_next else now).append((at, record("engagement", user_id, build(values))))
        t += int(-log(1.0 - rand()) * mean_gap_ms) + 1


def simulate(spec: SimulationSpec) -> Iterator[SimulatedRecord]:
    """Yield the run's records of all three topics in non-decreasing event-time order.

    Records are generated hour by hour, so memory stays bounded by about two hours
    of traffic whatever the run's length. Consent and rule-change events are
    validated by their models; engagement events are built without validation
    from values that are valid by construction (see ``_trusted_builder``). Records
    with the same millisecond come rule changes first, then consent, then engagement.

    >>> records = list(simulate(SimulationSpec(days=1, users=2_000, injections=())))
    >>> records[0].topic, records[0].event.action, records[-1].topic
    ('rule-changes', 'created', 'engagement')
    >>> all(a.event.event_time <= b.event.event_time for a, b in zip(records, records[1:]))
    True
    """
    setup_rng = random.Random(f"{spec.seed}:setup")
    users, consent = _make_users(spec, setup_rng)
    rules = _make_rule_changes(spec, random.Random(f"{spec.seed}:rules"))
    cells = _make_cells(spec, users, random.Random(f"{spec.seed}:rates"))
    # Background records bucketed by hour, rule changes before consent: the hour's list starts
    # with them, and the stable sort by time keeps that order among records of the same instant.
    background: dict[int, list[tuple[int, SimulatedRecord]]] = {}
    for at, item in (*rules, *consent):
        background.setdefault(at // _HOUR_MS, []).append((at, item))
    logger.debug(
        "simulating %d days, %d series, %d users, %d injections",
        spec.days,
        len(cells),
        spec.users,
        len(spec.injections or ()),
    )

    carried: list[tuple[int, SimulatedRecord]] = []
    by_time, take_record = operator.itemgetter(0), operator.itemgetter(1)
    for hour in range(spec.hours):
        now = background.pop(hour, [])
        now.extend(carried)
        carried = []
        for cell in cells:
            _generate_cell_hour(spec, users, cell, hour, now, carried)
        now.sort(key=by_time)
        yield from map(take_record, now)


# ----------------------------------------------------------------------------------------------
# JSONL files


class JsonlFormatError(PmonError, ValueError):
    """A line of a simulation file is not a valid record; the message names the file and line."""

    def __init__(self, path: Path, line_number: int, reason: str) -> None:
        super().__init__(f"{path}:{line_number}: {reason}")
        self.path = path
        self.line_number = line_number
        self.reason = reason


def write_jsonl(records: Iterable[SimulatedRecord], path: Path | str) -> int:
    """Write one ``{"topic", "key", "value"}`` JSON object per line; return how many were written.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     target = Path(folder) / "run.jsonl"
    ...     count = write_jsonl(simulate(SimulationSpec(days=1, users=2_000, injections=())), target)
    ...     count == sum(1 for _ in read_jsonl(target))
    True
    """
    count = 0
    dumps = orjson.dumps
    with open(path, "wb") as sink:
        for record in records:
            # The same bytes as orjson.dumps(record.to_json()), without the intermediate dict.
            sink.write(
                b'{"topic":'
                + dumps(record.topic)
                + b',"key":'
                + dumps(record.key)
                + b',"value":'
                + record.event.model_dump_json().encode()
                + b"}\n"
            )
            count += 1
    return count


def parse_envelope(line: bytes) -> tuple[str, str | None, Any]:
    """(topic, key, value) of one ``{"topic", "key", "value"}`` line, the one reading of the format; ValueError
    saying what is wrong otherwise. The key may be missing or null; nothing else may be there.

    >>> parse_envelope(b'{"topic": "consent", "key": "u1", "value": {"event_id": "c1"}}')
    ('consent', 'u1', {'event_id': 'c1'})
    >>> parse_envelope(b'{"topic": "orders", "value": {}}')
    Traceback (most recent call last):
    ...
    ValueError: unknown topic 'orders'; expected one of ['consent', 'engagement', 'rule-changes']
    """
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or not {"topic", "value"} <= set(data) <= {"topic", "key", "value"}:
        raise ValueError('expected an object with "topic", "value" and optionally "key", nothing else')
    topic, key = data["topic"], data.get("key")
    if not isinstance(topic, str) or topic not in INPUT_MODELS:
        raise ValueError(f"unknown topic {topic!r}; expected one of {sorted(INPUT_MODELS)}")
    if key is not None and not isinstance(key, str):
        raise ValueError(f"key must be a string, got {key!r}")
    return topic, key, data["value"]


def read_jsonl(path: Path | str) -> Iterator[SimulatedRecord]:
    """Read a file written by :func:`write_jsonl`, validating every line with the topic's model.

    Blank lines are skipped. A bad line raises :class:`JsonlFormatError` naming the
    file and the line number (1-based) and saying what is wrong; here every line needs its key.
    """
    source = Path(path)
    with open(source, "rb") as lines:
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                topic, key, value = parse_envelope(line)
            except ValueError as exc:
                raise JsonlFormatError(source, line_number, str(exc)) from None
            if not key:
                raise JsonlFormatError(source, line_number, f"key must be a non-empty string, got {key!r}")
            model = INPUT_MODELS[topic]
            try:
                event = model.model_validate(value)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(part) for part in first["loc"]) or model.__name__
                raise JsonlFormatError(
                    source, line_number, f"invalid {model.__name__}: {where}: {first['msg']}"
                ) from None
            yield SimulatedRecord(topic, key, event)  # type: ignore[arg-type]
