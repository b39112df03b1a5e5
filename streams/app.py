"""The Faust worker: topics, tables, thin agents, a timer and the web views.

`create_app(settings)` builds a fresh app; nothing happens at import time.
Agents decode, call the pipeline, write state (the tables the pipeline holds)
and emit what it returns. Concurrency is 1 everywhere (faust-streaming issue
606: with more, an offset can be committed past a message still in flight).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from dataclasses import asdict
import warnings
from collections.abc import Awaitable
from typing import Any

import faust
import orjson
from aiohttp.web import Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from governance.scan import violations_of
from plans.plan_sink import PlanWriter
from monitor.emitter import Emitter
from monitor.events import ConsentEvent, DeadLetter, EngagementEvent, RuleChangeEvent
from monitor.metrics import PipelineMetrics
from monitor.pipeline import MonitorPipeline, MonitorState
from monitor.report import ReportRequest, build_report
from monitor.settings import Settings
from streams.snapshots import SnapshotMapping

log = logging.getLogger(__name__)
# Faust warns about its pickle codec wherever it is registered; this app does
# not use it (its tables hold bytes: see BytesTable).
warnings.filterwarnings("ignore", message="The pickle codec calls pickle.loads", category=Warning)

ORJSON_CODEC = "pmon_orjson"
MAX_EVENTS_PER_MESSAGE = 1000  # ~0.5 MB: under Kafka's default 1 MB message limit
# Table writes wait in Faust's producer buffer; past its size (100 by default) Faust pauses the
# streams until it drains and logs "producer buffer full". Closing an hour writes one state
# record per series and detector (a few hundred), so the default made every hour a pause.
PRODUCER_BUFFER_MESSAGES = 5000


class OrjsonCodec(faust.Codec):
    """JSON with orjson for the internal re-keyed topic."""

    def _dumps(self, obj: Any) -> bytes:
        return orjson.dumps(obj)

    def _loads(self, s: bytes) -> Any:
        return orjson.loads(s)


faust.serializers.codecs.register(ORJSON_CODEC, OrjsonCodec())

# The per-initiative stage keeps all its state in ONE table, each logical table
# under a key prefix: a step's writes then go to one changelog partition, in
# order (see `streams.snapshots`). The per-user stage's consent ledger and experiment records have tables of
# their own, keyed by user.
INITIATIVE_STATE = ("clocks", "buckets", "series", "shares", "feeds", "governance", "experiments", "groups",
                    "incidents", "plans")
TABLES = ("initiative_state", "consent_ledger", "experiment_users")


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
    app = faust.App(
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
        producer_acks=-1,
        producer_linger=0.02,  # seconds: batch sends; without it every record is its own request
        producer_max_batch_size=1_048_576,
        logging_config=None,
    )
    app.producer.buffer.max_messages = PRODUCER_BUFFER_MESSAGES
    registry = registry or CollectorRegistry()
    metrics = PipelineMetrics(registry)

    def raw_topic(name: str, *, value_serializer: str = "raw") -> faust.TopicT:
        # Inputs stay bytes until the agent decodes them, so a bad record reaches
        # the dead-letter topic exactly as it came.
        return app.topic(name, key_type=bytes, key_serializer="raw", value_serializer=value_serializer,
                         internal=True, partitions=settings.topic_partitions)

    engagement = raw_topic(settings.topic("engagement"))
    consent = raw_topic(settings.topic("consent"))
    rule_changes = raw_topic(settings.topic("rule-changes"))
    # Internal: named after the app, like the changelogs, so two apps never share it.
    by_initiative = raw_topic(f"{settings.app_id}-engagement-by-initiative", value_serializer=ORJSON_CODEC)
    outputs = {name: raw_topic(settings.topic(name)) for name in ("incidents", "plan-updates", "dead-letters")}

    def table(name: str) -> faust.Table:
        return app.tables.add(BytesTable(app, name=name, default=None, key_type=str,
                                           partitions=settings.topic_partitions, beacon=app.tables.beacon))

    initiative_state = table("initiative_state")
    state = MonitorState(
        consent_ledger=SnapshotMapping(table("consent_ledger")),
        experiment_users=SnapshotMapping(table("experiment_users")),
        **{name: SnapshotMapping(initiative_state, prefix=f"{name}/") for name in INITIATIVE_STATE})
    pipeline = MonitorPipeline(settings, state, source_partitions=settings.topic_partitions,
                               stored_plan=PlanWriter(settings.plan_dir).latest)
    async def send_acked(topic: str, key: bytes, value: bytes) -> None:
        # Wait for the broker's ack: state is committed only after what it caused was delivered.
        delivery = await outputs[topic].send(key=key, value=value)
        await delivery

    emitter = Emitter(settings, metrics, send=send_acked)

    async def admitted(stream_event: faust.EventT, topic: str) -> Any:
        message = stream_event.message
        metrics.records.labels(topic=topic).inc()
        record = pipeline.admit(topic, message.value, wall_now=time.time(), key=message.key,
                                partition=message.partition, offset=message.offset)
        if isinstance(record, DeadLetter):
            log.warning("dead letter from %s[%s]@%s: %s", topic, message.partition, message.offset, record.reason)
            await emitter.dead_letter(record)
            return None
        return record

    async def admit_batch(batch: list[faust.EventT]) -> None:
        by_key: dict[tuple[str, int], dict[str, list[Any]]] = {}
        users: dict[int, tuple[faust.EventT, set[str]]] = {}  # source partition -> (an event of it, users)
        for stream_event in batch:
            record = await admitted(stream_event, "engagement")
            if record is not None:
                found = pipeline.on_user_engagement(record)
                users.setdefault(stream_event.message.partition, (stream_event, set()))[1].add(record.user_id)
                source = (record.initiative, stream_event.message.partition)
                lists = by_key.setdefault(source, {"events": [], "offsets": [], "marks": [], "deltas": [],
                                                   "violations": []})
                lists["events"].append(record.model_dump(mode="json"))
                lists["offsets"].append(stream_event.message.offset)
                lists["marks"].append(found.marks)
                lists["deltas"].append(found.experiment_delta)
                if found.violation is not None:
                    lists["violations"].append(asdict(found.violation))
        for (initiative, partition), lists in by_key.items():
            for chunk in range(0, len(lists["events"]), MAX_EVENTS_PER_MESSAGE):
                part = slice(chunk, chunk + MAX_EVENTS_PER_MESSAGE)
                await by_initiative.send(key=initiative.encode(), value={
                    "partition": partition, "offsets": lists["offsets"][part], "events": lists["events"][part],
                    "marks": lists["marks"][part], "deltas": lists["deltas"][part],
                    "violations": lists["violations"] if chunk == 0 else []})
        # After the sends: a crash before re-judges the batch, harmlessly (violations are deduplicated).
        # Per source partition, with one of its events current: Faust writes a table key to the
        # changelog partition of the current event, and the ledger must follow its users' partition.
        # Only this task's context variable is set: the stream's own `current_event` attribute is
        # read by take_events' background buffering, which must keep seeing its own events.
        for stream_event, partition_users in users.values():
            token = faust.streams._current_event.set(weakref.ref(stream_event))
            try:
                pipeline.commit_users(partition_users)
            finally:
                faust.streams._current_event.reset(token)

    @app.agent(engagement, concurrency=1)
    async def admit_engagement(stream: faust.StreamT) -> None:
        # Batches pay here: one re-keyed message per initiative per batch, so the
        # aggregating agent writes its tables once per batch, not once per event.
        # Consent is judged here, where the user's ledger lives (engagement and consent
        # are partitioned alike, by user); the marks and violations travel with the events.
        async for batch in stream.take_events(settings.batch_size, within=settings.batch_within_seconds):
            await to_the_end(admit_batch(batch))

    async def keep_one(stream_event: faust.EventT) -> None:
        record = await admitted(stream_event, "consent")
        if isinstance(record, ConsentEvent):
            convicted = pipeline.on_consent(record)  # a late revocation convicts remembered exposures
            for initiative in sorted({v.initiative for v in convicted}):
                await by_initiative.send(key=initiative.encode(), value={
                    "violations": [asdict(v) for v in convicted if v.initiative == initiative]})
            pipeline.commit_users([record.user_id])

    @app.agent(consent, concurrency=1)
    async def keep_consent(stream: faust.StreamT) -> None:
        async for stream_event in stream.events():
            await to_the_end(keep_one(stream_event))

    async def forward_one(stream_event: faust.EventT) -> None:
        record = await admitted(stream_event, "rule-changes")
        if isinstance(record, RuleChangeEvent):
            await by_initiative.send(key=record.initiative.encode(),
                                     value={"rule_change": record.model_dump(mode="json")})

    @app.agent(rule_changes, concurrency=1)
    async def forward_rule_changes(stream: faust.StreamT) -> None:
        # Audited where the initiative's state is: the rule log, live experiments, incidents and plan.
        async for stream_event in stream.events():
            await to_the_end(forward_one(stream_event))

    async def monitor_one(stream_event: faust.EventT) -> None:
        message, value = stream_event.message, stream_event.value
        try:
            if "tick" in value:
                result = pipeline.on_check(value["tick"], wall_now=time.time())
            elif "rule_change" in value:
                result = pipeline.on_rule_change(RuleChangeEvent.model_validate(value["rule_change"]))
            elif "events" not in value:
                violations = violations_of(value["violations"])
                result = pipeline.on_violations(message.key.decode(), violations)
            else:
                events = [EngagementEvent.model_validate(item) for item in value["events"]]
                result = pipeline.on_engagements(events, wall_now=time.time(),
                                                 source_partition=value["partition"],
                                                 source_offsets=value["offsets"], marks=value["marks"],
                                                 violations=violations_of(value["violations"]),
                                                 experiment_deltas=value["deltas"])
        except (KeyError, TypeError, ValueError) as exc:
            await emitter.dead_letter(DeadLetter.of(
                orjson.dumps(value), source_topic=message.topic, reason=f"internal record rejected: {exc}",
                error=repr(exc), key=message.key, partition=message.partition, offset=message.offset,
                stage="process"))
            return
        except Exception as exc:  # noqa: BLE001 - a bug must not stop the worker; the record is kept
            pipeline.commit()  # what was applied stays applied, in memory and changelog alike
            log.exception("processing failed for %s[%s]@%s", message.topic, message.partition, message.offset)
            await emitter.processing_failed(orjson.dumps(value), message.topic, exc)
            return
        await emitter.emit(result)
        pipeline.commit()

    @app.agent(by_initiative, concurrency=1)
    async def monitor_initiative(stream: faust.StreamT) -> None:
        async for stream_event in stream.events():
            await to_the_end(monitor_one(stream_event))

    @app.timer(interval=settings.check_interval_seconds)
    async def check_feeds() -> None:
        # Idle buckets and feed freshness, also when no event arrives. Tables can only be
        # written while processing an event of their partition, so the timer asks the
        # owning agent through its topic.
        for initiative in list(state.clocks.keys()):
            await by_initiative.send(key=initiative.encode(), value={"tick": initiative})

    @app.page("/pmon/report/")
    async def report_view(web: Any, request: Any) -> Any:
        try:
            report_request = ReportRequest.from_query(dict(request.query))
            report = build_report(pipeline, report_request)
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

    app.pmon_pipeline = pipeline  # for in-process inspection in tests and benchmarks
    return app
