"""The embedded driver: the same pipeline in one process, no broker.

Records go through exactly the worker's path: bytes are decoded and validated
(`admit`), engagement is re-keyed to its initiative, and the outputs go
through the same `Emitter` (retries, dead letters, plan files). Only the
transport (lists instead of topics) and the tables (dicts) differ.

In a replay (`replay=True`, as `pmon demo` runs) the per-initiative stage's
clock is the replay's: the greatest event time fed so far. Quiet feeds are
then found, and buckets of idle feeds closed, as they would have been live;
admission still checks event times against the real wall clock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from prometheus_client import CollectorRegistry

from incidents.model import IncidentEvent
from plans.plan_sink import PlanWriter
from monitor.emitter import Emitter
from monitor.events import INPUT_MODELS, ConsentEvent, DeadLetter, EngagementEvent, RuleChangeEvent
from monitor.metrics import PipelineMetrics
from monitor.pipeline import MonitorPipeline, MonitorState, Outputs
from monitor.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class EmbeddedRun:
    """What the run sent to its outputs, in order."""

    incidents: list[IncidentEvent] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    plan_updates: list[bytes] = field(default_factory=list)
    records: int = 0


class EmbeddedDriver:
    def __init__(self, settings: Settings, *, registry: CollectorRegistry | None = None,
                 wall_clock: Callable[[], float] = time.time, replay: bool = False) -> None:
        self.settings = settings
        self.pipeline = MonitorPipeline(settings, MonitorState(), stored_plan=PlanWriter(settings.plan_dir).latest)
        self.run_result = EmbeddedRun()
        self._wall_clock = wall_clock
        self._replay_now: float | None = None if not replay else float("-inf")
        self._next_check = float("-inf")
        self.emitter = Emitter(settings, PipelineMetrics(registry or CollectorRegistry()), send=self._collect)

    def _collect(self, topic: str, key: bytes, value: bytes) -> None:
        if topic == "incidents":
            self.run_result.incidents.append(IncidentEvent.model_validate_json(value))
        elif topic == "dead-letters":
            self.run_result.dead_letters.append(DeadLetter.model_validate_json(value))
        else:
            self.run_result.plan_updates.append(value)

    async def feed(self, topic: str, raw: bytes, *, key: bytes | None = None) -> None:
        """One input record, as the worker's agent for `topic` would handle it."""
        self.run_result.records += 1
        record = self.pipeline.admit(topic, raw, wall_now=self._wall_clock(), key=key,
                                     offset=self.run_result.records - 1)
        if isinstance(record, DeadLetter):
            await self.emitter.dead_letter(record)
        elif isinstance(record, EngagementEvent):
            if self._replay_now is not None:
                await self._replay_until(record.event_time.timestamp())
            found = self.pipeline.on_user_engagement(record)
            self.pipeline.commit_users()
            await self._step(raw, topic, lambda: self.pipeline.on_engagements(
                [record], wall_now=self.stage_now(), source_offsets=[self.run_result.records - 1],
                marks=[found.marks], violations=[found.violation] if found.violation else (),
                experiment_deltas=[found.experiment_delta]))
        elif isinstance(record, ConsentEvent):
            convicted = self.pipeline.on_consent(record)
            self.pipeline.commit_users()
            for initiative in sorted({v.initiative for v in convicted}):
                await self._step(raw, topic, lambda: self.pipeline.on_violations(
                    initiative, [v for v in convicted if v.initiative == initiative]))
        elif isinstance(record, RuleChangeEvent):
            await self._step(raw, topic, lambda: self.pipeline.on_rule_change(record))
        if self._replay_now is None and self._wall_clock() >= self._next_check:
            await self.check_feeds()

    async def _step(self, raw: bytes, topic: str, step: Callable[[], Outputs]) -> None:
        """One per-initiative step, as the worker's agent runs it: outputs sent, then state written."""
        try:
            outputs = step()
        except Exception as exc:  # noqa: BLE001 - as the worker: keep the record, raise monitoring_degraded
            log.exception("processing failed for record %d", self.run_result.records)
            self.pipeline.commit()  # as the worker: what was applied stays applied
            await self.emitter.processing_failed(raw, self.settings.topic(topic), exc)
            return
        await self.emitter.emit(outputs)
        self.pipeline.commit()

    async def _replay_until(self, event_time: float) -> None:
        """Move the replay's clock to `event_time`, running the checks the timer would have run on the way:
        a silence in the replayed traffic is a silence to the checks, as it was live."""
        interval = self.settings.check_interval_seconds
        if self._replay_now == float("-inf"):  # the first event: checks start on the next instant of the grid
            self._next_check = (event_time // interval + 1) * interval
        while self._next_check <= event_time:
            self._replay_now = max(self._replay_now, self._next_check)
            await self.check_feeds()
        self._replay_now = max(self._replay_now, event_time)

    def stage_now(self) -> float:
        """The per-initiative stage's clock: the replay's in a replay, else the wall clock."""
        return self._replay_now if self._replay_now is not None else self._wall_clock()

    async def check_feeds(self) -> None:
        """What the worker's timer does every `check_interval_seconds`: idle buckets and feed freshness."""
        now = self.stage_now()
        interval = self.settings.check_interval_seconds
        # On the interval grid: a replay checks at the same instants whatever its records.
        self._next_check = (now // interval + 1) * interval
        for initiative in list(self.pipeline.state.clocks):
            await self.emitter.emit(self.pipeline.on_check(initiative, wall_now=now))
            self.pipeline.commit()

    async def run(self, records: Iterable[tuple[str, bytes | None, bytes]],
                  progress: Callable[[int], None] | None = None) -> EmbeddedRun:
        """Feed (topic, key, value) records in order; `progress(n)` is called every 1,000 records."""
        for n, (topic, key, raw) in enumerate(records, start=1):
            await self.feed(topic, raw, key=key)
            if progress is not None and n % 1000 == 0:
                progress(1000)
        return self.run_result


def read_records(path: Path) -> Iterator[tuple[str, bytes | None, bytes]]:
    """(topic, key, value bytes) from a JSONL file of `{"topic", "key", "value"}` lines.

    A line that is not such an envelope is passed on to the engagement stage
    as it is, so it is dead-lettered with its reason instead of stopping the run.
    """
    with path.open("rb") as lines:
        for line in lines:
            line = line.strip()
            if not line:
                continue
            try:
                envelope = orjson.loads(line)
                topic, key, value = envelope["topic"], envelope.get("key"), envelope["value"]
                if topic not in INPUT_MODELS:
                    raise KeyError(topic)
            except (orjson.JSONDecodeError, KeyError, TypeError):
                yield "engagement", None, line
                continue
            yield topic, key.encode() if isinstance(key, str) else None, orjson.dumps(value)
