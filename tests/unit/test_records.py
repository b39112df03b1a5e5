"""The fast path of `monitor.records` against the pydantic models: same verdicts, same records.

For any input, `decode_engagement(raw)` and `decode(EngagementEvent, raw)` either both raise
DecodeError with the same reason (and detail), or both succeed and
`decode_engagement(raw) == Engagement.from_model(model)` (same for consent). Inputs are
canonical records (which must take the fast path, not the model) and canonical records
with mutations: wrong types, padded, empty or too long strings, unknown or missing keys,
numbers out of range, bools as numbers and numbers as bools, numeric strings, other
datetime forms, nulls, revenue on a click.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import pickle
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any
from unittest import mock

import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from incidents.model import IncidentAction
from monitor import records
from monitor.events import ConsentEvent, EngagementEvent, RuleChangeEvent, decode, encode
from monitor.exceptions import DecodeError
from monitor.records import Consent, Engagement, decode_consent, decode_engagement

SETTINGS = settings(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

EARLIEST = datetime(2000, 1, 1, tzinfo=timezone.utc)
LATEST = datetime(2100, 1, 1, tzinfo=timezone.utc)
EVENT_TYPES = ("exposure", "click", "conversion")
PURPOSES = ("personalization", "analytics", "marketing")
STATUSES = ("granted", "revoked")
ENGAGEMENT_NAMES = ("event_id", "user_id", "initiative", "profile", "channel", "cohort", "experiment", "variant",
                    "rule_id", "region")
CONSENT_NAMES = ("event_id", "user_id", "source", "region")
PAIRS = {"engagement": (EngagementEvent, Engagement, decode_engagement),
         "consent": (ConsentEvent, Consent, decode_consent)}


# ---------------------------------------------------------------------------------------------
# The check every test makes
# ---------------------------------------------------------------------------------------------

def _counting(pseudonymise: Callable[[str], str] | None, log: list[str]) -> Callable[[str], str] | None:
    if pseudonymise is None:
        return None

    def counted(user_id: str) -> str:
        log.append(user_id)
        return pseudonymise(user_id)

    return counted


def assert_same(kind: str, raw: bytes, pseudonymise: Callable[[str], str] | None = None) -> bool:
    """Both paths agree on `raw`; True if it is valid. Also: both pseudonymise the same ids, once."""
    model, record_type, fast_decode = PAIRS[kind]
    model_calls: list[str] = []
    fast_calls: list[str] = []
    try:
        expected = record_type.from_model(decode(model, raw, pseudonymise=_counting(pseudonymise, model_calls)))
    except DecodeError as exc:
        with pytest.raises(DecodeError) as info:
            fast_decode(raw, _counting(pseudonymise, fast_calls))
        assert (info.value.reason, info.value.detail) == (exc.reason, exc.detail)
        valid = False
    else:
        got = fast_decode(raw, _counting(pseudonymise, fast_calls))
        assert type(got) is record_type
        assert got == expected
        assert repr(got) == repr(expected)   # also the types and signs: 5.0 not 5, -0.0 kept
        valid = True
    assert fast_calls == model_calls
    assert len(fast_calls) <= 1
    return valid


@contextmanager
def model_path_calls() -> Iterator[list[bytes]]:
    """Records every input the fast path hands to the model (`monitor.events.decode`)."""
    calls: list[bytes] = []
    real = records._decode

    def spy(model: Any, raw: bytes, **kwargs: Any) -> Any:
        calls.append(raw)
        return real(model, raw, **kwargs)

    with mock.patch.object(records, "_decode", spy):
        yield calls


# ---------------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------------

_plain_text = st.text(min_size=1, max_size=128).map(str.strip).filter(bool)
names = st.one_of(
    st.sampled_from(["u000123", "web", "PLG Onboarding", "2026-W44", "x" * 128, "é", "名前", "a b", "a\tb", "a\x00b"]),
    _plain_text,
)
# Names that become parts of keys carry no "|" (the models refuse it): the fast path must accept all the others.
key_names = names.filter(lambda name: "|" not in name)
offsets = st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(lambda minutes: timezone(timedelta(minutes=minutes)))


def _offset_text(offset: timedelta) -> str:
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


@st.composite
def canonical_times(draw: st.DrawFn, lo: datetime = EARLIEST, hi: datetime = LATEST - timedelta(microseconds=1)) -> str:
    """A strict ISO 8601 time with an offset, in the model's bounds: `...THH:MM:SS(.d{1,6})?(Z|±HH:MM)`."""
    instant = draw(st.datetimes(min_value=lo.replace(tzinfo=None), max_value=hi.replace(tzinfo=None),
                                timezones=st.just(timezone.utc)))
    digits = draw(st.integers(0, 6))
    instant = instant.replace(microsecond=instant.microsecond - instant.microsecond % 10 ** (6 - digits))
    local = instant.astimezone(draw(st.one_of(st.just(timezone.utc), offsets)))   # UTC: what producers write
    fraction = f".{local.microsecond:06d}"[:digits + 1] if digits else ""
    offset = local.utcoffset()
    assert offset is not None
    zone = "Z" if offset == timedelta(0) and draw(st.booleans()) else _offset_text(offset)
    return f"{local.year:04d}" + local.strftime("-%m-%dT%H:%M:%S") + fraction + zone   # %Y does not pad year 1


