"""Stage 2's state on the worker: pickled snapshots over a store that knows what changed since its commit.

The stage mutates its state objects in place, step after step. Storing the
bytes taken when a step commits makes every value the exact state of that
step; every `get` returns a fresh object the next step may change freely.
Several logical tables share one store under key prefixes, so one partition's
state is one changelog partition.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator, MutableMapping
from typing import Any

_ABSENT = object()


class ChangeStore(MutableMapping[str, bytes]):
    """A dict of bytes that records its writes since the last `committed()`, and can undo them.

    >>> store = ChangeStore({"a": b"1"})
    >>> store["a"] = b"2"; store["b"] = b"3"; del store["b"]
    >>> store.changes()
    {'a': b'2', 'b': None}
    >>> store.rollback(); dict(store), store.changes()
    ({'a': b'1'}, {})
    """

    __slots__ = ("_data", "_undo")

    def __init__(self, data: dict[str, bytes] | None = None) -> None:
        self._data = data if data is not None else {}
        self._undo: dict[str, Any] = {}  # key -> committed value, or _ABSENT

    def __getitem__(self, key: str) -> bytes:
        return self._data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self._data.get(key, default)

    def __setitem__(self, key: str, value: bytes) -> None:
        if key not in self._undo:
            self._undo[key] = self._data.get(key, _ABSENT)
        self._data[key] = value

    def __delitem__(self, key: str) -> None:
        if key not in self._undo:
            self._undo[key] = self._data.get(key, _ABSENT)
        del self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._data))

    def __len__(self) -> int:
        return len(self._data)

    def changes(self) -> dict[str, bytes | None]:
        """Every key written since the last commit, with its value now (`None`: deleted)."""
        return {key: self._data.get(key) for key in self._undo}

    def committed(self) -> None:
        self._undo.clear()

    def rollback(self) -> None:
        """Back to the state of the last commit."""
        for key, value in self._undo.items():
            if value is _ABSENT:
                self._data.pop(key, None)
            else:
                self._data[key] = value
        self._undo.clear()


class SnapshotMapping(MutableMapping[str, Any]):
    """Pickled values over a mapping of bytes, keys under `prefix`.

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
