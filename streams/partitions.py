"""A consumer group whose partitions each commit in one Kafka transaction: both stages run on it.

`PartitionedService` reads its topics with one aiokafka consumer (range
assignment: partition p of every topic goes to the same worker) and keeps,
for each partition number p it owns, a transactional producer
(`<group>-<p>`) and a store rebuilt from partition p of a compacted changelog.
A subclass decides what a batch does (`step`) and what a commit writes besides
the offsets (`flush`); this class opens the transaction with the first write
of an interval and commits it after `commit_interval_seconds`, or at the end of
the step when the subclass says the transaction holds something `urgent` (a
consent violation, an incident) that should not wait for the interval:

- what the steps sent (outputs, dead letters, messages to the next stage),
- what `flush` sends (state changed in the interval, to the changelog),
- the consumed offsets (`send_offsets_to_transaction`).

Either all of it is visible or none. A failed transaction is aborted and the
partition read again from its last commit, over its last committed state
(`forget`); a crash or SIGKILL does the same on the next start. A worker that
takes a partition over fences the previous owner (same transactional id) and
aborts its open transaction before it reads the changelog.

A broker outage is waited out: a failure of the broker (unreachable, timed out,
its coordinator moving, a transaction it aborted because it outlived the
transaction timeout, which fences the producer) is retried for as long as it
lasts, and the partition is then taken anew (a new producer, the state and
offsets read back), as on assignment: the broker, not the client, knows how the
transaction ended. Only other failures count towards `retry_limit`. A stop
waits at most `STOP_SECONDS` for the step under way and the last commits: what
it leaves uncommitted is read again by the partition's next owner.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import IllegalOperation, KafkaError, KafkaTimeoutError, ProducerFenced
from prometheus_client import Gauge

from monitor.health import ServiceFacts
from monitor.metrics import PipelineMetrics
from monitor.settings import Settings
from streams.exceptions import StreamsError
from streams.kafka_io import client_options

log = logging.getLogger(__name__)

RECOVERY_TIMEOUT_SECONDS = 300.0
FETCH_MAX_WAIT_MS = 100  # the broker answers a fetch within this, data or not
STOP_SECONDS = 3.0  # a stop waits this long for the step under way and the last commits
CLOSE_SECONDS = 2.0  # and this long for a client to close (it flushes, leaves the group)
RETRY_PAUSE_SECONDS = 0.5  # between attempts while the broker fails
# Errors one of the transaction's calls may raise: aiokafka's, and IllegalOperation from a producer whose
# sender stopped on a fatal error (it is no longer in a transaction).
TRANSACTION_ERRORS = (KafkaError, IllegalOperation)
W = TypeVar("W")
V = TypeVar("V", bound=bytes | None)  # a state write's value; None deletes the key (a compaction tombstone)


@dataclass
class Owned(Generic[W]):
    """What the worker holds for one partition number while it is assigned."""

    work: W  # the subclass's state for the partition
    producer: AIOKafkaProducer
    committed: dict[TopicPartition, int]  # where a failed transaction reads again from
    opened: float | None = None  # monotonic time the open transaction began
    offsets: dict[TopicPartition, int] = field(default_factory=dict)  # to commit with it
    received: dict[str, int] = field(default_factory=dict)  # records read in it, by metric label
    # The first fetch begun after the partition was taken: one begun before may hold records from before its last
    # commit (whose partials are delivered already) or have moved the position past the last commit.
    fresh_from: int = 0


class PartitionedService(ConsumerRebalanceListener, Generic[W, V]):
    """`run()` until cancelled; the step under way runs to its end and what is open is committed."""

    def __init__(
        self,
        settings: Settings,
        metrics: PipelineMetrics,
        *,
        group_id: str,
        topics: list[str],
        changelog_topic: str,
        owned_gauge: Gauge,
        counted: dict[str, str] | None = None,
    ) -> None:
        """`counted`: input topics whose records `pmon_records_total` counts, by the label it gives them."""
        self.settings = settings
        self.metrics = metrics
        self.group_id = group_id
        self.topics = topics
        self.changelog_topic = changelog_topic
        self.partitions: dict[int, Owned[W]] = {}
        self._owned_gauge = owned_gauge
        self._counted = counted or {}
        self._lock = asyncio.Lock()  # one step, or one rebalance, at a time
        self._consumer: AIOKafkaConsumer | None = None
        self._failures = 0  # transactions failed in a row
        self._assigned_once = False  # the group gave this worker its share (perhaps none) at least once
        self._recovering = False  # a partition's state is being read back from its changelog
        self._lag: dict[TopicPartition, int] = {}
        self._lag_measured = 0.0  # monotonic
        self._untaken: set[int] = set()  # assigned, but taking them failed: taken again from the loop
        self._take_again_at = 0.0  # monotonic
        self._fetches = 0  # fetches begun (`Owned.fresh_from`)

    @property
    def consumer(self) -> AIOKafkaConsumer:
        """The group's consumer: there from the start of `run()` (the rebalance listener and the steps run in it)."""
        if self._consumer is None:
            raise StreamsError(f"{self.group_id}: the consumer is not started (run() starts it)")
        return self._consumer

    # -- what a subclass decides -------------------------------------------------------
    def open(self, p: int, store: dict[str, bytes], producer: AIOKafkaProducer) -> W:
        """The partition's work state over its recovered store; `producer` sends into its transactions."""
        raise NotImplementedError

    async def step(self, p: int, owned: Owned[W], records: dict[str, list[Any]]) -> None:
        """Process one fetch of partition p (`records` by topic; may be empty when `due`)."""
        raise NotImplementedError

    def due(self, owned: Owned[W]) -> bool:
        """Whether `step` must run although nothing was fetched (waiting records, timers)."""
        return False

    def deadline(self, owned: Owned[W]) -> float | None:
        """Monotonic time by which `step` must run again, if any."""
        return None

    def urgent(self, owned: Owned[W]) -> bool:
        """Whether the open transaction must commit now rather than at the end of the commit interval."""
        return False

    async def flush(self, p: int, owned: Owned[W]) -> dict[str, V]:
        """Send what the commit adds to the transaction; return the state writes to apply after it."""
        return {}

    def committed(self, owned: Owned[W], writes: dict[str, V]) -> None:
        """The transaction committed: `writes` are now durable."""

    def forget(self, p: int, owned: Owned[W]) -> None:
        """The transaction was aborted: drop what it held; state is the last committed one."""

    # -- the loop ----------------------------------------------------------------------
    async def run(self) -> None:
        session_ms = int(self.settings.session_timeout_seconds * 1000)
        consumer = self._consumer = AIOKafkaConsumer(
            **client_options(self.settings),
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            # Range, not aiokafka's default round robin: partition p of every topic to the same worker.
            partition_assignment_strategy=(RangePartitionAssignor,),
            max_partition_fetch_bytes=4 * 1_048_576,
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            session_timeout_ms=session_ms,
            heartbeat_interval_ms=session_ms // 6,
        )
        consumer.subscribe(self.topics, listener=self)
        await consumer.start()
        try:
            while True:
                fetch, self._fetches = self._fetches, self._fetches + 1
                batches = await consumer.getmany(timeout_ms=self._wait_ms(), max_records=self.settings.batch_size)
                await self._measure_lag()
                step = asyncio.ensure_future(self._steps(batches, fetch))
                try:
                    await asyncio.shield(step)
                except asyncio.CancelledError:
                    try:
                        await asyncio.wait_for(self._last_commits(step), STOP_SECONDS)
                    except TimeoutError:
                        log.warning(
                            "%s: stopping with transactions uncommitted: the broker did not answer within "
                            "%.0f s (their records are read again by the partitions' next owner)",
                            self.group_id,
                            STOP_SECONDS,
                        )
                    raise
        finally:
            await asyncio.gather(
                _close(consumer, f"{self.group_id}'s consumer"),
                *(_close(owned.producer, f"partition {p}'s producer") for p, owned in self.partitions.items()),
            )
            self.partitions.clear()

    async def _last_commits(self, step: asyncio.Future[None]) -> None:
        """A graceful stop: the step under way to its end, then what is open committed."""
        await step
        async with self._lock:
            for p, owned in self.partitions.items():
                await self._commit(p, owned)

    async def _measure_lag(self) -> None:
        """Records behind the last stable offset per partition held, into `pmon_consumer_lag` (once a second)."""
        now = time.monotonic()
        if now - self._lag_measured < 1.0:
            return
        self._lag_measured = now
        consumer = self.consumer
        held = consumer.assignment()
        for tp in set(self._lag) - held:  # revoked: its series goes, so no stale value stays on /metrics
            self.metrics.consumer_lag.remove(self.group_id, tp.topic, str(tp.partition))
            del self._lag[tp]
        for tp in held:
            end = consumer.last_stable_offset(tp)
            if end is None:
                continue
            lag = max(0, end - await consumer.position(tp))
            self._lag[tp] = lag
            self.metrics.consumer_lag.labels(self.group_id, tp.topic, str(tp.partition)).set(lag)

    def facts(self) -> ServiceFacts:
        """What readiness is judged on (`monitor.health`)."""
        consumer = self._consumer
        polled = [consumer.last_poll_timestamp(tp) for tp in consumer.assignment()] if consumer else []
        answered = max((t for t in polled if t), default=None)
        return ServiceFacts(
            name=self.group_id,
            assigned=self._assigned_once,
            recovering=self._recovering or bool(self._untaken),
            partitions=len(self.partitions),
            lag=sum(self._lag.values()) if self._lag else None,
            fetch_age=None if answered is None else max(0.0, time.time() - answered / 1000.0),
        )

    def _wait_ms(self) -> int:
        """How long the next fetch may wait: the batch wait, or less when a commit or a step is due sooner."""
        now = time.monotonic()
        wait = self.settings.batch_within_seconds
        for owned in self.partitions.values():
            if owned.opened is not None:
                wait = min(wait, owned.opened + self.settings.commit_interval_seconds - now)
            deadline = self.deadline(owned)
            if deadline is not None:
                wait = min(wait, deadline - now)
        return int(max(0.0, wait) * 1000)

    async def _steps(self, batches: dict[TopicPartition, list[Any]], fetch: int) -> None:
        if self._untaken and time.monotonic() >= self._take_again_at:
            async with self._lock:
                await self._take_each(self._untaken & {tp.partition for tp in self.consumer.assignment()})
        by_partition: dict[int, dict[str, list[Any]]] = {}
        for tp, fetched in batches.items():
            by_partition.setdefault(tp.partition, {}).setdefault(tp.topic, []).extend(fetched)
        async with self._lock:
            for p, owned in list(self.partitions.items()):
                records = by_partition.get(p, {})
                if records and fetch < owned.fresh_from:
                    # Fetched while the partition was being taken (a rebalance): from where the consumer was
                    # before, perhaps records its last commit covers, or from the last commit, which the fetch then
                    # moved past. Read it from the last commit again.
                    await self._seek_committed(p, owned.committed)
                    owned.fresh_from = self._fetches
                    continue
                for topic, label in self._counted.items():
                    if records.get(topic):
                        owned.received[label] = owned.received.get(label, 0) + len(records[topic])
                try:
                    if records or self.due(owned):
                        await self.step(p, owned, records)
                    if owned.opened is not None and (
                        time.monotonic() - owned.opened >= self.settings.commit_interval_seconds or self.urgent(owned)
                    ):
                        await self._commit(p, owned)
                except TRANSACTION_ERRORS as exc:
                    await self._failed(p, owned, exc)

    async def begin(self, owned: Owned[W]) -> None:
        """Open the partition's transaction, unless it is open: call it before the first send of a step."""
        if owned.opened is None:
            _check_usable(owned.producer)
            await owned.producer.begin_transaction()
            owned.opened = time.monotonic()

    async def _commit(self, p: int, owned: Owned[W]) -> None:
        """Write what `flush` adds and the offsets, and commit: all of it visible, or none."""
        if owned.opened is None:
            return
        _check_usable(owned.producer)
        writes = await self.flush(p, owned)
        await owned.producer.send_all(self.changelog_topic, p, writes)
        if owned.offsets:
            await owned.producer.send_offsets_to_transaction(owned.offsets, self.group_id)
        await owned.producer.commit_transaction()
        self.committed(owned, writes)
        owned.committed.update(owned.offsets)
        # Counted once committed: records read again after a failed transaction are not counted twice.
        for label, n in owned.received.items():
            self.metrics.records.labels(topic=label).inc(n)
        owned.offsets, owned.opened, owned.received = {}, None, {}
        self._failures = 0

    async def _failed(self, p: int, owned: Owned[W], error: Exception) -> None:
        """Forget what was not committed and read again from the last commit. A failure of the broker is retried
        for as long as it lasts; after `retry_limit` other failures in a row the worker gives up (it stops; a
        restart resumes from the last commit)."""
        broker = _broker_failure(error)
        if not broker:
            self._failures += 1
        self.metrics.sink_retries.labels(sink=f"{self.group_id}-transaction").inc()
        log.warning(
            "%s: transaction of partition %d failed (%s): %r",
            self.group_id,
            p,
            "the broker's; retried while it lasts" if broker else f"{self._failures} in a row",
            error,
        )
        if self._failures > self.settings.retry_limit:
            raise StreamsError(
                f"{self.group_id} could not commit partition {p} after {self.settings.retry_limit} retries: {error!r}"
            )
        if broker or not _usable(owned.producer):
            # The broker decides the transaction's outcome (committed after all, or aborted because it outlived the
            # transaction timeout, which fences the producer), or another worker took the partition (this one then
            # loses it at the next rebalance). So the partition is taken anew: a new producer completes or aborts
            # what the last one left and fences any other, and the state and offsets read after that are the last
            # commit's.
            self.forget(p, owned)
            del self.partitions[p]
            if not _usable(owned.producer):
                # Its sender stopped on the error and left it on the transaction's waiter, which nobody awaits now:
                # read, or asyncio logs it again as "never retrieved".
                owned.producer._txn_manager.wait_for_transaction_end().exception()
            await _close(owned.producer, f"partition {p}'s producer")
            await self._take_each({p})
            await asyncio.sleep(RETRY_PAUSE_SECONDS)  # pacing the retries while the broker fails
            return
        if owned.opened is not None:
            try:
                await owned.producer.abort_transaction()
            except KafkaError as exc:
                log.warning("abort of partition %d's transaction failed too: %r", p, exc)
        self.forget(p, owned)
        owned.offsets, owned.opened, owned.received = {}, None, {}
        await self._seek_committed(p, owned.committed)

    async def _seek_committed(self, p: int, committed: dict[TopicPartition, int]) -> None:
        for tp in (TopicPartition(topic, p) for topic in self.topics):
            if tp in committed:
                self.consumer.seek(tp, committed[tp])
            else:
                await self.consumer.seek_to_beginning(tp)

    # -- rebalancing -------------------------------------------------------------------
    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self._lock:  # after the step under way has committed
            for p in sorted({tp.partition for tp in revoked}):
                owned = self.partitions.pop(p, None)
                if owned is None:
                    continue
                try:
                    # Before the partition's next owner reads its state; bounded: a broker that does not answer
                    # must not hold the rebalance (nor a stop), and the next owner aborts what is left open.
                    await asyncio.wait_for(self._commit(p, owned), STOP_SECONDS)
                except (TimeoutError, *TRANSACTION_ERRORS) as exc:
                    log.warning("partition %d revoked with its transaction uncommitted: %r", p, exc)
                finally:
                    await _close(owned.producer, f"partition {p}'s producer")
            self._untaken -= {tp.partition for tp in revoked}
            self._owned_gauge.set(len(self.partitions))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        async with self._lock:
            self._recovering = True
            try:
                await self._take_each({tp.partition for tp in assigned} - set(self.partitions))
            finally:
                self._recovering = False
            self._assigned_once = True

    async def _take_each(self, numbers: set[int]) -> None:
        """Take these partitions, side by side: each take mostly waits on the broker (a producer that fences the
        previous owner, a changelog read to its end), about half a second even when there is nothing to read, and
        nothing is processed until all are taken. One that fails (the broker is away) stays untaken, to be taken
        from the loop.

        aiokafka logs and swallows what a rebalance listener raises: a partition whose take raised would stay
        assigned and never be read."""
        ordered = sorted(numbers)
        outcomes = await asyncio.gather(*(self._take(p) for p in ordered), return_exceptions=True)
        for p, outcome in zip(ordered, outcomes, strict=True):
            if outcome is None:
                self._untaken.discard(p)
            elif isinstance(outcome, (*TRANSACTION_ERRORS, StreamsError)):
                log.warning("%s: taking partition %d failed, trying again: %r", self.group_id, p, outcome)
                self._untaken.add(p)
                self._take_again_at = time.monotonic() + RETRY_PAUSE_SECONDS
        self._owned_gauge.set(len(self.partitions))
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, (*TRANSACTION_ERRORS, StreamsError)):
                raise outcome  # a bug, or a cancellation: after every partition taken has been counted

    async def _take(self, p: int) -> None:
        """Open an assigned partition: fence the previous owner, recover its state, read from its last commit."""
        # The producer first: starting it fences the previous owner and aborts its open
        # transaction, so the changelog read next ends at committed state.
        producer = _TransactionalProducer(
            **client_options(self.settings),
            transactional_id=f"{self.group_id}-{p}",
            enable_idempotence=True,
            acks="all",
            linger_ms=5,
            max_batch_size=1_048_576,
            transaction_timeout_ms=int(self.settings.transaction_timeout_seconds * 1000),
        )
        try:
            await producer.start()
            store = await self._recover(p)
            committed = {}
            for tp in (TopicPartition(topic, p) for topic in self.topics):
                offset = await self.consumer.committed(tp)
                if offset is not None:
                    committed[tp] = offset
                self.consumer.resume(tp)  # a partition taken anew may have been paused by its former work
            # From the last commit: the consumer's position may be past it (a partition taken anew).
            await self._seek_committed(p, committed)
        except BaseException:
            await _close(producer, f"partition {p}'s new producer")
            raise
        self.partitions[p] = Owned(self.open(p, store, producer), producer, committed, fresh_from=self._fetches)
        log.info(
            "%s: partition %d assigned, %d state records recovered, reading from %s",
            self.group_id,
            p,
            len(store),
            {f"{tp.topic}[{tp.partition}]": offset for tp, offset in committed.items()} or "the start",
        )

    async def _recover(self, p: int) -> dict[str, bytes]:
        tp = TopicPartition(self.changelog_topic, p)
        reader = AIOKafkaConsumer(
            **client_options(self.settings), group_id=None, enable_auto_commit=False, isolation_level="read_committed"
        )
        await reader.start()
        store: dict[str, bytes] = {}
        try:
            reader.assign([tp])
            await reader.seek_to_beginning(tp)
            end = (await reader.end_offsets([tp]))[tp]
            deadline = time.monotonic() + RECOVERY_TIMEOUT_SECONDS
            while await reader.position(tp) < end:
                if time.monotonic() > deadline:
                    raise StreamsError(
                        f"recovering {self.changelog_topic}[{p}] took over "
                        f"{RECOVERY_TIMEOUT_SECONDS:.0f} s (at {await reader.position(tp)} of {end})"
                    )
                for record in (await reader.getmany(tp, timeout_ms=500)).get(tp, []):
                    if record.value is None:
                        store.pop(record.key.decode(), None)
                    else:
                        store[record.key.decode()] = record.value
        finally:
            await reader.stop()
        return store


