"""Stage 1 over a dict: batches combined into partials, offsets, consent read marks, bad records."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import orjson

from governance.consent_ledger import remembered_exposure
from monitor.events import ConsentEvent, EngagementEvent, encode
from monitor.messages import decode
from monitor.messages import encode as encode_message
from monitor.settings import Settings
from monitor.user_stage import SourceRecord, UserStage, UserState, decode_user, encode_user

T0 = datetime(2026, 11, 2, 10, tzinfo=timezone.utc)
WALL = T0.timestamp() + 86_400


def stage() -> UserStage:
    return UserStage(Settings(), {})


def exposure(n: int, at: timedelta, *, user: str = "u1", initiative: str = "A", **fields: object) -> bytes:
    return encode(EngagementEvent(event_id=f"e{n}", event_type=fields.pop("event_type", "exposure"),
                                  event_time=T0 + at, user_id=user, initiative=initiative, profile="p",
                                  channel="web", **fields))


def consent(n: int, at: timedelta, status: str, *, user: str = "u1") -> bytes:
    return encode(ConsentEvent(event_id=f"c{n}", event_time=T0 + at, user_id=user, purpose="personalization",
                               status=status, region="EU"))


def records(*values: bytes | None, first: int = 0) -> list[SourceRecord]:
    """Keyed as producers must: by the record's user id (a tombstone or a bad record keeps the default's)."""
    return [SourceRecord(first + n, value, _user_key(value)) for n, value in enumerate(values)]


def _user_key(value: bytes | None) -> bytes:
    try:
        return orjson.loads(value or b"")["user_id"].encode()
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return b"u1"


def test_a_batch_becomes_one_partial_per_initiative_with_its_counters_range_and_mark() -> None:
    users = stage()
    grant = records(consent(1, timedelta(0), "granted"))
    batch = records(exposure(1, timedelta(minutes=1)), exposure(2, timedelta(minutes=2), event_type="click"),
                    exposure(3, timedelta(hours=1, minutes=5), initiative="B"), first=10)
    result = users.process(0, batch, grant, wall_now=WALL)
    by_initiative = {p.initiative: p for p in result.partials}
    assert sorted(by_initiative) == ["A", "B"] and result.consumed_until == 12 and result.dead_letters == []
    a = by_initiative["A"]
    assert (a.source.partition, a.source.first, a.source.last) == (0, 10, 12)
    assert a.mark == (T0 + timedelta(hours=1, minutes=5)).timestamp()  # the partition's, over all initiatives
    [bucket] = a.buckets.values()
    [counters] = bucket.series.values()
    assert (counters.exposures, counters.clicks, bucket.governance.personalized) == (1, 1, {"web": 1})
    assert decode(encode_message(a)) == a  # the wire form keeps everything


def test_every_known_initiative_hears_from_each_batch_so_ranges_stay_contiguous() -> None:
    users = stage()
    first = users.process(0, records(exposure(1, timedelta(0)), exposure(2, timedelta(0), initiative="B")),
                          wall_now=WALL)
    users.commit(users.pending_writes())
    second = users.process(0, records(exposure(3, timedelta(minutes=1)), first=7), wall_now=WALL)
    assert {p.initiative for p in first.partials} == {p.initiative for p in second.partials} == {"A", "B"}
    silent = next(p for p in second.partials if p.initiative == "B")
    assert silent.buckets == {} and (silent.source.first, silent.source.last) == (2, 7)  # offsets 2..6 skipped


def test_records_covered_before_a_restart_are_not_combined_again() -> None:
    store: dict[str, bytes] = {}
    users = UserStage(Settings(), store)
    users.process(0, records(exposure(1, timedelta(0)), exposure(2, timedelta(0))), wall_now=WALL)
    users.commit(users.pending_writes())
    again = UserStage(Settings(), store)  # a new worker, the same committed state; offsets were not committed
    result = again.process(0, records(exposure(1, timedelta(0)), exposure(2, timedelta(0)),
                                      exposure(3, timedelta(0))), wall_now=WALL)
    [partial] = result.partials
    assert partial.events() == 1 and (partial.source.first, partial.source.last) == (2, 2)


def test_a_tombstone_and_a_bad_record_are_dead_lettered_alone_and_covered() -> None:
    result = stage().process(0, records(exposure(1, timedelta(0)), None, b"{", exposure(2, timedelta(0))),
                             wall_now=WALL)
    assert [letter.offset for letter in result.dead_letters] == [1, 2]
    assert result.dead_letters[0].reason.startswith("empty value (a tombstone)")
    [partial] = result.partials
    assert partial.events() == 2 and partial.source.last == 3


def test_a_record_without_a_key_is_taken_on_one_partition_and_dead_lettered_on_several() -> None:
    batch = [SourceRecord(0, exposure(1, timedelta(0)), b"u1"), SourceRecord(1, exposure(2, timedelta(0)), None),
             SourceRecord(2, exposure(3, timedelta(0)), b"u1")]
    one = stage().process(0, batch, wall_now=WALL)
    assert one.dead_letters == [] and one.partials[0].events() == 3
    several = UserStage(Settings(), {}, partitioned=True).process(0, batch, wall_now=WALL)
    assert [(letter.offset, letter.reason) for letter in several.dead_letters] == [(1, "key is missing")]
    [partial] = several.partials
    assert partial.events() == 2 and partial.source.last == 2  # its neighbours counted, the range whole


def test_an_exposure_waits_until_consent_is_read_past_it_so_arrival_order_does_not_matter() -> None:
    revoke = records(consent(1, timedelta(minutes=1), "revoked"))
    later = [exposure(1, timedelta(minutes=10)), exposure(2, timedelta(minutes=11))]
    # In order: the revocation is read first; 10 minutes later is past the 60 s grace: a violation.
    in_order = stage()
    in_order.process(0, [], records(consent(0, timedelta(0), "granted")), wall_now=WALL)
    expected = in_order.process(0, records(*later), revoke, wall_now=WALL)
    assert len(expected.partials[0].violations) == 2
    # Engagement first, consent partition not read that far yet: the exposures wait, then judge the same.
    backlog = stage()
    backlog.process(0, [], records(consent(0, timedelta(0), "granted")), wall_now=WALL)
    waiting = backlog.process(0, records(*later), wall_now=WALL, consent_read_until=-math.inf)
    assert waiting.consumed_until is None and len(waiting.deferred) == 2 and waiting.partials == []
    judged = backlog.process(0, waiting.deferred, revoke, wall_now=WALL, consent_read_until=-math.inf)
    assert judged.consumed_until is None, "consent read to minute 1 only: the exposures still wait"
    caught_up = backlog.process(0, judged.deferred, wall_now=WALL,
                                consent_read_until=(T0 + timedelta(hours=1)).timestamp())
    assert [v.event_id for v in caught_up.partials[0].violations] == \
        [v.event_id for v in expected.partials[0].violations]
    assert decode(encode_message(caught_up.partials[0])) == caught_up.partials[0]  # violations on the wire too


def test_an_exposure_produced_in_a_burst_waits_for_the_consent_produced_before_it() -> None:
    """A backlog's event times are long past; what orders it is when it was produced (the record timestamp)."""
    produced = WALL - 1.0
    revoke = records(consent(1, timedelta(minutes=1), "revoked"))
    burst = [SourceRecord(0, exposure(1, timedelta(minutes=10)), b"u1", timestamp=int(produced * 1000))]
    users = stage()
    users.process(0, [], records(consent(0, timedelta(0), "granted")), wall_now=WALL)
    skew = users.settings.consent_skew_seconds
    # Consent read to its end, but only just after the exposure was produced: the revocation sent before it
    # may not have reached its partition yet.
    early = users.process(0, burst, wall_now=WALL, consent_read_until=produced + skew / 2)
    assert early.deferred == burst and early.partials == []
    judged = users.process(0, early.deferred, revoke, wall_now=WALL, consent_read_until=produced + skew)
    assert judged.deferred == [] and len(judged.partials[0].violations) == 1


