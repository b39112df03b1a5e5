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

State lives in two tables (a changelog-backed store in the worker, a dict in
the embedded driver): `clocks[initiative]` and `buckets["<initiative>|<start>"]`,
one row per initiative and hour holding counters per series and per cohort,
kept `retention_days` for reports. The keeper writes through the step's
transaction (`monitor.transaction`): a partial costs one write per touched
row, at the step's commit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from detectors.base import BucketObservation
from experiments.state import ExperimentTotals
from governance.scan import GovernanceTally
from incidents.timeutil import utc
from monitor.messages import BucketPartial, Counters, Partial, merge_bucket
from monitor.transaction import Staged


@dataclass(slots=True)
class BucketRow:
    """One initiative over one bucket: counters per series and per cohort."""

    initiative: str
    start: float
    end: float
    series: dict[str, Counters] = field(default_factory=dict)
    cohorts: dict[str, Counters] = field(default_factory=dict)
    offsets: dict[int, int] = field(default_factory=dict)  # last source offset applied here, per partition
    governance: GovernanceTally = field(default_factory=GovernanceTally)
    experiments: dict[str, ExperimentTotals] = field(default_factory=dict)  # what the bucket's events added

    def observations(self, roster: Iterable[str] = ()) -> Iterator[BucketObservation]:
        """One observation per series of the row, and a zero one per series of `roster` it lacks."""
        start, end = utc(self.start), utc(self.end)
        silent = Counters()
        initiative_exposures = sum(c.exposures for c in self.series.values())
        for series in sorted(set(self.series).union(roster)):
            c = self.series.get(series, silent)
            yield BucketObservation(
                series,
                start,
                end,
                c.exposures,
                c.clicks,
                c.conversions,
                c.revenue,
                c.fallbacks,
                c.latency_ms_sum,
                group_exposures=initiative_exposures,
            )

    def events(self) -> int:
        return sum(c.events() for c in self.series.values())

    def merge(self, bucket: BucketPartial) -> None:
        """Add what one batch brought to this bucket."""
        merge_bucket(self, bucket)


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
    partition_offsets: dict[int, int] = field(default_factory=dict)  # last source offset applied
    duplicates: int = 0  # partials applied before (redelivered), skipped
    gaps: int = 0  # source offsets no partial covered (lost between the stages)
    dead_letters: dict[str, int] = field(default_factory=dict)  # by reason kind, since the initiative was first seen
    roster: dict[str, float] = field(default_factory=dict)  # series -> end of the last closed bucket it had events in


def bucket_key(initiative: str, start: float) -> str:
    return f"{initiative}|{int(start)}"


@dataclass(slots=True)
class Applied:
    """What applying one partial did."""

    duplicate: bool = False
    counted: int = 0  # events counted in open buckets
    late: int = 0  # events of closed buckets: counted as late, dropped
    gap: int = 0  # source offsets skipped before this partial
    late_experiments: dict[str, ExperimentTotals] = field(default_factory=dict)
    closed: list[BucketRow] = field(default_factory=list)


