"""The embedded driver end to end, in process: dead letters, a planted dip, the plan file, pseudonyms."""

from __future__ import annotations

import base64
import pickle
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from detectors.rate_change import CvrDropDetector
from incidents.breach_policy import period_of
from incidents.model import incident_id
from incidents.playbooks import playbook_steps
from incidents.series import build_key
from monitor.events import ConsentEvent, EngagementEvent, encode, reason_kind
from monitor.exceptions import MonitorError
from monitor.initiative_stage import Judged
from monitor.messages import Partial
from monitor.messages import decode as decode_message
from monitor.pseudonym import Pseudonymiser
from monitor.report import ReportRequest, build_report
from monitor.settings import Settings
from monitor.state_codec import StateCodec
from plans.document import PlanDocument, post_incident_review_id
from plans.plan_sink import latest, plan_files
from streams.embedded import EmbeddedDriver, EmbeddedRun

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
INITIATIVE = "PLG Onboarding"
PROFILE, CHANNEL, VARIANT = "new_user", "web", "treatment"
SERIES = build_key(INITIATIVE, PROFILE, CHANNEL, VARIANT)
KEY = "test-pseudonym-key"
CLEAN_HOURS, DIP_HOURS, AFTER_HOURS = 30, 4, 10
EXPOSURES, CLEAN_CONVERSIONS, DIP_CONVERSIONS = 600, 60, 30  # 10 %, then a 50 % dip (p ~ 6e-6)
USERS = 600

Record = tuple[str, bytes | None, bytes]


def settings(plan_dir: Path, **overrides: object) -> Settings:
    # Every setting the assertions depend on is explicit, whatever PMON_* the environment holds.
    return Settings(plan_dir=plan_dir, pseudonym_key=KEY, bucket_seconds=3600, allowed_lateness_seconds=600,
                    retention_days=30, baseline_buckets=72, warmup_buckets=24,
                    min_exposures=200, significance=0.001, breach_span_buckets=3, recovery_span_buckets=3,
                    escalate_every=6, retry_limit=2, idle_close_seconds=900, topic_prefix="pmon",
                    series_detectors=("conversion_drop",),  # the exact binomial test these settings tune
                    # The test users have no consent record; consent is not what these tests judge.
                    consent_default_policy="opt-out", consent_policies={}, **overrides)


def driver(plan_dir: Path, **overrides: object) -> EmbeddedDriver:
    # A still clock: no idle closes.
    return EmbeddedDriver(settings(plan_dir, **overrides), wall_clock=lambda: 1_800_000_000.0)


def user(n: int) -> str:
    return f"u{n % USERS:06d}"


def engagement(n: int, at: datetime, event_type: str = "exposure", **overrides: object) -> Record:
    fields: dict[str, object] = dict(event_id=f"evt-{n}", event_type=event_type, event_time=at, user_id=user(n),
                                     initiative=INITIATIVE, profile=PROFILE, channel=CHANNEL, cohort="2026-10",
                                     experiment="onboarding-v2", variant=VARIANT,
                                     revenue=20.0 if event_type == "conversion" else 0.0)
    fields.update(overrides)
    return "engagement", user(n).encode(), encode(EngagementEvent(**fields))


def planted_dip_series() -> list[Record]:
    """30 clean hours at 10 %, 4 hours at 5 %, 10 clean hours, then one event that closes them all."""
    records: list[Record] = []
    n = 0
    for hour in range(CLEAN_HOURS + DIP_HOURS + AFTER_HOURS):
        conversions = DIP_CONVERSIONS if CLEAN_HOURS <= hour < CLEAN_HOURS + DIP_HOURS else CLEAN_CONVERSIONS
        start = T0 + timedelta(hours=hour)
        for i in range(EXPOSURES + conversions):  # in event-time order, 5 s apart: 660 events < 3,600 s
            records.append(engagement(n, start + timedelta(seconds=5 * i),
                                      "exposure" if i < EXPOSURES else "conversion"))
            n += 1
    end = T0 + timedelta(hours=CLEAN_HOURS + DIP_HOURS + AFTER_HOURS + 1, minutes=15)
    records.append(engagement(n, end))
    return records


@pytest.fixture(scope="module")
def dip_records() -> list[Record]:
    return planted_dip_series()


def first_index_at(records: list[Record], hour: int) -> int:
    stamp = (T0 + timedelta(hours=hour)).strftime("%Y-%m-%dT%H:")
    return next(i for i, (_, _, raw) in enumerate(records) if stamp.encode() in raw)


