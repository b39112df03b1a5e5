"""Event-time tumbling windows per initiative, closed by the watermark.

The watermark of an initiative is the least event-time mark over its source
partitions (see `WindowKeeper._watermark`). A bucket closes when the watermark
minus the allowed lateness passes its end; an event whose bucket is already
closed is counted as late and dropped, never silently. A replay of history
therefore decides exactly what live traffic would have.

Every bucket on the grid closes, also one without any event (a feed gap is an
observation of zero, not a missing one), and a closed bucket is judged for
every series of the initiative's roster, with zeros for a silent series. A
series leaves the roster after `retention_days` without events.

State lives in two mappings (a Faust table in the worker, a dict in the
embedded driver): `clocks[initiative]` and `buckets["<initiative>|<start>"]`,
one row per initiative and hour holding counters per series and per cohort,
kept `retention_days` for reports. Changed values are held in a write-back
cache until `flush()`, so a batch of events costs one table write (and one
changelog record) per touched row instead of one per event.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, MutableMapping
from dataclasses import dataclass, field
from datetime import datetime, timezone

from detectors.base import BucketObservation
from experiments.state import ExperimentTotals
from governance.scan import CONSENTED, FIRST_FALLBACK_IN_HOUR, FIRST_IN_HOUR, GovernanceTally
from monitor.events import EngagementEvent


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
    offsets: dict[int, int] = field(default_factory=dict)  # greatest source offset counted here, per partition
    governance: GovernanceTally = field(default_factory=GovernanceTally)
    experiments: dict[str, ExperimentTotals] = field(default_factory=dict)  # what the bucket's events added

    def observations(self, roster: Iterable[str] = ()) -> Iterator[BucketObservation]:
        """One observation per series of the row, and a zero one per series of `roster` it lacks."""
        start, end = _utc(self.start), _utc(self.end)
        silent = Counters()
        initiative_exposures = sum(c.exposures for c in self.series.values())
        for series in sorted(set(self.series).union(roster)):
            c = self.series.get(series, silent)
            yield BucketObservation(series, start, end, c.exposures, c.clicks, c.conversions, c.revenue,
                                    c.fallbacks, c.latency_ms_sum, group_exposures=initiative_exposures)

    def events(self) -> int:
        return sum(c.exposures + c.clicks + c.conversions for c in self.series.values())


@dataclass(slots=True)
class InitiativeClock:
    watermark: float | None = None  # the event time up to which every source partition has been read
    closed_until: float | None = None  # every bucket ending at or before this is closed
    open_starts: list[float] = field(default_factory=list)
    counted: int = 0
    late_dropped: int = 0
    first_event_wall: float = 0.0
    last_event_wall: float = 0.0
    partition_marks: dict[int, float] = field(default_factory=dict)  # greatest event time per source partition
    partition_walls: dict[int, float] = field(default_factory=dict)  # wall time of its last event
    partition_offsets: dict[int, int] = field(default_factory=dict)  # greatest source offset counted
    duplicates: int = 0
    roster: dict[str, float] = field(default_factory=dict)  # series -> end of the last closed bucket it had events in


def series_key(event: EngagementEvent) -> str:
    return f"{event.initiative}|{event.profile}|{event.channel}|{event.variant}"


def bucket_key(initiative: str, start: float) -> str:
    return f"{initiative}|{int(start)}"


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=timezone.utc)


class WindowKeeper:
    """Adds events to open buckets and hands back the buckets the watermark closed."""

    def __init__(self, clocks: MutableMapping[str, InitiativeClock], buckets: MutableMapping[str, BucketRow], *,
                 bucket_seconds: int, allowed_lateness_seconds: int, retention_days: int,
                 source_partitions: int = 1, idle_seconds: float = 900.0) -> None:
        self.clocks = clocks
        self.buckets = buckets
        self.bucket_seconds = bucket_seconds
        self.lateness = allowed_lateness_seconds
        self.retention = retention_days * 86_400
        self.source_partitions = source_partitions
        self.idle_seconds = idle_seconds
        self._dirty_clocks: dict[str, InitiativeClock] = {}
        self._dirty_rows: dict[str, BucketRow | None] = {}  # None: delete
        self._expired: list[str] = []

    def clock(self, initiative: str) -> InitiativeClock | None:
        """The initiative's clock as this step sees it (read only)."""
        return self._clock(initiative)

    def _clock(self, initiative: str) -> InitiativeClock | None:
        clock = self._dirty_clocks.get(initiative)
        return clock if clock is not None else self.clocks.get(initiative)

    def _row(self, key: str) -> BucketRow | None:
        if key in self._dirty_rows:
            return self._dirty_rows[key]
        return self.buckets.get(key)

    def flush(self) -> None:
        """Write the changed rows, then the clocks (see `flush_rows`)."""
        self.flush_rows()
        self.flush_clocks()

    def flush_rows(self) -> None:
        """Write the changed rows. Before the clocks: a crash between the two leaves rows that
        know (by their offsets) what they counted, so a replay never counts twice."""
        for key, row in self._dirty_rows.items():
            if row is None:
                self.buckets.pop(key, None)
            else:
                self.buckets[key] = row
        self._dirty_rows.clear()

    def flush_clocks(self) -> None:
        for initiative, clock in self._dirty_clocks.items():
            self.clocks[initiative] = clock
        self._dirty_clocks.clear()

    def _start_of(self, epoch: float) -> float:
        return math.floor(epoch / self.bucket_seconds) * self.bucket_seconds

    def redelivered(self, initiative: str, source_partition: int, source_offset: int | None) -> bool:
        """Was this source record counted before (a redelivery after a crash)? See `add`."""
        clock = self._clock(initiative)
        return (source_offset is not None and clock is not None
                and source_offset <= clock.partition_offsets.get(source_partition, -1))

    def add(self, event: EngagementEvent, *, wall_now: float, source_partition: int = 0,
            source_offset: int | None = None, marks: int = 0,
            experiment_delta: ExperimentTotals | None = None) -> tuple[bool, list[BucketRow]]:
        """Count one event; return whether it was counted and the buckets now closed.

        `source_partition` is the partition of the input topic the event was
        read from: partitions are consumed at different speeds, so the
        watermark is the least of their marks (see `_watermark`).
        `source_offset` is its offset there: a record redelivered after a crash
        (at-least-once) has an offset already counted and is skipped, so it is
        never counted twice. `marks` are the per-user stage's findings on an
        exposure (`governance.scan.CONSENTED`, ...), counted in the row's
        governance tally; `experiment_delta` what it adds to its experiment's
        totals, kept in the row so that a readout at the bucket's close counts
        exactly the events before its end, whatever the arrival order.
        """
        initiative = event.initiative
        clock = self._clock(initiative)
        if clock is None:
            clock = InitiativeClock(first_event_wall=wall_now)
        self._dirty_clocks[initiative] = clock
        if source_offset is not None:
            if source_offset <= clock.partition_offsets.get(source_partition, -1):
                clock.duplicates += 1
                return False, []
            clock.partition_offsets[source_partition] = source_offset
        t = event.event_time.timestamp()
        start = self._start_of(t)
        clock.last_event_wall = wall_now
        clock.partition_walls[source_partition] = wall_now
        mark = clock.partition_marks.get(source_partition)
        clock.partition_marks[source_partition] = t if mark is None else max(mark, t)
        if clock.closed_until is not None and start < clock.closed_until:
            clock.late_dropped += 1
            return False, []
        key = bucket_key(initiative, start)
        row = self._row(key)
        if row is None:
            row = BucketRow(initiative, start, start + self.bucket_seconds)
            clock.open_starts.append(start)
            clock.open_starts.sort()
        if source_offset is None or source_offset > row.offsets.get(source_partition, -1):
            row.series.setdefault(series_key(event), Counters()).add(event)
            row.cohorts.setdefault(event.cohort, Counters()).add(event)
            if experiment_delta is not None and event.experiment:
                known = row.experiments.get(event.experiment)
                row.experiments[event.experiment] = experiment_delta if known is None else known + experiment_delta
            if event.event_type == "exposure":
                row.governance.add_exposure(
                    channel=event.channel, rule_id=event.rule_id, experiment=event.experiment,
                    variant=event.variant, fallback=event.fallback, consented=bool(marks & CONSENTED),
                    first_in_hour=bool(marks & FIRST_IN_HOUR),
                    first_fallback_in_hour=bool(marks & FIRST_FALLBACK_IN_HOUR))
            if source_offset is not None:
                row.offsets[source_partition] = source_offset
            self._dirty_rows[key] = row
        # else: the row counted it before a crash that lost the clock's write; it is counted, once.
        clock.counted += 1
        watermark = self._watermark(clock, wall_now)
        if watermark is None or (clock.watermark is not None and watermark <= clock.watermark):
            return True, []
        clock.watermark = watermark
        return True, self._advance(initiative, clock, watermark - self.lateness)

    def _watermark(self, clock: InitiativeClock, wall_now: float) -> float | None:
        """The least event-time mark over the source partitions, as in Flink.

        A partition not heard from holds the watermark back until it has been
        idle for `idle_seconds` of wall time, then it no longer counts; the
        wall-clock timer closes the buckets of a feed where all are quiet.
        """
        marks = []
        for partition in range(self.source_partitions):
            seen = clock.partition_walls.get(partition)
            if seen is None:
                if wall_now - clock.first_event_wall < self.idle_seconds:
                    return None
            elif wall_now - seen < self.idle_seconds:
                marks.append(clock.partition_marks[partition])
        return min(marks) if marks else None

    def close_idle(self, initiative: str, *, wall_now: float, idle_seconds: float) -> list[BucketRow]:
        """Close every open bucket of a feed that has been quiet for `idle_seconds` of wall time.

        The watermark moves to the end of the newest open bucket, so an event of
        those buckets arriving afterwards is late, as it would be had traffic
        continued.
        """
        clock = self._clock(initiative)
        if clock is None or not clock.open_starts or wall_now - clock.last_event_wall < idle_seconds:
            return []
        self._dirty_clocks[initiative] = clock
        return self._advance(initiative, clock, clock.open_starts[-1] + self.bucket_seconds)

    def roster(self, initiative: str) -> dict[str, float]:
        """The initiative's known series: each closed bucket is judged for all of them."""
        clock = self._clock(initiative)
        return {} if clock is None else clock.roster

    def take_expired(self) -> list[str]:
        """Series that left a roster since the last call (no event for `retention_days`): drop their state."""
        expired, self._expired = self._expired, []
        return expired

    def _advance(self, initiative: str, clock: InitiativeClock, horizon: float) -> list[BucketRow]:
        closed_until = self._start_of(horizon)
        if clock.closed_until is not None and closed_until <= clock.closed_until:
            return []
        previous = clock.closed_until
        clock.closed_until = closed_until
        closing = {s for s in clock.open_starts if s + self.bucket_seconds <= closed_until}
        clock.open_starts = [s for s in clock.open_starts if s + self.bucket_seconds > closed_until]
        if previous is not None:  # the empty buckets between, within the retention, from the first with events
            first = previous if clock.roster else min(closing, default=closed_until)
            closing.update(range(int(max(first, closed_until - self.retention)), int(closed_until),
                                 self.bucket_seconds))
        # Taken before expiry: after a gap longer than the retention, a bucket closing now is already too old to keep.
        rows = [self._row(bucket_key(initiative, s)) or BucketRow(initiative, s, s + self.bucket_seconds)
                for s in sorted(closing)]
        for row in rows:
            for series in row.series:
                clock.roster[series] = row.end
        for series, seen in list(clock.roster.items()):
            if seen <= closed_until - self.retention:
                del clock.roster[series]
                self._expired.append(series)
        self._expire(initiative, previous, closed_until)
        return rows

    def _expire(self, initiative: str, previous: float | None, closed_until: float) -> None:
        """Drop rows that fell out of retention since the last close."""
        first = (previous if previous is not None else closed_until - self.bucket_seconds) - self.retention
        # On the bucket grid, also when the retention is not a whole number of buckets.
        for start in range(int(self._start_of(first)), int(closed_until - self.retention), self.bucket_seconds):
            key = bucket_key(initiative, start)
            if self._row(key) is not None:
                self._dirty_rows[key] = None

    def closed_rows(self, initiative: str, since: float) -> list[BucketRow]:
        """Rows of closed buckets starting at or after `since`, oldest first."""
        clock = self._clock(initiative)
        if clock is None or clock.closed_until is None:
            return []
        rows = []
        for start in range(int(self._start_of(since)), int(clock.closed_until), self.bucket_seconds):
            row = self._row(bucket_key(initiative, start))
            if row is not None:
                rows.append(row)
        return rows
