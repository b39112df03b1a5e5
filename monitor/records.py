"""Light input records and a validated fast path that decodes them without pydantic.

Validating a pydantic model per event costs about 4 us; the monitor decodes tens of
thousands of records a second. :func:`decode_engagement` and
:func:`decode_consent` accept a record on a fast path only when it is *certainly*
valid under its model (:class:`~monitor.events.EngagementEvent`,
:class:`~monitor.events.ConsentEvent`): a canonical record, the shape every
well-behaved producer writes. Anything else — a numeric string, a bool as a
number, a padded string, a timestamp in another ISO form, an unknown key, bad
JSON — goes to :func:`monitor.events.decode`, which stays the source of truth
for what is valid and for the text of every ``DecodeError``. Both paths accept
and reject the same inputs and give equal records (``tests/unit/test_records.py``
checks it with property tests).

The canonical shape is narrower than what the models accept, never wider:

* a JSON object whose keys are all fields of the model, the required ones present;
* names are ``str`` of 1..128 characters with no leading or trailing whitespace
  (``str.isspace`` strips a superset of what pydantic's ``str_strip_whitespace``
  does: ``\\x1c``..``\\x1f`` are not stripped by pydantic, so such strings take
  the model path);
* literals in their sets, ``fallback`` a real bool, numbers real ``int`` or
  ``float`` (not bool) within the model's bounds, ints converted to float;
* ``event_time`` matching ``YYYY-MM-DDTHH:MM:SS(.d{1,6})?(Z|+HH:MM|-HH:MM)`` with
  hours 00-23 and minutes and seconds 00-59 (``datetime.fromisoformat`` accepts
  an offset ``+05:75``, pydantic does not), in the model's bounds;
* no revenue on an exposure or a click.

msgspec checks, while it parses, the keys, the types, the literals, the names'
lengths and the numbers' bounds (a struct per model); Python checks the rest.
Its JSON is orjson's (the model path's) wherever it matters here: both refuse
lone surrogates, invalid UTF-8, a byte order mark and raw control characters,
and a repeated key keeps its last value. Whatever it refuses goes to the
model, which says why.

The bounds, literal sets and defaults are read from the models at import, and
the import fails if a model's fields, config or validators change shape, so the
fast path cannot silently drift apart from the schema.

Where the fast path's time goes is on ``bench/decode.py``'s page: msgspec's
parse, then the time (regex, ``fromisoformat``, ``timestamp``), building the
record and the checks of names. Those names come from a small vocabulary
(initiative, profile, channel, cohort, experiment, variant, rule, region): a
combination that passed them is remembered (bounded), and a record that
repeats it pays one set lookup instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Annotated, Any, Literal, TypeVar, get_args

import msgspec
from pydantic import BaseModel

from monitor.events import ConsentEvent, EngagementEvent
from monitor.events import decode as _decode  # the source of truth; a module global so tests can spy on it

__all__ = ["Consent", "Engagement", "decode_consent", "decode_engagement"]

_RecordT = TypeVar("_RecordT", "Engagement", "Consent")

_fromisoformat = datetime.fromisoformat
_UTC = timezone.utc

# Strict ISO 8601 with an offset: the one form the fast path parses itself. ASCII digits only
# (`\d` would match other scripts' digits), ranges checked here because fromisoformat is laxer
# than pydantic on offsets (it reads `+05:75` as 6 h 15 min).
_CANONICAL_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?"
    r"(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
).fullmatch


def _constraint(model: type[BaseModel], name: str, kind: str) -> Any:
    """The value of constraint `kind` (``ge``, ``max_length``...) of a field, also inside ``Name | None``."""
    field = model.model_fields[name]
    metadata = list(field.metadata)
    for member in get_args(field.annotation):  # Optional[Annotated[str, FieldInfo(...)]]
        for info in getattr(member, "__metadata__", ()):
            metadata += getattr(info, "metadata", [info])
    for item in metadata:
        if hasattr(item, kind):
            return getattr(item, kind)
    raise LookupError(f"{model.__name__}.{name} has no {kind} constraint")


def _expect(condition: bool, what: str) -> None:
    """Fail at import if the models no longer have the shape the fast path is written for."""
    if not condition:
        raise RuntimeError(f"monitor.records is out of date with monitor.events: {what}")


# The fast path unpacks a record's values in these orders and checks these fields by name:
# a field added, removed or moved in a model must be handled here first.
_ENGAGEMENT_ORDER = (
    "event_id",
    "event_type",
    "event_time",
    "user_id",
    "initiative",
    "profile",
    "channel",
    "cohort",
    "experiment",
    "variant",
    "rule_id",
    "fallback",
    "decision_latency_ms",
    "revenue",
    "region",
)
_CONSENT_ORDER = ("event_id", "event_time", "user_id", "purpose", "status", "source", "region")
_ENGAGEMENT_NAMES = (
    "event_id",
    "user_id",
    "initiative",
    "profile",
    "channel",
    "cohort",
    "experiment",
    "variant",
    "rule_id",
    "region",
)
_CONSENT_NAMES = ("event_id", "user_id", "source", "region")
_expect(tuple(EngagementEvent.model_fields) == _ENGAGEMENT_ORDER, "EngagementEvent's fields")
_expect(tuple(ConsentEvent.model_fields) == _CONSENT_ORDER, "ConsentEvent's fields")
for _model in (EngagementEvent, ConsentEvent):
    _expect(
        _model.model_config.get("str_strip_whitespace") is True
        and not _model.model_config.get("strict")
        and _model.model_config.get("extra") == "forbid",
        f"{_model.__name__}'s config",
    )
    _decorators = _model.__pydantic_decorators__
    _expect(
        not (_decorators.field_validators or _decorators.validators or _decorators.root_validators)
        and set(_decorators.model_validators) <= {"_revenue_only_on_conversions"},
        f"{_model.__name__}'s validators",
    )
_expect(
    set(EngagementEvent.__pydantic_decorators__.model_validators) == {"_revenue_only_on_conversions"},
    "EngagementEvent's validators",
)

_MAX_NAME = _constraint(EngagementEvent, "event_id", "max_length")
for _model, _names in ((EngagementEvent, _ENGAGEMENT_NAMES), (ConsentEvent, _CONSENT_NAMES)):
    for _name in _names:
        _expect(
            (_constraint(_model, _name, "min_length"), _constraint(_model, _name, "max_length")) == (1, _MAX_NAME),
            f"{_model.__name__}.{_name}'s length",
        )
# The fast path refuses a "|" in exactly the fields whose model says so (names that become parts of keys).
_KEY_NAMES = ("initiative", "profile", "channel", "experiment", "variant", "rule_id")
for _name in _ENGAGEMENT_NAMES:
    try:
        _pattern = _constraint(EngagementEvent, _name, "pattern")
    except LookupError:
        _pattern = None
    _expect(_pattern == (r"^[^|]+$" if _name in _KEY_NAMES else None), f"EngagementEvent.{_name}'s pattern")
_nullable = {
    name for name in _ENGAGEMENT_ORDER if type(None) in get_args(EngagementEvent.model_fields[name].annotation)
}
_expect(_nullable == {"experiment", "rule_id", "region"}, "EngagementEvent's optional fields")
_expect(
    not any(type(None) in get_args(field.annotation) for field in ConsentEvent.model_fields.values()),
    "ConsentEvent's optional fields",
)
# Epoch seconds of the bounds. A float compare is exact enough: between 2000 and 2100 a
# double's spacing (< 0.5 us) is finer than a microsecond, so no time within a
# microsecond of a bound rounds onto it.
_EARLIEST = _constraint(EngagementEvent, "event_time", "ge").timestamp()
_LATEST = _constraint(EngagementEvent, "event_time", "lt").timestamp()
_expect(
    (_EARLIEST, _LATEST)
    == (
        _constraint(ConsentEvent, "event_time", "ge").timestamp(),
        _constraint(ConsentEvent, "event_time", "lt").timestamp(),
    ),
    "the time bounds",
)
_expect(
    _constraint(EngagementEvent, "decision_latency_ms", "ge") == 0 == _constraint(EngagementEvent, "revenue", "ge"),
    "the lower bounds of latency and revenue",
)
_MAX_LATENCY = float(_constraint(EngagementEvent, "decision_latency_ms", "le"))
_MAX_REVENUE = float(_constraint(EngagementEvent, "revenue", "le"))

# The literal sets, for the wire structs' `Literal` fields.
_EVENT_TYPES = get_args(EngagementEvent.model_fields["event_type"].annotation)
_PURPOSES = get_args(ConsentEvent.model_fields["purpose"].annotation)
_STATUSES = get_args(ConsentEvent.model_fields["status"].annotation)

_defaults = {name: field.default for name, field in EngagementEvent.model_fields.items()}
_COHORT = _defaults["cohort"]
_VARIANT = _defaults["variant"]
_FALLBACK = _defaults["fallback"]
_LATENCY = float(_defaults["decision_latency_ms"])
_REVENUE = float(_defaults["revenue"])
_expect(
    _defaults["experiment"] is _defaults["rule_id"] is _defaults["region"] is None, "the defaults of optional names"
)
_SOURCE = ConsentEvent.model_fields["source"].default
_CONSENT_REGION = ConsentEvent.model_fields["region"].default


# What msgspec parses and checks in C, in one pass over the bytes: the JSON, the keys (no others), the types,
# the literals, the names' lengths and the numbers' bounds. The rest of the canonical shape (no surrounding
# whitespace, no "|" in a key name, revenue only on conversions, the time's form and bounds) the decoders
# check after it. `user_id` is any string here: a pseudonymiser replaces it before it is checked.
_Name = Annotated[str, msgspec.Meta(min_length=1, max_length=_MAX_NAME)]


class _EngagementWire(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    event_id: _Name
    event_type: Literal[_EVENT_TYPES]  # type: ignore[valid-type]
    event_time: str
    user_id: str
    initiative: _Name
    profile: _Name
    channel: _Name
    cohort: _Name = _COHORT
    experiment: _Name | None = None
    variant: _Name = _VARIANT
    rule_id: _Name | None = None
    fallback: bool = _FALLBACK
    decision_latency_ms: Annotated[float, msgspec.Meta(ge=0.0, le=_MAX_LATENCY)] = _LATENCY
    revenue: Annotated[float, msgspec.Meta(ge=0.0, le=_MAX_REVENUE)] = _REVENUE
    region: _Name | None = None


class _ConsentWire(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    event_id: _Name
    event_time: str
    user_id: str
    purpose: Literal[_PURPOSES]  # type: ignore[valid-type]
    status: Literal[_STATUSES]  # type: ignore[valid-type]
    source: _Name = _SOURCE
    region: _Name = _CONSENT_REGION


_expect(_EngagementWire.__struct_fields__ == _ENGAGEMENT_ORDER, "the engagement wire's fields")
_expect(_ConsentWire.__struct_fields__ == _CONSENT_ORDER, "the consent wire's fields")
_engagement_wire = msgspec.json.Decoder(_EngagementWire).decode
_consent_wire = msgspec.json.Decoder(_ConsentWire).decode
_WireError = msgspec.DecodeError  # a ValidationError is one too
del _model, _names, _name, _decorators, _nullable, _defaults


@dataclass(frozen=True, slots=True)
class Engagement:
    """An exposure, click or conversion: :class:`~monitor.events.EngagementEvent` with ``at`` in epoch seconds.

    >>> record = decode_engagement(b'{"event_id": "e1", "event_type": "click", '
    ...     b'"event_time": "2026-11-01T00:00:00Z", "user_id": "u1", "initiative": "i", '
    ...     b'"profile": "p", "channel": "web"}')
    >>> record.at, record.cohort, record.fallback, record.revenue
    (1793491200.0, 'all', False, 0.0)
    """

    event_id: str
    event_type: str
    at: float
    user_id: str
    initiative: str
    profile: str
    channel: str
    cohort: str
    experiment: str | None
    variant: str
    rule_id: str | None
    fallback: bool
    decision_latency_ms: float
    revenue: float
    region: str | None

    @classmethod
    def from_model(cls, model: EngagementEvent) -> Engagement:
        """The record of a validated model.

        >>> from monitor.events import EngagementEvent
        >>> event = EngagementEvent(event_id="e1", event_type="conversion", event_time="2026-11-01T01:00:00+01:00",
        ...                         user_id="u1", initiative="i", profile="p", channel="web", revenue=5)
        >>> record = Engagement.from_model(event)
        >>> record.at, record.revenue
        (1793491200.0, 5.0)
        """
        return _from_model(cls, model)

    def to_model(self) -> EngagementEvent:
        """The pydantic model of this record (validated), ``event_time`` an aware UTC datetime.

        >>> record = decode_engagement(b'{"event_id": "e1", "event_type": "click", '
        ...     b'"event_time": "2026-11-01T01:00:00.25+01:00", "user_id": "u1", "initiative": "i", '
        ...     b'"profile": "p", "channel": "web"}')
        >>> record.to_model().event_time
        datetime.datetime(2026, 11, 1, 0, 0, 0, 250000, tzinfo=datetime.timezone.utc)
        >>> Engagement.from_model(record.to_model()) == record
        True
        """
        return _to_model(self, EngagementEvent)


@dataclass(frozen=True, slots=True)
class Consent:
    """A consent granted or revoked: :class:`~monitor.events.ConsentEvent` with ``at`` in epoch seconds.

    >>> record = decode_consent(b'{"event_id": "c1", "event_time": "2026-11-01T00:00:00Z", "user_id": "u1", '
    ...                         b'"purpose": "personalization", "status": "granted"}')
    >>> record.at, record.status, record.source, record.region
    (1793491200.0, 'granted', 'unknown', 'unknown')
    """

    event_id: str
    at: float
    user_id: str
    purpose: Literal["personalization", "analytics", "marketing"]  # as ConsentEvent's
    status: str
    source: str
    region: str

    @classmethod
    def from_model(cls, model: ConsentEvent) -> Consent:
        """The record of a validated model.

        >>> from monitor.events import ConsentEvent
        >>> event = ConsentEvent(event_id="c1", event_time="2026-11-01T00:00:00Z", user_id="u1",
        ...                      purpose="analytics", status="revoked")
        >>> Consent.from_model(event).at
        1793491200.0
        """
        return _from_model(cls, model)

    def to_model(self) -> ConsentEvent:
        """The pydantic model of this record (validated), ``event_time`` an aware UTC datetime.

        >>> record = decode_consent(b'{"event_id": "c1", "event_time": "2026-11-01T00:00:00Z", "user_id": "u1", '
        ...                         b'"purpose": "personalization", "status": "granted"}')
        >>> record.to_model().event_time.isoformat()
        '2026-11-01T00:00:00+00:00'
        """
        return _to_model(self, ConsentEvent)


def _from_model(cls: type[_RecordT], model: BaseModel) -> _RecordT:
    """A record of `cls` with the model's fields, ``event_time`` as epoch seconds."""
    values = {name: getattr(model, name) for name in cls.__slots__ if name != "at"}
    return cls(at=model.event_time.timestamp(), **values)  # type: ignore[attr-defined]


