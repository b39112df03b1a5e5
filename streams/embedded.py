"""The embedded driver: the worker's two stages in one process, no broker.

Records go through exactly the worker's path: engagement and consent are
combined in batches by the per-user stage (`monitor.user_stage`), its partials
applied by the per-initiative stage (`monitor.initiative_stage`), rule changes
audited there, and the outputs sent through the same `Emitter` (retries, dead
letters, plan files). Only the transport (lists instead of topics) and the
tables (dicts) differ. The input is one ordered stream, read as one source
partition: consent read so far is everything before the current record, so
an exposure is judged with the consent that precedes it in the input.

In a replay (`replay=True`, as `pmon demo` runs) the per-initiative stage's
clock is the replay's: the greatest event time fed so far. Quiet feeds are
then found, and buckets of idle feeds closed, as they would have been live;
admission still checks event times against the real wall clock.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from detectors.base import BucketDetector
from incidents.model import IncidentEvent
from monitor.emitter import Emitter
from monitor.events import INPUT_MODELS, DeadLetter, RuleChangeEvent
from monitor.initiative_stage import InitiativeStage, InitiativeState, Observer, Outputs, admit_rule_change
from monitor.messages import Message, RuleChange, Tick, encode
from monitor.metrics import PipelineMetrics
from monitor.settings import Settings
from monitor.user_stage import SourceRecord, UserStage
from plans.plan_sink import PlanWriter
from simulation.simulator import parse_envelope

log = logging.getLogger(__name__)


@dataclass
class EmbeddedRun:
    """What the run sent to its outputs, in order."""

    incidents: list[IncidentEvent] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    plan_updates: list[bytes] = field(default_factory=list)
    records: int = 0


class EmbeddedDriver:
    def __init__(
        self,
        settings: Settings,
        *,
        registry: CollectorRegistry | None = None,
        wall_clock: Callable[[], float] = time.time,
        replay: bool = False,
        settings_actor: str = "pmon embedded run",
        observer: Observer | None = None,
        shadow_detectors: Mapping[str, Callable[[], BucketDetector]] | None = None,
    ) -> None:
        """`observer` and `shadow_detectors` go to the per-initiative stage (`InitiativeStage`): every verdict
        judged, and detectors measured beside the settings' without raising incidents (`bench/detection.py`)."""
        self.settings = settings
        self.users: dict[str, bytes] = {}
        self.user_stage = UserStage(settings, self.users)
        self.initiative_stage = InitiativeStage(
            settings,
            InitiativeState(),
            plan_history=PlanWriter(settings.plan_dir).history,
            settings_actor=settings_actor,
            wall_clock=wall_clock,
            observer=observer,
            shadow_detectors=shadow_detectors,
        )
        self.run_result = EmbeddedRun()
        self.metrics = PipelineMetrics(registry or CollectorRegistry())
        self._wall_clock = wall_clock
        self._replay_now: float | None = None if not replay else float("-inf")
        self._next_check = float("-inf")
        self._engagement: list[SourceRecord] = []
        self._consent: list[SourceRecord] = []
        self._offsets = {"engagement": 0, "consent": 0, "rule-changes": 0}
        self.emitter = Emitter(settings, self.metrics, send=self._collect)
        self._counted = {topic: self.metrics.records.labels(topic=topic) for topic in INPUT_MODELS}
        self._reported = dict.fromkeys(self._offsets, 0)  # records per topic already in `_counted`

    def _collect(self, topic: str, key: bytes, value: bytes) -> None:
        if topic == "incidents":
            self.run_result.incidents.append(IncidentEvent.model_validate_json(value))
        elif topic == "dead-letters":
            self.run_result.dead_letters.append(DeadLetter.model_validate_json(value))
        else:
            self.run_result.plan_updates.append(value)

    async def feed(self, topic: str, raw: bytes | None, *, key: bytes | None = None) -> None:
        """One input record, as the worker would handle it (batched with its neighbours; see `flush`)."""
        self.run_result.records += 1
        offset = self._offsets[topic]
        self._offsets[topic] = offset + 1
        record = SourceRecord(offset, raw, key)
        if topic == "rule-changes":
            await self.flush()
            event = admit_rule_change(
                self.settings, raw, wall_now=self._wall_clock(), key=key, partition=0, offset=offset
            )
            if isinstance(event, DeadLetter):
                await self.emitter.dead_letter(event)
            else:
                await self._replay_until(event.event_time.timestamp())
                await self._step(self.initiative_stage.on_rule_change, event, raw)
        elif topic == "consent":
            self._consent.append(record)
        else:
            self._engagement.append(record)
        if len(self._engagement) + len(self._consent) >= self.settings.batch_size:
            await self.flush()
        if self._replay_now is None and self._wall_clock() >= self._next_check:
            await self.flush()
            await self.check_feeds()

    async def flush(self) -> None:
        """Combine the records fed since the last flush (batches of the one source partition) and apply them.

        In a replay a batch stops at the timer's next check instant: the checks run there, between the
        events before and after it, as they would have live.
        """
        # The received-records counter moves once a batch, not once a record (a lock each time).
        for topic, fed in self._offsets.items():
            if fed > self._reported[topic]:
                self._counted[topic].inc(fed - self._reported[topic])
                self._reported[topic] = fed
        engagement, consent = self._engagement, self._consent
        self._engagement, self._consent = [], []
        while engagement or consent:
            # The replay's clock starts at the first event (-inf stops there at once); live, never stop.
            stop_at = math.inf if self._replay_now is None else self._next_stop()
            result = self.user_stage.process(0, engagement, consent, wall_now=self._wall_clock(), stop_at=stop_at)
            for letter in result.dead_letters:
                await self.emitter.dead_letter(letter)
            if self._replay_now is not None and result.partials and result.partials[0].mark is not None:
                self._replay_now = max(self._replay_now, result.partials[0].mark)
            for partial in result.partials:
                await self._step(self.initiative_stage.on_message, partial, None)
            engagement, consent = result.deferred, []
            if result.stopped_at is not None:
                await self._replay_until(result.stopped_at)
        # No changelog here: state is written when the decoded users would outgrow the cache.
        if self.user_stage.uncommitted >= self.settings.user_cache_size // 2:
            self.commit_users()

    def commit_users(self) -> None:
        """Write the per-user state changed since the last commit (the worker: once per transaction)."""
        self.user_stage.commit(self.user_stage.pending_writes())

    async def _step(self, step: Callable[..., Outputs], message: Message | RuleChangeEvent, raw: bytes | None) -> None:
        """One per-initiative step, as the worker's agent runs it: outputs sent, then state written."""
        try:
            if isinstance(message, RuleChangeEvent):
                outputs = step(message)
            else:
                outputs = step(message, wall_now=self.stage_now())
        except Exception as exc:  # as the worker: keep the message, raise monitoring_degraded
            log.exception("processing failed for %s", type(message).__name__)
            self.initiative_stage.commit()  # as the worker: what was applied stays applied
            if raw is not None:
                body = raw
            else:  # made here (a partial, a tick); a rule change as the partials topic would carry it
                body = encode(RuleChange(message) if isinstance(message, RuleChangeEvent) else message)
            await self.emitter.processing_failed(body, f"{self.settings.app_id}-partials", exc)
            return
        await self.emitter.emit(outputs)
        self.initiative_stage.commit()

    async def _replay_until(self, event_time: float) -> None:
        """Move the replay's clock to `event_time`, running the checks the timer would have run on the way:
        a silence in the replayed traffic is a silence to the checks, as it was live."""
        if self._replay_now is None:
            return
        interval = self.settings.check_interval_seconds
        if self._replay_now == float("-inf"):  # the first event: checks start on the next instant of the grid
            self._next_check = (event_time // interval + 1) * interval
        while self._next_check <= event_time:
            quiet = self.initiative_stage.checks_quiet_until()
            if self._next_check < quiet < math.inf:  # checks before it would change nothing: skip them
                self._next_check = self._on_grid_from(min(quiet, event_time + interval))
                continue
            self._replay_now = max(self._replay_now, self._next_check)
            await self.check_feeds()
        self._replay_now = max(self._replay_now, event_time)

    def _on_grid_from(self, t: float) -> float:
        """The first check instant at or after `t`."""
        interval = self.settings.check_interval_seconds
        return math.ceil(t / interval) * interval

    def _next_stop(self) -> float:
        """Where a replay's batch must stop: the next check instant that could change something."""
        quiet = self.initiative_stage.checks_quiet_until()
        if not math.isfinite(quiet):  # no initiative known yet (one may start in this batch), or a feed in breach
            return self._next_check
        return max(self._next_check, self._on_grid_from(quiet))

    def stage_now(self) -> float:
        """The per-initiative stage's clock: the replay's in a replay, else the wall clock."""
        return self._replay_now if self._replay_now is not None else self._wall_clock()

    async def check_feeds(self) -> None:
        """What the worker's timer does every `check_interval_seconds`: idle buckets and feed freshness."""
        now = self.stage_now()
        interval = self.settings.check_interval_seconds
        # On the interval grid: a replay checks at the same instants whatever its records.
        self._next_check = (now // interval + 1) * interval
        for initiative in list(self.initiative_stage.initiatives()):
            await self._step(self.initiative_stage.on_message, Tick(initiative), None)

    async def run(
        self, records: Iterable[tuple[str, bytes | None, bytes | None]], progress: Callable[[int], None] | None = None
    ) -> EmbeddedRun:
        """Feed (topic, key, value) records in order; `progress(n)` is called every 1,000 records."""
        for n, (topic, key, raw) in enumerate(records, start=1):
            await self.feed(topic, raw, key=key)
            if progress is not None and n % 1000 == 0:
                progress(1000)
        await self.flush()
        self.commit_users()
        return self.run_result


def initiatives_in(path: Path) -> set[str]:
    """The initiatives a JSONL events file names (engagement and rule changes), read without replaying it."""
    found: set[str] = set()
    for _, _, value in _envelopes(path):
        initiative = value.get("initiative") if isinstance(value, dict) else None
        if isinstance(initiative, str):
            found.add(initiative)
    return found


def read_records(path: Path) -> Iterator[tuple[str, bytes | None, bytes]]:
    """(topic, key, value bytes) from a JSONL file of `{"topic", "key", "value"}` lines.

    A line that is not such an envelope is passed on to the engagement stage
    as it is, so it is dead-lettered with its reason instead of stopping the run.
    """
    for topic, key, value in _envelopes(path):
        yield topic, key, value if isinstance(value, bytes) else orjson.dumps(value)


def _envelopes(path: Path) -> Iterator[tuple[str, bytes | None, Any]]:
    """(topic, key, parsed value) per envelope line (`simulation.simulator.parse_envelope`); ("engagement", None,
    the line's bytes) for any other line, which the engagement stage dead-letters with its reason."""
    with path.open("rb") as lines:
        for line in lines:
            line = line.strip()
            if not line:
                continue
            try:
                topic, key, value = parse_envelope(line)
            except ValueError:
                yield "engagement", None, line
                continue
            yield topic, key.encode() if key is not None else None, value
