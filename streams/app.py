"""The worker: both stages as aiokafka services of a Faust app, the rule-change agent, the web views.

`create_app(settings)` builds a fresh app; nothing happens at import time.
- Stage 1 (`streams.ingest.UserIngest`) reads engagement and consent in
  batches; stage 2 (`streams.initiatives.InitiativeService`) reads the
  partials stage 1 writes. Each commits per partition and interval one Kafka
  transaction (outputs, state changelog, offsets), and runs as a task of
  the app. Why not Faust agents and tables: see those modules.
- Rule changes and incident actions (acknowledgements, resolutions, notes)
  come in through thin Faust agents (decode, validate, forward to the
  partials topic, keyed by initiative), so one stage owns each initiative's
  state. Concurrency is 1 (faust-streaming issue 606: with more,
  an offset can be committed past a message still in flight).
- Faust serves `/pmon/report/` and `/metrics`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
import threading
import time
import warnings
from collections.abc import Awaitable, Callable
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
from monitor.health import readiness
from monitor.initiative_stage import admit_incident_action, admit_rule_change
from monitor.metrics import PipelineMetrics, StageCollector
from monitor.report import ReportRequest, build_report
from monitor.settings import Settings
from monitor.topics import OUTPUT_TOPICS
from streams.ingest import PARTIALS_TOPIC, USERS_CHANGELOG, UserIngest
from streams.initiatives import INITIATIVES_CHANGELOG, InitiativeService
from streams.kafka_io import forbid_topic_auto_creation, watch_topics

log = logging.getLogger(__name__)
STOP_DEADLINE_SECONDS = 10.0  # from a stop's start (SIGTERM) to the process's end, whatever the broker does
# Faust warns about its pickle codec wherever it is registered; this app does not use it.
warnings.filterwarnings("ignore", message="The pickle codec calls pickle.loads", category=Warning)


class _OncePer(logging.Filter):
    """Lets each distinct message through once per `seconds`. aiokafka's sender refreshes metadata in a tight loop
    while it holds records for a topic that is gone, and its cluster logs an error at every refresh (thousands a
    second until the worker stops, see `watch_topics`)."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        now, message = time.monotonic(), record.getMessage()
        if now - self._last.get(message, -self.seconds) < self.seconds:
            return False
        self._last[message] = now
        return True


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


def _exit_now() -> None:
    os._exit(1)


class MonitorApp(faust.App):
    pmon_fatal: str | None = None  # why the worker stopped itself (`watch_topics`), if it did
    # The stop took longer than STOP_DEADLINE_SECONDS: end the process. An attribute, not a method: `pmon worker`
    # sets its own, which says why first.
    pmon_give_up: Callable[[], None] = staticmethod(_exit_now)

    def _new_transport(self) -> Any:
        return ReadCommittedTransport(self.conf.broker_consumer, self)

    async def on_stop(self) -> None:
        # The stages stop within their own bounds whatever the broker does; Faust's consumer does not (it waits for
        # a broker that does not answer its commit and leave-group up to its request timeout, 90 s). Leaving
        # without them is as safe as a SIGKILL: what was not committed is read again at the next start.
        timer = threading.Timer(STOP_DEADLINE_SECONDS, self._stop_overdue)
        timer.daemon = True
        timer.start()
        await super().on_stop()

    def _stop_overdue(self) -> None:
        log.warning(
            "the worker did not stop within %.0f s (the broker does not answer): exiting without it",
            STOP_DEADLINE_SECONDS,
        )
        self.pmon_give_up()


def internal_topics(settings: Settings) -> dict[str, bool]:
    """Internal topics the worker needs before it starts: name -> compacted."""
    return {
        PARTIALS_TOPIC.format(app_id=settings.app_id): False,
        USERS_CHANGELOG.format(app_id=settings.app_id): True,
        INITIATIVES_CHANGELOG.format(app_id=settings.app_id): True,
    }


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
        # The stdlib's (faust has no `ssl` attribute), as the stages' aiokafka clients verify the broker.
        ssl_context = ssl.create_default_context(
            purpose=ssl.Purpose.SERVER_AUTH, cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None
        )
        if protocol == "SSL":
            return faust.SSLCredentials(ssl_context)
    password = settings.sasl_password.get_secret_value() if settings.sasl_password else None
    if settings.sasl_mechanism == "PLAIN":
        return faust.SASLCredentials(username=settings.sasl_username, password=password, ssl_context=ssl_context)
    return faust.SASLCredentials(
        username=settings.sasl_username, password=password, ssl_context=ssl_context, mechanism=settings.sasl_mechanism
    )


