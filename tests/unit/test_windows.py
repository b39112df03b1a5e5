"""Event-time buckets closed by the watermark, over plain dicts (the embedded driver's tables)."""

from __future__ import annotations

import itertools
import random
from dataclasses import asdict
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from incidents.series import SeriesKey, build_key
from monitor.events import EngagementEvent
from monitor.messages import BucketPartial, Counters, Partial, SourceRange
from monitor.transaction import StepTransaction
from monitor.windows import Applied, BucketRow, InitiativeClock, WindowKeeper, bucket_key

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)  # hour-aligned
E0 = T0.timestamp()
HOUR = 3600
LATENESS = 600
INITIATIVE = "PLG Onboarding"
_ids = itertools.count()


def event(at: timedelta, event_type: str = "exposure", *, channel: str = "web", initiative: str = INITIATIVE,
          cohort: str = "2026-10", variant: str = "control") -> EngagementEvent:
    return EngagementEvent(
        event_id=f"e{next(_ids)}", event_type=event_type, event_time=T0 + at, user_id="p0123456789abcdef01234567",
        initiative=initiative, profile="new_user", channel=channel, cohort=cohort, variant=variant,
        decision_latency_ms=12.0 if event_type == "exposure" else 0.0,
        revenue=9.5 if event_type == "conversion" else 0.0)


class Keeper(WindowKeeper):
    """The keeper over plain dicts, with the step transaction a stage gives it."""

    def __init__(self, clocks: dict[str, InitiativeClock], buckets: dict[str, BucketRow], **options: Any) -> None:
        self.step = StepTransaction()
        staged_buckets = self.step.table(buckets)
        super().__init__(self.step.table(clocks), staged_buckets, **options)


def keeper(retention_days: int = 30) -> tuple[Keeper, dict[str, InitiativeClock], dict[str, BucketRow]]:
    clocks: dict[str, InitiativeClock] = {}
    buckets: dict[str, BucketRow] = {}
    return Keeper(clocks, buckets, bucket_seconds=HOUR, allowed_lateness_seconds=LATENESS,
                  retention_days=retention_days), clocks, buckets


def partial_of(events: list[EngagementEvent], *, width: int = HOUR, source: SourceRange | None = None) -> Partial:
    """What the per-user stage sends for these events of one initiative (source partition 0)."""
    buckets: dict[float, BucketPartial] = {}
    for e in events:
        at = e.event_time.timestamp()
        bucket = buckets.setdefault(at - at % width, BucketPartial())
        for counters in (bucket.series.setdefault(build_key(e.initiative, e.profile, e.channel, e.variant), Counters()),
                         bucket.cohorts.setdefault(e.cohort, Counters())):
            counters.merge(Counters(
                exposures=e.event_type == "exposure", clicks=e.event_type == "click",
                conversions=e.event_type == "conversion", revenue=e.revenue,
                fallbacks=e.fallback, latency_ms_sum=e.decision_latency_ms))
    return Partial(events[0].initiative, 0, source=source, mark=max(e.event_time.timestamp() for e in events),
                   buckets=buckets)


def apply(windows: Keeper, partial: Partial, *, wall_now: float) -> Applied:
    applied = windows.apply(partial, wall_now=wall_now)
    windows.step.commit()
    return applied


def add(windows: Keeper, e: EngagementEvent, *, wall_now: float) -> tuple[bool, list[BucketRow]]:
    """One event in a partial of its own, applied and committed: (counted, buckets it closed)."""
    applied = apply(windows, partial_of([e], width=windows.bucket_seconds), wall_now=wall_now)
    return applied.counted > 0, applied.closed


def close_idle(windows: Keeper, initiative: str, *, wall_now: float, idle_seconds: float) -> list[BucketRow]:
    rows = windows.close_idle(initiative, wall_now=wall_now, idle_seconds=idle_seconds)
    windows.step.commit()
    return rows


def key(hour: int, initiative: str = INITIATIVE) -> str:
    return bucket_key(initiative, E0 + hour * HOUR)


def exposures(row: BucketRow) -> int:
    return sum(c.exposures for c in row.series.values())


def snapshot(rows: list[BucketRow]) -> list[tuple[float, dict[str, Any], dict[str, Any]]]:
    return [(r.start, {s: asdict(c) for s, c in r.series.items()}, {k: asdict(c) for k, c in r.cohorts.items()})
            for r in rows]


def m(minutes: float) -> timedelta:
    return timedelta(minutes=minutes)


