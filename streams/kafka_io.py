"""Plain aiokafka clients: topic creation and producing records (simulator, benchmarks, tests)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError

from streams.exceptions import StreamsError
from monitor.settings import Settings

log = logging.getLogger(__name__)

INPUT_TOPICS = ("engagement", "consent", "rule-changes", "incident-actions")
OUTPUT_TOPICS = ("incidents", "plan-updates", "dead-letters")


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
        raise StreamsError(f"no Kafka broker at {settings.kafka_bootstrap} ({exc}); start one with "
                           "`make kafka-up` or set PMON_KAFKA_BOOTSTRAP") from None
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