def create_app(
    settings: Settings, *, registry: CollectorRegistry | None = None, cluster: str | None = None
) -> MonitorApp:
    """`cluster`: the id of the cluster `prepare_worker_topics` found; the app then stops when the broker is another
    cluster or the worker's topics changed (`watch_topics`), with the reason in `app.pmon_fatal`."""
    forbid_topic_auto_creation()
    logging.getLogger("aiokafka.cluster").addFilter(_OncePer(10.0))
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
    registry = registry or CollectorRegistry()
    metrics = PipelineMetrics(registry)

    def raw_topic(name: str) -> faust.TopicT:
        # Inputs stay bytes until the stage decodes them, so a bad record reaches
        # the dead-letter topic exactly as it came.
        return app.topic(
            name,
            key_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            internal=True,
            partitions=settings.topic_partitions,
        )

    partials = raw_topic(PARTIALS_TOPIC.format(app_id=settings.app_id))
    outputs = {name: raw_topic(settings.topic(name)) for name in OUTPUT_TOPICS}

    ingest = UserIngest(settings, metrics)
    initiatives = InitiativeService(settings, metrics)
    registry.register(
        StageCollector(
            lambda: [owned.work.stage for owned in initiatives.partitions.values()],
            lambda: sum(owned.work.stage.user_count() for owned in ingest.partitions.values()),
        )
    )

    async def send_acked(topic: str, key: bytes, value: bytes) -> None:
        # Wait for the broker's ack: the rule change's offset is acked only after its dead letter was delivered.
        delivery = await outputs[topic].send(key=key, value=value)
        await delivery

    emitter = Emitter(settings, metrics, send=send_acked)

    def forwarder(name: str, admit: Callable[[Any], Any], wrap: Callable[[Any], messages.Message]) -> Any:
        """A thin agent: admit each record of input topic `name` (or dead-letter it) and forward it, keyed by
        its initiative, to the partials topic, where the initiative's stage picks it up."""

        async def forward_one(stream_event: faust.EventT) -> None:
            message = stream_event.message
            metrics.records.labels(topic=name).inc()
            admitted = admit(message)
            if isinstance(admitted, DeadLetter):
                log.warning("dead letter from %s[%s]@%s: %s", name, message.partition, message.offset, admitted.reason)
                await emitter.dead_letter(admitted)
            else:
                await (await partials.send(key=admitted.initiative.encode(), value=messages.encode(wrap(admitted))))

        async def forward(stream: faust.StreamT) -> None:
            async for stream_event in stream.events():
                await to_the_end(forward_one(stream_event))

        return app.agent(raw_topic(settings.topic(name)), name=f"forward-{name}", concurrency=1)(forward)

    forwarder(
        "rule-changes",
        lambda m: admit_rule_change(
            settings, m.value, wall_now=time.time(), key=m.key, partition=m.partition, offset=m.offset
        ),
        messages.RuleChange,
    )
    forwarder(
        "incident-actions",
        lambda m: admit_incident_action(settings, m.value, key=m.key, partition=m.partition, offset=m.offset),
        messages.Action,
    )

    @app.task
    async def user_stage() -> None:
        await ingest.run()

    @app.task
    async def initiative_stage() -> None:
        await initiatives.run()

    if cluster is not None:

        @app.task
        async def topic_watch() -> None:
            app.pmon_fatal = await watch_topics(settings, internal_topics(settings), cluster)
            log.error("%s", app.pmon_fatal)
            # The worker's own graceful stop, as for an operator's SIGTERM; `pmon worker` then exits with the reason.
            signal.raise_signal(signal.SIGTERM)

    @app.page("/pmon/report/")
    async def report_view(web: Any, request: Any) -> Any:
        try:
            report_request = ReportRequest.from_query(dict(request.query))
        except ValueError as exc:
            return web.json({"error": str(exc)}, status=400)
        stage = initiatives.stage_of(report_request.initiative)
        report = build_report(stage, report_request) if stage is not None else None
        if report is None:
            return web.json(
                {"error": f"unknown initiative {report_request.initiative!r}", "known": initiatives.initiatives()},
                status=404,
            )
        return web.bytes(orjson.dumps(report.model_dump(mode="json")), content_type="application/json")

    @app.page("/metrics")
    async def metrics_view(web: Any, request: Any) -> Any:
        return Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.page("/health")
    async def health_view(web: Any, request: Any) -> Any:
        return web.json({"status": "alive"})  # the event loop answers: nothing more is claimed

    def ready_now() -> tuple[bool, list[str]]:
        return readiness(
            [ingest.facts(), initiatives.facts()],
            max_fetch_age=settings.ready_fetch_seconds,
            max_lag=settings.ready_max_lag,
        )

    metrics.ready.set_function(lambda: float(ready_now()[0]))

    @app.page("/ready")
    async def ready_view(web: Any, request: Any) -> Any:
        ready, reasons = ready_now()
        return web.json({"ready": ready, "reasons": reasons}, status=200 if ready else 503)

    return app