# ------------------------------------------------------------------------ bad input
GOOD_AT = T0 + timedelta(minutes=1)


def unvalidated(**overrides: object) -> bytes:
    """The bytes `encode` gives for an EngagementEvent built without validation: absurd values get through."""
    fields: dict[str, object] = dict(event_id="bad", event_type="exposure", event_time=GOOD_AT, user_id="u777001",
                                     initiative=INITIATIVE, profile=PROFILE, channel=CHANNEL, cohort="all",
                                     experiment=None, variant=VARIANT, rule_id=None, fallback=False,
                                     decision_latency_ms=0.0, revenue=0.0)
    fields.update(overrides)
    return encode(EngagementEvent.model_construct(**fields))


BAD_RECORDS: list[tuple[str, bytes, tuple[str, ...]]] = [
    ("not JSON", b'{"event_id": "x", "event_type": "expo', ("not JSON",)),
    ("a JSON list", b'[{"event_id": "x"}, 2, 3]', ("not a JSON object",)),
    ("a wrong schema", b'{"id": 1, "kind": "view", "ts": "2026-11-01T00:00:00Z"}',
     ("invalid EngagementEvent", "Field required")),
    ("negative revenue", unvalidated(event_type="conversion", revenue=-5.0),
     ("invalid EngagementEvent", "revenue", "greater than or equal to 0")),
    ("an event time in 1970", unvalidated(event_time=datetime(1970, 1, 1, 0, 0, 1, tzinfo=timezone.utc)),
     ("invalid EngagementEvent", "event_time", "2000")),
    ("revenue on a click", unvalidated(event_type="click", revenue=5.0),
     ("invalid EngagementEvent", "revenue", "click")),
]


@pytest.mark.parametrize(("what", "raw", "reason_words"), BAD_RECORDS, ids=[b[0] for b in BAD_RECORDS])
async def test_bad_input_becomes_one_dead_letter_and_the_next_record_is_processed(
        tmp_path: Path, what: str, raw: bytes, reason_words: tuple[str, ...]) -> None:
    embedded = driver(tmp_path)
    await embedded.feed(*_feed_args(engagement(1, GOOD_AT)))
    await embedded.feed("engagement", raw, key=b"u777001")
    await embedded.feed(*_feed_args(engagement(2, GOOD_AT + timedelta(seconds=1))))
    await embedded.flush()

    letters = embedded.run_result.dead_letters
    assert len(letters) == 1, what
    letter = letters[0]
    assert letter.raw() == raw and base64.b64decode(letter.value_b64) == raw
    assert base64.b64decode(letter.key_b64 or "") == b"u777001"
    assert (letter.source_topic, letter.stage, letter.offset) == ("pmon.engagement", "decode", 1)
    for word in reason_words:
        assert word in letter.reason, (what, letter.reason)
    assert "\n" not in letter.reason
    # The raw user id of the bad record is pseudonymised before validation: not in the reason nor the error.
    assert "u777" not in letter.reason and "u777" not in letter.error
    assert embedded.initiative_stage.state.clocks[INITIATIVE].counted == 2  # both good records, before and after
    assert embedded.run_result.incidents == []


def _feed_args(record: Record) -> tuple[str, bytes]:
    return record[0], record[2]


async def test_every_bad_record_in_a_stream_is_dead_lettered_once_in_order_of_its_topic(tmp_path: Path) -> None:
    embedded = driver(tmp_path)
    records: list[Record] = []
    for k, (_, raw, _) in enumerate(BAD_RECORDS):
        records.append(engagement(100 + k, GOOD_AT + timedelta(seconds=k)))
        records.append(("engagement", None, raw))
    records.append(("consent", b"u000001", b"\xff\xfe not utf-8"))
    run = await embedded.run(records)
    # In order within each topic (across topics Kafka promises no order).
    by_topic = {topic: [letter.raw() for letter in run.dead_letters if letter.source_topic == topic]
                for topic in ("pmon.engagement", "pmon.consent")}
    assert by_topic == {"pmon.engagement": [raw for _, raw, _ in BAD_RECORDS], "pmon.consent": [b"\xff\xfe not utf-8"]}
    assert len(run.dead_letters) == len(BAD_RECORDS) + 1
    assert embedded.initiative_stage.state.clocks[INITIATIVE].counted == len(BAD_RECORDS)
    # The report says so, by reason, without the records' particulars.
    report = build_report(embedded.initiative_stage, ReportRequest(initiative=INITIATIVE))
    expected: dict[str, int] = {}
    for letter in run.dead_letters:
        expected[reason_kind(letter.reason)] = expected.get(reason_kind(letter.reason), 0) + 1
    assert report.dead_letters == expected and sum(expected.values()) == len(BAD_RECORDS) + 1
    assert "not JSON" in report.dead_letters and not any("1970" in kind for kind in report.dead_letters)


