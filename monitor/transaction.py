"""One step's writes, held back until what the step caused was delivered, then committed whole.

Both stages change state through a `StepTransaction`: reads see the step's own
writes, nothing reaches the tables before `commit`, and `commit` writes the
tables in the order they were registered (see `InitiativeStage.commit` for why
the order matters on the worker's changelog). `rollback` forgets the step.

>>> rows, clocks = {}, {}
>>> step = StepTransaction()
>>> staged_rows, staged_clocks = step.table(rows), step.table(clocks)
>>> staged_rows["a"] = 1; staged_clocks["a"] = 2
>>> staged_rows.get("a"), rows
(1, {})
>>> step.commit(); rows, clocks
({'a': 1}, {'a': 2})
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any


class Staged:
    """Writes to one table held back until the transaction commits; `None` deletes."""

    __slots__ = ("table", "pending")

    def __init__(self, table: MutableMapping[str, Any]) -> None:
        self.table = table
        self.pending: dict[str, Any] = {}

    def get(self, key: str) -> Any:
        return self.pending[key] if key in self.pending else self.table.get(key)

    def __setitem__(self, key: str, value: Any) -> None:
        self.pending[key] = value

    def keys(self) -> list[str]:
        """The table's keys as the step sees them."""
        known = {k: None for k in self.table.keys()}  # noqa: SIM118 - the table's own keys(), not its iteration
        for key, value in self.pending.items():
            if value is None:
                known.pop(key, None)
            else:
                known[key] = None
        return list(known)

    def _write(self) -> None:
        for key, value in self.pending.items():
            if value is None:
                self.table.pop(key, None)
            else:
                self.table[key] = value
        self.pending.clear()


class StepTransaction:
    """The staged tables of one stage; see the module docstring."""

    __slots__ = ("_tables",)

    def __init__(self) -> None:
        self._tables: list[Staged] = []

    def table(self, mapping: MutableMapping[str, Any]) -> Staged:
        staged = Staged(mapping)
        self._tables.append(staged)
        return staged

    def commit(self) -> None:
        for staged in self._tables:
            staged._write()

    def rollback(self) -> None:
        for staged in self._tables:
            staged.pending.clear()
