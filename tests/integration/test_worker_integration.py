"""The Faust worker on the real broker: a planted dip, dead letters, and parity with the embedded driver."""

from __future__ import annotations

import asyncio
import base64
import signal
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import timedelta
from typing import Any

import orjson
import pytest

from incidents.model import IncidentEvent
from monitor.events import ConsentEvent, EngagementEvent, encode
from pmon_harness import wait_for
from simulation.simulator import Injection, SimulationSpec, default_program, simulate
from streams.embedded import EmbeddedDriver
from streams.kafka_io import produce
from tests.conftest import consume, consume_raw
from tests.helpers import EXPERIMENT_SPEC, T0, consent_incidents, experiment_plans

pytestmark = pytest.mark.kafka

PLG = "PLG Onboarding"
# Short warm-up so three simulated days hold a baseline, a dip and a recovery.
DETECTION = {"warmup_buckets": 12, "min_exposures": 150}


def _dip_spec() -> SimulationSpec:
    plg = next(spec for spec in default_program() if spec.name == PLG)
    start = SimulationSpec(days=1, injections=()).start
    dip = Injection("conversion_drop", PLG, start + timedelta(days=2, hours=11), 6, 0.5,
                    profile="new_user", channel="web", variant="treatment")
    return SimulationSpec(seed=11, days=3, users=4000, initiatives=(plg,), injections=(dip,))


def _encoded(spec: SimulationSpec) -> list[tuple[str, bytes, bytes]]:
    return [(r.topic, r.key.encode(), encode(r.event)) for r in simulate(spec)]


def _start_on_backlog(settings: Any, records: list[tuple[str, bytes, bytes]], start_worker: Any) -> Any:
    """Every record on its topic before the worker starts: a backlog, in which Kafka delivers the topics in no
    particular order (consent is not read before the engagement it governs); the verdicts must not depend on it."""
    asyncio.run(produce(settings, records))
    return start_worker(settings)


def _essence(incident: IncidentEvent) -> tuple[Any, ...]:
    return (incident.event_id, incident.incident_id, incident.transition, incident.owner, tuple(incident.series),
            incident.evidence.bucket_start, round(incident.evidence.observed, 12),
            round(incident.evidence.expected, 12))


def _progress(worker: Any, initiative: str = "PLG Onboarding") -> str:
    """What a worker has counted, for a timeout's message."""
    report = worker.report(initiative) or {}
    received = [line for line in worker.metrics_text().splitlines() if line.startswith("pmon_records_total")]
    return (f"counted {report.get('counted_events')} late {report.get('late_dropped')} "
            f"skipped as redelivered {report.get('duplicates_skipped')}; {received}\n{worker.log()}")


def test_planted_dip_gives_one_incident_and_the_same_incidents_as_the_embedded_driver(
        isolated_settings, start_worker, tmp_path):
    settings = isolated_settings(**DETECTION, state_dictionary_samples=50)  # compressed states, as above
    records = _encoded(_dip_spec())
    engagement = sum(1 for topic, _, _ in records if topic == "engagement")

    embedded = EmbeddedDriver(settings.model_copy(update={"plan_dir": tmp_path / "embedded-plans"}))
    expected = asyncio.run(embedded.run(records)).incidents
    drops = [e for e in expected if e.kind == "conversion_drop"]
    assert [e.transition for e in drops] == ["opened", "resolved"], "the planted dip must open and resolve once"

    worker = _start_on_backlog(settings, records, start_worker)
    wait_for(lambda: worker.counted(PLG) == engagement, timeout=240,
             what=f"the worker to count all {engagement} engagement events", on_timeout=worker.log)

    messages = consume(settings, "incidents", want=len(expected), timeout=60)
    incidents = [IncidentEvent.model_validate_json(m.value) for m in messages]
    assert sorted(map(_essence, incidents)) == sorted(map(_essence, expected)), "the same incidents as embedded"
    assert all(m.key == IncidentEvent.model_validate_json(m.value).incident_id.encode() for m in messages), \
        "incidents are keyed by their id"
    dips = {i.incident_id: i for i in incidents if i.kind == "conversion_drop"}
    assert len(dips) == 1, "exactly one conversion-drop incident for one planted dip"
    assert next(iter(dips.values())).series == [f"{PLG}|new_user|web|treatment"]

    plan_files = sorted(settings.plan_dir.glob("plg-onboarding/plan-*.json"))
    assert plan_files, f"no plan file in {settings.plan_dir}"
    plan = orjson.loads(plan_files[-1].read_bytes())
    assert any(item["source"] in dips for item in plan["backlog"]), \
        "the plan's backlog carries the incident's post-incident review"