async def test_a_record_keyed_by_anything_but_its_user_id_is_dead_lettered_alone(tmp_path: Path) -> None:
    # On another partition than the user's consent its verdict would be wrong: refused, not judged.
    embedded = driver(tmp_path)
    good_at = GOOD_AT + timedelta(seconds=1)
    consent = encode(ConsentEvent(event_id="c-1", event_time=good_at, user_id=user(1), purpose="personalization",
                                  status="granted", region="EU"))
    topic, _, exposure = engagement(2, good_at)
    run = await embedded.run([
        engagement(1, GOOD_AT),
        (topic, user(3).encode(), exposure),       # another user's key
        (topic, b"\xff\xfe", exposure),           # not UTF-8
        ("consent", b"device-42", consent),
        (topic, None, exposure),                   # no key: a file, a single partition
        engagement(4, good_at),
    ])
    # A batch takes its consent first: in order within each topic only.
    letters = sorted(run.dead_letters, key=lambda letter: (letter.source_topic != "pmon.engagement", letter.offset))
    assert [(letter.source_topic, base64.b64decode(letter.key_b64 or "")) for letter in letters] == [
        ("pmon.engagement", user(3).encode()), ("pmon.engagement", b"\xff\xfe"), ("pmon.consent", b"device-42")]
    assert {reason_kind(letter.reason) for letter in letters} == {"key is not the user id"}
    assert "user_id" in letters[0].error and user(2) not in letters[0].error
    assert embedded.initiative_stage.state.clocks[INITIATIVE].counted == 3  # 1, the unkeyed 2, and 4


async def test_one_event_from_the_far_future_does_not_make_the_rest_of_the_stream_late(tmp_path: Path) -> None:
    embedded = driver(tmp_path)  # wall clock: 2027-01-15
    await embedded.feed(*_feed_args(engagement(1, GOOD_AT)))
    await embedded.feed(*_feed_args(engagement(2, datetime(2099, 12, 31, tzinfo=timezone.utc))))
    for k in range(20):
        await embedded.feed(*_feed_args(engagement(3 + k, GOOD_AT + timedelta(minutes=5, seconds=k))))
    await embedded.flush()
    clock = embedded.initiative_stage.state.clocks[INITIATIVE]
    assert clock.late_dropped == 0 and clock.counted >= 21


# ------------------------------------------------------------------------ a planted dip
async def test_a_planted_dip_opens_one_incident_and_resolves_it(tmp_path: Path, dip_records: list[Record]) -> None:
    embedded = driver(tmp_path)
    # Up to hour 33 the watermark has closed hour 31, the second dipped hour: the incident is open.
    split = first_index_at(dip_records, CLEAN_HOURS + 3)
    await embedded.run(dip_records[:split])
    # One incident per initiative and kind (grouped), named after the bucket that opened it: the second dipped hour.
    expected_id = incident_id(INITIATIVE, "conversion_drop", "group", period_of(T0 + timedelta(hours=CLEAN_HOURS + 1)))
    assert [(e.transition, e.incident_id) for e in embedded.run_result.incidents] == [("opened", expected_id)]
    opened = embedded.run_result.incidents[0]
    assert opened.series == [SERIES] and opened.owner == "Testing Lead"
    assert opened.evidence.observed == pytest.approx(DIP_CONVERSIONS / EXPOSURES)
    assert opened.evidence.expected == pytest.approx(CLEAN_CONVERSIONS / EXPOSURES)

    plan = latest(tmp_path, INITIATIVE)
    assert plan is not None
    assert [i.incident_id for i in plan.open_incidents] == [expected_id]
    assert plan.open_incidents[0].status == "open" and plan.open_incidents[0].owner == "Testing Lead"
    review = [b for b in plan.backlog if b.id == post_incident_review_id(expected_id)]
    assert len(review) == 1 and review[0].owner == "Testing Lead"

    await embedded.run(dip_records[split:])
    incidents = embedded.run_result.incidents
    assert [(e.transition, e.incident_id) for e in incidents] == [("opened", expected_id), ("resolved", expected_id)]
    # Resolved after three healthy hours: the first three after the dip.
    assert incidents[1].evidence.bucket_start == T0 + timedelta(hours=CLEAN_HOURS + DIP_HOURS + 2)
    assert embedded.run_result.dead_letters == []

    plan = latest(tmp_path, INITIATIVE)
    assert plan is not None and plan.open_incidents == ()
    steps = [b for b in plan.backlog if b.id != post_incident_review_id(expected_id)]
    assert [b.id for b in plan.backlog][-1] == post_incident_review_id(expected_id)
    assert [b.title for b in steps] == [f"conversion_drop: {step}" for step in playbook_steps("conversion_drop")]
    assert all(b.owner == "Testing Lead" and b.due_at > b.created_at for b in plan.backlog)
    files = plan_files(tmp_path, INITIATIVE)
    assert len(files) >= 3  # at least: created, incident opened, incident resolved
    # One file per revision, none skipped: a step's several changes are one revision.
    assert [PlanDocument.model_validate_json(path.read_bytes()).revision for path in files] == \
        list(range(1, len(files) + 1))
    assert all(path.is_relative_to(tmp_path) for path in files)


