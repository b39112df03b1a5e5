"""User ids are replaced by a keyed hash before they reach state, logs, metrics or files."""

from __future__ import annotations

import hashlib
from functools import lru_cache


class Pseudonymiser:
    """Keyed BLAKE2b (a MAC, RFC 7693) of the user id, 96 bits, cached for the active users.

    >>> Pseudonymiser(b"k").pseudonym("u000123") == Pseudonymiser(b"k").pseudonym("u000123")
    True
    >>> Pseudonymiser(b"k").pseudonym("u000123") != Pseudonymiser(b"other").pseudonym("u000123")
    True
    """

    __slots__ = ("_key", "pseudonym")

    def __init__(self, key: bytes, *, cache_size: int = 65_536) -> None:
        if not key:
            raise ValueError("the pseudonym key is empty; set PMON_PSEUDONYM_KEY")
        if len(key) > 64:
            key = hashlib.blake2b(key).digest()  # BLAKE2b keys are at most 64 bytes
        self._key = key
        self.pseudonym = lru_cache(maxsize=cache_size)(self._pseudonym)

    def _pseudonym(self, user_id: str) -> str:
        return "p" + hashlib.blake2b(user_id.encode(), key=self._key, digest_size=12).hexdigest()
