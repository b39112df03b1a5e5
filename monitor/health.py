"""Readiness: whether a worker does its job, from facts its services report (`/ready`).

Alive (`/health`) only says the process answers. Ready says every service (stage 1,
stage 2) has joined its group and holds its share, is not reading state back from a
changelog, has had a fetch answered by the broker within `PMON_READY_FETCH_SECONDS`,
and is at most `PMON_READY_MAX_LAG` records behind.

>>> ok = ServiceFacts("app-users", assigned=True, recovering=False, partitions=2, lag=10, fetch_age=0.2)
>>> readiness([ok], max_fetch_age=10, max_lag=1000)
(True, [])
>>> stuck = ServiceFacts("app-users", assigned=True, recovering=False, partitions=2, lag=10, fetch_age=42.0)
>>> readiness([stuck], max_fetch_age=10, max_lag=1000)
(False, ['app-users: no fetch answered for 42 s (broker unreachable?)'])
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class ServiceFacts:
    name: str
    assigned: bool  # the group assigned this worker its share at least once
    recovering: bool  # reading a partition's state back from its changelog
    partitions: int  # held now (0 is fine: more workers than partitions)
    lag: int | None  # records behind the last stable offsets, over the partitions held
    fetch_age: float | None  # seconds since the broker last answered a fetch (None: nothing held)


def readiness(services: Iterable[ServiceFacts], *, max_fetch_age: float, max_lag: int) -> tuple[bool, list[str]]:
    """(ready, why not): one reason per failed check."""
    reasons = []
    for facts in services:
        if not facts.assigned:
            reasons.append(f"{facts.name}: no partitions assigned yet (joining the group)")
        if facts.recovering:
            reasons.append(f"{facts.name}: recovering state from its changelog")
        if facts.partitions and (facts.fetch_age is None or facts.fetch_age > max_fetch_age):
            age = "ever" if facts.fetch_age is None else f"for {facts.fetch_age:.0f} s"
            reasons.append(f"{facts.name}: no fetch answered {age} (broker unreachable?)")
        if facts.lag is not None and facts.lag > max_lag:
            reasons.append(f"{facts.name}: {facts.lag:,} records behind (more than {max_lag:,})")
    return not reasons, reasons
