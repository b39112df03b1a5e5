"""monitor.messages: the wire form between the stages; partials compressed, anything malformed a StageError."""

from __future__ import annotations

from datetime import timedelta

import orjson
import pytest
import zstandard

from monitor.exceptions import StageError
from monitor.messages import Tick, decode, encode
from tests.unit.test_user_stage import WALL, consent, exposure, records, stage


def partial():
    users = stage()
    batch = [exposure(n, timedelta(minutes=n), user=f"u{n % 7}", initiative="A", cohort=f"c{n % 3}")
             for n in range(300)]
    grants = [consent(n, timedelta(minutes=-5), "granted", user=f"u{n}") for n in range(7)]
    [result] = users.process(0, records(*batch), records(*grants), wall_now=WALL).partials
    return result


def test_a_partial_travels_compressed_and_comes_back_equal() -> None:
    message = partial()
    raw = encode(message)
    assert raw[:4] == b"\x28\xb5\x2f\xfd", "a zstd frame"
    assert decode(raw) == message
    # The same JSON, uncompressed, is read too, and is several times larger.
    plain = orjson.dumps(orjson.loads(zstandard.ZstdDecompressor().decompress(raw)))
    assert decode(plain) == message and len(raw) * 3 < len(plain), (len(raw), len(plain))


def test_small_messages_stay_plain_json() -> None:
    assert orjson.loads(encode(Tick("A"))) == {"type": "tick", "initiative": "A"}


@pytest.mark.parametrize("raw, problem", [
    (b"not json", "JSONDecodeError"),
    (b"\x28\xb5\x2f\xfd broken frame", "ZstdError"),
    (b'{"type": "gossip", "initiative": "A"}', "unknown message type 'gossip'"),
    (b'{"type": "partial", "initiative": "A"}', "KeyError"),
])
def test_a_malformed_message_is_a_stage_error_that_says_what(raw: bytes, problem: str) -> None:
    with pytest.raises(StageError, match=problem):
        decode(raw)