def test_events_land_in_the_bucket_of_their_event_time_not_their_arrival() -> None:
    windows, _, buckets = keeper()
    arrival = (T0 + timedelta(days=3, hours=7)).timestamp()  # wall clock far from the event time
    assert add(windows, event(m(0)), wall_now=arrival) == (True, [])
    add(windows, event(m(59) + timedelta(seconds=59), "click"), wall_now=arrival)
    add(windows, event(m(60), "conversion"), wall_now=arrival)
    assert set(buckets) == {key(0), key(1)}
    first, second = buckets[key(0)], buckets[key(1)]
    assert (first.start, first.end) == (E0, E0 + HOUR)
    series = f"{INITIATIVE}|new_user|web|control"
    assert asdict(first.series[series]) == {"exposures": 1, "clicks": 1, "conversions": 0, "revenue": 0.0,
                                            "fallbacks": 0, "latency_ms_sum": 12.0}
    assert (second.series[series].conversions, second.series[series].revenue) == (1, 9.5)
    assert first.cohorts["2026-10"].exposures == 1


def test_a_bucket_closes_only_when_the_watermark_passes_its_end() -> None:
    windows, clocks, _ = keeper()
    add(windows, event(m(5)), wall_now=0)
    counted, closed = add(windows, event(m(60 + 10) - timedelta(seconds=1)), wall_now=0)
    assert counted and closed == []  # watermark - lateness is one second short of the end
    assert clocks[INITIATIVE].open_starts == [E0, E0 + HOUR]
    counted, closed = add(windows, event(m(60 + 10)), wall_now=0)
    assert counted and [r.start for r in closed] == [E0]
    assert exposures(closed[0]) == 1
    assert clocks[INITIATIVE].open_starts == [E0 + HOUR]
    # The next bucket is not closed along with it.
    assert add(windows, event(m(120 + 9)), wall_now=0)[1] == []


def test_a_late_event_inside_the_lateness_is_counted_in_its_still_open_bucket() -> None:
    windows, clocks, buckets = keeper()
    add(windows, event(m(50)), wall_now=0)
    add(windows, event(m(65)), wall_now=0)  # the watermark is now in the next bucket
    counted, closed = add(windows, event(m(56)), wall_now=0)  # 9 minutes behind: inside the 10 allowed
    assert counted and closed == []
    assert exposures(buckets[key(0)]) == 2
    assert clocks[INITIATIVE].late_dropped == 0 and clocks[INITIATIVE].counted == 3
    closed = add(windows, event(m(75)), wall_now=0)[1]
    assert [(r.start, exposures(r)) for r in closed] == [(E0, 2)]


def test_an_event_for_a_closed_bucket_is_counted_as_late_and_dropped() -> None:
    windows, clocks, buckets = keeper()
    add(windows, event(m(30)), wall_now=0)
    assert [r.start for r in add(windows, event(m(75)), wall_now=0)[1]] == [E0]
    before = snapshot([buckets[key(0)]])
    assert add(windows, event(m(59), "conversion"), wall_now=0) == (False, [])
    assert snapshot([buckets[key(0)]]) == before
    clock = clocks[INITIATIVE]
    assert (clock.counted, clock.late_dropped) == (2, 1)
    assert clock.watermark == (T0 + m(75)).timestamp()  # a dropped event does not move the watermark


def test_out_of_order_arrival_within_the_lateness_closes_the_same_buckets_as_in_order() -> None:
    kinds = ["exposure"] * 6 + ["click", "conversion"]
    events = [event(m(k), kinds[k % len(kinds)], channel=("web", "email", "app")[k % 3], cohort=f"c{k % 4}")
              for k in range(5 * 60)]  # one a minute for five hours
    shuffled: list[EngagementEvent] = []
    rng = random.Random(11)
    for chunk in range(0, len(events), 10):  # shuffle within 10-minute chunks: at most 9 minutes out of order
        block = events[chunk:chunk + 10]
        rng.shuffle(block)
        shuffled += block
    assert shuffled != events

    def closed_rows(stream: list[EngagementEvent]) -> tuple[list[BucketRow], InitiativeClock]:
        windows, clocks, _ = keeper()
        rows: list[BucketRow] = []
        for e in stream:
            counted, closed = add(windows, e, wall_now=0)
            assert counted
            rows += closed
        rows += close_idle(windows, INITIATIVE, wall_now=10_000, idle_seconds=900)
        return rows, clocks[INITIATIVE]

    in_order, clock_a = closed_rows(events)
    out_of_order, clock_b = closed_rows(shuffled)
    assert [r.start for r in in_order] == [E0 + h * HOUR for h in range(5)]
    assert snapshot(out_of_order) == snapshot(in_order)
    assert (clock_a.counted, clock_a.late_dropped) == (clock_b.counted, clock_b.late_dropped) == (300, 0)


