"""Plain aiokafka clients: topic creation, producing records (simulator, benchmarks, tests), reading incidents
(`pmon incidents tail|list`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError
from pydantic import ValidationError

from incidents.model import IncidentEvent
from streams.exceptions import StreamsError
from monitor.settings import Settings

log = logging.getLogger(__name__)

INPUT_TOPICS = ("engagement", "consent", "rule-changes", "incident-actions")
OUTPUT_TOPICS = ("incidents", "plan-updates", "dead-letters")


def _no_broker(settings: Settings, exc: Exception) -> StreamsError:
    return StreamsError(f"no Kafka broker at {settings.kafka_bootstrap} ({exc}); start one with "
                        "`make kafka-up` or set PMON_KAFKA_BOOTSTRAP")


def client_options(settings: Settings) -> dict[str, Any]:
    """Connection options shared by every aiokafka client, SASL/SSL passed through."""
    options: dict[str, Any] = {"bootstrap_servers": settings.kafka_bootstrap,
                               "security_protocol": settings.security_protocol}
    if settings.security_protocol.startswith("SASL"):
        options.update(sasl_mechanism=settings.sasl_mechanism, sasl_plain_username=settings.sasl_username,
                       sasl_plain_password=settings.sasl_password.get_secret_value()
                       if settings.sasl_password else None)
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        from aiokafka.helpers import create_ssl_context
        options["ssl_context"] = create_ssl_context(cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None)
    return options


async def ensure_topics(settings: Settings, names: Iterable[str] = INPUT_TOPICS + OUTPUT_TOPICS,
                        internal: dict[str, bool] | None = None) -> None:
    """Create the project's topics with the configured partitions, when they do not exist yet.

    `internal` names the worker's internal topics (full names) and whether each
    is compacted (a changelog): a worker that creates them itself at its first
    start may not see them in its first metadata and refuse to write its
    tables (PartitionsMismatch).
    """
    admin = AIOKafkaAdminClient(**client_options(settings))
    try:
        await admin.start()
    except KafkaConnectionError as exc:
        raise _no_broker(settings, exc) from None
    try:
        existing = set(await admin.list_topics())
        wanted = [NewTopic(settings.topic(n), settings.topic_partitions, settings.topic_replicas)
                  for n in names if settings.topic(n) not in existing]
        wanted += [NewTopic(name, settings.topic_partitions, settings.topic_replicas,
                            topic_configs={"cleanup.policy": "compact"} if compacted else {})
                   for name, compacted in (internal or {}).items() if name not in existing]
        if wanted:
            try:
                await admin.create_topics(wanted)
            except TopicAlreadyExistsError:
                pass  # another client created them meanwhile
    finally:
        await admin.close()


async def produce(settings: Settings, records: Iterable[tuple[str, bytes | None, bytes]], *,
                  rate: float = 0.0) -> int:
    """Send (topic name suffix, key, value) records in order; `rate` records/s, 0 for as fast as possible."""
    await ensure_topics(settings)
    producer = AIOKafkaProducer(**client_options(settings), acks="all", linger_ms=5,
                                enable_idempotence=True)
    await producer.start()
    sent = 0
    started = time.monotonic()
    try:
        for topic, key, value in records:
            await producer.send(settings.topic(topic), value=value, key=key)
            sent += 1
            if rate > 0:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)  # pacing, not synchronisation
        await producer.flush()
    finally:
        await producer.stop()
    return sent


# An undecodable incidents record, described in one line (partition, offset, why); the caller says where it goes.
Undecodable = Callable[[str], None]
# `read_incidents` gives up when the topic stops advancing for this long before its end offsets.
READ_STALL_SECONDS = 30.0
# How long a reader waits for the incidents topic to exist with a leader per partition (one just created).
TOPIC_WAIT_SECONDS = 5.0


def _warn_undecodable(line: str) -> None:
    log.warning("%s", line)


def _decoded(record: Any, on_undecodable: Undecodable) -> IncidentEvent | None:
    """The record's incident event; None (reported, not raised) for a tombstone or a value that is not one."""
    where = f"{record.topic}[{record.partition}]@{record.offset}"
    if record.value is None:
        on_undecodable(f"{where}: skipped a record without a value (tombstone)")
        return None
    try:
        return IncidentEvent.model_validate_json(record.value)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "value"
        on_undecodable(f"{where}: skipped a record that is not an incident event ({field}: {first['msg']})")
        return None


