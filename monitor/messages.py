"""The typed messages from the per-user stage to the per-initiative stage, and their wire form.

Stage 1 (`monitor.user_stage`) reads engagement and consent by user; stage 2
(`monitor.initiative_stage`) keeps one initiative's windows, detectors,
incidents and plan. Between them travels, per initiative and per batch of one
source partition, a `Partial`: the batch combined into aggregates per bucket
(counters per series and cohort, governance tallies, experiment deltas), the
consent violations it found, the partition's event-time mark and the offsets
it covers. Stage 2's input grows with series x buckets, not with events.

Rule changes (keyed by initiative already) and the timer's ticks share the
internal topic, so one agent owns each initiative's state. On the wire every
message is one JSON object with a `type` tag (`encode` / `decode`); a
partial's is a zstd frame of it, as its series and cohort names repeat in
every bucket.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
import zstandard
from pydantic import ValidationError

from experiments.state import ExperimentTotals
from governance.consent_ledger import Violation
from governance.scan import GovernanceTally
from incidents.model import IncidentAction
from monitor.events import RuleChangeEvent
from monitor.exceptions import StageError

__all__ = ["Counters", "BucketPartial", "SourceRange", "Partial", "Tick", "RuleChange", "Message", "encode", "decode"]


@dataclass(slots=True)
class Counters:
    """Engagement counters of one series (or cohort) over one bucket; they add up."""

    exposures: int = 0
    clicks: int = 0
    conversions: int = 0
    revenue: float = 0.0
    fallbacks: int = 0
    latency_ms_sum: float = 0.0

    def merge(self, other: Counters) -> None:
        self.exposures += other.exposures
        self.clicks += other.clicks
        self.conversions += other.conversions
        self.revenue += other.revenue
        self.fallbacks += other.fallbacks
        self.latency_ms_sum += other.latency_ms_sum

    def events(self) -> int:
        return self.exposures + self.clicks + self.conversions

    def to_wire(self) -> list[float]:
        return [self.exposures, self.clicks, self.conversions, self.revenue, self.fallbacks, self.latency_ms_sum]

    @classmethod
    def from_wire(cls, values: list[float]) -> Counters:
        exposures, clicks, conversions, revenue, fallbacks, latency = values
        return cls(int(exposures), int(clicks), int(conversions), float(revenue), int(fallbacks), float(latency))


@dataclass(slots=True)
class BucketPartial:
    """What one batch adds to one bucket of one initiative."""

    series: dict[str, Counters] = field(default_factory=dict)
    cohorts: dict[str, Counters] = field(default_factory=dict)
    governance: GovernanceTally = field(default_factory=GovernanceTally)
    experiments: dict[str, ExperimentTotals] = field(default_factory=dict)

    def events(self) -> int:
        return sum(c.events() for c in self.series.values())

    def merge(self, other: BucketPartial) -> None:
        """Add another batch's partial of the same bucket."""
        merge_bucket(self, other)

    def to_wire(self, initiative: str) -> dict[str, Any]:
        return {
            "series": {_short(initiative, k): c.to_wire() for k, c in self.series.items()},
            "cohorts": {k: c.to_wire() for k, c in self.cohorts.items()},
            "governance": {
                "rules": self.governance.rules,
                "variants": self.governance.variants,
                "personalized": self.governance.personalized,
            },
            "experiments": {k: t.as_dict() for k, t in self.experiments.items()},
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any], initiative: str) -> BucketPartial:
        governance = data["governance"]
        return cls(
            series={_long(initiative, k): Counters.from_wire(v) for k, v in data["series"].items()},
            cohorts={k: Counters.from_wire(v) for k, v in data["cohorts"].items()},
            governance=GovernanceTally(
                rules=governance["rules"], variants=governance["variants"], personalized=governance["personalized"]
            ),
            experiments={k: ExperimentTotals.from_dict(v) for k, v in data["experiments"].items()},
        )


def merge_bucket(target: Any, bucket: BucketPartial) -> None:
    """Add a bucket's partial to anything holding the same four aggregates (a partial, a window's row)."""
    for name, counters in bucket.series.items():
        target.series.setdefault(name, Counters()).merge(counters)
    for name, counters in bucket.cohorts.items():
        target.cohorts.setdefault(name, Counters()).merge(counters)
    target.governance.merge(bucket.governance)
    for experiment, delta in bucket.experiments.items():
        known = target.experiments.get(experiment)
        target.experiments[experiment] = delta if known is None else known + delta


@dataclass(frozen=True, slots=True)
class SourceRange:
    """Offsets `first..last` (inclusive) of one partition of the engagement topic that a batch covers."""

    partition: int
    first: int
    last: int

    def __post_init__(self) -> None:
        if self.partition < 0 or self.first < 0 or self.last < self.first:
            raise StageError(f"bad source range {self.partition}:{self.first}..{self.last}")