def test_close_idle_closes_open_buckets_only_after_the_wall_clock_idle_time() -> None:
    windows, clocks, _ = keeper()
    add(windows, event(m(10)), wall_now=1000.0)
    add(windows, event(m(65)), wall_now=1500.0)  # the last event arrived at wall time 1500; nothing closed
    assert close_idle(windows, INITIATIVE, wall_now=1500.0 + 899.0, idle_seconds=900) == []
    assert clocks[INITIATIVE].open_starts == [E0, E0 + HOUR]
    closed = close_idle(windows, INITIATIVE, wall_now=1500.0 + 900.0, idle_seconds=900)
    assert [r.start for r in closed] == [E0, E0 + HOUR]
    assert clocks[INITIATIVE].open_starts == []
    # Those buckets are closed for good: a straggler is late, and closing again yields nothing.
    assert add(windows, event(m(61)), wall_now=3000.0) == (False, [])
    assert clocks[INITIATIVE].late_dropped == 1
    assert close_idle(windows, INITIATIVE, wall_now=99_999.0, idle_seconds=900) == []
    assert close_idle(windows, "never seen", wall_now=99_999.0, idle_seconds=900) == []


def test_retention_removes_rows_older_than_retention_days_as_buckets_close() -> None:
    windows, clocks, buckets = keeper(retention_days=1)
    for hour in range(40):  # one event per hour, 15 minutes past: each closes the previous hour
        add(windows, event(timedelta(hours=hour, minutes=15)), wall_now=0)
    closed_until = clocks[INITIATIVE].closed_until
    assert closed_until == E0 + 39 * HOUR
    # Kept: the closed rows of the last day (hours 15..38) and the open bucket (hour 39).
    assert sorted(buckets) == sorted(key(h) for h in range(15, 40))


@pytest.mark.parametrize("gap_days", [2, 45])
def test_a_gap_longer_than_the_retention_still_returns_the_buckets_it_closes(gap_days: int) -> None:
    # Regression: the rows being closed were expired first, and `_advance` raised KeyError.
    windows, clocks, buckets = keeper(retention_days=1)
    add(windows, event(m(5)), wall_now=0)
    add(windows, event(m(75)), wall_now=0)  # closes hour 0; hour 1 stays open
    counted, closed = add(windows, event(timedelta(days=gap_days)), wall_now=0)
    assert counted
    # The open bucket with its event, then the gap's empty buckets of the last retention day: zeros, judged.
    closed_until = clocks[INITIATIVE].closed_until
    assert [(r.start, exposures(r)) for r in closed] == [(E0 + HOUR, 1)] + [
        (start, 0) for start in range(int(closed_until - 24 * HOUR), int(closed_until), HOUR)]
    assert sorted(buckets) == [key(24 * gap_days)]  # the old rows are gone from the table


def test_every_bucket_on_the_grid_closes_and_a_silent_series_is_observed_as_zero() -> None:
    windows, _clocks, _ = keeper()
    add(windows, event(m(5), variant="control"), wall_now=0)
    add(windows, event(m(6), variant="treatment"), wall_now=0)
    add(windows, event(m(75), variant="control"), wall_now=0)          # closes hour 0
    _, closed = add(windows, event(m(4 * 60 + 15), variant="control"), wall_now=0)   # closes hours 1..3
    assert [r.start for r in closed] == [E0 + HOUR, E0 + 2 * HOUR, E0 + 3 * HOUR]
    roster = windows.roster(INITIATIVE)
    observed = {(o.bucket_start.timestamp(), SeriesKey.parse(o.series).variant): o.exposures
                for row in closed for o in row.observations(roster)}
    assert observed == {(E0 + HOUR, "control"): 1, (E0 + HOUR, "treatment"): 0,
                        (E0 + 2 * HOUR, "control"): 0, (E0 + 2 * HOUR, "treatment"): 0,
                        (E0 + 3 * HOUR, "control"): 0, (E0 + 3 * HOUR, "treatment"): 0}


def test_a_series_silent_for_the_retention_leaves_the_roster() -> None:
    windows, _clocks, _ = keeper(retention_days=1)
    add(windows, event(m(5), variant="treatment"), wall_now=0)
    for hour in range(1, 27):
        add(windows, event(timedelta(hours=hour, minutes=15), variant="control"), wall_now=0)
    assert sorted(SeriesKey.parse(s).variant for s in windows.roster(INITIATIVE)) == ["control"]
    assert [SeriesKey.parse(s).variant for s in windows.take_expired()] == ["treatment"]
    assert windows.take_expired() == []