class WindowKeeper:
    """Adds events to open buckets and hands back the buckets the watermark closed."""

    def __init__(
        self,
        clocks: Staged,
        buckets: Staged,
        *,
        bucket_seconds: int,
        allowed_lateness_seconds: int,
        retention_days: int,
        source_partitions: int = 1,
        idle_seconds: float = 900.0,
    ) -> None:
        self.clocks = clocks
        self.buckets = buckets
        self.bucket_seconds = bucket_seconds
        self.lateness = allowed_lateness_seconds
        self.retention = retention_days * 86_400
        self.source_partitions = source_partitions
        self.idle_seconds = idle_seconds
        self._expired: list[str] = []

    def clock(self, initiative: str) -> InitiativeClock | None:
        """The initiative's clock as this step sees it (read only)."""
        return self.clocks.get(initiative)

    def _row(self, key: str) -> BucketRow | None:
        return self.buckets.get(key)

    def _start_of(self, epoch: float) -> float:
        return math.floor(epoch / self.bucket_seconds) * self.bucket_seconds

    def apply(self, partial: Partial, *, wall_now: float) -> Applied:
        """Apply one batch's partial: count its buckets, move the partition's mark, close what the watermark passed.

        A partial whose offsets were applied before (a redelivery) changes
        nothing; one that starts past the last applied offset + 1 left records
        uncounted between the stages, a gap, which is counted and reported.
        A bucket already closed is late: its events are counted as late and
        dropped, its experiment deltas handed back (a late conversion is still
        a conversion). Each row remembers the last offset it applied per
        partition, so a replay after a crash that lost the clock's write never
        counts a row twice.
        """
        initiative = partial.initiative
        clock = self.clocks.get(initiative)
        if clock is None:
            clock = InitiativeClock(first_event_wall=wall_now)
        source = partial.source
        gap = 0
        if source is not None:
            applied = clock.partition_offsets.get(source.partition)
            if applied is not None and source.last <= applied:
                clock.duplicates += 1
                self.clocks[initiative] = clock
                return Applied(duplicate=True)
            if applied is not None and source.first > applied + 1:
                gap = source.first - applied - 1
                clock.gaps += gap
            clock.partition_offsets[source.partition] = source.last
            for kind, n in partial.dead_letters.items():
                clock.dead_letters[kind] = clock.dead_letters.get(kind, 0) + n
        self.clocks[initiative] = clock
        late: dict[str, ExperimentTotals] = {}
        counted = late_events = 0
        for start, bucket in sorted(partial.buckets.items()):
            events = bucket.events()
            if clock.closed_until is not None and start < clock.closed_until:
                late_events += events
                for experiment, delta in bucket.experiments.items():
                    late[experiment] = delta + late[experiment] if experiment in late else delta
                continue
            key = bucket_key(initiative, start)
            row = self._row(key)
            if row is None:
                row = BucketRow(initiative, start, start + self.bucket_seconds)
                clock.open_starts.append(start)
                clock.open_starts.sort()
            if source is None or source.last > row.offsets.get(source.partition, -1):
                row.merge(bucket)
                if source is not None:
                    row.offsets[source.partition] = source.last
                self.buckets[key] = row
            counted += events  # else the row applied it before a crash that lost the clock's write: once
        clock.counted += counted
        clock.late_dropped += late_events
        if partial.mark is not None:
            mark = clock.partition_marks.get(partial.partition)
            clock.partition_marks[partial.partition] = partial.mark if mark is None else max(mark, partial.mark)
            clock.partition_walls[partial.partition] = wall_now
        if counted or late_events:
            clock.last_event_wall = wall_now
        closed: list[BucketRow] = []
        watermark = self._watermark(clock, wall_now)
        if watermark is not None and (clock.watermark is None or watermark > clock.watermark):
            clock.watermark = watermark
            closed = self._advance(initiative, clock, watermark - self.lateness)
        return Applied(counted=counted, late=late_events, gap=gap, late_experiments=late, closed=closed)

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
        clock = self.clocks.get(initiative)
        if clock is None or not clock.open_starts or wall_now - clock.last_event_wall < idle_seconds:
            return []
        self.clocks[initiative] = clock
        return self._advance(initiative, clock, clock.open_starts[-1] + self.bucket_seconds)

    def roster(self, initiative: str) -> dict[str, float]:
        """The initiative's known series: each closed bucket is judged for all of them."""
        clock = self.clocks.get(initiative)
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
            closing.update(
                range(int(max(first, closed_until - self.retention)), int(closed_until), self.bucket_seconds)
            )
        # Taken before expiry: after a gap longer than the retention, a bucket closing now is already too old to keep.
        rows = [
            self._row(bucket_key(initiative, s)) or BucketRow(initiative, s, s + self.bucket_seconds)
            for s in sorted(closing)
        ]
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
                self.buckets[key] = None

    def closed_rows(self, initiative: str, since: float) -> list[BucketRow]:
        """Rows of closed buckets starting at or after `since`, oldest first."""
        clock = self.clocks.get(initiative)
        if clock is None or clock.closed_until is None:
            return []
        rows = []
        for start in range(int(self._start_of(since)), int(clock.closed_until), self.bucket_seconds):
            row = self._row(bucket_key(initiative, start))
            if row is not None:
                rows.append(row)
        return rows
