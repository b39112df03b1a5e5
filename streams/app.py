"""The Faust worker: stage 1 as an aiokafka service, stage 2 as a Faust agent with its table, timer, web views.

`create_app(settings)` builds a fresh app; nothing happens at import time.
- Stage 1 (`streams.ingest.UserIngest`) reads engagement and consent in
  batches and sends their partials, state and offsets in one Kafka
  transaction; it runs as a task of the app.
- Stage 2 is a Faust agent on the internal partials topic, read committed
  (`ReadCommittedTransport`): it applies partials, rule changes and the
  timer's ticks through `monitor.initiative_stage.InitiativeStage`, whose
  state is one Faust table, and emits what it returns. Concurrency is 1
  (faust-streaming issue 606: with more, an offset can be committed past a
  message still in flight).
- Rule changes are forwarded to the partials topic by a thin agent, so one
  agent owns each initiative's state.
"""

from __future__ import annotations

import asyncio
import logging
import time
import warnings
from collections.abc import Awaitable
from typing import Any

import faust
import orjson
from aiohttp.web import Response
from faust.transport.drivers import aiokafka as faust_aiokafka
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from monitor import messages
from monitor.emitter import Emitter
from monitor.events import DeadLetter
from monitor.exceptions import StageError
from monitor.initiative_stage import InitiativeStage, InitiativeState
from monitor.metrics import PipelineMetrics
from monitor.report import ReportRequest, build_report
from monitor.settings import Settings
from plans.plan_sink import PlanWriter
from streams.ingest import PARTIALS_TOPIC, USERS_CHANGELOG, UserIngest
from streams.snapshots import SnapshotMapping

log = logging.getLogger(__name__)
# Faust warns about its pickle codec wherever it is registered; this app does
# not use it (its tables hold bytes: see BytesTable).
warnings.filterwarnings("ignore", message="The pickle codec calls pickle.loads", category=Warning)

# Table writes wait in Faust's producer buffer; past its size (100 by default) Faust pauses the
# streams until it drains and logs "producer buffer full". Closing an hour writes one state
# record per series and detector (a few hundred), so the default made every hour a pause.
PRODUCER_BUFFER_MESSAGES = 5000


class _ReadCommittedConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Stage 1 writes partials in transactions; an aborted one must never be applied. Faust reads
        # committed only under exactly_once, which would also make its own sends transactional.
        consumer._isolation_level = "read_committed"
        return consumer


class _ReadCommittedConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ReadCommittedConsumerThread(self, loop=self.loop, beacon=self.beacon)


class ReadCommittedTransport(faust_aiokafka.Transport):
    """Faust's aiokafka transport, with its consumer reading committed records only."""

    Consumer = _ReadCommittedConsumer


class MonitorApp(faust.App):
    def _new_transport(self) -> Any:
        return ReadCommittedTransport(self.conf.broker_consumer, self)


# The per-initiative stage keeps all its state in ONE table, each logical table
# under a key prefix: a step's writes then go to one changelog partition, in
# order (see `streams.snapshots`).
INITIATIVE_STATE = ("clocks", "buckets", "series", "shares", "feeds", "governance", "experiments", "groups",
                    "incidents", "plans")
TABLES = ("initiative_state",)


def internal_topics(settings: Settings) -> dict[str, bool]:
    """Internal topics the worker needs before it starts: name -> compacted."""
    return {PARTIALS_TOPIC.format(app_id=settings.app_id): False,
            USERS_CHANGELOG.format(app_id=settings.app_id): True,
            **{f"{settings.app_id}-{table}-changelog": True for table in TABLES}}


class BytesTable(faust.Table):
    """A table of str keys and bytes values (pickled snapshots, see `streams.snapshots`).

    Faust picks serializers from the key and value types (JSON for anything
    but a faust Record) when the table is built, and the store and changelog
    use them from then on; raw keeps the bytes as they are. Only this app
    writes its changelogs, so unpickling them is safe.
    """

    def _serializer_from_type(self, typ: Any) -> str:
        return "raw"


async def to_the_end(step: Awaitable[None]) -> None:
    """Run one step of an agent to its end, even when the worker stops meanwhile.

    Faust acknowledges the records of a step when its agent is cancelled (`take_events` and
    `events()` ack in a `finally`), so a step cut short by a graceful stop would be neither
    applied nor delivered again; the stop waits for the step instead.
    """
    task = asyncio.ensure_future(step)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


def broker_credentials(settings: Settings) -> Any:
    """SASL/SSL settings passed through to the broker, or None for PLAINTEXT."""
    protocol = settings.security_protocol
    if protocol == "PLAINTEXT":
        return None
    ssl_context = None
    if protocol in ("SSL", "SASL_SSL"):
        ssl_context = faust.ssl.create_default_context(
            purpose=faust.ssl.Purpose.SERVER_AUTH,
            cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None)
        if protocol == "SSL":
            return faust.SSLCredentials(ssl_context)
    password = settings.sasl_password.get_secret_value() if settings.sasl_password else None
    if settings.sasl_mechanism == "PLAIN":
        return faust.SASLCredentials(username=settings.sasl_username, password=password,
                                     ssl_context=ssl_context)
    return faust.SASLCredentials(username=settings.sasl_username, password=password,
                                 ssl_context=ssl_context, mechanism=settings.sasl_mechanism)


