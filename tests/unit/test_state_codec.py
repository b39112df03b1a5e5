"""monitor.state_codec: per-user values compressed with a dictionary the partition learns, restored with it."""

from __future__ import annotations

from datetime import timedelta

import orjson
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from monitor.exceptions import StateCodecError
from monitor.settings import Settings
from monitor.state_codec import DICTIONARY_KEY, StateCodec
from monitor.user_stage import UserStage, encode_user
from tests.unit.test_user_stage import WALL, consent, exposure, records


def value(n: int) -> bytes:
    """A value shaped like a user's state: the same names, different numbers."""
    return orjson.dumps([
        {"personalization": [[1_793_491_274.348 + n, n % 2 == 0]]}, "US" if n % 3 else "EU", 1_793_491_274.348 + n,
        [[f"3-69-{n}-153", 1_793_742_242.892 + n, "Pricing Page Recs|free_tier|web|none", "US", False]],
        {"onboarding-checklist": [1_793_714_400.0 + 3600 * (n % 7), None]},
        {"onboarding-checklist": ["treatment" if n % 2 else "control", n % 4, 0.0]},
    ])


def trained(samples: int = 100, users: int = 300) -> tuple[dict[str, bytes], StateCodec, dict[str, bytes]]:
    store: dict[str, bytes] = {}
    codec = StateCodec(store, samples)
    plain = {f"p{n:024x}": value(n) for n in range(users)}
    store.update(codec.pack(dict(plain)))
    return store, codec, plain


def test_the_dictionary_is_trained_on_the_sample_wanted_even_from_one_large_commit(monkeypatch) -> None:
    """Training time grows with the sample: a replay's first commit of thousands of values trains on the first
    `samples` of them, and every value is still compressed."""
    import monitor.state_codec as state_codec

    sizes: list[int] = []
    train = state_codec.zstandard.train_dictionary

    def spy(size: int, samples: list[bytes], **options: object) -> object:
        sizes.append(len(samples))
        return train(size, samples, **options)

    monkeypatch.setattr(state_codec.zstandard, "train_dictionary", spy)
    store, codec, plain = trained(samples=100, users=1000)
    assert sizes == [100]
    assert codec.dictionary == 1 and all(store[key][0] == 0 for key in plain)
    assert {key: codec.unpack(store[key]) for key in plain} == plain


def test_the_commit_that_completes_the_sample_trains_writes_and_uses_the_dictionary() -> None:
    store: dict[str, bytes] = {}
    codec = StateCodec(store, samples=100)
    early = {f"p{n:024x}": value(n) for n in range(60)}
    store.update(codec.pack(dict(early)))
    assert codec.dictionary == 0 and all(store[k] == v for k, v in early.items()), "too few to train: kept plain"
    late = {f"p{n:024x}": value(n) for n in range(60, 120)}
    writes = codec.pack(dict(late))
    assert codec.dictionary == 1 and DICTIONARY_KEY.format(1) in writes
    # The values written before the dictionary are re-encoded in the same commit, and nothing else is.
    assert set(writes) == set(early) | set(late) | {DICTIONARY_KEY.format(1)}
    store.update(writes)
    assert all(store[k][0] == 0 and codec.unpack(store[k]) == v for k, v in {**early, **late}.items())
    packed = sum(len(store[k]) for k in early | late)
    assert packed < sum(map(len, (early | late).values())) / 3, f"{packed} bytes packed"


def test_a_store_restored_from_its_writes_decodes_everything_and_keeps_its_dictionary() -> None:
    store, _, plain = trained()
    restored = StateCodec(dict(store), samples=100)  # a new owner of the partition, after recovery
    assert restored.dictionary == 1
    assert all(restored.unpack(store[k]) == v for k, v in plain.items())
    again = restored.pack({"p" + "f" * 24: value(1)})
    assert set(again) == {"p" + "f" * 24}, "no second dictionary is trained"
    assert again["p" + "f" * 24][:2] == bytes((0, 1)) and restored.unpack(again["p" + "f" * 24]) == value(1)


