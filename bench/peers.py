"""Peers of the throughput bench: other stream processors on the bench's engagement topic.

    .venv/bin/python bench/peers.py PEER --bootstrap HOST:PORT --topic TOPIC --expect N --group ID
                                    [--partitions P] [--workdir DIR] [--timeout S] [--startup-timeout S]

`bench/throughput.py` starts each peer in a subprocess of its own (so its CPU time is
its own), after the records are on the broker. A peer reads TOPIC from the beginning
in a consumer group of its own (GROUP, also the Faust app id), stops by itself once it
has processed N records, and prints one JSON line on stdout:

    {"peer": ..., "seen": N, "records": N - 1, "seconds": ..., "cpu_seconds": ..., "startup_s": ..., ...}

The clock starts at the first record the peer's own code handles and stops at the Nth,
so `records` is N - 1 (the records processed in that interval). `cpu_seconds` is the
process's CPU time (user + system, all threads, so librdkafka's too) over the same
interval. Start-up (imports, group join, topic creation, state recovery) is not in the
rate: `startup_s`, from this module's `main()` to the first record, tells it.

A peer that has not seen its first record within --startup-timeout, or all N records
within --timeout of the first, prints `{"peer": ..., "error": ..., "seen": ...}` and
exits with code 3: it never reports a rate for records it did not see.

The peers (`PEERS`):
- `faust-count`: a Faust agent that only counts (`async for event in stream`), raw bytes.
- `faust-aggregate`: a Faust agent, the textbook way: the stream re-keyed by series
  (`stream.group_by`, through a repartition topic, as Faust requires before a table
  keyed by something else than the message key), then per event `orjson.loads`,
  hour = floor(event_time / 3600) and the counters of (series, hour) in a Faust table
  (memory store; every write goes to the table's changelog, as Faust does).
- `quix-count`: Quix Streams, a stateful count per message key (RocksDB state with its
  changelog), no window.
- `quix-window`: Quix Streams, the same hourly aggregation: `group_by` series,
  `tumbling_window(1 h, grace = the monitor's allowed lateness).reduce(...).final()`,
  the message timestamp taken from `event_time` by the topic's `timestamp_extractor`.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

PEERS = ("faust-count", "faust-aggregate", "quix-count", "quix-window")
FAILED = 3
SHUTDOWN_GRACE_SECONDS = 30.0  # after the result is printed, a peer that does not stop is ended


# --------------------------------------------------------------------------- clock
class Clock:
    """Counts the records a peer handles; times first to last; fails the process at a deadline."""

    def __init__(self, peer: str, expect: int, *, startup_timeout: float, timeout: float) -> None:
        self.peer, self.expect = peer, expect
        self.startup_timeout, self.timeout = startup_timeout, timeout
        self.started = time.perf_counter()
        self.seen = 0
        self.first_at = self.first_cpu = 0.0
        self.last_at = self.last_cpu = 0.0
        self.done = False
        self.extra: dict[str, Any] = {}
        self._lock = threading.Lock()  # result or failure: exactly one line is printed
        self._printed = False
        threading.Thread(target=self._watchdog, name="peer-deadline", daemon=True).start()

    def tick(self) -> bool:
        """One record handled; True exactly once, at the Nth."""
        self.seen += 1
        if self.seen == 1:
            self.first_at, self.first_cpu = time.perf_counter(), time.process_time()
        if self.seen >= self.expect and not self.done:
            self.last_at, self.last_cpu = time.perf_counter(), time.process_time()
            self.done = True
            return True
        return False

    def result(self) -> dict[str, Any]:
        return {"peer": self.peer, "expect": self.expect, "seen": self.seen, "records": self.seen - 1,
                "seconds": self.last_at - self.first_at, "cpu_seconds": self.last_cpu - self.first_cpu,
                "startup_s": self.first_at - self.started, **self.extra}

    def report(self, data: dict[str, Any]) -> bool:
        with self._lock:
            if self._printed:
                return False
            self._printed = True
            sys.stdout.write(orjson.dumps(data).decode() + "\n")
            sys.stdout.flush()
            return True

    def report_result(self) -> None:
        """Print the result and give the peer SHUTDOWN_GRACE_SECONDS to stop before it is ended."""
        self.report(self.result())
        timer = threading.Timer(SHUTDOWN_GRACE_SECONDS, os._exit, args=(0,))
        timer.daemon = True
        timer.start()

    def fail(self, error: str) -> None:
        if self.report({"peer": self.peer, "expect": self.expect, "seen": self.seen, "error": error}):
            os._exit(FAILED)

    def _watchdog(self) -> None:
        while not self.done:
            time.sleep(0.5)
            now = time.perf_counter()
            if not self.seen and now - self.started > self.startup_timeout:
                self.fail(f"no record within {self.startup_timeout:.0f} s of the start")
            elif self.seen and not self.done and now - self.first_at > self.timeout:
                self.fail(f"saw {self.seen:,} of {self.expect:,} records within {self.timeout:.0f} s "
                          "of the first")


# --------------------------------------------------------------------------- the aggregation
def series_of(event: dict[str, Any]) -> str:
    """The monitor's series key (`incidents.series.build_key`), spelt out: the peers import nothing of the monitor."""
    return f"{event['initiative']}|{event['profile']}|{event['channel']}|{event['variant']}"


