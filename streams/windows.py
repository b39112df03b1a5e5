"""Event-time tumbling windows per initiative, closed by the watermark.

The watermark of an initiative is the greatest event time seen minus the
allowed lateness. A bucket closes when the watermark passes its end; an event
whose bucket is already closed is counted as late and dropped, never silently.
A replay of history therefore decides exactly what live traffic would have.

State lives in two mappings (a Faust table in the worker, a dict in the
embedded driver): `clocks[initiative]` and `buckets["<initiative>|<start>"]`,
one row per initiative and hour holding counters per series and per cohort,
kept `retention_days` for reports. Values are mutated and then re-assigned, as
Faust tables only log a value when it is set.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from datetime import datetime, timezone

from detectors.base import BucketObservation
from streams.events import EngagementEvent


@dataclass(slots=True)
class Counters:
    exposures: int = 0
    clicks: int = 0
    conversions: int = 0
    revenue: float = 0.0
    fallbacks: int = 0
    latency_ms_sum: float = 0.0

    def add(self, event: EngagementEvent) -> None:
        if event.event_type == "exposure":
            self.exposures += 1
            self.fallbacks += event.fallback
            self.latency_ms_sum += event.decision_latency_ms
        elif event.event_type == "click":
            self.clicks += 1
        else:
            self.conversions += 1
            self.revenue += event.revenue

    def merge(self, other: "Counters") -> None:
        self.exposures += other.exposures
        self.clicks += other.clicks
        self.conversions += other.conversions
        self.revenue += other.revenue
        self.fallbacks += other.fallbacks
        self.latency_ms_sum += other.latency_ms_sum


@dataclass(slots=True)
class BucketRow:
    """One initiative over one bucket: counters per series and per cohort."""

    initiative: str
    start: float
    end: float
    series: dict[str, Counters] = field(default_factory=dict)
    cohorts: dict[str, Counters] = field(default_factory=dict)

    def observations(self) -> Iterator[BucketObservation]:
        start, end = _utc(self.start), _utc(self.end)
        for series in sorted(self.series):
            c = self.series[series]
            yield BucketObservation(series, start, end, c.exposures, c.clicks, c.conversions, c.revenue,
                                    c.fallbacks, c.latency_ms_sum)


@dataclass(slots=True)
class InitiativeClock:
    watermark: float | None = None  # greatest event time seen (epoch seconds)
    closed_until: float | None = None  # every bucket ending at or before this is closed
    open_starts: list[float] = field(default_factory=list)
    counted: int = 0
    late_dropped: int = 0
    last_event_wall: float = 0.0


def series_key(event: EngagementEvent) -> str:
    return f"{event.initiative}|{event.profile}|{event.channel}|{event.variant}"


def bucket_key(initiative: str, start: float) -> str:
    return f"{initiative}|{int(start)}"


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=timezone.utc)


class WindowKeeper:
    """Adds events to open buckets and hands back the buckets the watermark closed."""

    def __init__(self, clocks: MutableMapping[str, InitiativeClock], buckets: MutableMapping[str, BucketRow], *,
                 bucket_seconds: int, allowed_lateness_seconds: int, retention_days: int) -> None:
        self.clocks = clocks
        self.buckets = buckets
        self.bucket_seconds = bucket_seconds
        self.lateness = allowed_lateness_seconds
        self.retention = retention_days * 86_400

    def _start_of(self, epoch: float) -> float:
        return math.floor(epoch / self.bucket_seconds) * self.bucket_seconds

    def add(self, event: EngagementEvent, *, wall_now: float) -> tuple[bool, list[BucketRow]]:
        """Count one event; return whether it was counted and the buckets now closed."""
        initiative = event.initiative
        clock = self.clocks.get(initiative) or InitiativeClock()
        t = event.event_time.timestamp()
        start = self._start_of(t)
        clock.last_event_wall = wall_now
        if clock.closed_until is not None and start < clock.closed_until:
            clock.late_dropped += 1
            self.clocks[initiative] = clock
            return False, []
        key = bucket_key(initiative, start)
        row = self.buckets.get(key)
        if row is None:
            row = BucketRow(initiative, start, start + self.bucket_seconds)
            clock.open_starts.append(start)
            clock.open_starts.sort()
        row.series.setdefault(series_key(event), Counters()).add(event)
        row.cohorts.setdefault(event.cohort, Counters()).add(event)
        self.buckets[key] = row
        clock.counted += 1
        clock.watermark = t if clock.watermark is None else max(clock.watermark, t)
        closed = self._advance(initiative, clock, clock.watermark - self.lateness)
        self.clocks[initiative] = clock
        return True, closed

    def close_idle(self, initiative: str, *, wall_now: float, idle_seconds: float) -> list[BucketRow]:
        """Close every open bucket of a feed that has been quiet for `idle_seconds` of wall time.

        The watermark moves to the end of the newest open bucket, so an event of
        those buckets arriving afterwards is late, as it would be had traffic
        continued.
        """
        clock = self.clocks.get(initiative)
        if clock is None or not clock.open_starts or wall_now - clock.last_event_wall < idle_seconds:
            return []
        closed = self._advance(initiative, clock, clock.open_starts[-1] + self.bucket_seconds)
        self.clocks[initiative] = clock
        return closed

    def _advance(self, initiative: str, clock: InitiativeClock, horizon: float) -> list[BucketRow]:
        closed_until = self._start_of(horizon)
        if clock.closed_until is not None and closed_until <= clock.closed_until:
            return []
        previous = clock.closed_until
        clock.closed_until = closed_until
        closing = [s for s in clock.open_starts if s + self.bucket_seconds <= closed_until]
        clock.open_starts = [s for s in clock.open_starts if s + self.bucket_seconds > closed_until]
        self._expire(initiative, previous, closed_until)
        return [self.buckets[bucket_key(initiative, s)] for s in closing]

    def _expire(self, initiative: str, previous: float | None, closed_until: float) -> None:
        """Drop rows that fell out of retention since the last close."""
        first = (previous if previous is not None else closed_until - self.bucket_seconds) - self.retention
        for start in range(int(first), int(closed_until - self.retention), self.bucket_seconds):
            self.buckets.pop(bucket_key(initiative, start), None)

    def closed_rows(self, initiative: str, since: float) -> list[BucketRow]:
        """Rows of closed buckets starting at or after `since`, oldest first."""
        clock = self.clocks.get(initiative)
        if clock is None or clock.closed_until is None:
            return []
        rows = []
        for start in range(int(self._start_of(since)), int(clock.closed_until), self.bucket_seconds):
            row = self.buckets.get(bucket_key(initiative, start))
            if row is not None:
                rows.append(row)
        return rows