def test_malformed_records_and_a_tombstone_are_dead_lettered_alone_and_the_worker_goes_on(isolated_settings,
                                                                                          start_worker):
    settings = isolated_settings()
    spec = SimulationSpec(days=1, injections=())

    def exposure(n: int) -> bytes:
        return encode(EngagementEvent(
            event_id=f"e{n}", event_type="exposure", event_time=spec.start + timedelta(minutes=n),
            user_id="u000001", initiative=PLG, profile="new_user", channel="web", variant="control"))

    bad = [b"not json {", b'{"event_id": "x", "event_type": "exposure"}']
    records = [("engagement", b"u000001", exposure(n)) for n in range(5)]
    records += [("engagement", b"u000001", raw) for raw in bad]  # same key: same partition, in order
    records += [("engagement", b"u000001", exposure(5)), ("engagement", b"u000001", None)]  # a tombstone
    records += [("engagement", b"u000001", exposure(n)) for n in range(6, 12)]
    asyncio.run(produce(settings, records))

    worker = start_worker(settings)
    wait_for(lambda: worker.counted(PLG) == 12, timeout=120,
             what="the 12 valid records around the malformed ones to be counted", on_timeout=worker.log)

    letters = [orjson.loads(m.value) for m in consume(settings, "dead-letters", want=3, timeout=60)]
    assert [base64.b64decode(letter["value_b64"]) for letter in letters] == [*bad, b""]
    assert letters[0]["reason"] == "not JSON"
    assert letters[1]["reason"].startswith("invalid EngagementEvent")
    assert letters[2]["reason"].startswith("empty value (a tombstone)")
    assert [letter["offset"] for letter in letters] == [5, 6, 8]
    assert {letter["source_topic"] for letter in letters} == {settings.topic("engagement")}
    # One each, by reason kind.
    by_reason = sorted(line for line in worker.metrics_text().splitlines()
                       if line.startswith("pmon_dead_letters_total{"))
    prefix = 'pmon_dead_letters_total{reason="'
    suffix = f'",stage="decode",topic="{settings.topic("engagement")}"}} 1.0'
    assert len(by_reason) == 3 and all(line.startswith(prefix) and line.endswith(suffix) for line in by_reason), \
        by_reason
    reasons = sorted(line[len(prefix):-len(suffix)] for line in by_reason)
    assert reasons[0] == "empty value (a tombstone)" and reasons[1].startswith("invalid EngagementEvent: ") \
        and reasons[2] == "not JSON", reasons