def new_counters() -> dict[str, Any]:
    return {"exposures": 0, "clicks": 0, "conversions": 0, "revenue": 0.0}


def add(counters: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
    """The counters of the monitor's first step (`monitor.windows.Counters.add`, without latency/fallbacks)."""
    kind = event["event_type"]
    if kind == "exposure":
        counters["exposures"] += 1
    elif kind == "click":
        counters["clicks"] += 1
    else:
        counters["conversions"] += 1
        counters["revenue"] += event.get("revenue", 0.0)
    return counters


def events_in(counters: dict[str, Any]) -> int:
    return counters["exposures"] + counters["clicks"] + counters["conversions"]


# --------------------------------------------------------------------------- Faust
def _faust_app(args: argparse.Namespace, datadir: Path) -> Any:
    import logging
    import warnings

    import faust

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    logging.getLogger("faust").setLevel(logging.ERROR)
    return faust.App(args.group, broker=f"kafka://{args.bootstrap}", store="memory://", web_enabled=False,
                     topic_partitions=args.partitions, datadir=str(datadir), autodiscover=False,
                     consumer_auto_offset_reset="earliest")


def _run_faust(app: Any, clock: Clock) -> None:
    import faust

    worker = faust.Worker(app, loglevel="WARNING", quiet=True, stdout=sys.stderr, stderr=sys.stderr,
                          redirect_stdouts=False)
    with contextlib.suppress(SystemExit):  # it returns by SystemExit once stopped (SIGTERM)
        worker.execute_from_commandline()
    if not clock.done:
        clock.fail(f"the Faust worker stopped after {clock.seen:,} of {clock.expect:,} records")


def _crashed(clock: Clock, exc: BaseException) -> None:
    import traceback

    traceback.print_exc(file=sys.stderr)
    clock.fail(f"the agent crashed: {type(exc).__name__}: {exc}")


def _stop_faust(clock: Clock) -> None:
    clock.report_result()
    os.kill(os.getpid(), signal.SIGTERM)  # the Faust worker's graceful shutdown


def faust_count(args: argparse.Namespace, clock: Clock, workdir: Path) -> None:
    app = _faust_app(args, workdir / "faust")
    topic = app.topic(args.topic, key_serializer="raw", value_serializer="raw")

    @app.agent(topic)
    async def count(stream: Any) -> None:
        try:
            async for _event in stream:
                if clock.tick():
                    _stop_faust(clock)
        except Exception as exc:  # noqa: BLE001 - a crashed agent would leave the worker idling
            _crashed(clock, exc)

    _run_faust(app, clock)


def faust_aggregate(args: argparse.Namespace, clock: Clock, workdir: Path) -> None:
    app = _faust_app(args, workdir / "faust")
    topic = app.topic(args.topic, key_serializer="raw", value_serializer="raw")
    hourly = app.Table("hourly", default=None, partitions=args.partitions)  # (series|hour) -> counters
    bucket_seconds = args.bucket_seconds

    def series_key(raw: bytes) -> bytes:
        return series_of(orjson.loads(raw)).encode()

    @app.agent(topic)
    async def aggregate(stream: Any) -> None:
        try:
            async for raw in stream.group_by(series_key, name="series"):
                event = orjson.loads(raw)
                hour = math.floor(datetime.fromisoformat(event["event_time"]).timestamp() / bucket_seconds)
                key = f"{series_of(event)}|{hour}"
                counters = hourly.get(key) or new_counters()
                hourly[key] = add(counters, event)  # a changelog write, as Faust does
                if clock.tick():
                    flush_started = time.perf_counter()
                    await app.producer.flush()  # the changelog writes still buffered; not in the rate
                    clock.extra.update(flush_s=time.perf_counter() - flush_started, rows=len(hourly),
                                       aggregated=sum(events_in(v) for v in hourly.values()))
                    _stop_faust(clock)
        except Exception as exc:  # noqa: BLE001 - a crashed agent would leave the worker idling
            _crashed(clock, exc)

    _run_faust(app, clock)


# --------------------------------------------------------------------------- Quix Streams
def _quix_app(args: argparse.Namespace, workdir: Path) -> Any:
    from quixstreams import Application

    return Application(broker_address=args.bootstrap, consumer_group=args.group, auto_offset_reset="earliest",
                       state_dir=str(workdir / "quix-state"), loglevel="WARNING")


def _run_quix(app: Any, clock: Clock) -> None:
    app.run()
    if not clock.done:
        clock.fail(f"Quix stopped after {clock.seen:,} of {clock.expect:,} records")
    clock.report_result()


def quix_count(args: argparse.Namespace, clock: Clock, workdir: Path) -> None:
    app = _quix_app(args, workdir)
    sdf = app.dataframe(app.topic(args.topic, value_deserializer="json", key_deserializer="bytes"))

    def count(value: Any, state: Any) -> None:
        state.set("count", state.get("count", 0) + 1)
        if clock.tick():
            app.stop()  # the run loop ends after this message

    sdf.update(count, stateful=True)
    _run_quix(app, clock)


def quix_window(args: argparse.Namespace, clock: Clock, workdir: Path) -> None:
    app = _quix_app(args, workdir)

    def event_time_ms(value: Any, headers: Any, timestamp: int, timestamp_type: Any) -> int:
        return int(datetime.fromisoformat(value["event_time"]).timestamp() * 1000)

    topic = app.topic(args.topic, value_deserializer="json", key_deserializer="bytes",
                      timestamp_extractor=event_time_ms)
    late = [0]
    closed = [0, 0]  # windows emitted by .final(), events in them

    def record_seen() -> None:
        if clock.tick():
            app.stop()  # the run loop ends after this message

    def on_late(*_: Any) -> bool:
        late[0] += 1
        record_seen()
        return False  # counted here instead of one warning per record

    def after_update(aggregated: Any, value: Any, key: Any, timestamp_ms: int, headers: Any) -> bool:
        record_seen()  # called once per record added to its (single, tumbling) window
        return False  # never closes a window early

    def emitted(window: dict[str, Any]) -> None:
        closed[0] += 1
        closed[1] += events_in(window["value"])

    sdf = app.dataframe(topic)
    sdf = sdf.group_by(series_of, name="series")
    sdf = (sdf.tumbling_window(timedelta(seconds=args.bucket_seconds), grace_ms=timedelta(seconds=args.grace_seconds),
                               on_late=on_late, after_update=after_update)
           .reduce(lambda counters, event: add(counters, event), lambda event: add(new_counters(), event))
           .final(closing_strategy=args.closing))
    sdf.update(emitted)
    app.run()
    if not clock.done:
        clock.fail(f"Quix stopped after {clock.seen:,} of {clock.expect:,} records")
    clock.extra.update(late_dropped=late[0], aggregated=clock.seen - late[0], windows_closed=closed[0],
                       events_in_closed_windows=closed[1], closing_strategy=args.closing,
                       grace_s=args.grace_seconds)
    clock.report_result()


RUNNERS: dict[str, Callable[[argparse.Namespace, Clock, Path], None]] = {
    "faust-count": faust_count, "faust-aggregate": faust_aggregate,
    "quix-count": quix_count, "quix-window": quix_window,
}
assert set(RUNNERS) == set(PEERS)


# --------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/peers.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("peer", choices=PEERS)
    parser.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers (plaintext)")
    parser.add_argument("--topic", required=True, help="the engagement topic to read from the beginning")
    parser.add_argument("--expect", type=int, required=True, help="records on the topic: stop after that many")
    parser.add_argument("--group", required=True, help="consumer group (and Faust app id): unique per run and peer")
    parser.add_argument("--partitions", type=int, default=4, help="partitions of TOPIC (Faust tables, repartition)")
    parser.add_argument("--workdir", type=Path, default=None, help="state and data directory (default: a temp dir)")
    parser.add_argument("--bucket-seconds", type=int, default=3600, help="window width (default %(default)s)")
    parser.add_argument("--grace-seconds", type=int, default=600,
                        help="quix-window grace, the monitor's allowed lateness (default %(default)s)")
    parser.add_argument("--closing", choices=("key", "partition"), default="key",
                        help="quix-window closing strategy (default %(default)s, Quix's default)")
    parser.add_argument("--timeout", type=float, default=900.0, help="deadline after the first record, seconds")
    parser.add_argument("--startup-timeout", type=float, default=180.0, help="deadline for the first record, seconds")
    args = parser.parse_args(argv)
    if args.expect < 1:
        parser.error("--expect must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    clock = Clock(args.peer, args.expect, startup_timeout=args.startup_timeout, timeout=args.timeout)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix=f"pmon-peer-{args.peer}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        RUNNERS[args.peer](args, clock, workdir)
    except BaseException as exc:  # whatever stopped the peer, one line says so
        if not clock.done:
            clock.fail(f"{type(exc).__name__}: {exc}")
        raise
    sys.stdout.flush()
    os._exit(0)  # do not wait for the clients' leftover threads


if __name__ == "__main__":
    main()