def _numbers(hi: float) -> st.SearchStrategy[float | int]:
    return st.one_of(st.integers(0, int(hi)), st.floats(0.0, hi), st.sampled_from([0, 0.0, -0.0, hi, int(hi)]))


def _shuffled(draw: st.DrawFn, record: dict[str, Any]) -> dict[str, Any]:
    """The record in schema order with every field (the producers' shape), or in any order."""
    keys = list(record) if draw(st.booleans()) else draw(st.permutations(list(record)))
    return {key: record[key] for key in keys}


@st.composite
def canonical_engagements(draw: st.DrawFn) -> dict[str, Any]:
    """A record the fast path must accept: canonical values, optional fields present or not."""
    event_type = draw(st.sampled_from(EVENT_TYPES))
    record: dict[str, Any] = {
        "event_id": draw(names), "event_type": event_type, "event_time": draw(canonical_times()),
        "user_id": draw(names), "initiative": draw(key_names), "profile": draw(key_names),
        "channel": draw(key_names),
    }
    optional: dict[str, Any] = {
        "cohort": draw(names), "experiment": draw(st.none() | key_names), "variant": draw(key_names),
        "rule_id": draw(st.none() | key_names), "fallback": draw(st.booleans()),
        "decision_latency_ms": draw(_numbers(600_000.0)),
        "revenue": draw(_numbers(1_000_000.0) if event_type == "conversion" else st.sampled_from([0, 0.0, -0.0])),
        "region": draw(st.none() | names),
    }
    if draw(st.booleans()):
        record.update(optional)   # every field, in schema order
    else:
        record.update({key: value for key, value in optional.items() if draw(st.booleans())})
    return _shuffled(draw, record)


@st.composite
def canonical_consents(draw: st.DrawFn) -> dict[str, Any]:
    """A consent record the fast path must accept."""
    record: dict[str, Any] = {
        "event_id": draw(names), "event_time": draw(canonical_times()), "user_id": draw(names),
        "purpose": draw(st.sampled_from(PURPOSES)), "status": draw(st.sampled_from(STATUSES)),
    }
    for key in ("source", "region"):
        if draw(st.booleans()):
            record[key] = draw(names)
    return _shuffled(draw, record)