@contextlib.contextmanager
def _reading(settings: Settings) -> Iterator[None]:
    """A Kafka error while reading the incidents topic, as one StreamsError naming the topic and broker."""
    try:
        yield
    except KafkaError as exc:
        raise StreamsError(f"reading {settings.topic('incidents')} at {settings.kafka_bootstrap}: "
                           f"{type(exc).__name__}: {exc}") from None


async def _incident_reader(settings: Settings, group: str | None) -> tuple[AIOKafkaConsumer, list[TopicPartition]]:
    """A started read-committed consumer assigned every partition of the incidents topic, and those partitions.

    Assigned, not subscribed: no group membership and no rebalance, also with `group`, which only names whose
    offsets are committed, so a reader never takes partitions from another."""
    topic = settings.topic("incidents")
    partitions = await _partitions_of(settings, topic)
    # Read committed: the worker writes incidents in transactions; an aborted one's records are never shown.
    consumer = AIOKafkaConsumer(**client_options(settings), group_id=group, enable_auto_commit=False,
                                isolation_level="read_committed", auto_offset_reset="earliest")
    try:
        with _reading(settings):
            await consumer.start()
    except StreamsError:
        await consumer.stop()  # an unstopped consumer warns on stderr at exit, after the one-line error
        raise
    assigned = [TopicPartition(topic, p) for p in partitions]
    consumer.assign(assigned)
    return consumer, assigned


