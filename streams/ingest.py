"""Stage 1 on the worker: engagement and consent in batches from aiokafka, in Kafka transactions.

Why not a Faust agent: Faust's per-message stream costs ~150 µs of CPU per
record here, a ceiling of ~0.03x a bare consumer (see bench/README.md); stage 1
sees every record. So the worker reads engagement and consent with its own
aiokafka consumer (group `<app id>-users`, range assignment: partition p of
both topics goes to the same worker, the consent join stays local), runs the
pure `monitor.user_stage.UserStage` on each partition's batches, and delivers
in ONE transaction per partition and commit interval (`PMON_COMMIT_INTERVAL_SECONDS`):

- the batches' partials to the internal topic (stage 2, a Faust agent, reads it
  read-committed), their dead letters,
- the per-user state changed in the interval, once, to its changelog
  (`<app id>-users-changelog`, compacted, partition p),
- the consumed offsets (`send_offsets_to_transaction`).

Either all of it is visible or none: a crash or a SIGKILL anywhere replays the
interval from the last committed offsets over the last committed state, so no
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
from monitor.messages import Partial
from monitor.events import encode
from monitor.metrics import PipelineMetrics
from monitor.settings import Settings
from monitor.user_stage import UserStage
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
    committed: dict[TopicPartition, int]        # where a failed transaction reads again from
    deferred: list[Any] = field(default_factory=list)   # records waiting for consent to be read
    paused: bool = False
    opened: float | None = None                 # monotonic time the open transaction began
    offsets: dict[TopicPartition, int] = field(default_factory=dict)   # to commit with it
    partials: dict[str, Partial] = field(default_factory=dict)   # the interval's, merged, by initiative


class UserIngest(ConsumerRebalanceListener):
    """The stage-1 loop of one worker; `run()` until cancelled (the step under way runs to its end).

    A partition's transaction stays open for `commit_interval_seconds` over as many batches as arrive:
    dead letters are sent as each batch is combined, its partials merged per initiative; at the commit
    the merged partials and the users changed in the interval are written once, with the offsets. Stage 2 sees the interval's partials at the
    commit, so the interval bounds what it adds to the produce-to-incident latency.
    """

    def __init__(self, settings: Settings, metrics: PipelineMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.engagement_topic = settings.topic("engagement")
        self.consent_topic = settings.topic("consent")
        self.partials_topic = PARTIALS_TOPIC.format(app_id=settings.app_id)
        self.changelog_topic = USERS_CHANGELOG.format(app_id=settings.app_id)
        self.dead_letter_topic = settings.topic("dead-letters")
        self.group_id = f"{settings.app_id}-users"
        self.partitions: dict[int, _Partition] = {}
        self._lock = asyncio.Lock()   # one step, or one rebalance, at a time
        self._consumer: AIOKafkaConsumer | None = None
        self._failures = 0            # transactions failed in a row

    # -- the loop ----------------------------------------------------------------
    async def run(self) -> None:
        session_ms = int(self.settings.session_timeout_seconds * 1000)
        consumer = self._consumer = AIOKafkaConsumer(
            **client_options(self.settings), group_id=self.group_id, enable_auto_commit=False,
            auto_offset_reset="earliest", isolation_level="read_committed",
            # Range, not aiokafka's default round robin: partition p of both topics to the same worker.
            partition_assignment_strategy=(RangePartitionAssignor,),
            max_partition_fetch_bytes=4 * 1_048_576, fetch_max_wait_ms=100,
            session_timeout_ms=session_ms, heartbeat_interval_ms=session_ms // 6)
        consumer.subscribe([self.engagement_topic, self.consent_topic], listener=self)
        await consumer.start()
        try:
            while True:
                batches = await consumer.getmany(timeout_ms=self._wait_ms(), max_records=self.settings.batch_size)
                step = asyncio.ensure_future(self._steps(batches))
                try:
                    await asyncio.shield(step)
                except asyncio.CancelledError:
                    await step  # a graceful stop waits for the step under way...
                    async with self._lock:
                        for p, partition in self.partitions.items():
                            await self._commit(p, partition)  # ...and commits what is open
                    raise
        finally:
            await consumer.stop()
            for partition in self.partitions.values():
                await partition.producer.stop()
            self.partitions.clear()

    def _wait_ms(self) -> int:
        """How long the next fetch may wait: the batch wait, or less when a commit is due sooner."""
        wait = self.settings.batch_within_seconds
        opened = [p.opened for p in self.partitions.values() if p.opened is not None]
        if opened:
            wait = min(wait, max(0.0, min(opened) + self.settings.commit_interval_seconds - time.monotonic()))
        return int(wait * 1000)

    async def _steps(self, batches: dict[TopicPartition, list[Any]]) -> None:
        by_partition: dict[int, tuple[list[Any], list[Any]]] = {}
        for tp, records in batches.items():
            engagement, consent = by_partition.setdefault(tp.partition, ([], []))
            (engagement if tp.topic == self.engagement_topic else consent).extend(records)
            self.metrics.records.labels(topic="engagement" if tp.topic == self.engagement_topic
                                        else "consent").inc(len(records))
        async with self._lock:
            for p, partition in list(self.partitions.items()):
                engagement, consent = by_partition.get(p, ([], []))
                try:
                    if engagement or consent or partition.deferred:
                        await self._step(p, partition, engagement, consent)
                    if partition.opened is not None and \
                            time.monotonic() - partition.opened >= self.settings.commit_interval_seconds:
                        await self._commit(p, partition)
                except KafkaError as exc:
                    await self._failed(p, partition, exc)

    async def _step(self, p: int, partition: _Partition, fetched: list[Any], consent_fetched: list[Any]) -> None:
        # aiokafka's records have the fields of a SourceRecord: no copy per record.
        engagement = partition.deferred + fetched if partition.deferred else fetched
        consent = consent_fetched
        result = partition.stage.process(p, engagement, consent, wall_now=time.time(),
                                         consent_read_until=await self._consent_caught_up(p))
        partition.deferred = result.deferred
        if result.consumed_until is not None:
            partition.offsets[TopicPartition(self.engagement_topic, p)] = result.consumed_until + 1
        if consent:
            partition.offsets[TopicPartition(self.consent_topic, p)] = consent[-1].offset + 1
        if result.partials or result.dead_letters or partition.offsets:
            await self._begin(partition)
        for partial in result.partials:  # one message per initiative and interval: stage 2's input stays small
            known = partition.partials.get(partial.initiative)
            if known is None:
                partition.partials[partial.initiative] = partial
            else:
                known.merge(partial)
        for letter in result.dead_letters:
            await partition.producer.send(self.dead_letter_topic, key=letter.source_topic.encode(),
                                          value=encode(letter))
            self.metrics.dead_letters.labels(topic=letter.source_topic, stage=letter.stage).inc()
        self._flow_control(p, partition)

    async def _begin(self, partition: _Partition) -> None:
        if partition.opened is None:
            await partition.producer.begin_transaction()
            partition.opened = time.monotonic()

    async def _commit(self, p: int, partition: _Partition) -> None:
        """Write the interval's users and offsets, and commit: all of it visible, or none."""
        if partition.opened is None:
            return
        writes = partition.stage.pending_writes()
        producer = partition.producer
        for initiative, partial in partition.partials.items():
            await producer.send(self.partials_topic, key=initiative.encode(), value=messages.encode(partial))
        for key, value in writes.items():
            await producer.send(self.changelog_topic, key=key.encode(), value=value, partition=p)
        if partition.offsets:
            await producer.send_offsets_to_transaction(partition.offsets, self.group_id)
        await producer.commit_transaction()
        partition.stage.commit(writes)
        partition.committed.update(partition.offsets)
        partition.offsets, partition.opened, partition.partials = {}, None, {}
        self._failures = 0

    async def _failed(self, p: int, partition: _Partition, error: Exception) -> None:
        """Abort, forget what was not committed, and read again from the last commit; give up after
        `retry_limit` failures in a row (the worker stops; a restart resumes from the last commit)."""
        self._failures += 1
        self.metrics.sink_retries.labels(sink="users-transaction").inc()
        log.warning("stage-1 transaction of partition %d failed (%d in a row): %r", p, self._failures, error)
        if partition.opened is not None:
            try:
                await partition.producer.abort_transaction()
            except KafkaError as exc:
                log.warning("abort of partition %d's transaction failed too: %r", p, exc)
        partition.stage.reset()
        partition.deferred, partition.offsets, partition.opened, partition.partials = [], {}, None, {}
        for tp in (TopicPartition(self.engagement_topic, p), TopicPartition(self.consent_topic, p)):
            if tp in partition.committed:
                self._consumer.seek(tp, partition.committed[tp])
            else:
                await self._consumer.seek_to_beginning(tp)
        if self._failures > self.settings.retry_limit:
            raise StreamsError(f"stage 1 could not commit partition {p} after {self.settings.retry_limit} "
                               f"retries: {error!r}")

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

    # -- rebalancing ---------------------------------------------------------------
    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self._lock:  # after the step under way has committed
            for p in sorted({tp.partition for tp in revoked}):
                partition = self.partitions.pop(p, None)
                if partition is not None:
                    try:
                        await self._commit(p, partition)  # before the partition's next owner reads its state
                    except KafkaError as exc:  # the next owner fences this producer and aborts the transaction
                        log.warning("partition %d revoked with its transaction uncommitted: %r", p, exc)
                    await partition.producer.stop()
            self.metrics.stage1_partitions.set(len(self.partitions))

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
                committed = {}
                for tp in (TopicPartition(self.engagement_topic, p), TopicPartition(self.consent_topic, p)):
                    offset = await self._consumer.committed(tp)
                    if offset is not None:
                        committed[tp] = offset
                self.partitions[p] = _Partition(UserStage(self.settings, store), producer, committed)
                log.info("stage 1: partition %d assigned, %d state records recovered", p, len(store))
            self.metrics.stage1_partitions.set(len(self.partitions))

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

