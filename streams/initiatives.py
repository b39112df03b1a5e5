"""Stage 2 on the worker: the partials topic in Kafka transactions, one store per partition.

Why not a Faust agent and table: after a restart, Faust's stream committed
offsets past partials it had not applied (seen in 3 of 4 fresh-clone test
runs: stage 2 then reported source offsets lost; faust-streaming issues 606
and 312 describe the same class of defect). Stage 2 is small in records (one
partial per initiative, source partition and commit interval), so it reads
the partials topic as a `streams.partitions.PartitionedService` (group
`<app id>-initiatives`) and commits per partition and commit interval (at
once after a step that emitted an incident transition) one transaction holding:

- the incidents, plan updates and dead letters the steps emitted,
- the state changed in the interval, pickled, to `<app id>-initiatives-changelog`
  (compacted, partition p; keys are the table names of
  `monitor.initiative_stage.InitiativeState` as prefixes),
- the consumed offsets.

Outputs are therefore exactly once. Partition p's initiatives (the partials'
key) have their own `InitiativeStage`; every `check_interval_seconds` each
partition checks its initiatives' idle buckets and feeds in its own
transaction (the worker's timer), so no tick travels through a topic.
Plan files are written when a step emits them, before the commit: a replay
after a crash writes the same revisions again (`plans.plan_sink` is idempotent on them).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, fields
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition

from incidents.model import IncidentEvent
from monitor import messages
from monitor.alertmanager import open_incidents
from monitor.emitter import Emitter
from monitor.events import DeadLetter
from monitor.exceptions import StageError
from monitor.initiative_stage import InitiativeStage, InitiativeState
from monitor.messages import Tick
from monitor.metrics import PipelineMetrics
from monitor.settings import Settings
from plans.plan_sink import PlanWriter
from streams.alertmanager import AlertmanagerClient
from streams.ingest import PARTIALS_TOPIC, SOURCE_TIME_HEADER
from streams.partitions import Owned, PartitionedService
from streams.snapshots import ChangeStore, SnapshotMapping

log = logging.getLogger(__name__)

INITIATIVES_CHANGELOG = "{app_id}-initiatives-changelog"


@dataclass
class _Initiatives:
    """Stage 2's work for one partition of the partials topic."""

    store: ChangeStore
    stage: InitiativeStage
    emitter: Emitter
    next_check: float  # monotonic
    appended: list[int] = field(default_factory=list)  # ms: the open transaction's partials' source time
    incident_steps: list[float] = field(default_factory=list)  # monotonic starts of its steps that raised incidents
    dead_letters: list[DeadLetter] = field(default_factory=list)  # sent in the open transaction: counted at commit
    transitions: list[IncidentEvent] = field(default_factory=list)  # likewise