def _to_model(record: Engagement | Consent, model: type[BaseModel]) -> Any:
    """The model of a record, validated, ``at`` back to an aware UTC datetime."""
    values = {name: getattr(record, name) for name in record.__slots__ if name != "at"}
    return model(event_time=datetime.fromtimestamp(record.at, _UTC), **values)


def _draft_class(cls: type[_RecordT]) -> type:
    """A mutable twin of a frozen record class: same slots, nothing else, for building records fast.

    A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``:
    1.7 us for the 15 fields of an engagement, more than all the checks of the fast
    path. The fast path instead creates a twin, sets its slots with plain attribute
    stores and turns it into a record by assigning its ``__class__``, which CPython
    allows between classes of the same slot layout (0.3 us in all). Checked here on
    a sample, so that an interpreter that refuses fails at import, not on a record.
    """
    twin = type(
        f"_{cls.__name__}Draft",
        (),
        {
            "__slots__": cls.__slots__,
            "__module__": __name__,
            "__doc__": f"A mutable {cls.__name__} under construction.",
        },
    )
    values = [f"v{i}" for i in range(len(cls.__slots__))]
    draft: Any = object.__new__(twin)
    for name, value in zip(cls.__slots__, values, strict=True):
        setattr(draft, name, value)
    draft.__class__ = cls
    if not (type(draft) is cls and draft == cls(*values) and not hasattr(draft, "__dict__")):
        raise RuntimeError(f"a {twin.__name__} does not become a {cls.__name__}; build records with the class")
    return twin


