"""Plain aiokafka clients: topic creation, producing records (simulator, benchmarks, tests), reading incidents
(`pmon incidents tail|list`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import (
    AuthenticationFailedError,
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    TopicAlreadyExistsError,
    UnsupportedSaslMechanismError,
)
from pydantic import ValidationError

from incidents.model import IncidentEvent
from monitor.settings import Settings
from monitor.topics import INPUT_TOPICS, OUTPUT_TOPICS
from streams.exceptions import BrokerUnavailable, StreamsError

log = logging.getLogger(__name__)

# How long the diagnosis of a failed bootstrap waits for one broker's answer.
DIAGNOSE_SECONDS = 10.0


def _no_broker(settings: Settings, exc: Exception) -> StreamsError:
    return BrokerUnavailable(
        f"no Kafka broker at {settings.kafka_bootstrap} ({exc}); start one with "
        "`make kafka-up` or set PMON_KAFKA_BOOTSTRAP"
    )


async def _unreachable(settings: Settings, exc: Exception) -> StreamsError:
    """Why the bootstrap failed, in one line. The client reports every cause as "Unable to bootstrap"; one
    direct connection per server tells a refused login or an untrusted certificate from an absent broker."""
    from aiokafka.conn import create_conn

    options = {k: v for k, v in client_options(settings).items() if k != "bootstrap_servers"}
    for server in settings.kafka_bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        if not port.isdigit():
            continue
        try:
            conn = await asyncio.wait_for(create_conn(host, int(port), **options), DIAGNOSE_SECONDS)
        except (SaslAuthenticationFailed, AuthenticationFailedError) as failure:
            return StreamsError(
                f"authentication failed at {server.strip()} as {settings.sasl_username!r} with "
                f"{settings.sasl_mechanism} ({failure}) — check PMON_SASL_USERNAME and PMON_SASL_PASSWORD "
                "(and PMON_SASL_MECHANISM)"
            )
        except UnsupportedSaslMechanismError as failure:
            return StreamsError(
                f"{server.strip()} does not accept {settings.sasl_mechanism} ({failure}) — set "
                "PMON_SASL_MECHANISM to one it enables"
            )
        except ssl.SSLCertVerificationError as failure:
            return StreamsError(
                f"TLS: the certificate of {server.strip()} is not trusted "
                f"({failure.verify_message}) — set PMON_SSL_CAFILE to the CA that signed it"
            )
        except ssl.SSLError as failure:
            return StreamsError(
                f"TLS handshake with {server.strip()} failed ({failure.reason or failure}) — "
                "check PMON_SECURITY_PROTOCOL against the broker's listener on that port"
            )
        except (TimeoutError, OSError, KafkaError):
            continue  # this server is not there: the others may tell more
        conn.close()
    return _no_broker(settings, exc)


def client_options(settings: Settings) -> dict[str, Any]:
    """Connection options shared by every aiokafka client, SASL/SSL passed through."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "security_protocol": settings.security_protocol,
    }
    if settings.security_protocol.startswith("SASL"):
        options.update(
            sasl_mechanism=settings.sasl_mechanism,
            sasl_plain_username=settings.sasl_username,
            sasl_plain_password=settings.sasl_password.get_secret_value() if settings.sasl_password else None,
        )
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        from aiokafka.helpers import create_ssl_context

        options["ssl_context"] = create_ssl_context(cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None)
    return options


async def ensure_topics(
    settings: Settings, names: Iterable[str] = INPUT_TOPICS + OUTPUT_TOPICS, internal: dict[str, bool] | None = None
) -> None:
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
        raise await _unreachable(settings, exc) from None
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(settings.topic(n), settings.topic_partitions, settings.topic_replicas)
            for n in names
            if settings.topic(n) not in existing
        ]
        wanted += [
            NewTopic(
                name,
                settings.topic_partitions,
                settings.topic_replicas,
                topic_configs={"cleanup.policy": "compact"} if compacted else {},
            )
            for name, compacted in (internal or {}).items()
            if name not in existing
        ]
        if wanted:
            with contextlib.suppress(TopicAlreadyExistsError):  # another client created them meanwhile
                await admin.create_topics(wanted)
    finally:
        await admin.close()


# --------------------------------------------------------------------------- the worker's topics, watched
TOPIC_CHECK_SECONDS = 5.0  # how often a running worker checks its cluster and topics (one metadata request)
WAIT_LOG_SECONDS = 10.0  # how often a worker waiting for its broker says so
CREATED_WAIT_SECONDS = 30.0  # how long topics just created may take to show in the metadata of a broker just started