class InitiativeService(PartitionedService[_Initiatives, bytes | None]):
    """The stage-2 loop of one worker (see the module docstring)."""

    def __init__(self, settings: Settings, metrics: PipelineMetrics) -> None:
        self.partials_topic = PARTIALS_TOPIC.format(app_id=settings.app_id)
        self._plans = PlanWriter(settings.plan_dir)
        self._alerts = (
            AlertmanagerClient(settings.alertmanager_url, timeout_seconds=settings.alertmanager_timeout_seconds)
            if settings.alertmanager_url
            else None
        )
        super().__init__(
            settings,
            metrics,
            group_id=f"{settings.app_id}-initiatives",
            topics=[self.partials_topic],
            changelog_topic=INITIATIVES_CHANGELOG.format(app_id=settings.app_id),
            owned_gauge=metrics.stage2_partitions,
        )

    def stage_of(self, initiative: str) -> InitiativeStage | None:
        """The stage that holds an initiative, if this worker owns its partition."""
        for owned in self.partitions.values():
            if owned.work.stage.state.clocks.get(initiative) is not None:
                return owned.work.stage
        return None

    def initiatives(self) -> list[str]:
        return sorted(i for owned in self.partitions.values() for i in owned.work.stage.initiatives())

    # -- the partition's work --------------------------------------------------------
    def open(self, p: int, store: dict[str, bytes], producer: AIOKafkaProducer) -> _Initiatives:
        async def send(topic: str, key: bytes, value: bytes) -> None:
            # Into the open transaction (`step` opens it first): delivered when it commits, with the
            # state and the offsets.
            await producer.send(self.settings.topic(topic), key=key, value=value)

        changes = ChangeStore(store)
        letters: list[DeadLetter] = []
        transitions: list[IncidentEvent] = []
        # `known` reads the committed state: the emitter asks before the step it emits commits.
        work = _Initiatives(
            changes,
            self._stage(changes),
            Emitter(
                self.settings,
                self.metrics,
                send=send,
                plan_writer=self._plans,
                count_dead_letter=letters.append,
                alerts=self._alerts,
                known=lambda incident: work.stage.state.incidents.get(incident),
                count_transition=transitions.append,
            ),
            next_check=time.monotonic() + self.settings.check_interval_seconds,
            dead_letters=letters,
            transitions=transitions,
        )
        return work

    def _stage(self, store: ChangeStore) -> InitiativeStage:
        state = InitiativeState(
            **{f.name: SnapshotMapping(store, prefix=f"{f.name}/") for f in fields(InitiativeState)}
        )
        return InitiativeStage(
            self.settings, state, source_partitions=self.settings.topic_partitions, plan_history=self._plans.history
        )

    async def run(self) -> None:
        try:
            await super().run()
        finally:
            if self._alerts is not None:
                await self._alerts.close()

    def due(self, owned: Owned[_Initiatives]) -> bool:
        return time.monotonic() >= owned.work.next_check

    def deadline(self, owned: Owned[_Initiatives]) -> float:
        return owned.work.next_check

    def urgent(self, owned: Owned[_Initiatives]) -> bool:
        # An incident transition is delivered (read committed) at the commit: it does not wait for the interval.
        return bool(owned.work.transitions)

    async def step(self, p: int, owned: Owned[_Initiatives], records: dict[str, list[Any]]) -> None:
        work = owned.work
        partials = records.get(self.partials_topic, [])
        checks: list[str] = []
        if time.monotonic() >= work.next_check:
            # Idle buckets and feed freshness, also when no partial arrives.
            work.next_check = time.monotonic() + self.settings.check_interval_seconds
            checks = list(work.stage.initiatives())
        if not partials and not checks:
            return
        await self.begin(owned)
        for record in partials:
            await self._apply(work, record)
            appended = next((value for name, value in record.headers if name == SOURCE_TIME_HEADER), None)
            if appended is not None:
                work.appended.append(int(appended))
            owned.offsets[TopicPartition(record.topic, p)] = record.offset + 1
        for initiative in checks:
            await self._run(work, Tick(initiative), b"", self.partials_topic)
        if checks and work.emitter.pushes_alerts:
            # Alertmanager ends an alert nobody re-sends: the open incidents again, firing a lease ahead.
            state = work.stage.state
            await work.emitter.refresh_alerts(open_incidents(state.plans, state.incidents, checks))

    async def _apply(self, work: _Initiatives, record: Any) -> None:
        try:
            decoded = messages.decode(record.value)
        except StageError as exc:
            await work.emitter.dead_letter(
                DeadLetter.of(
                    record.value or b"",
                    source_topic=record.topic,
                    reason=str(exc),
                    error=repr(exc),
                    key=record.key,
                    partition=record.partition,
                    offset=record.offset,
                    stage="process",
                )
            )
            return
        await self._run(work, decoded, record.value, record.topic)

    async def _run(self, work: _Initiatives, message: messages.Message, raw: bytes, topic: str) -> None:
        started = time.monotonic()
        try:
            result = work.stage.on_message(message, wall_now=time.time())
        except Exception as exc:  # a bug must not stop the worker; the message is kept
            work.stage.commit()  # what was applied stays applied
            log.exception("processing failed for a %s of %s", type(message).__name__, topic)
            await work.emitter.processing_failed(raw, topic, exc)
            return
        await work.emitter.emit(result)
        work.stage.commit()
        if result.incidents:
            work.incident_steps.append(started)

    async def flush(self, p: int, owned: Owned[_Initiatives]) -> dict[str, bytes | None]:
        return owned.work.store.changes()

    def committed(self, owned: Owned[_Initiatives], writes: dict[str, bytes | None]) -> None:
        owned.work.store.committed()
        for letter in owned.work.dead_letters:
            owned.work.emitter.count_dead_letter(letter)
        owned.work.dead_letters.clear()  # the emitter appends to this very list
        for incident in owned.work.transitions:
            owned.work.emitter.count_transition(incident)
        owned.work.transitions.clear()  # likewise
        work, now, wall = owned.work, time.monotonic(), time.time()
        for appended in work.appended:
            self.metrics.latency.labels("counted").observe(max(0.0, wall - appended / 1000.0))
        for started in work.incident_steps:
            self.metrics.latency.labels("incident").observe(now - started)
        work.appended, work.incident_steps = [], []

    def forget(self, p: int, owned: Owned[_Initiatives]) -> None:
        owned.work.store.rollback()
        owned.work.dead_letters.clear()
        owned.work.transitions.clear()
        owned.work.appended, owned.work.incident_steps = [], []
        owned.work.stage = self._stage(owned.work.store)  # nothing of the aborted steps stays in memory