_EngagementDraft = _draft_class(Engagement)
_ConsentDraft = _draft_class(Consent)
_new = object.__new__


def _model_path(
    model: type[BaseModel], raw: bytes, pseudonymise: Callable[[str], str] | None, pseudonym: tuple[str, str] | None
) -> Any:
    """Decode with the model (``monitor.events.decode``), without pseudonymising the same id twice.

    `pseudonym` is ``(raw user id, its pseudonym)`` when the fast path already called
    `pseudonymise`: ``decode`` parses the same raw id again and gets the same pseudonym.
    """
    if pseudonymise is None or pseudonym is None:
        return _decode(model, raw, pseudonymise=pseudonymise)
    raw_user_id, known = pseudonym
    again = pseudonymise

    def replay(user_id: str) -> str:
        return known if user_id == raw_user_id else again(user_id)

    return _decode(model, raw, pseudonymise=replay)


def _canonical_epoch(event_time: str) -> float | None:
    """Epoch seconds of a canonical `event_time` within the models' bounds; None for anything else (a day or
    month out of range, too early or late, another form): the model says why."""
    if _CANONICAL_TIME(event_time) is None:
        return None
    try:
        at = _fromisoformat(event_time).timestamp()
    except (ValueError, OverflowError):
        return None
    return at if _EARLIEST <= at < _LATEST else None


