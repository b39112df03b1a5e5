"""Poison pills on every input topic, on the real broker: each one dead-lettered once, the next record processed.

One worker reads every kind on every input topic (engagement, consent, rule-changes, incident-actions), each
poison record followed by a valid one on the same partition. The dead-letter topic must hold one letter per
poison record, with its reason and its original bytes (or, past `DEAD_LETTER_MAX_VALUE_BYTES`, their length,
SHA-256 and first bytes); `pmon_dead_letters_total` must count each exactly once; every valid record must be
processed. The input topics are created with a topic-level `max.message.bytes` so the broker accepts the 2 MB
record at all (its default is ~1 MB; a record the broker refuses never reaches the monitor).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from incidents.model import IncidentAction
from monitor import messages
from monitor.events import (
    DEAD_LETTER_MAX_VALUE_BYTES,
    DEAD_LETTER_PREFIX_BYTES,
    ConsentEvent,
    DeadLetter,
    EngagementEvent,
    RuleChangeEvent,
    encode,
    reason_kind,
)
from monitor.pseudonym import Pseudonymiser
from monitor.settings import Settings
from monitor.state_codec import StateCodec
from monitor.user_stage import decode_user
from pmon_harness import wait_for
from streams.app import internal_topics
from streams.ingest import PARTIALS_TOPIC, USERS_CHANGELOG
from streams.kafka_io import INPUT_TOPICS, ensure_topics
from tests.conftest import consume, consume_raw

INITIATIVE = "Poison Pills"
TOPIC_MAX_BYTES = 3_000_000   # topic-level max.message.bytes of the test's input topics: takes the 2 MB record
NOW = datetime.now(timezone.utc).replace(microsecond=0)
AT = NOW - timedelta(hours=2)   # valid event times: recent, so none is ahead of the wall clock


@dataclass
class Poison:
    topic: str
    kind: str
    key: bytes | None
    value: bytes | None
    reason: str          # the expected reason kind (`reason_kind`) or its start
    offset: int = -1     # set once produced


# -- valid records, one per poison record (each distinct, so each is seen processed) -----------
def valid_engagement(n: int) -> dict[str, Any]:
    return {"event_id": f"ok-{n}", "event_type": "click", "event_time": (AT + timedelta(seconds=n)).isoformat(),
            "user_id": f"u{n:06d}", "initiative": INITIATIVE, "profile": "new_user", "channel": "web"}


def valid_consent(n: int) -> dict[str, Any]:
    return {"event_id": f"ok-{n}", "event_time": (AT + timedelta(seconds=n)).isoformat(), "user_id": f"c{n:06d}",
            "purpose": "personalization", "status": "granted"}


def valid_rule_change(n: int) -> dict[str, Any]:
    return {"event_id": f"ok-{n}", "event_time": (AT + timedelta(seconds=n)).isoformat(), "initiative": INITIATIVE,
            "rule_id": "rule-1", "action": "updated", "author": "Ann Author", "approver": "Bo Approver",
            "ticket": "CHG-1"}


def valid_action(n: int) -> dict[str, Any]:
    return {"event_id": f"ok-{n}", "incident_id": "inc-unknown", "initiative": INITIATIVE, "action": "note",
            "by": "Cy Oncall", "text": "looked", "at": (AT + timedelta(seconds=n)).isoformat()}


VALID = {"engagement": valid_engagement, "consent": valid_consent, "rule-changes": valid_rule_change,
         "incident-actions": valid_action}
MODEL = {"engagement": "EngagementEvent", "consent": "ConsentEvent", "rule-changes": "RuleChangeEvent",
         "incident-actions": "IncidentAction"}
TIME_FIELD = {"engagement": "event_time", "consent": "event_time", "rule-changes": "event_time",
              "incident-actions": "at"}
# A record of another topic's schema: valid JSON, wrong schema.
OTHER = {"engagement": valid_consent, "consent": valid_rule_change, "rule-changes": valid_action,
         "incident-actions": valid_engagement}


def _json(record: dict[str, Any]) -> bytes:
    return orjson.dumps(record)


def poison_records(topic: str) -> list[Poison]:
    """Every listed kind that applies to `topic`, with the reason kind its dead letter must give."""
    model = MODEL[topic]
    base = VALID[topic](999_999)
    when = TIME_FIELD[topic]
    missing = {k: v for k, v in base.items() if k != when}
    invalid_utf8 = _json(base).replace(b'"ok-999999"', b'"ok-\xff\xfe"')
    big = dict(base, event_id="x" * 900_000)                     # a 900 KB value: a name far too long
    huge = {"y" * 2_000_000: 1, **base}                           # a 2 MB value: an unknown field of 2 MB
    kinds = [
        Poison(topic, "not JSON", b"k", b"this is {not json", "not JSON"),
        Poison(topic, "a JSON array", b"k", b'[{"event_id": "x"}, 2]', "not a JSON object"),
        Poison(topic, "wrong schema", b"k", _json(OTHER[topic](1)), f"invalid {model}"),
        Poison(topic, "missing fields", b"k", _json(missing), f"invalid {model}: {when}"),
        Poison(topic, "unknown field", b"k", _json(dict(base, extra=1)), f"invalid {model}: unknown field"),
        Poison(topic, "invalid UTF-8", b"k", invalid_utf8, "not JSON"),
        Poison(topic, "empty value", b"k", b"", "empty value (zero bytes)"),
        Poison(topic, "tombstone", b"k", None, "empty value (a tombstone)"),
        Poison(topic, "null key", None, b"{", "not JSON"),
        Poison(topic, "900 KB value", b"k", _json(big), f"invalid {model}: event_id"),
        Poison(topic, "2 MB value", b"k", _json(huge), f"invalid {model}: unknown field"),
        Poison(topic, "event time in 1970", b"k", _json(dict(base, **{when: "1970-01-01T00:00:01Z"})),
               f"invalid {model}: {when}"),
        Poison(topic, "event time in 2100", b"k", _json(dict(base, **{when: "2100-06-01T00:00:00Z"})),
               f"invalid {model}: {when}"),
    ]
    if topic in ("engagement", "consent"):  # keyed by user: another key may sit on another user's partition
        kinds.append(Poison(topic, "another user's key", b"u123456", _json(base), "key is not the user id"))
    if topic == "engagement":
        kinds.append(Poison(topic, "negative revenue", b"k",
                            _json(dict(base, event_type="conversion", revenue=-5.0)), f"invalid {model}: revenue"))
    return kinds


# -- the broker -------------------------------------------------------------------------------
async def _create_input_topics(settings: Settings) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(settings.topic(name), settings.topic_partitions, 1,
                                            topic_configs={"max.message.bytes": str(TOPIC_MAX_BYTES)})
                                   for name in INPUT_TOPICS])
    finally:
        await admin.close()
    await ensure_topics(settings, internal=internal_topics(settings))   # the others, as the worker makes them


async def _produce(settings: Settings, records: list[tuple[Poison | None, str, bytes | None, bytes | None]]) -> None:
    """Send in order to partition 0 of each topic; each poison record learns its offset."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True,
                                max_request_size=TOPIC_MAX_BYTES)
    await producer.start()
    try:
        for poison, topic, key, value in records:
            sent = await (await producer.send(settings.topic(topic), key=key, value=value, partition=0))
            if poison is not None:
                poison.offset = sent.offset
    finally:
        await producer.stop()


