"""Stage 1 on the worker: engagement and consent in batches from aiokafka, one Kafka transaction per batch.

Why not a Faust agent: Faust's per-message stream costs ~150 µs of CPU per
record here, a ceiling of ~0.03x a bare consumer (see bench/README.md); stage 1
sees every record. So the worker reads engagement and consent with its own
aiokafka consumer (group `<app id>-users`, range assignment: partition p of
both topics goes to the same worker, the consent join stays local), runs the
pure `monitor.user_stage.UserStage` on each partition's batch, and delivers in
ONE transaction per partition and batch:

- the batch's partials to the internal topic (stage 2, a Faust agent, reads it
  read-committed), its dead letters,
- the changed per-user state to its changelog (`<app id>-users-changelog`,
  compacted, partition p),
- the consumed offsets (`send_offsets_to_transaction`).

Either all of it is visible or none: a crash or a SIGKILL anywhere replays the
batch from the last committed offsets over the last committed state, so no
record is lost or counted twice. Each source partition has its own
transactional producer (`<app id>-users-<p>`): a worker that takes the
partition over fences the previous owner and aborts its open transaction.
State is rebuilt from the changelog when a partition is assigned.

Consent verdicts do not depend on which topic arrived first: an exposure is
combined only once the consent partition has been read past its event time
(caught up to the broker's end counts as read up to the fetch's wall time);
until then it and the records after it wait, and the engagement partition is
paused while too many wait.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import KafkaError

from monitor import messages
from monitor.events import encode
from monitor.metrics import PipelineMetrics
from monitor.settings import Settings
from monitor.user_stage import BatchResult, SourceRecord, UserStage
from streams.exceptions import StreamsError
from streams.kafka_io import client_options

log = logging.getLogger(__name__)

USERS_CHANGELOG = "{app_id}-users-changelog"
PARTIALS_TOPIC = "{app_id}-partials"
RECOVERY_TIMEOUT_SECONDS = 300.0


@dataclass
class _Partition:
    """What the worker holds for one source partition number while it is assigned."""

    stage: UserStage
    producer: AIOKafkaProducer
    deferred: list[SourceRecord] = field(default_factory=list)
    paused: bool = False


class UserIngest(ConsumerRebalanceListener):
    """The stage-1 loop of one worker; `run()` until cancelled (the step under way runs to its end)."""

    def __init__(self, settings: Settings, metrics: PipelineMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.engagement_topic = settings.topic("engagement")
        self.consent_topic = settings.topic("consent")
        self.partials_topic = PARTIALS_TOPIC.format(app_id=settings.app_id)
        self.changelog_topic = USERS_CHANGELOG.format(app_id=settings.app_id)
        self.group_id = f"{settings.app_id}-users"
        self.partitions: dict[int, _Partition] = {}
        self._lock = asyncio.Lock()   # one step, or one rebalance, at a time
        self._consumer: AIOKafkaConsumer | None = None
        self.ready = asyncio.Event()  # set once partitions were assigned and recovered

    # -- the loop ----------------------------------------------------------------
    async def run(self) -> None:
        consumer = self._consumer = AIOKafkaConsumer(
            **client_options(self.settings), group_id=self.group_id, enable_auto_commit=False,
            auto_offset_reset="earliest", isolation_level="read_committed",
            # Range, not aiokafka's default round robin: partition p of both topics to the same worker.
            partition_assignment_strategy=(RangePartitionAssignor,),
            max_partition_fetch_bytes=4 * 1_048_576, fetch_max_wait_ms=100)
        consumer.subscribe([self.engagement_topic, self.consent_topic], listener=self)
        await consumer.start()
        try:
            while True:
                batches = await consumer.getmany(timeout_ms=int(self.settings.batch_within_seconds * 1000),
                                                 max_records=self.settings.batch_size)
                step = asyncio.ensure_future(self._steps(batches))
                try:
                    await asyncio.shield(step)
                except asyncio.CancelledError:
                    await step  # a graceful stop waits for the step under way: it commits whole or not at all
                    raise
        finally:
            await consumer.stop()
            for partition in self.partitions.values():
                await partition.producer.stop()
            self.partitions.clear()

    async def _steps(self, batches: dict[TopicPartition, list[Any]]) -> None:
        by_partition: dict[int, tuple[list[Any], list[Any]]] = {}
        for tp, records in batches.items():
            engagement, consent = by_partition.setdefault(tp.partition, ([], []))
            (engagement if tp.topic == self.engagement_topic else consent).extend(records)
            self.metrics.records.labels(topic="engagement" if tp.topic == self.engagement_topic
                                        else "consent").inc(len(records))
        async with self._lock:
            for p, partition in self.partitions.items():
                engagement, consent = by_partition.get(p, ([], []))
                if engagement or consent or partition.deferred:
                    await self._step(p, partition, engagement, consent)

    async def _step(self, p: int, partition: _Partition, fetched: list[Any], consent_fetched: list[Any]) -> None:
        engagement = partition.deferred + [SourceRecord(r.offset, r.value, r.key) for r in fetched]
        consent = [SourceRecord(r.offset, r.value, r.key) for r in consent_fetched]
        result = partition.stage.process(p, engagement, consent, wall_now=time.time(),
                                         consent_read_until=await self._consent_caught_up(p))
        offsets = {}
        if result.consumed_until is not None:
            offsets[TopicPartition(self.engagement_topic, p)] = result.consumed_until + 1
        if consent:
            offsets[TopicPartition(self.consent_topic, p)] = consent[-1].offset + 1
        writes = partition.stage.pending_writes()
        try:
            await self._deliver(p, partition.producer, result, writes, offsets)
        except StreamsError:
            partition.stage.reset()
            raise
        partition.stage.commit(writes)
        partition.deferred = result.deferred
        for letter in result.dead_letters:
            self.metrics.dead_letters.labels(topic=letter.source_topic, stage=letter.stage).inc()
        self._flow_control(p, partition)

    async def _consent_caught_up(self, p: int) -> float:
        """The wall time of the last fetch that found partition p of the consent topic read to its end."""
        tp = TopicPartition(self.consent_topic, p)
        end = self._consumer.last_stable_offset(tp)
        if end is None or await self._consumer.position(tp) < end:
            return -math.inf   # not fetched yet, or behind: only the consent event times read count
        polled = self._consumer.last_poll_timestamp(tp)
        return polled / 1000.0 if polled else -math.inf

    def _flow_control(self, p: int, partition: _Partition) -> None:
        tp = TopicPartition(self.engagement_topic, p)
        waiting = len(partition.deferred)
        if not partition.paused and waiting > 4 * self.settings.batch_size:
            self._consumer.pause(tp)
            partition.paused = True
            log.info("engagement partition %d paused: %d records wait for consent to be read", p, waiting)
        elif partition.paused and waiting <= self.settings.batch_size:
            self._consumer.resume(tp)
            partition.paused = False

    async def _deliver(self, p: int, producer: AIOKafkaProducer, result: BatchResult, writes: dict[str, bytes],
                       offsets: dict[TopicPartition, int]) -> None:
        """Send the batch's outputs, state and offsets in one transaction; retried `retry_limit` times."""
        dead_letters = self.settings.topic("dead-letters")
        error: Exception | None = None
        for attempt in range(self.settings.retry_limit + 1):
            try:
                async with producer.transaction():
                    for partial in result.partials:
                        await producer.send(self.partials_topic, key=partial.initiative.encode(),
                                            value=messages.encode(partial))
                    for letter in result.dead_letters:
                        await producer.send(dead_letters, key=letter.source_topic.encode(), value=encode(letter))
                    for key, value in writes.items():
                        await producer.send(self.changelog_topic, key=key.encode(), value=value, partition=p)
                    if offsets:
                        await producer.send_offsets_to_transaction(offsets, self.group_id)
                return
            except KafkaError as exc:
                error = exc
                self.metrics.sink_retries.labels(sink="users-transaction").inc()
                log.warning("stage-1 transaction of partition %d failed (attempt %d): %r", p, attempt + 1, exc)
        # Nothing of the batch is visible and nothing was committed: stop, and restart from the last commit.
        raise StreamsError(f"stage 1 could not commit a batch of partition {p} after "
                           f"{self.settings.retry_limit} retries: {error!r}")

    # -- rebalancing ---------------------------------------------------------------
    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self._lock:  # after the step under way has committed
            for p in sorted({tp.partition for tp in revoked}):
                partition = self.partitions.pop(p, None)
                if partition is not None:
                    await partition.producer.stop()
            self.metrics.stage1_partitions.set(len(self.partitions))
            self.ready.clear()

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        async with self._lock:
            for p in sorted({tp.partition for tp in assigned} - set(self.partitions)):
                # The producer first: starting it fences the previous owner and aborts its open
                # transaction, so the changelog read next ends at committed state.
                producer = AIOKafkaProducer(**client_options(self.settings),
                                            transactional_id=f"{self.settings.app_id}-users-{p}",
                                            enable_idempotence=True, acks="all", linger_ms=5,
                                            max_batch_size=1_048_576, transaction_timeout_ms=30_000)
                await producer.start()
                store = await self._recover(p)
                self.partitions[p] = _Partition(UserStage(self.settings, store), producer)
                log.info("stage 1: partition %d assigned, %d state records recovered", p, len(store))
            self.metrics.stage1_partitions.set(len(self.partitions))
            self.ready.set()

    async def _recover(self, p: int) -> dict[str, bytes]:
        tp = TopicPartition(self.changelog_topic, p)
        reader = AIOKafkaConsumer(**client_options(self.settings), group_id=None, enable_auto_commit=False,
                                  isolation_level="read_committed")
        await reader.start()
        store: dict[str, bytes] = {}
        try:
            reader.assign([tp])
            await reader.seek_to_beginning(tp)
            end = (await reader.end_offsets([tp]))[tp]
            deadline = time.monotonic() + RECOVERY_TIMEOUT_SECONDS
            while await reader.position(tp) < end:
                if time.monotonic() > deadline:
                    raise StreamsError(f"recovering {self.changelog_topic}[{p}] took over "
                                       f"{RECOVERY_TIMEOUT_SECONDS:.0f} s (at {await reader.position(tp)} of {end})")
                for record in (await reader.getmany(tp, timeout_ms=500)).get(tp, []):
                    if record.value is None:
                        store.pop(record.key.decode(), None)
                    else:
                        store[record.key.decode()] = record.value
        finally:
            await reader.stop()
        return store