def forbid_topic_auto_creation() -> None:
    """Make this process's aiokafka clients never ask the broker to create a topic they look up.

    aiokafka asks for it in every metadata request, and a broker with auto.create.topics.enable (Kafka's default)
    then creates a missing topic with its default partitions, uncompacted: a worker whose broker came back empty
    would recreate its topics wrong and go on. The worker creates its topics itself (`ensure_topics`) and stops
    when they are gone (`watch_topics`)."""
    import aiokafka.admin.client
    import aiokafka.client
    from aiokafka.protocol.metadata import MetadataRequest

    class NoAutoCreation(MetadataRequest):
        def __init__(self, topics: list[str] | None = None, allow_auto_topic_creation: bool | None = False):
            super().__init__(topics, allow_auto_topic_creation)

    aiokafka.client.MetadataRequest = NoAutoCreation
    aiokafka.admin.client.MetadataRequest = NoAutoCreation


async def _started_admin(settings: Settings) -> AIOKafkaAdminClient:
    """A started admin client. A broker that is not there yet is waited for up to PMON_BROKER_WAIT_SECONDS, with a
    log line every WAIT_LOG_SECONDS; a refused login or certificate fails at once."""
    started = time.monotonic()
    said = -math.inf
    client_log = logging.getLogger("aiokafka")
    while True:
        admin = AIOKafkaAdminClient(**client_options(settings))
        level = client_log.level
        if said > -math.inf:
            client_log.setLevel(logging.CRITICAL)  # its "Unable connect" at every attempt: the wait's line says it
        try:
            await admin.start()
            return admin
        except KafkaConnectionError as exc:
            await admin.close()  # an unclosed client warns on stderr at exit, after the one-line error
            failure = await _unreachable(settings, exc)
        except BaseException:
            await admin.close()  # cancelled: a check that timed out on a broker that does not answer
            raise
        finally:
            client_log.setLevel(level)
        waited = time.monotonic() - started
        if not isinstance(failure, BrokerUnavailable) or waited >= settings.broker_wait_seconds:
            raise failure from None
        if time.monotonic() - said >= WAIT_LOG_SECONDS:
            said = time.monotonic()
            log.warning(
                "no Kafka broker at %s yet: waiting for it (%.0f s of PMON_BROKER_WAIT_SECONDS=%.0f)",
                settings.kafka_bootstrap,
                waited,
                settings.broker_wait_seconds,
            )
        await asyncio.sleep(1.0)  # pacing the attempts, not synchronisation


async def _inspect(settings: Settings, internal: dict[str, bool]) -> tuple[str, list[str]]:
    """The cluster's id, and what is wrong with the worker's topics there (nothing: an empty list)."""
    admin = await _started_admin(settings)
    try:
        cluster = (await admin.describe_cluster())["cluster_id"]
        # All topics, not the worker's by name: asking for a topic by name may auto-create it on the broker.
        found = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics()}
        # Partitions must match where the stages co-partition: the inputs stage 1 joins, the partials and the
        # changelogs (partition p of each holds the state of partition p of its input).
        exact = {settings.topic("engagement"), settings.topic("consent"), *internal}
        problems = []
        for name in [settings.topic(n) for n in INPUT_TOPICS + OUTPUT_TOPICS] + list(internal):
            if name not in found:
                problems.append(f"{name} is missing")
            elif name in exact and found[name] != settings.topic_partitions:
                problems.append(
                    f"{name} has {found[name]} partition{'s' if found[name] != 1 else ''}, not "
                    f"PMON_TOPIC_PARTITIONS={settings.topic_partitions}"
                )
        changelogs = [name for name, compacted in internal.items() if compacted and name in found]
        if changelogs:
            answers = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, name, {"cleanup.policy": None}) for name in changelogs]
            )
            for resource in (r for answer in answers for r in answer.to_object()["resources"]):
                policy = next(
                    (e["config_value"] for e in resource["config_entries"] if e["config_names"] == "cleanup.policy"), ""
                )
                if "compact" not in policy.split(","):
                    problems.append(f"{resource['resource_name']} is not compacted (cleanup.policy={policy})")
        return cluster, problems
    finally:
        await admin.close()


async def prepare_worker_topics(settings: Settings, internal: dict[str, bool]) -> str:
    """`pmon worker`'s start: wait for the broker, create the topics that do not exist, refuse those that do not
    match the settings; returns the cluster's id, to which `watch_topics` holds the running worker."""
    await (await _started_admin(settings)).close()  # there: ensure_topics would not wait for it
    await ensure_topics(settings, internal=internal)
    deadline = time.monotonic() + CREATED_WAIT_SECONDS
    while True:
        cluster, problems = await _inspect(settings, internal)
        # A topic created a moment ago may not be in the broker's metadata yet (a broker just started: seconds).
        if (
            not problems
            or not all(problem.endswith(" is missing") for problem in problems)
            or time.monotonic() > deadline
        ):
            break
        await asyncio.sleep(0.5)  # polling interval, not synchronisation
    if problems:
        raise StreamsError(
            f"the topics at {settings.kafka_bootstrap} do not match the worker's settings: "
            f"{'; '.join(problems)} — the worker does not change existing topics: fix or delete "
            "them, or set PMON_TOPIC_PARTITIONS (PMON_TOPIC_PREFIX, PMON_APP_ID) to theirs"
        )
    return cluster