def test_progress_entries_and_plain_values_pass_through() -> None:
    _store, codec, _ = trained()
    writes = codec.pack({"#progress/0": b"[12,null,[]]", "p" + "a" * 24: value(3)})
    assert writes["#progress/0"] == b"[12,null,[]]"
    assert codec.unpack(value(5)) == value(5), "a value stored before compression existed is still read"


def test_no_samples_means_no_compression() -> None:
    store: dict[str, bytes] = {}
    codec = StateCodec(store, samples=0)
    plain = {f"p{n:024x}": value(n) for n in range(500)}
    assert codec.pack(dict(plain)) == plain and codec.dictionary == 0
    with pytest.raises(ValueError, match="samples must be >= 0"):
        StateCodec(store, samples=-1)


def test_a_value_whose_dictionary_is_missing_is_a_precise_error() -> None:
    store, _, plain = trained()
    del store[DICTIONARY_KEY.format(1)]
    key = next(iter(plain))
    with pytest.raises(StateCodecError, match="needs state dictionary 1, which the store does not hold"):
        StateCodec(store, samples=100).unpack(store[key])


def test_too_little_variety_waits_for_twice_the_sample() -> None:
    store: dict[str, bytes] = {}
    codec = StateCodec(store, samples=5)
    same = {f"p{n:024x}": b"[1]" for n in range(5)}
    assert codec.pack(dict(same)) == same and codec.dictionary == 0  # nothing to learn from five "[1]"


@hypothesis_settings(max_examples=60, deadline=None)
@given(st.lists(st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12), min_size=1, max_size=30))
def test_any_json_value_comes_back_byte_for_byte(items: list[object]) -> None:
    _store, codec, _ = trained()
    writes = {f"q{n:024x}": orjson.dumps([item]) for n, item in enumerate(items)}
    packed = codec.pack(dict(writes))
    assert {k: codec.unpack(v) for k, v in packed.items()} == writes


def test_the_user_stage_reads_back_what_it_compressed() -> None:
    users: dict[str, bytes] = {}
    stage = UserStage(Settings(state_dictionary_samples=20), users)
    ids = [f"user-{n}" for n in range(40)]
    stage.process(0, records(*(exposure(n, timedelta(0), user=u) for n, u in enumerate(ids))),
                  records(*(consent(n, timedelta(minutes=-5), "granted", user=u) for n, u in enumerate(ids))),
                  wall_now=WALL)
    writes = stage.pending_writes()
    expected = {k: encode_user(stage.user(k)) for k in writes if not k.startswith("#")}
    stage.commit(writes)
    assert stage.dictionary == 1 and all(users[k][0] == 0 for k in expected)
    fresh = UserStage(Settings(state_dictionary_samples=20), users)  # nothing decoded yet: read from the store
    assert {k: encode_user(fresh.user(k)) for k in expected} == expected
    assert {k: encode_user(fresh.stored(k)) for k in expected} == expected
    # Users are counted without the progress entry and the dictionary, by either stage.
    assert {k for k in users if k.startswith("#")} == {"#progress/0", "#zdict/1"}
    assert stage.user_count() == fresh.user_count() == len(ids)


def test_an_aborted_commit_of_the_dictionary_does_not_strand_the_values_compressed_after_it() -> None:
    store: dict[str, bytes] = {}
    codec = StateCodec(store, samples=100)
    first = codec.pack({f"p{n:024x}": value(n) for n in range(120)})
    assert DICTIONARY_KEY.format(1) in first  # ... and this commit fails: nothing of it reaches the store
    second = codec.pack({"p" + "e" * 24: value(7)})
    assert DICTIONARY_KEY.format(1) in second, "the next commit carries the dictionary again"
    store.update(second)
    third = codec.pack({"p" + "d" * 24: value(8)})
    assert set(third) == {"p" + "d" * 24}, "once stored, it is not written again"
    store.update(third)
    restored = StateCodec(dict(store), samples=100)
    assert restored.unpack(store["p" + "e" * 24]) == value(7) and restored.unpack(store["p" + "d" * 24]) == value(8)
