"""Produce-to-incident latency of a worker under load.

    .venv/bin/python bench/latency.py [--rate 10000] [--seconds 150] [--probes-per-second 2] [--bootstrap H:P]

Starts `pmon worker` on fresh topics of the local broker, then for `--seconds`
produces simulated traffic at `--rate` records/s (default: half the worker's
end-to-end rate on the throughput page, `docs/benchmarks/throughput.md`, which
`make bench` writes just before; 10,000 when the page has none), stamped with
the wall clock as it is produced so that it is live traffic, and, besides it, probes: each
probe is one personalized exposure of a new user without consent (region EU,
opt-in) in an initiative of its own, so it opens one `consent_violation`
incident at once. A plain consumer reads the incidents topic; a probe's
latency is from just before its record was produced to the moment its
incident's `opened` transition was read. Prints the count, p50, p90, p99 and
max, and the target (p99 <= 2 s), then the p99 of the first and of the second
half of the probes in send order: a second half much slower than the first
says the worker is falling behind the traffic. The path measured is the whole one: stage
1's fetch, its consent read mark and commit interval, the internal topic, stage
2's agent and the incident's delivery.

The traffic is simulated and encoded before the worker starts, with a
placeholder event time that the wall clock replaces as each record is sent:
on 2 cores, a generator that simulates and serialises as it sends takes CPU
the worker would otherwise have, and the bench would measure the competition.

The traffic is the default program with its volume and its users scaled
alike, so that a simulated day of it is a minute at the run's rate (about
400,000 users at 15,000 records/s). Its initial consent grants are sent
before the timed run, which starts once the worker holds their users. Why
both: bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The repository first (bench/experiments.py would shadow the experiments package), then bench/ for `faults`.
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import orjson  # noqa: E402

from bench import faults, pages  # noqa: E402
from monitor.events import EngagementEvent, encode  # noqa: E402
from pmon_harness import start_worker  # noqa: E402
from simulation.simulator import CONSENT_BOOTSTRAP, SimulationSpec, simulate  # noqa: E402

TARGET_P99_SECONDS = 2.0
FALLBACK_RATE = 10_000
PLACEHOLDER = datetime(2000, 1, 1, tzinfo=timezone.utc)  # the event time a record is encoded with before it is sent
MAX_USERS = 999_999  # the simulator's id space

Ready = tuple[str, bytes, bytes, bytes]  # (topic, key, value before the event time, value after it)


def default_rate(page: Path) -> tuple[float, str]:
    """Half the worker's end-to-end rate on the throughput page, and where it came from."""
    try:
        figures = orjson.loads(page.read_text().rsplit("```json\n", 1)[1].split("\n```", 1)[0])
        rate = figures["worker_rps"] / 2
    except (OSError, IndexError, KeyError, TypeError, orjson.JSONDecodeError):
        return FALLBACK_RATE, f"no worker rate on {page.name}: {FALLBACK_RATE:,} records/s"
    return rate, f"half the worker's {figures['worker_rps']:,} records/s on {page.name}"


def traffic(rate: float, records: int) -> tuple[list[Ready], list[Ready], int]:
    """(the records up to the end of the initial consent grants, `records` records after them, the users the
    first part names), ready to be sent, of a program whose simulated day is a minute at `rate` (see the
    module docstring)."""
    marker = b'"event_time":"' + encode_time(PLACEHOLDER) + b'"'
    base = SimulationSpec(seed=5, days=1)
    per_day = sum(1 for record in simulate(base) if record.topic == "engagement")
    scale = math.ceil(rate * 60 / per_day)
    spec = dataclasses.replace(
        base, days=math.ceil(records / (per_day * scale)) + 1, users=min(MAX_USERS, base.users * scale),
        initiatives=tuple(dataclasses.replace(initiative, exposures_per_hour=initiative.exposures_per_hour * scale)
                          for initiative in base.initiatives))
    while True:
        preload: list[Ready] = []
        live: list[Ready] = []
        bootstrapped = spec.start + CONSENT_BOOTSTRAP
        for record in simulate(spec):
            head, tail = encode(record.event.model_copy(update={"event_time": PLACEHOLDER})).split(marker, 1)
            ready = (record.topic, record.key.encode(), head + b'"event_time":"', b'"' + tail)
            (preload if record.event.event_time < bootstrapped else live).append(ready)
            if len(live) == records:
                return preload, live, len({key for topic, key, _, _ in preload if topic == "consent"})
        spec = dataclasses.replace(spec, days=spec.days * 2)  # short of records: more days of the same program


def encode_time(at: datetime) -> bytes:
    return at.isoformat().replace("+00:00", "Z").encode()


def probe(n: int) -> tuple[str, bytes]:
    initiative = f"Latency probe {n}"
    return initiative, encode(EngagementEvent(
        event_id=f"probe-{n}", event_type="exposure", event_time=datetime.now(timezone.utc),
        user_id=f"probe-user-{n}", initiative=initiative, profile="probe", channel="web", region="EU"))


