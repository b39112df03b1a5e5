"""Epoch seconds as UTC, the one conversion the stages, governance and the report share.

In `incidents`, the lowest pure package, so that governance and the monitor both import it without a cycle.
"""

from __future__ import annotations

from datetime import datetime, timezone


def utc(epoch: float) -> datetime:
    """An event time in epoch seconds as an aware UTC datetime.

    >>> utc(1_794_477_600.5)
    datetime.datetime(2026, 11, 12, 10, 0, 0, 500000, tzinfo=datetime.timezone.utc)
    """
    return datetime.fromtimestamp(epoch, tz=timezone.utc)


def iso_seconds(epoch: float) -> str:
    """An event time in epoch seconds as ISO 8601 UTC to the second, for messages meant for people.

    >>> iso_seconds(1_794_477_600.5)
    '2026-11-12T10:00:00Z'
    """
    return utc(epoch).strftime("%Y-%m-%dT%H:%M:%SZ")