@st.composite
def other_times(draw: st.DrawFn) -> Any:
    """Times in every form but the canonical one, or out of bounds, or not times at all."""
    instant = draw(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)))
    near = draw(st.sampled_from([datetime(1999, 12, 31, 23, 59, 59, 999_999), datetime(2000, 1, 1),
                                 datetime(2099, 12, 31, 23, 59, 59, 999_999), datetime(2100, 1, 1),
                                 datetime(2026, 11, 1, 12, 30, 15, 123_456)]))
    instant = draw(st.sampled_from([instant, near]))
    zone = draw(st.sampled_from(["Z", "z", "+00:00", "-00:00", "+01:00", "-23:59", "+23:59", "+24:00", "+05:75",
                                 "+0100", "+01", "+01:00:30", "", " Z", "UTC", "+1:00"]))
    date = f"{instant.year:04d}" + instant.strftime("-%m-%d")
    clock = instant.strftime("%H:%M:%S")
    forms = [
        f"{date}T{clock}{zone}",
        f"{date}t{clock}{zone}",
        f"{date} {clock}{zone}",
        f"{date}T{clock[:5]}{zone}",
        f"{date}T{clock[:2]}{zone}",
        f"{date}T{clock}.{instant.microsecond:06d}{draw(st.sampled_from(['', '1', '12', '123']))}{zone}",
        f"{date}T{clock},{instant.microsecond:06d}{zone}",
        f"{date}T{clock}.{zone}",
        f"{date.replace('-', '')}T{clock.replace(':', '')}{zone}",
        date,
        f"{date}T24:00:00{zone}",
        f"{date}T23:59:60{zone}",
        f"{date}T23:60:00{zone}",
        f"{date[:8]}30T{clock}{zone}",
        f"{date[:8]}31T{clock}{zone}",
        f"{date[:5]}00-01T{clock}{zone}",
        f"{date[:5]}13-01T{clock}{zone}",
        f" {date}T{clock}Z",
        f"{date}T{clock}Z ",
        f"{date}T{clock}Z\n",
        "٢٠٢٦-11-01T00:00:00Z",   # Arabic-Indic digits
        "2026-W44-1T00:00:00Z",
    ]
    stamp = instant.replace(tzinfo=timezone.utc).timestamp()
    return draw(st.one_of(st.sampled_from(forms), st.sampled_from([int(stamp), stamp, str(int(stamp)), str(stamp)]),
                          canonical_times(datetime(1, 1, 2, tzinfo=timezone.utc), datetime(9999, 12, 30,
                                                                                          tzinfo=timezone.utc))))


_junk = st.one_of(
    st.none(), st.booleans(), st.integers(-(2 ** 63), 2 ** 64 - 1), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=4),
    st.sampled_from(["", " ", "\t", "x" * 128, "x" * 129, "é" * 129, " x", "x ", "\tx", "x\n", "\x1cx", "x\x1f",
                     "\u00a0x", "x\u3000", "\u200bx", "\u180ex", "\u0085x", "5", "5.0", "-1", "1e3", "NaN", "inf",
                     "true", "false", "yes", "on", "0", "1", "null", "exposure", "click", "conversion", " click",
                     "Click", "personalization", "analytics", "marketing", "granted", "revoked", "REVOKED",
                     "granted "]),
    st.lists(st.integers(-9, 9), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(-9, 9), max_size=2),
)


def _field_values(field: str) -> st.SearchStrategy[Any]:
    """Values near the validity boundary of one field."""
    if field == "event_time":
        return other_times()
    if field in ("decision_latency_ms", "revenue"):
        hi = 600_000.0 if field == "decision_latency_ms" else 1_000_000.0
        near = st.sampled_from([-1, -0.0, -1e-300, 0, 1, hi, int(hi), hi + 1, int(hi) + 1, hi * (1 + 2 ** -52),
                                1e308, True, False, 2 ** 63, 2 ** 64 - 1, -(2 ** 63)])
        as_text = st.one_of(st.integers(-5, int(hi) + 5), st.floats(-1.0, hi + 1)).map(str)
        return st.one_of(near, _numbers(hi), as_text, st.floats(allow_nan=False, allow_infinity=False))
    if field == "fallback":
        return st.sampled_from([True, False, 0, 1, 2, 0.0, 1.0, 1.5, "true", "false", "True", "yes", "no", "on",
                                "off", "1", "0", "t", "f", "", None])
    if field in ("event_type", "purpose", "status"):
        members = {"event_type": EVENT_TYPES, "purpose": PURPOSES, "status": STATUSES}[field]
        return st.sampled_from(members).flatmap(lambda member: st.sampled_from(
            [member, f" {member}", f"{member} ", member.upper(), member[:-1], member + "s"]))
    padding = st.sampled_from([" ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "\u2028", "\x1c", "\x1f", "\x85",
                               "\u200b", "\ufeff"])
    return st.one_of(
        st.tuples(padding, names, padding, st.sampled_from(["left", "right", "both"])).map(
            lambda t: {"left": t[0] + t[1], "right": t[1] + t[2], "both": t[0] + t[1] + t[2]}[t[3]]),
        st.sampled_from(["", " ", "x" * 128, "x" * 129, " " + "x" * 128, "x" * 128 + " ", "名" * 128, "名" * 129]),
    )