async def run(bootstrap: str, rate: float, seconds: float, probes_per_second: float, workdir: Path) -> int:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    preload, live, users = traffic(rate, int(rate * seconds * 1.1) + 1000)
    background = iter(live)
    print(f"traffic: {len(preload):,} records sent before the run ({users:,} users' consent), then "
          f"{len(live):,} simulated records to send")
    settings = faults.isolated_settings(bootstrap, workdir)
    worker = start_worker(settings, workdir / "worker.log", ready_timeout=120)
    try:
        worker.wait(lambda: worker.metric("pmon_stage1_partitions") > 0, timeout=120,
                    what="the worker's stage 1 to hold its partitions")
        # Live traffic: the simulated events, stamped with the wall clock as they are produced (replayed
        # history would close an hour of buckets every fraction of a second, which live traffic never does).
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
        consumer = AIOKafkaConsumer(settings.topic("incidents"), bootstrap_servers=bootstrap, group_id=None,
                                    auto_offset_reset="latest", enable_auto_commit=False)
        await producer.start()
        await consumer.start()
        for topic, key, head, tail in preload:
            value = head + encode_time(datetime.now(timezone.utc)) + tail
            await producer.send(settings.topic(topic), key=key, value=value)
        await producer.flush()
        await asyncio.to_thread(
            worker.wait, lambda: worker.metric("pmon_state_entries", table="users") >= users, timeout=600,
            what=f"the worker's stage 1 to hold the {users:,} users of the records sent before the run")
        sent_at: dict[str, float] = {}
        answered: list[tuple[float, float]] = []  # (when the probe was sent, its latency)
        produced = 0

        async def read_incidents(end: float, until: float) -> None:
            # To `end` of the traffic, then until every probe is answered or `until`.
            while time.monotonic() < until and (time.monotonic() < end or len(answered) < len(sent_at)):
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    now = time.monotonic()
                    for record in records:
                        incident = orjson.loads(record.value)
                        start = sent_at.get(incident["initiative"])
                        if incident["kind"] == "consent_violation" and incident["transition"] == "opened" \
                                and start is not None:
                            answered.append((start, now - start))

        try:
            await consumer.getmany(timeout_ms=1000)  # joined, at the end of the topic
            end = time.monotonic() + seconds
            reader = asyncio.ensure_future(read_incidents(end, end + 15))
            started, next_probe, n = time.monotonic(), time.monotonic(), 0
            while time.monotonic() < end:
                topic, key, head, tail = next(background)
                value = head + encode_time(datetime.now(timezone.utc)) + tail
                await producer.send(settings.topic(topic), key=key, value=value)
                produced += 1
                if time.monotonic() >= next_probe:
                    initiative, value = probe(n)
                    sent_at[initiative] = time.monotonic()
                    await producer.send(settings.topic("engagement"), key=f"probe-user-{n}".encode(), value=value)
                    n += 1
                    next_probe += 1 / probes_per_second
                ahead = produced / rate - (time.monotonic() - started)
                if ahead > 0:
                    await producer.flush()
                    await asyncio.sleep(ahead)  # pacing, not synchronisation
            await producer.flush()
            await reader
        finally:
            await producer.stop()
            await consumer.stop()
    finally:
        worker.stop()
        await faults.delete_run_topics(settings)
    achieved = produced / seconds
    if not answered:
        print(f"no probe's incident was read ({len(sent_at)} probes sent); worker log:\n{worker.log()}")
        return 1
    latencies = sorted(latency for _, latency in answered)

    def pct(q: float, of: list[float] = latencies) -> float:
        return of[min(len(of) - 1, int(q * len(of)))]

    print(f"background {achieved:,.0f} records/s for {seconds:.0f} s; {len(latencies)} of {len(sent_at)} probes' "
          f"incidents read")
    print(f"produce-to-incident latency: p50 {pct(0.5):.2f} s, p90 {pct(0.9):.2f} s, p99 {pct(0.99):.2f} s, "
          f"max {latencies[-1]:.2f} s (target p99 <= {TARGET_P99_SECONDS:.0f} s: "
          f"{'met' if pct(0.99) <= TARGET_P99_SECONDS else 'missed'})")
    # Probes in send order, halved: a second half much slower than the first says the worker is falling behind.
    by_time = [latency for _, latency in sorted(answered)]
    if len(by_time) >= 2:
        first, second = sorted(by_time[: len(by_time) // 2]), sorted(by_time[len(by_time) // 2 :])
        print(f"by send time: p99 {pct(0.99, first):.2f} s for the first half of the probes, "
              f"{pct(0.99, second):.2f} s for the second")
    return 0 if len(latencies) == len(sent_at) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=None,
                        help="background records/s (default: half the worker's rate on the throughput page)")
    parser.add_argument("--seconds", type=float, default=150)
    parser.add_argument("--probes-per-second", type=float, default=2)
    parser.add_argument("--bootstrap", default=os.environ.get("PMON_KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    parser.add_argument("--out", type=Path, default=pages.page_path("latency"),
                        help="where to write the page (default docs/benchmarks/latency.md)")
    args = parser.parse_args(argv)
    with pages.recording("latency", "Produce-to-incident latency under load", args.out, argv) as page, \
            tempfile.TemporaryDirectory(prefix="pmon-latency-") as tmp:
        if args.rate is None:
            args.rate, source = default_rate(pages.page_path("throughput"))
            print(f"background rate: {source}")
        status = asyncio.run(run(args.bootstrap, args.rate, args.seconds, args.probes_per_second, Path(tmp)))
        if status:
            page.cancel()  # not every probe answered: the old page stays
        return status


if __name__ == "__main__":
    sys.exit(main())