async def test_two_runs_of_the_same_records_emit_the_same_incidents(tmp_path: Path,
                                                                    dip_records: list[Record]) -> None:
    started = datetime.now(timezone.utc)
    first = await driver(tmp_path / "a").run(dip_records)
    second = await driver(tmp_path / "b").run(dip_records)
    assert [e.transition for e in first.incidents] == ["opened", "resolved"]
    assert [e.model_dump() for e in second.incidents] == [e.model_dump() for e in first.incidents]

    def plans(run: Any) -> list[PlanDocument]:
        return [PlanDocument.model_validate_json(update) for update in run.plan_updates]

    # The same documents; only when each was written differs: `updated_at` is the writer's clock, beside the
    # event-time watermark the revision reflects.
    written = [plan.updated_at for plan in plans(first) + plans(second)]
    assert all(at >= started.replace(microsecond=0) for at in written)
    assert [p.model_copy(update={"updated_at": started}) for p in plans(first)] == \
        [p.model_copy(update={"updated_at": started}) for p in plans(second)]
    assert all(p.watermark is not None and p.watermark < started for p in plans(first)[1:])



async def test_an_observer_sees_every_verdict_and_shadow_detectors_change_nothing_emitted(
        tmp_path: Path, dip_records: list[Record]) -> None:
    """The hook `bench/detection.py` measures through: the same incidents and plans with a shadow detector as
    without; the observer gets each judged bucket's verdict and the per-series transitions, shadow's included."""
    plain = await driver(tmp_path / "plain").run(dip_records)
    judged: list[Judged] = []
    observed = EmbeddedDriver(settings(tmp_path / "observed"), wall_clock=lambda: 1_800_000_000.0,
                              observer=judged.append, shadow_detectors={"shadow_drop": CvrDropDetector})
    run = await observed.run(dip_records)
    assert [e.model_dump() for e in run.incidents] == [e.model_dump() for e in plain.incidents]
    assert len(run.plan_updates) == len(plain.plan_updates)
    by_name = {name: [j for j in judged if j.detector == name] for name in ("conversion_drop", "shadow_drop")}
    # Every closed hour, scored or not, once per detector: the planted hours and the one the last event opens.
    assert len(by_name["conversion_drop"]) == len(by_name["shadow_drop"]) == CLEAN_HOURS + DIP_HOURS + AFTER_HOURS + 1
    opened = [j for j in by_name["conversion_drop"] if any(t.transition == "opened" for t in j.transitions)]
    assert [j.start for j in opened] == [(T0 + timedelta(hours=CLEAN_HOURS + 1)).timestamp()]
    assert any(t.transition == "opened" for j in by_name["shadow_drop"] for t in j.transitions)
    with pytest.raises(MonitorError, match="already run as series detectors"):
        EmbeddedDriver(settings(tmp_path / "clash"), shadow_detectors={"conversion_drop": CvrDropDetector})