async def _partitions_of(settings: Settings, topic: str) -> list[int]:
    """The partitions of `topic`, once each has a leader; a topic created a moment ago gets a few seconds."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    try:
        await admin.start()
    except KafkaConnectionError as exc:
        await admin.close()  # an unclosed client warns on stderr at exit, after the one-line error
        raise _no_broker(settings, exc) from None
    try:
        deadline = time.monotonic() + TOPIC_WAIT_SECONDS
        while True:
            # All topics, not this one by name: asking for a topic by name may auto-create it on the broker.
            with _reading(settings):
                found = next((t for t in await admin.describe_topics() if t["topic"] == topic), None)
            if found is not None and found["error_code"] == 0 and found["partitions"] and all(
                    p["error_code"] == 0 for p in found["partitions"]):
                return sorted(p["partition"] for p in found["partitions"])
            if time.monotonic() > deadline:
                state = "not there" if found is None else "without a leader for every partition"
                raise StreamsError(f"topic {topic} is {state} at {settings.kafka_bootstrap} after "
                                   f"{TOPIC_WAIT_SECONDS:.0f} s; start the worker (it creates it) or set "
                                   f"PMON_TOPIC_PREFIX to the worker's")
            await asyncio.sleep(0.2)  # polling interval, not synchronisation
    finally:
        await admin.close()


async def _start_at(consumer: AIOKafkaConsumer, assigned: list[TopicPartition], since: datetime | None,
                    from_beginning: bool, group: str | None) -> str:
    """Seek every partition to where following starts; the start, in words."""
    if from_beginning:
        await consumer.seek_to_beginning(*assigned)
        return "the beginning"
    if since is not None:
        # By record timestamp: when the worker wrote the transition, not its event time (`occurred_at`).
        found = await consumer.offsets_for_times({tp: int(since.timestamp() * 1000) for tp in assigned})
        later = [tp for tp in assigned if found.get(tp) is None]
        for tp in assigned:
            if found.get(tp) is not None:
                consumer.seek(tp, found[tp].offset)
        if later:
            await consumer.seek_to_end(*later)  # nothing written since then there: only what comes
        return f"{since:%Y-%m-%d %H:%M:%S} UTC"
    if group is not None:
        committed = {tp: await consumer.committed(tp) for tp in assigned}
        fresh = [tp for tp, offset in committed.items() if offset is None]
        for tp, offset in committed.items():
            if offset is not None:
                consumer.seek(tp, offset)
        if fresh:
            await consumer.seek_to_end(*fresh)
        return f"group {group}'s committed offsets" + (" (the end where it has none)" if fresh else "")
    await consumer.seek_to_end(*assigned)
    return "the end"


async def follow_incidents(settings: Settings, *, since: datetime | None = None, from_beginning: bool = False,
                           group: str | None = None, on_undecodable: Undecodable = _warn_undecodable,
                           on_start: Callable[[str], None] | None = None) -> AsyncIterator[IncidentEvent]:
    """Every incident transition written to the incidents topic from a start on, as it arrives, forever.

    The start is the beginning, the first record written at or after `since`, the committed offsets of `group`
    (when given), or else the end (only what comes next). Without `group` nothing is committed; with it, the
    offsets of each batch are committed once all its events were taken (a reader stopped mid-batch sees the rest
    again); the start is committed at once. `on_start` is told where following starts once every partition's
    position is known: an event written after that call is delivered. A partition added to the topic later is
    not followed (start again).
    """
    consumer, assigned = await _incident_reader(settings, group)
    try:
        with _reading(settings):
            start = await _start_at(consumer, assigned, since, from_beginning, group)
            # Resolve lazy seeks now, so `on_start` means "ready".
            positions = {tp: await consumer.position(tp) for tp in assigned}
            if group is not None:
                # The group has followed from here: a quiet partition resumes here too, not at a later end.
                await consumer.commit(positions)
        if on_start is not None:
            on_start(f"following {settings.topic('incidents')} ({len(assigned)} partitions) from {start}")
        while True:
            with _reading(settings):
                batches = await consumer.getmany(timeout_ms=1000)
            for tp, records in batches.items():
                for record in records:
                    event = _decoded(record, on_undecodable)
                    if event is not None:
                        yield event
                if group is not None and records:
                    with _reading(settings):
                        await consumer.commit({tp: records[-1].offset + 1})
    finally:
        await consumer.stop()


async def read_incidents(settings: Settings, *, on_undecodable: Undecodable = _warn_undecodable) -> list[IncidentEvent]:
    """Every incident transition on the incidents topic, from its beginning up to the end offsets when called,
    in the order of each partition (an incident's transitions share its key, so its partition)."""
    consumer, assigned = await _incident_reader(settings, None)
    events: list[IncidentEvent] = []
    try:
        with _reading(settings):
            await consumer.seek_to_beginning(*assigned)
            # Read committed: the end is the last stable offset, so an open transaction does not hold the read.
            end = await consumer.end_offsets(assigned)
            positions = {tp: await consumer.position(tp) for tp in assigned}
            stalled_at = time.monotonic() + READ_STALL_SECONDS
            while pending := [tp for tp in assigned if positions[tp] < end[tp]]:
                if time.monotonic() > stalled_at:
                    at = ", ".join(f"{tp.partition} at {positions[tp]} of {end[tp]}" for tp in pending)
                    raise StreamsError(f"reading {settings.topic('incidents')} made no progress for "
                                       f"{READ_STALL_SECONDS:.0f} s (partition {at})")
                batches = await consumer.getmany(*pending, timeout_ms=500)
                for tp, records in batches.items():
                    # Only up to the end at the start: what arrives meanwhile belongs to a later `list`.
                    kept = [r for r in records if r.offset < end[tp]]
                    events.extend(e for e in (_decoded(r, on_undecodable) for r in kept) if e is not None)
                moved = {tp: await consumer.position(tp) for tp in pending}
                # Progress is the position, not records: transaction markers advance it without a record.
                if any(moved[tp] > positions[tp] for tp in pending):
                    stalled_at = time.monotonic() + READ_STALL_SECONDS
                positions.update(moved)
    finally:
        await consumer.stop()
    return events