# The names of an engagement record other than its ids come from a small vocabulary, and most records repeat a
# combination seen before: a set lookup of the combination costs less than its 30-odd checks. Only combinations
# that passed them are kept; bounded (cleared when full), so a producer of ever-new names costs memory to no one.
_NAMES_SEEN: set[tuple[Any, ...]] = set()
_NAMES_SEEN_MAX = 65_536


def _is_name(value: Any) -> bool:
    return type(value) is str and value.strip() == value and bool(value) and len(value) <= _MAX_NAME


def _is_key_name(value: Any) -> bool:
    return _is_name(value) and "|" not in value


def _valid_names(names: tuple[Any, ...]) -> bool:
    """initiative, profile, channel, cohort, experiment, variant, rule_id, region: valid under the model (and
    remembered as such)?"""
    initiative, profile, channel, cohort, experiment, variant, rule_id, region = names
    if not (
        all(map(_is_key_name, (initiative, profile, channel, variant)))
        and _is_name(cohort)
        and (experiment is None or _is_key_name(experiment))
        and (rule_id is None or _is_key_name(rule_id))
        and (region is None or _is_name(region))
    ):
        return False
    if len(_NAMES_SEEN) >= _NAMES_SEEN_MAX:
        _NAMES_SEEN.clear()
    _NAMES_SEEN.add(names)
    return True