@st.composite
def mutated(draw: st.DrawFn, kind: str) -> bytes:
    """A canonical record with 1..4 mutations, encoded; sometimes not a JSON object at all."""
    record = draw(canonical_engagements() if kind == "engagement" else canonical_consents())
    model = PAIRS[kind][0]
    fields = list(model.model_fields)
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["set", "set", "set", "junk", "delete", "unknown", "revenue_on_click"]))
        field = draw(st.sampled_from(fields))
        if action == "set":
            record[field] = draw(_field_values(field))
        elif action == "junk":
            record[field] = draw(_junk)
        elif action == "delete":
            record.pop(field, None)
        elif action == "unknown":
            record[draw(st.sampled_from(["extra", "eventTime", "user", "Event_id", "", " event_id"]))] = draw(_junk)
        elif kind == "engagement":
            record["event_type"] = draw(st.sampled_from(["exposure", "click"]))
            record["revenue"] = draw(st.sampled_from([0.01, 1, 5, 5.0, 1_000_000.0, -0.0, 0]))
    document: Any = draw(st.sampled_from([record] * 12 + [[record], [], None, 1, "x", [1, 2]]))
    return orjson.dumps(document)


@st.composite
def one_field_changed(draw: st.DrawFn, kind: str) -> bytes:
    """A canonical record with one field set to a value near its validity boundary, encoded."""
    record = draw(canonical_engagements() if kind == "engagement" else canonical_consents())
    field = draw(st.sampled_from(list(PAIRS[kind][0].model_fields)))
    record[field] = draw(_field_values(field))
    return orjson.dumps(record)


def _hash_pseudonym(user_id: str) -> str:
    return "p" + hashlib.blake2b(user_id.encode(), digest_size=12).hexdigest()


PSEUDONYMISERS: list[Callable[[str], str] | None] = [
    None,
    _hash_pseudonym,
    str.upper,
    lambda user_id: " " + user_id,          # the model strips the pseudonym
    lambda user_id: user_id * 200,          # too long once pseudonymised
    lambda user_id: "",                      # empty once pseudonymised
]
pseudonymisers = st.sampled_from(PSEUDONYMISERS)


# ---------------------------------------------------------------------------------------------
# Property tests
# ---------------------------------------------------------------------------------------------

@settings(SETTINGS, max_examples=700)
@given(raw=mutated("engagement"), pseudonymise=pseudonymisers)
def test_engagement_fast_path_agrees_with_the_model_on_near_valid_input(raw: bytes, pseudonymise: Any) -> None:
    with model_path_calls() as calls:
        valid = assert_same("engagement", raw, pseudonymise)
    event(f"{'valid' if valid else 'invalid'}, {'model path' if calls else 'fast path'}")


@settings(SETTINGS, max_examples=400)
@given(raw=mutated("consent"), pseudonymise=pseudonymisers)
def test_consent_fast_path_agrees_with_the_model_on_near_valid_input(raw: bytes, pseudonymise: Any) -> None:
    with model_path_calls() as calls:
        valid = assert_same("consent", raw, pseudonymise)
    event(f"{'valid' if valid else 'invalid'}, {'model path' if calls else 'fast path'}")


@settings(SETTINGS, max_examples=500)
@given(case=st.sampled_from(sorted(PAIRS)).flatmap(lambda kind: st.tuples(st.just(kind), one_field_changed(kind))),
       pseudonymise=pseudonymisers)
def test_fast_path_agrees_with_the_model_on_one_changed_field(case: tuple[str, bytes], pseudonymise: Any) -> None:
    kind, raw = case
    with model_path_calls() as calls:
        valid = assert_same(kind, raw, pseudonymise)
    event(f"{kind}: {'valid' if valid else 'invalid'}, {'model path' if calls else 'fast path'}")