def test_partials_of_a_backfill_stamped_in_the_past_are_stamped_when_sent(isolated_settings, start_worker):
    """A backfill's records may carry their event times as Kafka timestamps: partials stamped with those would fall
    out of the partials topic's time retention before stage 2 read them (segments older than retention are
    deleted). They are stamped when sent; the source's broker time rides in a header for the latency metric."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    from streams.ingest import PARTIALS_TOPIC, SOURCE_TIME_HEADER
    from streams.kafka_io import client_options, ensure_topics

    settings = isolated_settings()
    spec = SimulationSpec(days=1, injections=())
    old_ms = int((time.time() - 30 * 86_400) * 1000)  # older than Kafka's default 7-day retention
    started_ms = int(time.time() * 1000)

    async def backfill() -> None:
        await ensure_topics(settings)
        # The source topic keeps its records whatever their timestamps, as a backfill's must: under the broker's
        # 7-day retention its next retention check (every 60 s here) deleted them before the worker read them.
        admin = AIOKafkaAdminClient(**client_options(settings))
        await admin.start()
        try:
            await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, settings.topic("engagement"),
                                                      {"retention.ms": "-1"})])
        finally:
            await admin.close()
        producer = AIOKafkaProducer(**client_options(settings), acks="all")
        await producer.start()
        try:
            for n in range(3):
                event = EngagementEvent(event_id=f"b{n}", event_type="exposure",
                                        event_time=spec.start + timedelta(minutes=n), user_id="u000001",
                                        initiative=PLG, profile="new_user", channel="web", variant="control")
                await producer.send_and_wait(settings.topic("engagement"), encode(event), key=b"u000001",
                                             timestamp_ms=old_ms + n)
        finally:
            await producer.stop()

    asyncio.run(backfill())
    worker = start_worker(settings)
    wait_for(lambda: worker.counted(PLG) == 3, timeout=120, what="the backfilled records to be counted",
             on_timeout=lambda: f"stage 1 received {worker.records_seen('engagement'):.0f} of 3, stage 2 counted "
                                f"{worker.counted(PLG)}; the worker's log:\n{worker.log()}")
    partials = consume_raw(settings, PARTIALS_TOPIC.format(app_id=settings.app_id))
    assert partials, "stage 1 must have sent its partials"
    assert all(m.timestamp >= started_ms - 60_000 for m in partials), [m.timestamp for m in partials]
    assert [dict(m.headers)[SOURCE_TIME_HEADER] for m in partials] == [str(old_ms).encode()] * len(partials)
    count = worker.metric("pmon_processing_latency_seconds_count", step="counted")
    total = worker.metric("pmon_processing_latency_seconds_sum", step="counted")
    assert count == len(partials) and total >= count * 29 * 86_400, (count, total)


def test_a_restarted_worker_resumes_its_state_and_repeats_no_incident(isolated_settings, start_worker, tmp_path):
    # A small sample: the users' states are compressed with a dictionary, which the changelog restores too.
    settings = isolated_settings(**DETECTION, state_dictionary_samples=50)
    records = _encoded(_dip_spec())
    expected = asyncio.run(EmbeddedDriver(
        settings.model_copy(update={"plan_dir": tmp_path / "embedded-plans"})).run(records)).incidents
    # Stop in the middle of the dip: the incident is open when the first worker stops.
    opened_at = next(e.evidence.bucket_end for e in expected
                     if e.transition == "opened" and e.kind == "conversion_drop")
    split = next(i for i, (topic, _, raw) in enumerate(records)
                 if topic == "engagement" and EngagementEvent.model_validate_json(raw).event_time > opened_at)
    halves = records[:split], records[split:]

    def engagement_count(part: list[tuple[str, bytes, bytes]]) -> int:
        return sum(1 for topic, _, _ in part if topic == "engagement")

    first = _start_on_backlog(settings, halves[0], start_worker)
    wait_for(lambda: first.counted(PLG) == engagement_count(halves[0]), timeout=240,
             what="the first worker to count the first half", on_timeout=first.log)
    first.stop()
    assert first.process.returncode == 0, first.log()

    asyncio.run(produce(settings, halves[1]))
    second = start_worker(settings)
    wait_for(lambda: second.counted(PLG) == len([r for r in records if r[0] == "engagement"]), timeout=240,
             what="the restarted worker to count everything, once", on_timeout=lambda: _progress(second))
    report = second.report(PLG)
    warming = [series for names in report["warming_up"].values() for series in names]
    assert warming == [s for s in warming if "|returning|email|" in s], \
        "the restarted worker must not warm its busy series up again"

    incidents = [IncidentEvent.model_validate_json(m.value)
                 for m in consume(settings, "incidents", want=len(expected), timeout=60)]
    assert sorted(map(_essence, incidents)) == sorted(map(_essence, expected)), \
        "a restart neither repeats nor loses an incident transition"


def test_a_killed_worker_restarts_without_counting_twice_or_raising_a_duplicate_incident(
        isolated_settings, start_worker, tmp_path):
    settings = isolated_settings(**DETECTION, state_dictionary_samples=50)  # compressed states, as above
    records = _encoded(_dip_spec())
    engagement = sum(1 for topic, _, _ in records if topic == "engagement")
    expected = asyncio.run(EmbeddedDriver(
        settings.model_copy(update={"plan_dir": tmp_path / "embedded-plans"})).run(records)).incidents
    first = _start_on_backlog(settings, records, start_worker)
    wait_for(lambda: first.counted(PLG) >= engagement * 0.6, timeout=240,
             what="the first worker to be well into the stream", on_timeout=first.log)
    warming_before = first.report(PLG)["warming_up"]
    first.stop(signal.SIGKILL)  # no commit, no flush: records since the last commit come again

    second = start_worker(settings)
    wait_for(lambda: second.counted(PLG) == engagement, timeout=240,
             what="the restarted worker to count every engagement event exactly once", on_timeout=second.log)
    report = second.report(PLG)
    pairs = lambda warming: {(d, s) for d, names in warming.items() for s in names}  # noqa: E731
    assert pairs(report["warming_up"]) <= pairs(warming_before), "no new warm-up after the restart"

    messages = consume(settings, "incidents", want=len(expected), timeout=60)
    incidents = [IncidentEvent.model_validate_json(m.value) for m in messages]
    # At-least-once: a transition sent just before the kill may be sent again, with the same event id.
    assert sorted(set(map(_essence, incidents))) == sorted(map(_essence, expected))
    assert {i.incident_id for i in incidents} == {e.incident_id for e in expected}, \
        "the restart raised no incident the uninterrupted run did not"


def test_the_timer_finds_a_feed_that_went_silent(isolated_settings, start_worker):
    # A short objective and check interval so the test takes seconds; the mechanism is the production one.
    # Engagement only, no consent records: opt-out, so that the feed is the only thing judged here.
    settings = isolated_settings(freshness_objective_seconds=3, check_interval_seconds=1,
                                 consent_default_policy="opt-out", consent_policies={})
    plg = next(spec for spec in default_program() if spec.name == PLG)
    spec = SimulationSpec(seed=5, days=1, users=500, initiatives=(plg,), injections=())
    records = [r for r in _encoded(spec) if r[0] == "engagement"][:200]
    asyncio.run(produce(settings, records))
    worker = start_worker(settings)
    wait_for(lambda: worker.counted(PLG) == len(records), timeout=120, what="the worker to count the events",
             on_timeout=worker.log)
    # No event arrives any more: only the timer can find it.
    [stale] = [IncidentEvent.model_validate_json(m.value) for m in consume(settings, "incidents", want=1, timeout=60)]
    assert (stale.kind, stale.transition, stale.series) == ("feed_stale", "opened", [f"{PLG}|engagement"])
    assert stale.evidence.observed > stale.evidence.expected == 3.0
    assert stale.owner == "Personalization Architect"


# --------------------------------------------------------------------------- consent, on the real broker
RAW_USERS = {"revoked-first": "raw-user-alpha-1001", "exposed-first": "raw-user-bravo-2002",
             "fallback": "raw-user-charlie-3003"}


def _consent(user: str, n: int, at: timedelta, status: str) -> tuple[str, bytes, bytes]:
    return ("consent", user.encode(), encode(ConsentEvent(
        event_id=f"c-{user[-4:]}-{n}", event_time=T0 + at, user_id=user, purpose="personalization", status=status,
        source="privacy_center", region="EU")))


def _exposure(user: str, initiative: str, at: timedelta, *, fallback: bool = False) -> tuple[str, bytes, bytes]:
    return ("engagement", user.encode(), encode(EngagementEvent(
        event_id=f"x-{user[-4:]}", event_type="exposure", event_time=T0 + at, user_id=user, initiative=initiative,
        profile="new_user", channel="web", experiment="onboarding-checklist", variant="treatment",
        rule_id="plg-checklist-web", fallback=fallback)))


def _body(url: str) -> bytes:
    """What the worker answers at `url`, whatever the status (/ready may answer 503)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read()
    except urllib.error.HTTPError as exc:
        return exc.read()