def decode_engagement(raw: bytes, pseudonymise: Callable[[str], str] | None = None) -> Engagement:
    """Decode one engagement record, or raise DecodeError as ``decode(EngagementEvent, raw)`` would.

    `pseudonymise` replaces a non-empty string ``user_id`` before validation.

    >>> record = decode_engagement(b'{"event_id": "e1", "event_type": "conversion", '
    ...     b'"event_time": "2026-11-01T00:00:00Z", "user_id": "u1", "initiative": "i", "profile": "p", '
    ...     b'"channel": "web", "revenue": 12}', pseudonymise=str.upper)
    >>> record.user_id, record.revenue
    ('U1', 12.0)
    >>> decode_engagement(b'{"event_id": "e1", "event_type": "click", '
    ...     b'"event_time": "2026-11-01T00:00:00Z", "user_id": "u1", "initiative": "i", "profile": "p", '
    ...     b'"channel": "web", "revenue": 12}')
    Traceback (most recent call last):
    ...
    monitor.exceptions.DecodeError: invalid EngagementEvent: EngagementEvent: Value error, revenue 12.0 on a click; only conversions carry revenue
    >>> decode_engagement(b'[1, 2]')
    Traceback (most recent call last):
    ...
    monitor.exceptions.DecodeError: not a JSON object
    """  # noqa: E501 - doctest output, on one line as Python prints it
    try:
        wire = _engagement_wire(raw)
    except _WireError:
        return _from_model(Engagement, _model_path(EngagementEvent, raw, pseudonymise, None))
    event_id, event_type, event_time, user_id, revenue = (
        wire.event_id,
        wire.event_type,
        wire.event_time,
        wire.user_id,
        wire.revenue,
    )
    pseudonym = None
    if pseudonymise is not None and user_id:
        pseudonym = (user_id, pseudonymise(user_id))
        user_id = pseudonym[1]
    names = (
        wire.initiative,
        wire.profile,
        wire.channel,
        wire.cohort,
        wire.experiment,
        wire.variant,
        wire.rule_id,
        wire.region,
    )
    # The ids as `_is_name`, inline (once per record); msgspec checked the event id's length.
    if (
        event_id.strip() == event_id
        and user_id.strip() == user_id
        and user_id
        and len(user_id) <= _MAX_NAME
        and (names in _NAMES_SEEN or _valid_names(names))
        and (not revenue or event_type == "conversion")
        and (at := _canonical_epoch(event_time)) is not None
    ):
        record: Any = _new(_EngagementDraft)
        record.event_id = event_id
        record.event_type = event_type
        record.at = at
        record.user_id = user_id
        (
            record.initiative,
            record.profile,
            record.channel,
            record.cohort,
            record.experiment,
            record.variant,
            record.rule_id,
            record.region,
        ) = names
        record.fallback = wire.fallback
        record.decision_latency_ms = wire.decision_latency_ms  # a float: msgspec converts an int, as pydantic
        record.revenue = revenue
        record.__class__ = Engagement
        return record
    return _from_model(Engagement, _model_path(EngagementEvent, raw, pseudonymise, pseudonym))