@settings(SETTINGS, max_examples=300)
@given(record=canonical_engagements(), pseudonymise=st.sampled_from([None, _hash_pseudonym, str.upper]))
def test_canonical_engagement_takes_the_fast_path_and_equals_the_model(record: dict[str, Any],
                                                                       pseudonymise: Any) -> None:
    raw = orjson.dumps(record)
    with model_path_calls() as calls:
        assert assert_same("engagement", raw, pseudonymise)
    assert calls == [], "a canonical record took the model path"
    decoded = decode_engagement(raw, pseudonymise)
    model = decode(EngagementEvent, raw, pseudonymise=pseudonymise)
    assert decoded.to_model() == model
    assert decoded.to_model().event_time.utcoffset() == timedelta(0)


def test_names_seen_valid_are_remembered_bounded_and_never_the_invalid_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path remembers name combinations it validated (`records._NAMES_SEEN`): a record whose names were
    seen still has every other field checked, an invalid combination is not remembered, and the memory is
    bounded."""
    seen: set[tuple[Any, ...]] = set()
    monkeypatch.setattr(records, "_NAMES_SEEN", seen)
    monkeypatch.setattr(records, "_NAMES_SEEN_MAX", 2)
    base = {"event_id": "e1", "event_type": "exposure", "event_time": "2026-11-01T00:00:00Z", "user_id": "u1",
            "initiative": "PLG", "profile": "new_user", "channel": "web"}
    assert decode_engagement(orjson.dumps(base)).channel == "web"
    assert len(seen) == 1
    for bad in ({"revenue": 5.0}, {"decision_latency_ms": -1}, {"event_id": ""}, {"fallback": "maybe"}):
        with pytest.raises(DecodeError):
            decode_engagement(orjson.dumps({**base, **bad}))   # the names were seen; the rest is still checked
    for bad in ({"channel": "a|b"}, {"profile": ""}, {"region": ["EU"]}, {"cohort": ""}):
        with pytest.raises(DecodeError):
            decode_engagement(orjson.dumps({**base, **bad}))
    assert len(seen) == 1
    for channel in ("app", "email", "sms"):
        decode_engagement(orjson.dumps({**base, "channel": channel}))
    assert 1 <= len(seen) <= 2


@settings(SETTINGS, max_examples=200)
@given(record=canonical_consents(), pseudonymise=st.sampled_from([None, _hash_pseudonym]))
def test_canonical_consent_takes_the_fast_path_and_equals_the_model(record: dict[str, Any],
                                                                    pseudonymise: Any) -> None:
    raw = orjson.dumps(record)
    with model_path_calls() as calls:
        assert assert_same("consent", raw, pseudonymise)
    assert calls == [], "a canonical record took the model path"
    assert decode_consent(raw, pseudonymise).to_model() == decode(ConsentEvent, raw, pseudonymise=pseudonymise)


# Arbitrary input, not near-valid: any bytes, any JSON document, any object over the fields' names. Every
# decoder of an input topic raises DecodeError and nothing else, and the fast path agrees with the model.
_json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2 ** 70), 2 ** 70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20),
)
json_documents = st.recursive(_json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)
_FIELD_NAMES = sorted({*EngagementEvent.model_fields, *ConsentEvent.model_fields, *RuleChangeEvent.model_fields,
                       *IncidentAction.model_fields})
_BASES = [{}, {"event_id": "e1", "event_type": "click", "event_time": "2026-11-01T00:00:00Z", "user_id": "u1",
               "initiative": "i", "profile": "p", "channel": "web"},
          {"event_id": "c1", "event_time": "2026-11-01T00:00:00Z", "user_id": "u1", "purpose": "analytics",
           "status": "granted"}]


def _as_json(document: Any) -> bytes:
    """JSON of `document` as a producer might write it: orjson, or the standard library (big ints, NaN)."""
    import json

    try:
        return orjson.dumps(document)
    except TypeError:   # an int beyond 64 bits: the standard library writes it, orjson reads it as a float
        return json.dumps(document).encode()


def assert_only_decode_errors(raw: bytes) -> None:
    """The fast paths agree with their models on `raw`; the other input topics' decoders raise only DecodeError."""
    for kind in PAIRS:
        assert_same(kind, raw)
        assert_same(kind, raw, _hash_pseudonym)
    for model in (RuleChangeEvent, IncidentAction):
        try:
            decode(model, raw)
        except DecodeError as exc:
            assert exc.reason and "\n" not in exc.reason and len(exc.reason) < 400