async def watch_topics(settings: Settings, internal: dict[str, bool], cluster: str) -> str:
    """While the worker runs: every TOPIC_CHECK_SECONDS, the broker is still cluster `cluster` with the worker's
    topics as `prepare_worker_topics` left them. Returns why not, once seen twice in a row (one stale answer
    is not enough to stop a worker); a broker that does not answer is not judged (`/ready` says it is away)."""
    seen: str | None = None
    while True:
        await asyncio.sleep(TOPIC_CHECK_SECONDS)  # the check's period
        try:
            now, problems = await asyncio.wait_for(
                _inspect(settings.model_copy(update={"broker_wait_seconds": 0}), internal), 2 * TOPIC_CHECK_SECONDS
            )
        except (TimeoutError, KafkaError, StreamsError):
            continue
        if now != cluster:
            found = (
                f"the broker at {settings.kafka_bootstrap} is another Kafka cluster now (id {now}, was "
                f"{cluster}): the worker's topics, offsets and state are not there"
            )
        elif problems:
            found = (
                f"the worker's topics at {settings.kafka_bootstrap} changed under it ({'; '.join(problems)}; "
                "a broker that came back empty?)"
            )
        else:
            seen = None
            continue
        if seen is not None:
            return (
                f"{found} — the worker stops rather than recreate them: restore the cluster's data, or start "
                "`pmon worker` again to begin afresh (it creates the missing topics)"
            )
        seen = found


async def produce(settings: Settings, records: Iterable[tuple[str, bytes | None, bytes]], *, rate: float = 0.0) -> int:
    """Send (topic name suffix, key, value) records in order; `rate` records/s, 0 for as fast as possible."""
    await ensure_topics(settings)
    producer = AIOKafkaProducer(**client_options(settings), acks="all", linger_ms=5, enable_idempotence=True)
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
        raise StreamsError(
            f"reading {settings.topic('incidents')} at {settings.kafka_bootstrap}: {type(exc).__name__}: {exc}"
        ) from None


async def _incident_reader(settings: Settings, group: str | None) -> tuple[AIOKafkaConsumer, list[TopicPartition]]:
    """A started read-committed consumer assigned every partition of the incidents topic, and those partitions.

    Assigned, not subscribed: no group membership and no rebalance, also with `group`, which only names whose
    offsets are committed, so a reader never takes partitions from another."""
    topic = settings.topic("incidents")
    partitions = await _partitions_of(settings, topic)
    # Read committed: the worker writes incidents in transactions; an aborted one's records are never shown.
    consumer = AIOKafkaConsumer(
        **client_options(settings),
        group_id=group,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
    )
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
        raise await _unreachable(settings, exc) from None
    try:
        deadline = time.monotonic() + TOPIC_WAIT_SECONDS
        while True:
            # All topics, not this one by name: asking for a topic by name may auto-create it on the broker.
            with _reading(settings):
                found = next((t for t in await admin.describe_topics() if t["topic"] == topic), None)
            if (
                found is not None
                and found["error_code"] == 0
                and found["partitions"]
                and all(p["error_code"] == 0 for p in found["partitions"])
            ):
                return sorted(p["partition"] for p in found["partitions"])
            if time.monotonic() > deadline:
                state = "not there" if found is None else "without a leader for every partition"
                raise StreamsError(
                    f"topic {topic} is {state} at {settings.kafka_bootstrap} after "
                    f"{TOPIC_WAIT_SECONDS:.0f} s; start the worker (it creates it) or set "
                    f"PMON_TOPIC_PREFIX to the worker's"
                )
            await asyncio.sleep(0.2)  # polling interval, not synchronisation
    finally:
        await admin.close()


async def _start_at(
    consumer: AIOKafkaConsumer,
    assigned: list[TopicPartition],
    since: datetime | None,
    from_beginning: bool,
    group: str | None,
) -> str:
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


async def follow_incidents(
    settings: Settings,
    *,
    since: datetime | None = None,
    from_beginning: bool = False,
    group: str | None = None,
    on_undecodable: Undecodable = _warn_undecodable,
    on_start: Callable[[str], None] | None = None,
) -> AsyncIterator[IncidentEvent]:
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
                    raise StreamsError(
                        f"reading {settings.topic('incidents')} made no progress for "
                        f"{READ_STALL_SECONDS:.0f} s (partition {at})"
                    )
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