def test_consent_violations_are_raised_within_seconds_in_either_arrival_order_and_never_for_a_fallback(
        isolated_settings, start_worker):
    settings = isolated_settings()
    granted = [_consent(user, 0, timedelta(hours=-1), "granted") for user in RAW_USERS.values()]
    asyncio.run(produce(settings, granted))
    worker = start_worker(settings)
    wait_for(lambda: worker.records_seen("consent") == len(granted), timeout=60,
             what="the grants to reach the ledger", on_timeout=worker.log)

    # 1. The revocation arrives first, then a personalized exposure after it (event time and arrival).
    alpha = RAW_USERS["revoked-first"]
    asyncio.run(produce(settings, [_consent(alpha, 1, timedelta(0), "revoked")]))
    wait_for(lambda: worker.records_seen("consent") == len(granted) + 1, timeout=30,
             what="the revocation to be processed first", on_timeout=worker.log)
    asyncio.run(produce(settings, [_exposure(alpha, "Consent A", timedelta(minutes=5))]))
    opened = wait_for(lambda: consent_incidents(settings).get("Consent A"), timeout=15,
                      what="a consent violation within seconds of the exposure", on_timeout=worker.log)
    assert (opened.owner, opened.rung, opened.severity) == ("Data Privacy Lead", 2, "critical")
    assert opened.evidence.detail["violations"] == 1 and opened.series == ["Consent A|new_user|web|treatment"]

    # 2. The exposure arrives first; the revocation arrives after it but carries an earlier event time.
    bravo = RAW_USERS["exposed-first"]
    asyncio.run(produce(settings, [_exposure(bravo, "Consent B", timedelta(minutes=5))]))
    # Stage 2 has counted it (its report exists): a violation judged with it would be on the topic by now.
    wait_for(lambda: worker.report("Consent B"), timeout=30,
             what="the exposure to be judged (consented at the time) and counted by stage 2", on_timeout=worker.log)
    assert "Consent B" not in consent_incidents(settings), "consented when it arrived"
    asyncio.run(produce(settings, [_consent(bravo, 1, timedelta(0), "revoked")]))
    late = wait_for(lambda: consent_incidents(settings).get("Consent B"), timeout=15,
                    what="the late revocation to convict the exposure within seconds", on_timeout=worker.log)
    assert late.owner == "Data Privacy Lead"
    assert [e["late"] for e in late.evidence.detail["examples"]] == [True]

    # 3. A fallback exposure to a user who revoked is not personalization: no violation.
    charlie = RAW_USERS["fallback"]
    asyncio.run(produce(settings, [_consent(charlie, 1, timedelta(0), "revoked")]))
    asyncio.run(produce(settings, [_exposure(charlie, "Consent C", timedelta(minutes=5), fallback=True)]))
    wait_for(lambda: worker.report("Consent C"), timeout=30, what="the fallback exposure to be counted",
             on_timeout=worker.log)
    report = worker.report("Consent C")
    assert "Consent C" not in consent_incidents(settings)
    assert report["governance_checklist"][0]["item"] == "consent_adherence"

    # Privacy by design: no raw user id in any output of the run, nor in the state's changelogs, the web views
    # (metrics, health, readiness, reports) or the log.
    metrics = worker.metrics_text().encode()
    views = {path: _body(f"{worker.url}{path}") for path in ("/health", "/ready")}
    for name in ("Consent A", "Consent B", "Consent C"):
        query = urllib.parse.urlencode({"initiative": name, "window": "30d", "detail": "full"})
        views[f"report {name}"] = _body(f"{worker.url}/pmon/report/?{query}")
    worker.stop()
    outputs = {topic: consume(settings, topic, want=10**6, timeout=3, settle=0)
               for topic in ("incidents", "plan-updates")}
    internal = [f"{settings.app_id}-{name}-changelog" for name in ("initiatives", "users")]
    blobs = {f"{topic}@{m.offset}": (m.key or b"") + m.value for topic, messages in outputs.items() for m in messages}
    blobs |= {f"{topic}@{m.offset}": (m.key or b"") + (m.value or b"")
              for topic in internal for m in consume_raw(settings, topic)}
    blobs |= {str(path): path.read_bytes() for path in settings.plan_dir.rglob("*.json")}
    blobs |= {"worker log": worker.log_path.read_bytes(), "metrics": metrics, **views}
    assert outputs["incidents"] and len(blobs) > 10, "the check must look at real outputs"
    assert all(b'"initiative"' in views[f"report Consent {c}"] for c in "ABC"), "the reports must be real ones"
    leaked = sorted({(uid, where) for uid in RAW_USERS.values() for where, blob in blobs.items()
                     if uid.encode() in blob})
    assert leaked == []
    assert any(opened.evidence.detail["users_listed"][0].encode() in blob for blob in blobs.values()), \
        "the pseudonyms are there instead"