@settings(SETTINGS, max_examples=400)
@given(raw=st.one_of(st.binary(max_size=64), st.binary(max_size=8).map(lambda b: b'{"event_id": "' + b + b'"}')))
def test_any_bytes_raise_only_decode_errors_and_both_paths_agree(raw: bytes) -> None:
    assert_only_decode_errors(raw)


@settings(SETTINGS, max_examples=400)
@given(document=json_documents)
def test_any_json_document_raises_only_decode_errors_and_both_paths_agree(document: Any) -> None:
    assert_only_decode_errors(_as_json(document))


@settings(SETTINGS, max_examples=400)
@given(document=st.dictionaries(st.sampled_from(_FIELD_NAMES), json_documents, max_size=12),
       base=st.sampled_from(_BASES))
def test_any_object_over_the_fields_raises_only_decode_errors_and_both_paths_agree(
        document: dict[str, Any], base: dict[str, Any]) -> None:
    raw = _as_json({**base, **document})
    with model_path_calls() as calls:
        assert_only_decode_errors(raw)
    event(f"model path {len(calls)} of {2 * len(PAIRS)}")


# ---------------------------------------------------------------------------------------------
# Plain tests
# ---------------------------------------------------------------------------------------------

ENGAGEMENT = {"event_id": "e1", "event_type": "click", "event_time": "2026-11-01T00:00:00Z", "user_id": "u1",
              "initiative": "i", "profile": "p", "channel": "web"}
CONSENT = {"event_id": "c1", "event_time": "2026-11-01T00:00:00Z", "user_id": "u1", "purpose": "analytics",
           "status": "granted"}


@pytest.mark.parametrize("kind", sorted(PAIRS))
@pytest.mark.parametrize("raw", [
    b"", b" ", b"\xff\xfe\x00", b'{"event_id": "\xff"}', b"{", b'{"a":', b"nul", b"NaN", b"{'a': 1}",
    b'{"revenue": 1e400}', b'{"user_id": "\\ud800"}', b"[]", b"[{}]", b"null", b"1", b'"x"', b"true", b"{}",
    b'{"event_id": "e1"} x', b'\xef\xbb\xbf{}', b'{"event_id": "\x01"}', b'{"event_id": "e\x1f1"}',
], ids=repr)
def test_inputs_that_are_not_a_record(kind: str, raw: bytes) -> None:
    with model_path_calls() as calls:
        assert not assert_same(kind, raw, _hash_pseudonym)
    assert calls == [raw]


@pytest.mark.parametrize(("kind", "base", "key", "first", "last"), [
    ("engagement", ENGAGEMENT, "channel", "email", "web"),
    ("engagement", ENGAGEMENT, "channel", "web", 5),
    ("engagement", ENGAGEMENT, "event_type", "exposure", "click"),
    ("consent", CONSENT, "status", "revoked", "granted"),
    ("consent", CONSENT, "region", 5, "EU"),
], ids=repr)
def test_a_repeated_key_counts_with_its_last_value_on_both_paths(kind: str, base: dict[str, Any], key: str,
                                                                 first: Any, last: Any) -> None:
    # The fast path's parser (msgspec) and the model's (orjson) must agree on a key written twice.
    body = orjson.dumps({k: v for k, v in base.items() if k != key})[:-1]
    raw = body + b", " + orjson.dumps(key) + b": " + orjson.dumps(first) + b", " + orjson.dumps(key) + b": " + \
        orjson.dumps(last) + b"}"
    valid = assert_same(kind, raw, _hash_pseudonym)
    assert valid == isinstance(last, str)
    if valid:
        assert getattr(PAIRS[kind][2](raw), key) == last


