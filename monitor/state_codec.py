"""Stage 1's per-user values, compressed with a zstd dictionary learnt from the partition's own values.

A user's encoded state is a few hundred bytes of JSON that repeat the same
names in every value (purposes, regions, experiments, variants, series), too
little for a compressor to find the repeats within one value. A dictionary
trained on a sample of the partition's values holds them instead, and each
value shrinks to its own few numbers (the bench is `bench/state_size.py`).

A stored value is one of:

* plain JSON (it starts with ``[``): written before the partition had a
  dictionary, or with compression off; always readable;
* ``b"\\x00"``, the dictionary's number (one byte) and a zstd frame compressed
  with the dictionary stored under ``DICTIONARY_KEY.format(number)``.

The dictionaries live in the same mapping as the values, so the changelog
that restores a partition's values restores what decodes them; a dictionary
is written in the same commit as the first values compressed with it.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping

import zstandard

from monitor.exceptions import StateCodecError

log = logging.getLogger(__name__)

DICTIONARY_KEY = "#zdict/{}"  # beside "#progress/<p>": keys of users are pseudonyms, which start with "p"
COMPRESSED = 0  # the first byte of a compressed value (plain JSON starts with "[")
LEVEL = 3
DICTIONARY_BYTES = 4096  # more gains nothing on values of this size; it is stored once per partition
MAX_DICTIONARIES = 255  # the number is one byte


class StateCodec:
    """Encodes a partition's user values for its store, training the partition's dictionary once.

    `samples`: plain values to collect before training (0: never compress). The newest
    dictionary in `store` is used from the start (a partition restored from its changelog
    goes on with the one it had).

    >>> import orjson
    >>> store = {}
    >>> codec = StateCodec(store, samples=200)
    >>> values = {f"p{n:04x}": orjson.dumps([{"personalization": [[1793491274.5 + n, True]]}, "US",
    ...            {"onboarding-checklist": ["treatment", n % 3, 0.0]}]) for n in range(400)}
    >>> writes = codec.pack(dict(values))        # the first 200 train the dictionary: all 400 come out packed
    >>> sorted(k for k in writes if k.startswith("#"))
    ['#zdict/1']
    >>> store.update(writes)
    >>> all(codec.unpack(writes[k]) == v for k, v in values.items())
    True
    >>> sum(map(len, (writes[k] for k in values))) < sum(map(len, values.values())) // 3
    True
    >>> StateCodec(store, samples=200).unpack(writes["p0001"]) == values["p0001"]   # restored, same dictionary
    True
    """

    def __init__(self, store: Mapping[str, bytes], samples: int) -> None:
        if samples < 0:
            raise ValueError("samples must be >= 0 (0: values are stored uncompressed)")
        self._store = store
        self._wanted = samples
        self._samples: list[bytes | bytearray | memoryview] = []  # as zstandard.train_dictionary types it
        self._decompressors: dict[int, zstandard.ZstdDecompressor] = {}
        self._number = 0
        self._compressor: zstandard.ZstdCompressor | None = None
        self._trained: bytes | None = None  # the dictionary trained here, written with every pack until stored
        while self._number < MAX_DICTIONARIES and store.get(DICTIONARY_KEY.format(self._number + 1)) is not None:
            self._number += 1
        if self._number:
            self._compressor = self._compressor_for(self._number)

    @property
    def dictionary(self) -> int:
        """The number of the dictionary new values are compressed with (0: none yet)."""
        return self._number

    def unpack(self, stored: bytes) -> bytes:
        """The plain JSON of a stored value."""
        if stored[0] != COMPRESSED:
            return stored
        number = stored[1]
        decompressor = self._decompressors.get(number)
        if decompressor is None:
            decompressor = self._decompressors[number] = zstandard.ZstdDecompressor(dict_data=self._load(number))
        return decompressor.decompress(stored[2:])

    def pack(self, writes: dict[str, bytes]) -> dict[str, bytes]:
        """`writes` (user -> plain JSON; keys starting "#" are left alone) as they are to be stored, in place.

        The write that completes the sample also trains the dictionary: it is added to
        `writes`, with every plain value of the store re-encoded, so that one commit holds both
        (and to every later `writes` until the store holds it).
        """
        compressor = self._compressor
        if compressor is None:
            if not self._wanted:
                return writes
            # At most the sample wanted: a first commit of a replay may hold many thousands of values, and
            # training time grows with the sample (0.58 s for 18,847 values, 0.08 s for 2,000, as compact).
            needed = self._wanted - len(self._samples)
            self._samples.extend(itertools.islice((v for k, v in writes.items() if k[0] != "#"), needed))
            if len(self._samples) < self._wanted:
                return writes
            compressor = self._train(writes)
            if compressor is None:
                return writes
        key = DICTIONARY_KEY.format(self._number)
        if self._trained is not None and key not in self._store:
            # Until a commit holds the dictionary, every write carries it: the commit that first did may
            # have been aborted (a failed transaction), and no value may reach the store without it.
            writes[key] = self._trained
        prefix = bytes((COMPRESSED, self._number))
        compress = compressor.compress
        for key, value in writes.items():
            if key[0] != "#" and value[0] != COMPRESSED:
                writes[key] = prefix + compress(value)
        return writes

    def _train(self, writes: dict[str, bytes]) -> zstandard.ZstdCompressor | None:
        try:
            trained = zstandard.train_dictionary(DICTIONARY_BYTES, self._samples, level=LEVEL)
        except zstandard.ZstdError as exc:  # too little variety to learn from: try again with twice as much
            log.warning("no state dictionary from %d values (%s); trying again later", len(self._samples), exc)
            self._wanted *= 2
            return None
        self._samples = []
        self._number += 1
        self._trained = trained.as_bytes()
        for user, value in self._store.items():  # the values written before: one pass over a small store
            if user[0] != "#" and user not in writes and value[0] != COMPRESSED:
                writes[user] = value
        self._compressor = self._compressor_for(self._number, trained)
        return self._compressor

    def _load(self, number: int) -> zstandard.ZstdCompressionDict:
        raw = self._store.get(DICTIONARY_KEY.format(number))
        if raw is None:
            raise StateCodecError(
                f"a stored value needs state dictionary {number}, which the store does not hold: its changelog "
                "lost records; restore it, or reset the worker's state"
            )
        return zstandard.ZstdCompressionDict(raw)

    def _compressor_for(
        self, number: int, dictionary: zstandard.ZstdCompressionDict | None = None
    ) -> zstandard.ZstdCompressor:
        # No checksum, no dictionary id, content size kept: the frame is as small as zstd makes it.
        return zstandard.ZstdCompressor(
            level=LEVEL,
            dict_data=dictionary or self._load(number),
            write_checksum=False,
            write_content_size=True,
            write_dict_id=False,
        )