def test_a_violation_does_not_wait_for_a_long_commit_interval_that_outlasts_the_old_transaction_timeout(
        isolated_settings, start_worker):
    # 45 s: longer than the 30 s transaction timeout the producers had, which the broker then enforced by aborting.
    interval = 45
    settings = isolated_settings(commit_interval_seconds=interval)
    assert settings.transaction_timeout_seconds > interval
    user, other = RAW_USERS["revoked-first"], RAW_USERS["fallback"]
    asyncio.run(produce(settings, [_consent(user, 1, timedelta(0), "revoked"),
                                   _consent(other, 1, timedelta(0), "revoked")]))
    worker = start_worker(settings)
    asyncio.run(produce(settings, [_exposure(user, "Urgent A", timedelta(minutes=5))]))
    produced = time.monotonic()
    # Both stages commit at once what holds a violation or an incident: well within one interval.
    opened = wait_for(lambda: consent_incidents(settings).get("Urgent A"), timeout=interval - 15,
                      what="the violation's incident before the commit interval ends", on_timeout=worker.log)
    assert opened.severity == "critical" and time.monotonic() - produced < interval
    # Ordinary traffic waits for the interval. A dead letter is sent at once, so the broker holds the transaction
    # open from then on: it commits, longer than 30 s later, without being aborted and replayed.
    asyncio.run(produce(settings, [("engagement", other.encode(), b"not json"),
                                   _exposure(other, "Urgent B", timedelta(minutes=6), fallback=True)]))
    wait_for(lambda: worker.counted("Urgent B") == 1, timeout=2 * interval + 60,
             what="the fallback exposure counted at the end of its interval", on_timeout=worker.log)
    log = worker.log()
    assert "transaction of partition" not in log and "taking partition" not in log, log[-3000:]
    assert worker.records_seen("engagement") == 3
    letters = consume(settings, "dead-letters", want=2, timeout=5, settle=1)
    assert [orjson.loads(m.value)["reason"] for m in letters] == ["not JSON"], letters


