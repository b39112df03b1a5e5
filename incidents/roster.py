"""Who is on duty for a role: the roster's lead, or the first substitute who is available that day.

>>> from datetime import date
>>> people, away = ["Ana", "Ben", "Cy"], {"Ana": [(date(2026, 11, 10), date(2026, 11, 12))]}
>>> on_duty(people, away, date(2026, 11, 9))
('Ana', None)
>>> on_duty(people, away, date(2026, 11, 11))
('Ben', 'Ana unavailable on 2026-11-11')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any


def on_duty(
    people: Sequence[str], unavailable: Mapping[str, Sequence[tuple[date, date]]], day: date
) -> tuple[str, str | None]:
    """(person, why it is not the lead or None): the first of `people` not unavailable on `day`."""
    for person in people:
        if not any(start <= day <= end for start, end in unavailable.get(person, ())):
            return person, None if person == people[0] else f"{people[0]} unavailable on {day.isoformat()}"
    return people[0], f"everyone on the roster unavailable on {day.isoformat()}: the lead stays assigned"


def assignee_of(roster: Mapping[str, Any], role: str, day: date) -> tuple[str | None, str | None]:
    """`on_duty` for `role` in a roster of entries with `people` and `unavailable`; (None, None) without an entry."""
    entry = roster.get(role)
    return (None, None) if entry is None else on_duty(entry.people, entry.unavailable, day)