def test_a_batch_tells_its_dead_letters_by_reason_to_every_initiative_with_its_range() -> None:
    users = stage()
    users.process(0, records(exposure(1, timedelta(0), initiative="B")), wall_now=WALL)
    result = users.process(0, records(b"{not json", exposure(2, timedelta(0)), None, first=5), wall_now=WALL)
    assert {p.initiative: p.dead_letters for p in result.partials} == {
        "A": {"not JSON": 1, "empty value (a tombstone)": 1}, "B": {"not JSON": 1, "empty value (a tombstone)": 1}}
    assert decode(encode_message(result.partials[0])).dead_letters == result.partials[0].dead_letters


def test_user_state_survives_its_encoding() -> None:
    users = stage()
    users.process(0, records(exposure(1, timedelta(0), experiment="x", variant="t"),
                             exposure(2, timedelta(0), experiment="x", variant="t", event_type="conversion",
                                      revenue=5.0)),
                  records(consent(1, timedelta(0), "granted")), wall_now=WALL)
    writes = users.pending_writes()
    [pseudonym] = [k for k in writes if not k.startswith("#")]
    state = decode_user(writes[pseudonym])
    assert isinstance(state, UserState) and state.experiments["x"].conversions == 1
    assert encode_user(state) == writes[pseudonym]
    assert remembered_exposure(state.consent.remembered[0]).initiative == "A"


def test_an_experiment_record_takes_the_users_conversions_of_the_pre_period_and_not_later_ones() -> None:
    users = UserStage(Settings(cuped_pre_period_days=7), {})
    grant = records(consent(1, timedelta(days=-20), "granted"))
    before = [exposure(n, timedelta(days=-days), event_type="conversion", revenue=10.0 * n, initiative="B")
              for n, days in ((1, 9), (2, 3), (3, 1))]          # 9 days before: outside the 7-day period
    first = exposure(4, timedelta(0), experiment="x", variant="t")
    after = exposure(5, timedelta(hours=1), event_type="conversion", revenue=7.0, initiative="B")
    users.process(0, records(*before, first, after), grant, wall_now=WALL)
    writes = users.pending_writes()
    [pseudonym] = [k for k in writes if not k.startswith("#")]
    state = decode_user(writes[pseudonym])
    record = state.experiments["x"]
    assert (record.pre_conversions, record.pre_revenue) == (2, 50.0)
    assert encode_user(state) == writes[pseudonym]
    # The history is bounded: days beyond the period are dropped as new days arrive.
    assert all(day >= int((T0 + timedelta(hours=1)).timestamp() // 86_400) - 7 for day in state.activity)


def test_no_pre_period_keeps_no_history() -> None:
    users = UserStage(Settings(cuped_pre_period_days=0), {})
    users.process(0, records(exposure(1, timedelta(0), event_type="conversion", revenue=3.0)), wall_now=WALL)
    assert [key for key in users.pending_writes() if not key.startswith("#")] == []   # no user state touched
