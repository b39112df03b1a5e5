"""The consent ledger: per pseudonymous user, consent per purpose over event time, and what it convicts.

A user's entry (`UserConsent`) keeps, per purpose, the consent changes in
event-time order, so the question "did this user consent at 10:02?" is answered
by event time, whatever order the records arrived in. It also remembers the
user's recent personalized exposures: a revocation that arrives after an
exposure but carries an earlier event time convicts that exposure then
(`ConsentPolicy.record`), not never.

Rules (`ConsentPolicy`):
- a user without any record for the purpose follows the policy of their region
  (opt-in: no consent; opt-out: consent); the region is the one of the user's
  latest consent record, else the exposure's, else `unknown`;
- a revocation takes effect `grace_seconds` after its event time (propagation
  to the decisioning service); a grant takes effect at once;
- only personalized exposures (not fallbacks) need consent;
- a violation is judged with what is known when the exposure or the late
  revocation arrives, at once; a grant that arrives later but carries an
  earlier event time acquits it (the incident is updated, and resolved when
  nothing is left): a replay of a backlog may deliver engagement before the
  consent that preceded it.

State is bounded: at most `max_changes` changes per purpose and
`max_remembered` exposures per user, the latter only within `lookback_seconds`
of the user's newest exposure.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field, replace
from typing import Final, Literal, NamedTuple

from governance.exceptions import InvalidPolicy
from incidents.series import field_of
from incidents.timeutil import iso_seconds

Purpose = Literal["personalization", "analytics", "marketing"]
RegionPolicy = Literal["opt-in", "opt-out"]
PERSONALIZATION: Purpose = "personalization"


class Exposure(NamedTuple):
    """What the ledger needs of an exposure to judge it and, later, to convict it.

    Immutable tuples, not frozen dataclasses: one is made per exposure, and a frozen dataclass takes about
    five times as long to build.
    """

    event_id: str
    at: float  # event time, epoch seconds
    initiative: str
    series: str  # initiative|profile|channel|variant
    fallback: bool = False
    region: str | None = None


# A remembered exposure: (event_id, at, series, region, convicted). A plain tuple, not an `Exposure`: it is
# the user's stored form as it is (orjson writes tuples natively, not named ones), and a heavy user's ledger
# holds `max_remembered` of them, written at every commit the user is active in.
Remembered = tuple[str, float, str, str | None, bool]
_AT: Final = 1


def remembered_exposure(row: Remembered) -> Exposure:
    """The exposure a remembered row stands for (the initiative is the series' first part).

    >>> remembered_exposure(("e1", 60.0, "A|p|web|control", "EU", False))
    Exposure(event_id='e1', at=60.0, initiative='A', series='A|p|web|control', fallback=False, region='EU')
    """
    event_id, at, series, region, _ = row
    return Exposure(event_id, at, field_of(series, "initiative"), series, False, region)


class Judgement(NamedTuple):
    """Consent at an instant, and what decided it (the reason is only formatted when asked for). A tuple, as
    `Exposure` is: one is made per exposure."""

    consented: bool
    basis: Literal["granted", "revoked", "grace", "no record"]
    at: float | None = None  # the deciding change's event time
    region: str | None = None
    policy: str | None = None
    grace_seconds: float = 0.0

    @property
    def reason(self) -> str:
        if self.basis == "no record":
            return f"no record; {self.region or 'unknown region'} is {self.policy}"
        assert self.at is not None, "a consent decided by a change has its time"
        if self.basis == "grace":
            return f"revoked at {iso_seconds(self.at)}, within the {self.grace_seconds:g} s grace"
        return f"{self.basis} at {iso_seconds(self.at)}"


@dataclass(frozen=True, slots=True)
class Violation:
    """A personalized exposure to a user without personalization consent at its event time."""

    event_id: str
    at: float
    initiative: str
    series: str
    user: str  # pseudonym
    reason: str
    late: bool = False  # convicted by a revocation that arrived after the exposure
    acquitted: bool = False  # withdrawn: a grant with an earlier event time arrived after the conviction


@dataclass(slots=True)
class UserConsent:
    """One user's ledger entry: the value of the consent-ledger table under the user's pseudonym."""

    changes: dict[str, list[tuple[float, bool]]] = field(default_factory=dict)  # purpose -> [(at, granted)]
    region: str | None = None
    region_at: float = float("-inf")
    remembered: list[Remembered] = field(default_factory=list)  # personalized exposures, by time
    hours: dict[str, tuple[float, float]] = field(default_factory=dict)  # experiment -> last counted hours


@dataclass(frozen=True, slots=True)
class ConsentPolicy:
    """How consent is judged; built once from settings.

    >>> policy = ConsentPolicy(regions={"EU": "opt-in", "US": "opt-out"}, grace_seconds=60)
    >>> user = UserConsent()
    >>> policy.record(user, "u1", at=1000.0, purpose="personalization", granted=False, region="EU")
    []
    >>> policy.consent_at(user, at=1030.0).consented, policy.consent_at(user, at=1061.0).consented
    (True, False)
    >>> policy.consent_at(UserConsent(), at=0.0, region="US").reason
    'no record; US is opt-out'
    """

    regions: dict[str, RegionPolicy] = field(default_factory=dict)
    default_policy: RegionPolicy = "opt-in"
    grace_seconds: float = 60.0
    lookback_seconds: float = 3600.0
    max_changes: int = 32
    max_remembered: int = 64

    def __post_init__(self) -> None:
        for region, policy in {**self.regions, "(default)": self.default_policy}.items():
            if policy not in ("opt-in", "opt-out"):
                raise InvalidPolicy(f"consent policy of {region!r} is {policy!r}; use 'opt-in' or 'opt-out'")
        if self.grace_seconds < 0 or self.lookback_seconds < 0:
            raise InvalidPolicy(
                f"grace ({self.grace_seconds}) and lookback ({self.lookback_seconds}) must not be negative"
            )
        if self.max_changes < 1 or self.max_remembered < 0:
            raise InvalidPolicy("max_changes must be at least 1 and max_remembered not negative")

    def policy_of(self, region: str | None) -> RegionPolicy:
        return self.regions.get(region or "unknown", self.default_policy)

    def consent_at(
        self, user: UserConsent | None, *, at: float, purpose: Purpose = PERSONALIZATION, region: str | None = None
    ) -> Judgement:
        """Did the user consent to `purpose` at event time `at`?"""
        changes = user.changes.get(purpose, []) if user is not None else []
        # The latest change by event time decides. A revocation takes effect `grace_seconds` after the first
        # revocation since the last grant (a grant within that grace cancels it); a grant at once.
        latest = bisect.bisect_right(changes, (at, True))
        if latest == 0:
            known_region = (user.region if user is not None else None) or region
            policy = self.policy_of(known_region)
            return Judgement(policy == "opt-out", "no record", region=known_region, policy=policy)
        t, granted = changes[latest - 1]
        if granted:
            return Judgement(True, "granted", t)
        first = latest - 1
        while first > 0 and not changes[first - 1][1]:
            first -= 1
        revoked_at = changes[first][0]
        if at < revoked_at + self.grace_seconds:
            return Judgement(True, "grace", revoked_at, grace_seconds=self.grace_seconds)
        return Judgement(False, "revoked", revoked_at)

    def consented(self, user: UserConsent, at: float, region: str | None = None) -> bool:
        """`consent_at(user, at=at, region=region).consented` for personalization, without building the
        `Judgement`: once per exposure, where only the answer is needed.

        >>> policy = ConsentPolicy(regions={"US": "opt-out"})
        >>> policy.consented(UserConsent(), 0.0, "US"), policy.consented(UserConsent(), 0.0, "EU")
        (True, False)
        """
        changes = user.changes.get(PERSONALIZATION)
        if changes:
            latest = bisect.bisect_right(changes, (at, True))
            if latest:  # the latest change decides: a grant at once; a revocation after its grace
                return changes[latest - 1][1] or self.consent_at(user, at=at, region=region).consented
        return self.policy_of(user.region or region) == "opt-out"

    def record(
        self,
        user: UserConsent,
        pseudonym: str,
        *,
        at: float,
        purpose: Purpose,
        granted: bool,
        region: str | None = None,
    ) -> list[Violation]:
        """Add one consent change (in place); return the remembered exposures it now convicts, or, for a grant,
        acquits (`Violation.acquitted`).

        A redelivered change (same time and status) changes nothing.
        """
        changes = user.changes.setdefault(purpose, [])
        change = (at, granted)
        if change in changes:
            return []
        bisect.insort(changes, change)
        del changes[: -self.max_changes]
        if region and at >= user.region_at:
            user.region, user.region_at = region, at
        if purpose != PERSONALIZATION:
            return []
        changed = []
        for n, (event_id, exposed_at, series, exposed_region, convicted) in enumerate(user.remembered):
            if convicted != granted or exposed_at < at:
                continue  # a grant can only acquit, a revocation only convict, what follows it
            judgement = self.consent_at(user, at=exposed_at, region=exposed_region)
            if judgement.consented == granted:
                user.remembered[n] = (event_id, exposed_at, series, exposed_region, not granted)
                exposure = remembered_exposure(user.remembered[n])
                changed.append(replace(_violation(exposure, pseudonym, judgement, late=True), acquitted=granted))
        return changed

    def judge(self, user: UserConsent, pseudonym: str, exposure: Exposure) -> tuple[bool, Violation | None]:
        """Judge one exposure: whether the user consented, and the violation if not (in place: a personalized
        exposure is remembered for late revocations). `consent_at` says why."""
        consented = self.consented(user, exposure.at, exposure.region)
        if exposure.fallback:
            return consented, None
        violation = (
            None
            if consented
            else _violation(
                exposure, pseudonym, self.consent_at(user, at=exposure.at, region=exposure.region), late=False
            )
        )
        remembered = user.remembered
        if self.max_remembered and not _remembered_already(remembered, exposure):
            row = (exposure.event_id, exposure.at, exposure.series, exposure.region, violation is not None)
            if not remembered or remembered[-1][_AT] <= exposure.at:
                remembered.append(row)  # the common case: in time order
            else:
                bisect.insort(remembered, row, key=_at)
            # By time, so what is kept is a suffix: the newest `max_remembered` within the lookback.
            cut = len(remembered) - self.max_remembered
            horizon = remembered[-1][_AT] - self.lookback_seconds
            if remembered[0][_AT] < horizon:
                cut = max(cut, bisect.bisect_left(remembered, horizon, key=_at))
            if cut > 0:
                del remembered[:cut]
        return consented, violation


def _at(row: Remembered) -> float:
    return row[_AT]


def _remembered_already(remembered: list[Remembered], exposure: Exposure) -> bool:
    # A redelivered exposure is remembered once. The list is by time: only those of its instant can be it.
    if not remembered or remembered[-1][_AT] < exposure.at:
        return False  # newer than all: the common case, without a search
    n = bisect.bisect_left(remembered, exposure.at, key=_at)
    while n < len(remembered) and remembered[n][_AT] == exposure.at:
        if remembered[n][0] == exposure.event_id:
            return True
        n += 1
    return False


def _violation(exposure: Exposure, pseudonym: str, judgement: Judgement, *, late: bool) -> Violation:
    return Violation(
        exposure.event_id, exposure.at, exposure.initiative, exposure.series, pseudonym, judgement.reason, late
    )