# ------------------------------------------------------------------------ privacy
async def test_raw_user_ids_never_reach_the_drivers_state(tmp_path: Path, dip_records: list[Record]) -> None:
    embedded = driver(tmp_path, state_dictionary_samples=100)
    consents: list[Record] = []
    for k, purpose in enumerate(("personalization", "analytics", "marketing")):
        for n in range(0, 50, 7):
            consents.append(("consent", user(n).encode(), encode(ConsentEvent(
                event_id=f"c-{k}-{n}", event_time=T0 + timedelta(minutes=k), user_id=user(n), purpose=purpose,
                status="granted" if n % 2 else "revoked", source="banner", region="EU"))))
    run: EmbeddedRun = await embedded.run(consents + dip_records[:first_index_at(dip_records, 3)])
    assert run.dead_letters == []

    pseudonym = Pseudonymiser(KEY.encode()).pseudonym
    users = {key: value for key, value in embedded.users.items() if not key.startswith("#")}
    # Users with a consent record and users exposed (their exposures are remembered there), all by pseudonym.
    assert {pseudonym(user(n)) for n in range(0, 50, 7)} <= set(users)
    assert all(key.startswith("p") and len(key) == 25 for key in users)
    assert embedded.user_stage.stored(pseudonym(user(7))).consent.changes["marketing"] == [
        ((T0 + timedelta(minutes=2)).timestamp(), True)]

    # Compressed values would hide an id from a byte search: the states are looked at decompressed.
    assert embedded.user_stage.dictionary == 1, "the user states were compressed"
    unpack = StateCodec(embedded.users, samples=0).unpack
    plain = {key: unpack(value) for key, value in embedded.users.items()}
    state_bytes = pickle.dumps((embedded.initiative_stage.state, plain))
    raw_ids = {user(n) for n in range(USERS)}
    leaked = sorted(uid for uid in raw_ids if uid.encode() in state_bytes)
    assert leaked == []
    assert pseudonym(user(7)).encode() in state_bytes  # the check looks at the right bytes


async def test_a_new_run_with_another_threshold_continues_the_plan_and_logs_the_change(tmp_path: Path) -> None:
    first = EmbeddedDriver(settings(tmp_path), wall_clock=lambda: 1_800_000_000.0)
    await first.run([engagement(1, GOOD_AT)])
    written = latest(tmp_path, INITIATIVE)
    assert written is not None and written.thresholds["alert_threshold"] == first.settings.effective_alert_threshold

    changed = settings(tmp_path).model_copy(update={"alert_threshold": 0.35})
    second = EmbeddedDriver(changed, wall_clock=lambda: 1_800_000_000.0)
    await second.run([engagement(2, GOOD_AT)])
    plan = latest(tmp_path, INITIATIVE)
    assert plan.revision > written.revision  # after every revision the first run wrote
    entries = [e for e in plan.change_log if e.field == "thresholds.alert_threshold"]
    assert [(e.old, e.new) for e in entries] == [(first.settings.effective_alert_threshold, 0.35)]


async def test_a_processing_failure_keeps_the_record_and_raises_monitoring_degraded(tmp_path: Path,
                                                                                    monkeypatch) -> None:
    embedded = driver(tmp_path)

    def broken(row):
        raise RuntimeError("detector exploded")

    monkeypatch.setattr(embedded.initiative_stage, "_on_bucket_closed", broken)
    await embedded.run([engagement(1, GOOD_AT)])
    await embedded.run([engagement(2, GOOD_AT + timedelta(hours=3))])  # closes the first bucket: the detector raises

    [letter] = embedded.run_result.dead_letters
    assert letter.stage == "process" and "detector exploded" in letter.reason
    failed = decode_message(letter.raw())  # the stage message it failed on, kept whole
    assert isinstance(failed, Partial) and failed.events() == 1 and failed.initiative == INITIATIVE
    [incident] = embedded.run_result.incidents
    assert incident.kind == "monitoring_degraded" and incident.owner == "Personalization Architect"
    await embedded.run([engagement(3, GOOD_AT + timedelta(hours=3, minutes=1))])
    assert embedded.initiative_stage.state.clocks[INITIATIVE].counted == 3, "the driver goes on after the failure"


async def test_a_run_over_the_same_input_into_the_same_plan_folder_writes_nothing_new(
        tmp_path: Path, dip_records: list[Record]) -> None:
    def folder() -> dict[str, bytes]:
        return {path.name: path.read_bytes() for path in plan_files(tmp_path, INITIATIVE)}

    await driver(tmp_path).run(dip_records)
    first = folder()
    assert len(first) >= 3
    rerun = driver(tmp_path)
    await rerun.run(dip_records)
    assert folder() == first and rerun.run_result.plan_updates == []
    # Other settings diverge: their revisions come after every stored one, which stay as they were.
    other = EmbeddedDriver(settings(tmp_path).model_copy(update={"recovery_span_buckets": 4}),
                           wall_clock=lambda: 1_800_000_000.0)
    await other.run(dip_records)
    after = folder()
    assert {name: after[name] for name in first} == first and len(after) > len(first)
    revisions = [PlanDocument.model_validate_json(body).revision for _, body in sorted(after.items())]
    assert sorted(revisions) == list(range(1, len(after) + 1))