def test_retention_works_when_the_bucket_width_does_not_divide_a_day() -> None:
    # 7,000 s buckets: a day is not a whole number of buckets, so the retention cut is off the bucket grid.
    clocks: dict[str, InitiativeClock] = {}
    buckets: dict[str, BucketRow] = {}
    windows = Keeper(clocks, buckets, bucket_seconds=7000, allowed_lateness_seconds=0, retention_days=1)
    for k in range(60):
        add(windows, event(timedelta(seconds=7000 * k + 1)), wall_now=0)
    closed_until = clocks[INITIATIVE].closed_until
    starts = sorted(row.start for row in buckets.values())
    assert min(starts) >= closed_until - 86_400 - 7000
    assert len(starts) <= 86_400 // 7000 + 2


def test_closed_rows_returns_closed_buckets_oldest_first() -> None:
    windows, _, buckets = keeper()
    # 118 arrives after 125 (7 minutes late, inside the lateness): hour 1's row is created after hour 2's.
    for minutes in (15, 125, 118, 185, 330):
        assert add(windows, event(m(minutes)), wall_now=0)[0]
    assert list(buckets) == [key(0), key(2), key(1), key(3), key(5)]
    rows = windows.closed_rows(INITIATIVE, since=E0)
    # 330 min - 10 min of lateness closes up to hour 5; hour 4 had no event; hour 5 is still open.
    assert [r.start for r in rows] == [E0 + h * HOUR for h in (0, 1, 2, 3)]
    assert [r.start for r in windows.closed_rows(INITIATIVE, since=E0 + HOUR)] == [E0 + h * HOUR for h in (1, 2, 3)]
    assert windows.closed_rows("never seen", since=E0) == []


def test_initiatives_have_their_own_clocks() -> None:
    windows, clocks, _ = keeper()
    add(windows, event(m(5), initiative="A"), wall_now=0)
    assert add(windows, event(timedelta(hours=10), initiative="B"), wall_now=0)[1] == []
    assert add(windows, event(m(6), initiative="A"), wall_now=0)[0]  # B's watermark does not make A late
    assert clocks["A"].late_dropped == clocks["B"].late_dropped == 0


def test_one_partial_per_ten_events_leaves_the_same_tables_as_one_per_event() -> None:
    # 70 hours, every other event 5 minutes out of order (inside the lateness), with retention expiring rows.
    stream = [event(timedelta(minutes=7 * k + (12 if k % 2 == 0 else 0)), ("exposure", "click", "conversion")[k % 3])
              for k in range(600)]
    assert any(b.event_time < a.event_time for a, b in itertools.pairwise(stream))
    per_event, clocks_a, buckets_a = keeper(retention_days=1)
    batched, clocks_b, buckets_b = keeper(retention_days=1)
    closed_a, closed_b = [], []
    for e in stream:
        closed_a += add(per_event, e, wall_now=0)[1]
    for n in range(0, len(stream), 10):
        closed_b += apply(batched, partial_of(stream[n:n + 10]), wall_now=0).closed
    assert snapshot(closed_b) == snapshot(closed_a) and len(closed_a) == 69
    assert clocks_b == clocks_a
    assert list(buckets_b) == list(buckets_a)
    assert snapshot(list(buckets_b.values())) == snapshot(list(buckets_a.values()))
    assert len(buckets_a) == 24 + 1  # one day of closed rows and the open one


def test_a_redelivered_partial_is_skipped_and_a_gap_in_offsets_is_counted() -> None:
    windows, clocks, buckets = keeper()
    first = partial_of([event(m(1)), event(m(2))], source=SourceRange(0, 0, 9))
    assert apply(windows, first, wall_now=0).counted == 2
    again = apply(windows, partial_of([event(m(1)), event(m(2))], source=SourceRange(0, 0, 9)), wall_now=0)
    assert again.duplicate and again.counted == 0
    assert exposures(buckets[key(0)]) == 2 and clocks[INITIATIVE].duplicates == 1
    after_gap = apply(windows, partial_of([event(m(3))], source=SourceRange(0, 15, 20)), wall_now=0)
    assert after_gap.gap == 5 and after_gap.counted == 1 and clocks[INITIATIVE].gaps == 5
    contiguous = apply(windows, partial_of([event(m(4))], source=SourceRange(0, 21, 30)), wall_now=0)
    assert contiguous.gap == 0 and exposures(buckets[key(0)]) == 4


def test_a_row_written_before_a_crash_that_lost_the_clock_is_not_counted_twice() -> None:
    windows, clocks, buckets = keeper()
    apply(windows, partial_of([event(m(1))], source=SourceRange(0, 0, 4)), wall_now=0)
    lost_clock = clocks.pop(INITIATIVE)  # the step's row reached the changelog, its clock did not
    assert lost_clock.counted == 1
    replayed = apply(windows, partial_of([event(m(1))], source=SourceRange(0, 0, 4)), wall_now=0)
    assert exposures(buckets[key(0)]) == 1 and replayed.counted == 1  # counted once, in the row and the clock