# --------------------------------------------------------------------------- experiments, on the real broker
def test_experiment_readouts_on_the_worker_match_the_embedded_driver(isolated_settings, start_worker, tmp_path):
    settings = isolated_settings(**experiment_plans())
    records = _encoded(EXPERIMENT_SPEC)
    expected = asyncio.run(EmbeddedDriver(settings.model_copy(update={"plan_dir": tmp_path / "embedded"}),
                                          replay=True).run(records)).incidents
    decisions = [e for e in expected if e.kind == "experiment_decision"]
    assert {e.initiative for e in decisions} == {i.name for i in EXPERIMENT_SPEC.initiatives}

    worker = _start_on_backlog(settings, records, start_worker)
    engagement = {i.name: 0 for i in EXPERIMENT_SPEC.initiatives}
    for topic, _, raw in records:
        if topic == "engagement":
            engagement[EngagementEvent.model_validate_json(raw).initiative] += 1
    for initiative, count in engagement.items():
        wait_for(lambda initiative=initiative, count=count: worker.counted(initiative) == count, timeout=240,
                 what=f"the worker to count {initiative}'s events", on_timeout=worker.log)
    got = [IncidentEvent.model_validate_json(m.value) for m in consume(settings, "incidents", want=len(expected))]
    assert sorted(map(_essence, (e for e in got if e.kind == "experiment_decision"))) == \
        sorted(map(_essence, decisions)), "the same decisions, with the same evidence, as the embedded driver"
    for initiative in engagement:
        memos = worker.report(initiative)["experiments"]
        assert [m["summary"]["state"] for m in memos] == [
            next(e for e in reversed(decisions) if e.initiative == initiative).evidence.detail["state"]]
