"""Mappings that store pickled snapshots: what was written can never change afterwards.

Faust serializes a changelog record when its producer buffer drains, not when
the table is set. The pipeline mutates its state objects in place step after
step, so a record queued for step N could carry step N+1's state, and a worker
killed in between would restart from a mix. Storing bytes taken at `set` time
makes each changelog record the exact state of its step; every `get` returns a
fresh object the step may change freely.

A prefix lets several logical tables share one Faust table, so one step's
writes go to ONE changelog partition, where Kafka keeps their order: a worker
stopped mid-step restarts from a prefix of the step's writes, which the
pipeline's write order makes safe. Over several changelog topics the records
could arrive in any order (a clock ahead of its rows, say).
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator, MutableMapping
from typing import Any


class SnapshotMapping(MutableMapping[str, Any]):
    """Pickled values over a mapping of bytes (a Faust table with raw values), keys under `prefix`.

    >>> store = {}
    >>> snapshots = SnapshotMapping(store)
    >>> value = {"counted": 1}
    >>> snapshots["clock"] = value
    >>> value["counted"] = 2          # changing the object afterwards...
    >>> snapshots["clock"]            # ...does not change what was stored
    {'counted': 1}
    >>> rows = SnapshotMapping(store, prefix="row/")
    >>> rows["a"] = 1
    >>> sorted(store), list(rows), list(snapshots)
    (['clock', 'row/a'], ['a'], ['clock', 'row/a'])
    """

    __slots__ = ("_store", "_prefix")

    def __init__(self, store: MutableMapping[str, bytes], *, prefix: str = "") -> None:
        self._store = store
        self._prefix = prefix

    def __getitem__(self, key: str) -> Any:
        return pickle.loads(self._store[self._prefix + key])

    def get(self, key: str, default: Any = None) -> Any:
        raw = self._store.get(self._prefix + key)
        return default if raw is None else pickle.loads(raw)

    def __setitem__(self, key: str, value: Any) -> None:
        self._store[self._prefix + key] = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)

    def __delitem__(self, key: str) -> None:
        del self._store[self._prefix + key]

    def __iter__(self) -> Iterator[str]:
        n = len(self._prefix)
        return iter([key[n:] for key in list(self._store.keys()) if key.startswith(self._prefix)])

    def __len__(self) -> int:
        return sum(1 for _ in self)