def decode_consent(raw: bytes, pseudonymise: Callable[[str], str] | None = None) -> Consent:
    """Decode one consent record, or raise DecodeError as ``decode(ConsentEvent, raw)`` would.

    `pseudonymise` replaces a non-empty string ``user_id`` before validation.

    >>> decode_consent(b'{"event_id": "c1", "event_time": "2026-11-01T00:00:00+01:00", "user_id": "u1", '
    ...                b'"purpose": "marketing", "status": "revoked", "region": "EU"}')
    Consent(event_id='c1', at=1793487600.0, user_id='u1', purpose='marketing', status='revoked', source='unknown', region='EU')
    >>> decode_consent(b'{"event_id": "c1", "event_time": "2026-11-01T00:00:00", "user_id": "u1", '
    ...                b'"purpose": "marketing", "status": "revoked"}')
    Traceback (most recent call last):
    ...
    monitor.exceptions.DecodeError: invalid ConsentEvent: event_time: Input should have timezone info
    >>> decode_consent(b'')
    Traceback (most recent call last):
    ...
    monitor.exceptions.DecodeError: empty value (zero bytes): input records must carry a JSON object
    """  # noqa: E501 - doctest output, on one line as Python prints it
    try:
        wire = _consent_wire(raw)
    except _WireError:
        return _from_model(Consent, _model_path(ConsentEvent, raw, pseudonymise, None))
    event_id, event_time, user_id, source, region = (
        wire.event_id,
        wire.event_time,
        wire.user_id,
        wire.source,
        wire.region,
    )
    pseudonym = None
    if pseudonymise is not None and user_id:
        pseudonym = (user_id, pseudonymise(user_id))
        user_id = pseudonym[1]
    if (
        event_id.strip() == event_id
        and user_id.strip() == user_id
        and user_id
        and len(user_id) <= _MAX_NAME
        and source.strip() == source
        and region.strip() == region
        and (at := _canonical_epoch(event_time)) is not None
    ):
        record: Any = _new(_ConsentDraft)
        record.event_id = event_id
        record.at = at
        record.user_id = user_id
        record.purpose = wire.purpose
        record.status = wire.status
        record.source = source
        record.region = region
        record.__class__ = Consent
        return record
    return _from_model(Consent, _model_path(ConsentEvent, raw, pseudonymise, pseudonym))
