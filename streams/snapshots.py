"""A mapping that stores pickled snapshots: what was written can never change afterwards.

Faust serializes a changelog record when its producer buffer drains, not when
the table is set. The pipeline mutates its state objects in place step after
step, so a record queued for step N could carry step N+1's state, and a worker
killed in between would restart from a mix. Storing bytes taken at `set` time
makes each changelog record the exact state of its step; every `get` returns a
fresh object the step may change freely.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator, MutableMapping
from typing import Any


class SnapshotMapping(MutableMapping[str, Any]):
    """Pickled values over a mapping of bytes (a Faust table with raw values).

    >>> store = {}
    >>> snapshots = SnapshotMapping(store)
    >>> value = {"counted": 1}
    >>> snapshots["clock"] = value
    >>> value["counted"] = 2          # changing the object afterwards...
    >>> snapshots["clock"]            # ...does not change what was stored
    {'counted': 1}
    """

    __slots__ = ("_store",)

    def __init__(self, store: MutableMapping[str, bytes]) -> None:
        self._store = store

    def __getitem__(self, key: str) -> Any:
        return pickle.loads(self._store[key])

    def get(self, key: str, default: Any = None) -> Any:
        raw = self._store.get(key)
        return default if raw is None else pickle.loads(raw)

    def __setitem__(self, key: str, value: Any) -> None:
        self._store[key] = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)

    def __delitem__(self, key: str) -> None:
        del self._store[key]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._store.keys()))

    def __len__(self) -> int:
        return len(self._store)