TRICKY = [
    # pydantic's whitespace is Rust's (Unicode White_Space): it keeps \x1c..\x1f, which str.strip removes.
    ("cohort", "\x1cweb"), ("cohort", "web\x1f"), ("cohort", "\u00a0web"), ("cohort", "\u200bweb"),
    ("cohort", " web "), ("event_type", " click"), ("user_id", " u1 "), ("user_id", "  "), ("user_id", ""),
    # offsets: fromisoformat reads +05:75 as 6 h 15 min; pydantic rejects it
    ("event_time", "2026-11-01T00:00:00+05:75"), ("event_time", "2026-11-01T00:00:00+23:59"),
    ("event_time", "2026-11-01T00:00:00-23:59"), ("event_time", "2026-11-01T00:00:00+24:00"),
    ("event_time", "2026-11-01T00:00:00-00:00"), ("event_time", "2026-11-01T00:00:00+0100"),
    ("event_time", "2026-11-01t00:00:00z"), ("event_time", "2026-11-01 00:00:00Z"), ("event_time", "2026-11-01T00:00Z"),
    ("event_time", "2026-11-01T00:00:00.1234567Z"), ("event_time", "2026-11-01T00:00:00,5Z"),
    ("event_time", "2026-11-01T00:00:00"), ("event_time", "2026-11-01"), ("event_time", 1793491200),
    ("event_time", 1793491200.5), ("event_time", "1793491200"), ("event_time", "2000-01-01T00:00:00+00:01"),
    ("event_time", "2099-12-31T23:59:59.999999Z"), ("event_time", "2100-01-01T00:00:00Z"),
    ("event_time", "2100-01-01T00:59:00+01:00"), ("event_time", "0001-01-01T00:00:00+23:59"),
    ("event_time", "9999-12-31T23:59:59-23:59"), ("event_time", "2026-02-29T00:00:00Z"),
    ("event_time", "2024-02-29T00:00:00Z"), ("event_time", "2026-11-01T23:59:60Z"),
    # fromisoformat also takes an offset with seconds; pydantic does not
    ("event_time", "2026-11-01T00:00:00+01:00:30"), ("event_time", "2026-11-01T00:00:00.5-01:00:30.25"),
    ("event_time", "2026-11-01T00:00:00Z "), ("event_time", "2026-11-01T00:00:00Z\n"),
    ("event_time", "２０２６-11-01T00:00:00Z"),  # noqa: RUF001 - full-width digits, on purpose
    ("event_time", "2026-11-01T00:00:00.123456789+01:00"),
    ("fallback", 1), ("fallback", 0), ("fallback", "true"), ("fallback", "on"), ("fallback", 1.0),
    ("decision_latency_ms", "5"), ("decision_latency_ms", True), ("decision_latency_ms", 600_000),
    ("decision_latency_ms", 600_000.0000001), ("decision_latency_ms", -0.0), ("decision_latency_ms", 2 ** 64 - 1),
    ("revenue", 5), ("revenue", -0.0), ("revenue", 0), ("revenue", 1e-300), ("cohort", None), ("region", None),
    ("experiment", None), ("experiment", ""), ("rule_id", "x" * 129),
]


@pytest.mark.parametrize(("field", "value"), TRICKY, ids=repr)
@pytest.mark.parametrize("event_type", ["click", "conversion"])
def test_tricky_engagement_values(field: str, value: Any, event_type: str) -> None:
    assert_same("engagement", orjson.dumps({**ENGAGEMENT, "event_type": event_type, field: value}), _hash_pseudonym)
    assert_same("engagement", orjson.dumps({**ENGAGEMENT, "event_type": event_type, field: value}))


@pytest.mark.parametrize(("field", "value"), [
    ("region", None), ("source", None), ("source", " app"), ("purpose", "Marketing"), ("status", "granted "),
    ("event_time", "2026-11-01T00:00:00+05:75"), ("event_time", 1793491200), ("user_id", 7), ("user_id", None),
], ids=repr)
def test_tricky_consent_values(field: str, value: Any) -> None:
    assert_same("consent", orjson.dumps({**CONSENT, field: value}), _hash_pseudonym)


NAME_VALUES = ["x", "x" * 128, "x" * 129, "名" * 128, "名" * 129, "", " ", " x", "x ", "\x1cx", "x\x1f", "\u3000x",
               None, 7, True, ["x"]]


