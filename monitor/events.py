"""Wire schemas of every topic: pydantic v2 models, JSON on the wire via orjson.

Input models reject what a monitor cannot trust (unknown fields, naive
timestamps, absurd values) so that a bad record goes to the dead-letter topic
with a precise reason instead of skewing a window.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from incidents.model import Evidence, IncidentEvent  # the incidents topic's schema, defined where it is decided
from monitor.exceptions import DecodeError
from monitor.topics import CONSENT, ENGAGEMENT, RULE_CHANGES

__all__ = [
    "EngagementEvent",
    "ConsentEvent",
    "RuleChangeEvent",
    "IncidentEvent",
    "Evidence",
    "DeadLetter",
    "INPUT_MODELS",
    "encode",
    "decode",
]

_EARLIEST = datetime(2000, 1, 1, tzinfo=timezone.utc)
_LATEST = datetime(2100, 1, 1, tzinfo=timezone.utc)


# Checked in pydantic-core (no Python validator on the hot path): aware and plausible.
EventTime = Annotated[AwareDatetime, Field(ge=_EARLIEST, lt=_LATEST)]
Name = Annotated[str, Field(min_length=1, max_length=128)]
# A name that becomes part of a key ("initiative|profile|channel|variant", "channel|rule|experiment"): without the
# separator, so that no valid record can make a key ambiguous or break the stage that splits it.
KeyName = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^|]+$")]


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


class EngagementEvent(_Record):
    """An exposure, click or conversion of one user on one personalized surface."""

    event_id: Name
    event_type: Literal["exposure", "click", "conversion"]
    event_time: EventTime
    user_id: Name
    initiative: KeyName
    profile: KeyName
    channel: KeyName
    cohort: Name = "all"
    experiment: KeyName | None = None
    variant: KeyName = "none"
    rule_id: KeyName | None = Field(
        default=None, description="The rule that decided; on a fallback, the rule that fell back."
    )
    fallback: bool = False
    decision_latency_ms: float = Field(default=0.0, ge=0.0, le=600_000.0)
    revenue: float = Field(default=0.0, ge=0.0, le=1_000_000.0)
    region: Name | None = Field(
        default=None,
        description="The user's region, when the producer knows it: it decides "
        "the consent policy of a user without a consent record.",
    )

    @model_validator(mode="after")
    def _revenue_only_on_conversions(self) -> EngagementEvent:
        if self.revenue and self.event_type != "conversion":
            raise ValueError(f"revenue {self.revenue} on a {self.event_type}; only conversions carry revenue")
        return self


class ConsentEvent(_Record):
    """A user's consent granted or revoked for one purpose."""

    event_id: Name
    event_time: EventTime
    user_id: Name
    purpose: Literal["personalization", "analytics", "marketing"]
    status: Literal["granted", "revoked"]
    source: Name = "unknown"
    region: Name = "unknown"


class RuleChangeEvent(_Record):
    """A personalization rule created, updated, rolled out or deleted."""

    event_id: Name
    event_time: EventTime
    initiative: KeyName
    rule_id: KeyName
    action: Literal["created", "updated", "rolled_out", "deleted"]
    author: Name
    approver: Name | None = None
    ticket: Name | None = None
    experiment: KeyName | None = None


# A dead letter must fit in one Kafka record whatever it carries. The smallest limit on its way is Faust's
# producer_max_request_size (1,000,000 bytes; aiokafka's max_request_size and the broker's message.max.bytes
# are ~1 MiB). A value up to DEAD_LETTER_MAX_VALUE_BYTES is kept whole (base64: 4/3 of it, ~700 KB); a larger
# one keeps its first DEAD_LETTER_PREFIX_BYTES with its length and SHA-256. A key is kept whole up to
# DEAD_LETTER_PREFIX_BYTES, the texts up to their own bounds, so a letter's JSON stays under ~740 KB
# (tests/integration/test_poison_pills.py encodes the worst case).
DEAD_LETTER_MAX_VALUE_BYTES = 512 * 1024
DEAD_LETTER_PREFIX_BYTES = 4 * 1024
DEAD_LETTER_MAX_REASON_CHARS = 500
DEAD_LETTER_MAX_ERROR_CHARS = 4000