class _TransactionalProducer(AIOKafkaProducer):
    async def send(self, *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        return _read_outcome(await super().send(*args, **kwargs))

    async def send_all(self, topic: str, partition: int, writes: Mapping[str, bytes | None]) -> None:
        """Every (key, value) of `writes` to one partition, in record batches built here: one future a batch,
        not one a record (a commit interval's changed users are thousands of small records)."""
        batch = self.create_batch()
        for key, value in writes.items():
            if batch.append(key=key.encode(), value=value, timestamp=None) is None:  # full: the next batch
                _read_outcome(await self.send_batch(batch, topic, partition=partition))
                batch = self.create_batch()
                batch.append(key=key.encode(), value=value, timestamp=None)  # an empty batch takes any record
        if batch.record_count():
            _read_outcome(await self.send_batch(batch, topic, partition=partition))


def _read_outcome(delivery: asyncio.Future[Any]) -> asyncio.Future[Any]:
    # What counts is the transaction's outcome (its commit raises); a record's own failure (a fenced producer
    # fails them all) is read here, or asyncio logs each one again as "never retrieved".
    delivery.add_done_callback(lambda done: done.cancelled() or done.exception())
    return delivery


def _usable(producer: AIOKafkaProducer) -> bool:
    """Whether the producer can still begin, commit or abort a transaction. After a fatal error (fenced) aiokafka
    fails any of them with an AssertionError, not a KafkaError, so it is asked first (aiokafka is pinned < 0.15)."""
    return not producer._txn_manager.is_fatal_error()


def _check_usable(producer: AIOKafkaProducer) -> None:
    if not _usable(producer):
        raise IllegalOperation("the partition's producer stopped on a fatal error (fenced)")


def _broker_failure(error: Exception) -> bool:
    """A failure of the broker, not of the work: unreachable, timed out, a coordinator moving, or fenced (the
    broker aborts a transaction that outlives the transaction timeout, as during an outage)."""
    return isinstance(error, (ProducerFenced, KafkaTimeoutError)) or getattr(error, "retriable", False)


async def _close(client: Any, what: str) -> None:
    """Stop an aiokafka client, giving up after `CLOSE_SECONDS`: a broker that does not answer must not hold a stop
    (a producer flushes, a consumer leaves its group)."""
    try:
        await asyncio.wait_for(client.stop(), CLOSE_SECONDS)
    except TimeoutError:
        log.warning("%s did not stop within %.0f s: the broker does not answer", what, CLOSE_SECONDS)