@dataclass(slots=True)
class Partial:
    """One batch of one source partition, combined for one initiative.

    `source` is None for a batch that read no engagement (only consent, whose
    late revocations may convict). `mark` is the greatest engagement event time
    read on the source partition so far: the partition's contribution to the
    watermark, also when this initiative had no event in the batch.
    """

    initiative: str
    partition: int
    source: SourceRange | None = None
    mark: float | None = None
    buckets: dict[float, BucketPartial] = field(default_factory=dict)  # by bucket start (epoch seconds)
    violations: list[Violation] = field(default_factory=list)
    # Dead letters of the source partition's batch, by reason kind (`monitor.events.reason_kind`); sent with
    # the offset range, so a redelivery is not counted twice.
    dead_letters: dict[str, int] = field(default_factory=dict)

    def events(self) -> int:
        return sum(b.events() for b in self.buckets.values())

    def merge(self, later: Partial) -> None:
        """Fold in the next batch's partial of the same initiative and source partition: one message for both."""
        if (later.initiative, later.partition) != (self.initiative, self.partition):
            raise StageError(
                f"cannot merge {later.initiative}/{later.partition} into {self.initiative}/{self.partition}"
            )
        if later.source is not None:
            self.source = (
                later.source
                if self.source is None
                else SourceRange(self.partition, self.source.first, later.source.last)
            )
        if later.mark is not None:
            self.mark = later.mark if self.mark is None else max(self.mark, later.mark)
        for start, bucket in later.buckets.items():
            known = self.buckets.get(start)
            if known is None:
                self.buckets[start] = bucket
            else:
                known.merge(bucket)
        self.violations.extend(later.violations)
        for kind, n in later.dead_letters.items():
            self.dead_letters[kind] = self.dead_letters.get(kind, 0) + n


@dataclass(frozen=True, slots=True)
class Tick:
    """The wall-clock timer's check of one initiative: close idle buckets, judge freshness."""

    initiative: str


@dataclass(frozen=True, slots=True)
class RuleChange:
    """A rule change, forwarded to the stage that owns its initiative."""

    event: RuleChangeEvent

    @property
    def initiative(self) -> str:
        return self.event.initiative


@dataclass(frozen=True, slots=True)
class Action:
    """A person's action on an incident, forwarded to the stage that owns its initiative."""

    action: IncidentAction

    @property
    def initiative(self) -> str:
        return self.action.initiative


Message = Partial | Tick | RuleChange | Action


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"  # how every zstd frame starts; a JSON object starts with "{"
_compressor = zstandard.ZstdCompressor(level=3)
_decompressor = zstandard.ZstdDecompressor()


def encode(message: Message) -> bytes:
    """The wire form of a message: one JSON object with a `type` tag (a partial's compressed)."""
    if isinstance(message, Partial):
        source = message.source
        return _compressor.compress(
            orjson.dumps(
                {
                    "type": "partial",
                    "initiative": message.initiative,
                    "partition": message.partition,
                    "source": None if source is None else [source.partition, source.first, source.last],
                    "mark": message.mark,
                    "buckets": [
                        [start, bucket.to_wire(message.initiative)] for start, bucket in sorted(message.buckets.items())
                    ],
                    "violations": _violations_to_wire(message.initiative, message.violations),
                    **({"dead": message.dead_letters} if message.dead_letters else {}),
                }
            )
        )
    if isinstance(message, Tick):
        return orjson.dumps({"type": "tick", "initiative": message.initiative})
    if isinstance(message, RuleChange):
        return orjson.dumps({"type": "rule_change", "event": message.event.model_dump(mode="json")})
    if isinstance(message, Action):
        return orjson.dumps({"type": "action", "action": message.action.model_dump(mode="json")})
    raise StageError(f"not a stage message: {type(message).__name__}")


def decode(raw: bytes) -> Message:
    """A message from its wire form; StageError names what is wrong."""
    try:
        data = orjson.loads(_decompressor.decompress(raw) if raw[:4] == _ZSTD_MAGIC else raw)
        kind = data["type"]
        if kind == "partial":
            source = data["source"]
            return Partial(
                initiative=data["initiative"],
                partition=data["partition"],
                source=None if source is None else SourceRange(*source),
                mark=data["mark"],
                buckets={
                    float(start): BucketPartial.from_wire(bucket, data["initiative"])
                    for start, bucket in data["buckets"]
                },
                violations=_violations_from_wire(data["initiative"], data["violations"]),
                dead_letters=data.get("dead", {}),
            )
        if kind == "tick":
            return Tick(data["initiative"])
        if kind == "rule_change":
            return RuleChange(RuleChangeEvent.model_validate(data["event"]))
        if kind == "action":
            return Action(IncidentAction.model_validate(data["action"]))
        raise StageError(f"unknown message type {kind!r}")
    except StageError:
        raise
    except (orjson.JSONDecodeError, zstandard.ZstdError, KeyError, TypeError, ValueError, ValidationError) as exc:
        raise StageError(f"malformed stage message: {type(exc).__name__}: {exc}") from None


# Series keys start with their initiative, which the partial names already: on the wire they start with "|"
# instead (an initiative's name is never empty). Violations are arrays, their reasons listed once.
def _short(initiative: str, series: str) -> str:
    return series[len(initiative) :] if series.startswith(initiative + "|") else series


def _long(initiative: str, series: str) -> str:
    return initiative + series if series.startswith("|") else series


def _violations_to_wire(initiative: str, violations: Iterable[Violation]) -> dict[str, Any]:
    reasons: dict[str, int] = {}
    items = [
        [
            v.event_id,
            v.at,
            _short(initiative, v.series),
            v.user,
            reasons.setdefault(v.reason, len(reasons)),
            v.late,
            v.acquitted,
            v.initiative if v.initiative != initiative else None,
        ]
        for v in violations
    ]
    return {"reasons": list(reasons), "items": items}


def _violations_from_wire(initiative: str, data: dict[str, Any]) -> list[Violation]:
    reasons = data["reasons"]
    return [
        Violation(
            event_id, at, own or initiative, _long(own or initiative, series), user, reasons[reason], late, acquitted
        )
        for event_id, at, series, user, reason, late, acquitted, own in data["items"]
    ]