@pytest.mark.parametrize("kind", sorted(PAIRS))
def test_every_name_field_at_its_boundaries(kind: str) -> None:
    base, names_of = (ENGAGEMENT, ENGAGEMENT_NAMES) if kind == "engagement" else (CONSENT, CONSENT_NAMES)
    for field, value in itertools.product(names_of, NAME_VALUES):
        raw = orjson.dumps({**base, field: value})
        with model_path_calls() as calls:
            valid = assert_same(kind, raw)
        nullable = kind == "engagement" and field in ("experiment", "rule_id", "region")
        fast = value in ("x", "x" * 128, "名" * 128) or (value is None and nullable)
        assert (valid and not calls) == fast, (field, value)
        if field == "user_id" and isinstance(value, str) and value:
            assert_same(kind, raw, _hash_pseudonym)   # the pseudonym is checked, not the raw id


def test_every_month_and_day_agrees_with_the_model() -> None:
    for year, month, day in itertools.product((2000, 2024, 2026, 2099), range(14), range(33)):
        raw = orjson.dumps({**ENGAGEMENT, "event_time": f"{year:04d}-{month:02d}-{day:02d}T12:00:00+01:00"})
        assert_same("engagement", raw)


def test_the_model_path_pseudonymises_once() -> None:
    calls: list[str] = []

    def pseudonymise(user_id: str) -> str:
        calls.append(user_id)
        return "p-" + user_id

    with model_path_calls() as model_calls:
        record = decode_engagement(orjson.dumps({**ENGAGEMENT, "fallback": "true", "user_id": " u1"}), pseudonymise)
    assert len(model_calls) == 1 and calls == [" u1"]
    assert (record.user_id, record.fallback) == ("p- u1", True)


def test_simulated_traffic_takes_the_fast_path() -> None:
    from simulation.simulator import SimulationSpec, simulate

    spec = SimulationSpec(days=1, users=2_000, injections=())
    simulated = [item for item in itertools.islice(simulate(spec), 3_000) if item.topic in PAIRS]
    assert {item.topic for item in simulated} == set(PAIRS)
    with model_path_calls() as calls:
        for item in simulated:
            model, record_type, fast_decode = PAIRS[item.topic]
            raw = encode(item.event)
            assert fast_decode(raw, _hash_pseudonym) == record_type.from_model(
                decode(model, raw, pseudonymise=_hash_pseudonym))
    assert calls == []


def test_record_types_mirror_the_models() -> None:
    for model, record_type, _ in PAIRS.values():
        expected = ["at" if name == "event_time" else name for name in model.model_fields]
        assert [field.name for field in dataclasses.fields(record_type)] == expected


def test_records_are_immutable_slotted_hashable_and_picklable() -> None:
    record = decode_engagement(orjson.dumps(ENGAGEMENT))
    assert type(record) is Engagement and not hasattr(record, "__dict__")
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.user_id = "other"  # type: ignore[misc]
    assert hash(record) == hash(Engagement.from_model(decode(EngagementEvent, orjson.dumps(ENGAGEMENT))))
    assert pickle.loads(pickle.dumps(record)) == record
    assert dataclasses.replace(record, user_id="u2").user_id == "u2"
    consent = decode_consent(orjson.dumps(CONSENT))
    assert type(consent) is Consent and pickle.loads(pickle.dumps(consent)) == consent


def test_to_model_round_trips_microseconds_near_the_bounds() -> None:
    for text in ("2000-01-01T00:00:00.000001Z", "2099-12-31T23:59:59.999999Z", "2038-01-19T03:14:07.999999Z",
                 "2026-11-01T00:00:00.000001-23:59"):
        raw = orjson.dumps({**ENGAGEMENT, "event_time": text})
        model = decode(EngagementEvent, raw)
        assert decode_engagement(raw).to_model() == model
        assert decode_engagement(raw).to_model().event_time == model.event_time


@pytest.mark.parametrize("field", ["initiative", "profile", "channel", "experiment", "variant", "rule_id"])
def test_a_key_separator_in_a_name_that_becomes_a_key_is_refused_naming_the_field(field: str) -> None:
    # A "|" there would make "initiative|profile|channel|variant" ambiguous and break the stages that split keys.
    raw = orjson.dumps({**ENGAGEMENT, field: "a|b"})
    with pytest.raises(DecodeError, match=field):
        decode_engagement(raw)
    assert decode_engagement(orjson.dumps({**ENGAGEMENT, "cohort": "a|b"})).cohort == "a|b"   # not a key part