def _metric(text: str, name: str, labels: dict[str, str]) -> float:
    """The sum of `name`'s samples whose labels include `labels` (over the others, e.g. every reason)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{"):
            body, value = line[len(name) + 1:].rsplit("} ", 1)
            if all(f'{k}="{v}"' in body.split(",") for k, v in labels.items()):
                total += float(value)
    return total


@pytest.mark.kafka
@pytest.mark.timeout(400)
def test_every_poison_pill_on_every_input_topic_is_dead_lettered_once_and_the_next_record_is_processed(
        isolated_settings, start_worker):
    settings = isolated_settings(topic_partitions=1)
    poisons: list[Poison] = []
    records: list[tuple[Poison | None, str, bytes | None, bytes | None]] = []
    valid: dict[str, list[dict[str, Any]]] = {topic: [] for topic in VALID}
    for topic in VALID:
        for n, poison in enumerate(poison_records(topic)):
            poisons.append(poison)
            good = VALID[topic](n)
            valid[topic].append(good)
            # A valid follower is keyed as producers must (engagement and consent by user id); the null-key
            # kind's has no key either.
            key = poison.key if poison.key is None or "user_id" not in good else good["user_id"].encode()
            records += [(poison, topic, poison.key, poison.value), (None, topic, key, _json(good))]
    asyncio.run(_create_input_topics(settings))
    asyncio.run(_produce(settings, records))
    worker = start_worker(settings)

    def progress() -> str:
        text = worker.metrics_text()
        rows = [line for line in text.splitlines() if line.startswith(("pmon_records_total", "pmon_dead_letters_total",
                                                                       "pmon_sink_retries_total"))]
        report = worker.report(INITIATIVE) or {}
        return (f"counted {report.get('counted_events')} late {report.get('late_dropped')}; "
                + "\n".join(rows) + "\n" + worker.log())

    # Every valid engagement record counted (the report), every dead letter counted (the metric).
    def engagement_counted() -> bool:
        report = worker.report(INITIATIVE)
        return report is not None and report["counted_events"] + report["late_dropped"] == len(valid["engagement"])

    wait_for(engagement_counted, timeout=180, what=f"{len(valid['engagement'])} valid engagement records counted",
             on_timeout=progress)

    def all_dead_letters_counted() -> bool:
        text = worker.metrics_text()
        return all(_metric(text, "pmon_dead_letters_total", {"stage": "decode", "topic": settings.topic(topic)})
                   >= sum(1 for p in poisons if p.topic == topic) for topic in VALID)

    wait_for(all_dead_letters_counted, timeout=120, what="every dead letter counted", on_timeout=progress)

    # One dead letter per poison record, each with its reason and its bytes (or their length and hash).
    consumed = consume(settings, "dead-letters", want=len(poisons), timeout=60, settle=3.0)
    letters = [DeadLetter.model_validate_json(m.value) for m in consumed]
    assert all(len(m.value) < 1_000_000 for m in consumed), "a dead letter must fit under the producers' limit"
    by_place: dict[tuple[str, int], list[DeadLetter]] = {}
    for letter in letters:
        by_place.setdefault((letter.source_topic, letter.offset), []).append(letter)
    problems = []
    for poison in poisons:
        found = by_place.pop((settings.topic(poison.topic), poison.offset), [])
        what = f"{poison.topic} / {poison.kind} @ {poison.offset}"
        if len(found) != 1:
            problems.append(f"{what}: {len(found)} dead letters")
            continue
        letter = found[0]
        original = poison.value or b""
        if not reason_kind(letter.reason).startswith(poison.reason):
            problems.append(f"{what}: reason {letter.reason[:200]!r}, expected {poison.reason!r}")
        if letter.stage != "decode" or letter.partition != 0:
            problems.append(f"{what}: stage {letter.stage}, partition {letter.partition}")
        if (letter.original_length, letter.sha256) != (len(original), hashlib.sha256(original).hexdigest()):
            problems.append(f"{what}: length {letter.original_length} and hash {letter.sha256} do not match")
        if len(original) > DEAD_LETTER_MAX_VALUE_BYTES:
            if not letter.truncated or letter.raw() != original[:DEAD_LETTER_PREFIX_BYTES]:
                problems.append(f"{what}: not truncated to its first {DEAD_LETTER_PREFIX_BYTES} bytes")
        elif letter.truncated or letter.raw() != original:
            problems.append(f"{what}: the original bytes are not kept whole")
        key = None if letter.key_b64 is None else base64.b64decode(letter.key_b64)
        if key != poison.key:
            problems.append(f"{what}: key {key!r}, expected {poison.key!r}")
    problems += [f"a dead letter for no poison record: {place}: {found[0].reason[:200]}"
                 for place, found in by_place.items()]
    assert not problems, "\n".join(problems) + f"\n{progress()}"

    # Counted exactly once each, per source topic.
    text = worker.metrics_text()
    counted = {topic: _metric(text, "pmon_dead_letters_total", {"stage": "decode", "topic": settings.topic(topic)})
               for topic in VALID}
    assert counted == {topic: float(sum(1 for p in poisons if p.topic == topic)) for topic in VALID}, progress()
    for topic in VALID:
        received = _metric(text, "pmon_records_total", {"topic": topic})
        assert received == 2 * len(valid[topic]), f"{topic}: {received} records received\n{progress()}"

    # The valid consent records are in the ledger (stage 1's changelog), under the users' pseudonyms.
    pseudonym = Pseudonymiser(settings.pseudonym_key.get_secret_value().encode()).pseudonym
    users = {r.key.decode(): r.value for r in consume_raw(settings, USERS_CHANGELOG.format(app_id=settings.app_id))
             if r.value is not None}
    unpack = StateCodec(users, samples=0).unpack
    missing_consent = [c["user_id"] for c in valid["consent"]
                       if pseudonym(c["user_id"]) not in users
                       or not decode_user(unpack(users[pseudonym(c["user_id"])])).consent.changes]
    assert missing_consent == [], f"consent not in the ledger for {missing_consent}"

    # The valid rule changes and incident actions were forwarded to the initiative's stage.
    forwarded = [messages.decode(r.value) for r in consume_raw(settings, PARTIALS_TOPIC.format(app_id=settings.app_id))]
    rule_changes = sorted(m.event.event_id for m in forwarded if isinstance(m, messages.RuleChange))
    actions = sorted(m.action.event_id for m in forwarded if isinstance(m, messages.Action))
    assert rule_changes == sorted(r["event_id"] for r in valid["rule-changes"])
    assert actions == sorted(a["event_id"] for a in valid["incident-actions"])


def test_the_largest_dead_letter_fits_a_kafka_record() -> None:
    """Whatever a letter carries (a 2 MB value and key, long texts of characters JSON escapes to six bytes), its
    JSON stays well under the smallest producer limit on its way (Faust's 1,000,000 bytes)."""
    nasty = "\x00" * 100_000
    letter = DeadLetter.of(b"\x00" * 2_000_000, source_topic="t" * 249, reason=nasty, error=nasty,
                           key=b"k" * 2_000_000, partition=2**31, offset=2**62, stage="process")
    assert len(encode(letter)) < 100_000
    whole = DeadLetter.of(b"\xff" * DEAD_LETTER_MAX_VALUE_BYTES, source_topic="t" * 249, reason=nasty, error=nasty,
                          key=b"k" * DEAD_LETTER_PREFIX_BYTES)
    assert not whole.truncated and whole.raw() == b"\xff" * DEAD_LETTER_MAX_VALUE_BYTES
    assert len(encode(whole)) < 740_000   # docs/semantics.md says so
    assert DeadLetter.model_validate_json(encode(letter)) == letter


def test_a_dead_letter_keeps_small_records_whole_and_large_ones_as_length_hash_and_prefix() -> None:
    small = DeadLetter.of(b"abc", source_topic="t", reason="not JSON", error="x", key=b"u1")
    assert (small.raw(), small.truncated, small.original_length) == (b"abc", False, 3)
    assert small.sha256 == hashlib.sha256(b"abc").hexdigest() and base64.b64decode(small.key_b64 or "") == b"u1"
    raw = bytes(range(256)) * 4000
    large = DeadLetter.of(raw, source_topic="t", reason="r", error="e", key=b"q" * 5000)
    assert large.truncated and large.raw() == raw[:DEAD_LETTER_PREFIX_BYTES]
    assert (large.original_length, large.sha256) == (len(raw), hashlib.sha256(raw).hexdigest())
    assert large.key_truncated and large.key_length == 5000
    assert large.key_sha256 == hashlib.sha256(b"q" * 5000).hexdigest()
    # A letter written before these fields existed still reads.
    old = DeadLetter.model_validate_json(b'{"source_topic":"t","value_b64":"YWJj","reason":"r","error":"e"}')
    assert old.raw() == b"abc" and old.original_length is None and not old.truncated


@pytest.mark.parametrize("topic", sorted(VALID))
def test_an_unknown_field_of_any_name_gives_a_bounded_reason(topic: str) -> None:
    from monitor.events import decode
    from monitor.exceptions import DecodeError

    model = {"engagement": EngagementEvent, "consent": ConsentEvent, "rule-changes": RuleChangeEvent,
             "incident-actions": IncidentAction}[topic]
    with pytest.raises(DecodeError) as info:
        decode(model, orjson.dumps({**VALID[topic](1), "z\n" * 100_000: 1}))
    assert len(info.value.reason) < 200 and "\n" not in info.value.reason
    assert reason_kind(info.value.reason) == f"invalid {model.__name__}: unknown field"


async def test_a_dead_letter_that_cannot_be_sent_is_not_counted_and_raises_monitoring_degraded(tmp_path) -> None:
    from prometheus_client import CollectorRegistry

    from monitor.emitter import Emitter
    from monitor.metrics import PipelineMetrics

    sent: list[tuple[str, bytes]] = []

    def send(topic: str, key: bytes, value: bytes) -> None:
        if topic == "dead-letters":
            raise OSError("the dead-letter topic is down")
        sent.append((topic, value))

    registry = CollectorRegistry()
    settings = Settings(plan_dir=tmp_path, retry_limit=1, topic_prefix="pmon")
    emitter = Emitter(settings, PipelineMetrics(registry), send=send)
    letter = DeadLetter.of(b"{", source_topic="pmon.engagement", reason="not JSON", error="x")
    await emitter.dead_letter(letter)
    labels = {"topic": "pmon.engagement", "stage": "decode", "reason": "not JSON"}
    assert registry.get_sample_value("pmon_dead_letters_total", labels) in (None, 0.0)
    assert registry.get_sample_value("pmon_sink_retries_total", {"sink": "dead-letters"}) == 2.0
    [(topic, value)] = sent
    incident = orjson.loads(value)
    assert topic == "incidents" and incident["kind"] == "monitoring_degraded" and incident["series"] == ["dead-letters"]

    registry = CollectorRegistry()
    ok = Emitter(settings, PipelineMetrics(registry), send=lambda topic, key, value: None)
    await ok.dead_letter(letter)
    assert registry.get_sample_value("pmon_dead_letters_total", labels) == 1.0