def _bounded_text(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


class DeadLetter(_Record):
    """A record that could not be decoded, validated or processed: kept whole up to 512 KiB; a larger value
    keeps its first 4 KiB (`truncated`), its length and its SHA-256, so that the letter always fits a Kafka
    record."""

    source_topic: str
    partition: int | None = None
    offset: int | None = None
    key_b64: str | None = None
    value_b64: str = Field(description="The original value (base64), or its first 4 KiB when `truncated`.")
    reason: str
    error: str
    stage: Literal["decode", "process", "sink"] = "decode"
    truncated: bool = Field(False, description="`value_b64` holds only the first 4 KiB of the value.")
    original_length: int | None = Field(
        None, description="Bytes of the original value (null in letters written before this field existed)."
    )
    sha256: str | None = Field(None, description="Hex SHA-256 of the whole original value.")
    key_truncated: bool = Field(False, description="`key_b64` holds only the first 4 KiB of the key.")
    key_length: int | None = Field(None, description="Bytes of the original key, when it was truncated.")
    key_sha256: str | None = Field(None, description="Hex SHA-256 of the whole key, when it was truncated.")

    @classmethod
    def of(
        cls,
        raw: bytes,
        *,
        source_topic: str,
        reason: str,
        error: str,
        key: bytes | None = None,
        partition: int | None = None,
        offset: int | None = None,
        stage: Literal["decode", "process", "sink"] = "decode",
    ) -> DeadLetter:
        truncated = len(raw) > DEAD_LETTER_MAX_VALUE_BYTES
        kept = raw[:DEAD_LETTER_PREFIX_BYTES] if truncated else raw
        key_fields: dict[str, Any] = {}
        if key is not None:
            if len(key) > DEAD_LETTER_PREFIX_BYTES:
                key_fields = {
                    "key_truncated": True,
                    "key_length": len(key),
                    "key_sha256": hashlib.sha256(key).hexdigest(),
                }
                key = key[:DEAD_LETTER_PREFIX_BYTES]
            key_fields["key_b64"] = base64.b64encode(key).decode()
        return cls(
            source_topic=source_topic,
            partition=partition,
            offset=offset,
            **key_fields,
            value_b64=base64.b64encode(kept).decode(),
            reason=_bounded_text(reason, DEAD_LETTER_MAX_REASON_CHARS),
            error=_bounded_text(error, DEAD_LETTER_MAX_ERROR_CHARS),
            stage=stage,
            truncated=truncated,
            original_length=len(raw),
            sha256=hashlib.sha256(raw).hexdigest(),
        )

    def raw(self) -> bytes:
        """The bytes kept: the original value, or its prefix when `truncated`."""
        return base64.b64decode(self.value_b64)


def reason_kind(reason: str) -> str:
    """A dead letter's reason without its particulars (values, times): a bounded set to count by.

    >>> reason_kind("invalid EngagementEvent: revenue: Input should be greater than or equal to 0")
    'invalid EngagementEvent: revenue'
    >>> reason_kind("event_time 2026-11-02T10:00:00+00:00 is 7200 s ahead of the wall clock "
    ...             "(PMON_MAX_FUTURE_SECONDS=3600)")
    'event_time ahead of the wall clock'
    >>> reason_kind("empty value (a tombstone): input records must carry an event")
    'empty value (a tombstone)'
    """
    if reason.startswith("event_time ") and "ahead of the wall clock" in reason:
        return "event_time ahead of the wall clock"
    return ": ".join(reason.split(": ")[: 2 if reason.startswith("invalid ") else 1])


INPUT_MODELS: dict[str, type[_Record]] = {
    ENGAGEMENT: EngagementEvent,
    CONSENT: ConsentEvent,
    RULE_CHANGES: RuleChangeEvent,
}


def encode(record: BaseModel) -> bytes:
    """JSON of a model; pydantic-core's serializer is twice as fast as orjson over model_dump here."""
    return record.model_dump_json().encode()


def decode(model: type[BaseModel], raw: bytes, *, pseudonymise: Callable[[str], str] | None = None) -> Any:
    """Decode one record, or raise DecodeError with a one-line reason.

    `pseudonymise` replaces a string `user_id` before validation, so the raw
    id never reaches a model (nor an error message).
    """
    if not raw:
        raise DecodeError(
            "empty value (zero bytes): input records must carry a JSON object", "the record's value has no bytes"
        )
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise DecodeError("not JSON", str(exc)) from None
    if not isinstance(data, dict):
        raise DecodeError("not a JSON object", f"got {type(data).__name__}")
    if pseudonymise is not None and isinstance(data.get("user_id"), str) and data["user_id"]:
        data["user_id"] = pseudonymise(data["user_id"])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] == "extra_forbidden":
            # The name is the producer's, of any length: out of the reason's kind (a bounded set to count by).
            name = repr(str(first["loc"][-1]))
            name = name if len(name) <= 60 else name[:57] + "..."
            raise DecodeError(f"invalid {model.__name__}: unknown field: {first['msg']} ({name})", str(exc)) from None
        where = ".".join(str(p) for p in first["loc"]) or model.__name__
        raise DecodeError(f"invalid {model.__name__}: {where}: {first['msg']}", str(exc)) from None