def create_app(settings: Settings, *, registry: CollectorRegistry | None = None) -> faust.App:
    app = MonitorApp(
        settings.app_id,
        broker=[f"kafka://{host.strip()}" for host in settings.kafka_bootstrap.split(",")],
        broker_credentials=broker_credentials(settings),
        store="memory://",
        processing_guarantee="at_least_once",
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replicas,
        autodiscover=False,
        web_enabled=True,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_router_enabled=False,
        web_tables_enabled=False,
        web_graph_enabled=False,
        web_stats_enabled=False,
        web_metrics_enabled=False,
        table_standby_replicas=0,
        broker_session_timeout=settings.session_timeout_seconds,
        broker_heartbeat_interval=settings.session_timeout_seconds / 6,
        producer_acks=-1,
        producer_linger=0.02,  # seconds: batch sends; without it every record is its own request
        producer_max_batch_size=1_048_576,
        logging_config=None,
    )
    app.producer.buffer.max_messages = PRODUCER_BUFFER_MESSAGES
    registry = registry or CollectorRegistry()
    metrics = PipelineMetrics(registry)

    def raw_topic(name: str) -> faust.TopicT:
        # Inputs stay bytes until the stage decodes them, so a bad record reaches
        # the dead-letter topic exactly as it came.
        return app.topic(name, key_type=bytes, key_serializer="raw", value_serializer="raw",
                         internal=True, partitions=settings.topic_partitions)

    rule_changes = raw_topic(settings.topic("rule-changes"))
    partials = raw_topic(PARTIALS_TOPIC.format(app_id=settings.app_id))
    outputs = {name: raw_topic(settings.topic(name)) for name in ("incidents", "plan-updates", "dead-letters")}

    initiative_state = app.tables.add(BytesTable(app, name="initiative_state", default=None, key_type=str,
                                                 partitions=settings.topic_partitions, beacon=app.tables.beacon))
    state = InitiativeState(**{name: SnapshotMapping(initiative_state, prefix=f"{name}/")
                               for name in INITIATIVE_STATE})
    stage = InitiativeStage(settings, state, source_partitions=settings.topic_partitions,
                            stored_plan=PlanWriter(settings.plan_dir).latest)
    ingest = UserIngest(settings, metrics)

    async def send_acked(topic: str, key: bytes, value: bytes) -> None:
        # Wait for the broker's ack: state is committed only after what it caused was delivered.
        delivery = await outputs[topic].send(key=key, value=value)
        await delivery

    emitter = Emitter(settings, metrics, send=send_acked)

    async def forward_one(stream_event: faust.EventT) -> None:
        message = stream_event.message
        metrics.records.labels(topic="rule-changes").inc()
        event = stage.admit_rule_change(message.value, wall_now=time.time(), key=message.key,
                                        partition=message.partition, offset=message.offset)
        if isinstance(event, DeadLetter):
            log.warning("dead letter from rule-changes[%s]@%s: %s", message.partition, message.offset, event.reason)
            await emitter.dead_letter(event)
        else:
            await (await partials.send(key=event.initiative.encode(),
                                       value=messages.encode(messages.RuleChange(event))))

    @app.agent(rule_changes, concurrency=1)
    async def forward_rule_changes(stream: faust.StreamT) -> None:
        async for stream_event in stream.events():
            await to_the_end(forward_one(stream_event))

    async def apply_one(stream_event: faust.EventT) -> None:
        message = stream_event.message
        try:
            decoded = messages.decode(message.value)
        except StageError as exc:
            await emitter.dead_letter(DeadLetter.of(
                message.value or b"", source_topic=message.topic, reason=str(exc), error=repr(exc),
                key=message.key, partition=message.partition, offset=message.offset, stage="process"))
            return
        try:
            result = stage.on_message(decoded, wall_now=time.time())
        except Exception as exc:  # noqa: BLE001 - a bug must not stop the worker; the message is kept
            stage.commit()  # what was applied stays applied, in memory and changelog alike
            log.exception("processing failed for %s[%s]@%s", message.topic, message.partition, message.offset)
            await emitter.processing_failed(message.value, message.topic, exc)
            return
        await emitter.emit(result)
        stage.commit()

    @app.agent(partials, concurrency=1)
    async def monitor_initiative(stream: faust.StreamT) -> None:
        async for stream_event in stream.events():
            await to_the_end(apply_one(stream_event))

    @app.task
    async def user_stage() -> None:
        await ingest.run()

    @app.timer(interval=settings.check_interval_seconds)
    async def check_feeds() -> None:
        # Idle buckets and feed freshness, also when no event arrives. Tables can only be
        # written while processing an event of their partition, so the timer asks the
        # owning agent through its topic.
        for initiative in list(state.clocks.keys()):
            await partials.send(key=initiative.encode(), value=messages.encode(messages.Tick(initiative)))

    @app.page("/pmon/report/")
    async def report_view(web: Any, request: Any) -> Any:
        try:
            report_request = ReportRequest.from_query(dict(request.query))
            report = build_report(stage, report_request)
        except ValueError as exc:
            return web.json({"error": str(exc)}, status=400)
        if report is None:
            known = sorted(k for k in state.plans.keys())
            return web.json({"error": f"unknown initiative {report_request.initiative!r}", "known": known},
                            status=404)
        return web.bytes(orjson.dumps(report.model_dump(mode="json")), content_type="application/json")

    @app.page("/metrics")
    async def metrics_view(web: Any, request: Any) -> Any:
        return Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.pmon_stage = stage  # for in-process inspection in tests and benchmarks
    app.pmon_ingest = ingest
    return app
