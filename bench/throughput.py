"""Throughput of the monitor's two drivers against a bare Kafka consumer, on the same records.

    .venv/bin/python bench/throughput.py [--events N] [--bootstrap HOST:PORT]

1. Simulates N records (`simulation.simulator`, enough days, cut at N), encodes them
   (`monitor.events.encode`) and produces them once (`streams.kafka_io.produce`)
   to fresh `bench-<uuid8>.*` topics; the app id is `bench-<uuid8>` too.
2. Bare consumer: plain aiokafka in its own group reads the three input topics
   from the beginning and only `orjson.loads` each value: the ceiling set by the
   broker, the client library and the machine.
3. Faust worker: `pmon worker` in a subprocess on the same topics. Its `/metrics`
   (stage 1: `pmon_records_total` per input topic) and `/pmon/report/` (stage 2:
   `counted_events + late_dropped`, summed over the initiatives) are polled until
   all N records are received and every engagement event is counted.
4. Embedded driver: `EmbeddedDriver(settings).run(records)` in a child process.
   Memory is that process's peak RSS during the run minus its RSS before it
   (Linux: VmHWM reset through /proc/self/clear_refs; elsewhere the getrusage
   maxrss delta). The output names the method used.
5. Peers (`bench/peers.py`, `--peers`): other stream processors on the same
   engagement topic, each in a subprocess and a consumer group of its own, from the
   beginning: `faust-count` (a count-only Faust agent), `faust-aggregate` (a Faust
   agent and table doing the hourly per-series counters), `quix-count` (Quix
   Streams, a stateful count per key) and `quix-window` (Quix Streams, the hourly
   tumbling-window aggregation per series, on event time).
6. A table, then one JSON line with every figure (the last line on stdout).

How the rates are measured:
- bare consumer: every record, from the moment the group assigned its partitions
  to the last record (group join not included); the best of `BARE_PASSES` passes,
  each in a group of its own;
- worker: from the first `/metrics` answer that shows a received record (the
  count at that moment is left out) to the poll that sees the goal; worker
  start-up and group join are not included; the polling interval (0.1 s for
  /metrics, 0.2 s for the reports once stage 1 is done) is the resolution;
- embedded: every record, wall time of `run()`;
- peers: from the first engagement record the peer's code handles to the last
  (N - 1 records); their start-up (group join, topic creation) is not included.
"CPU µs/record" is the CPU time (user + system, all threads) of the process
doing the work over the same interval: less sensitive than the rate to other
load on the machine. The worker's includes answering the bench's polls.

The bench topics are deleted at the end (best effort; consumer groups are left
to the broker's offset retention). A stage after the bare consumer that fails
(worker, embedded driver, a peer) is reported and the others still run. Exit
codes: 0 done, 1 a stage failed or timed out, 2 bad usage or no broker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import glob
import itertools
import logging
import os
import pickle
import platform
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

ROOT = Path(__file__).resolve().parents[1]
# `python bench/throughput.py` puts bench/ first on the path: the repository goes before it even when it is on the
# path already (PYTHONPATH), or bench/experiments.py would shadow the experiments package.
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.markup import escape  # noqa: E402
from rich.table import Table  # noqa: E402

import pmon_harness  # noqa: E402
from bench import broker, pages  # noqa: E402
from monitor.settings import Settings  # noqa: E402
from monitor.topics import EVENT_TOPICS  # noqa: E402
from pmon_harness import PMON, WaitTimeout, Worker, WorkerExited, pmon_env  # noqa: E402

DEFAULT_EVENTS = 200_000
RECORDS_PER_DAY = 50_000  # a little under what the default simulated program makes a day
CHILD_FLAG = "--embedded-child"
PEERS_SCRIPT = Path(__file__).resolve().with_name("peers.py")
PEERS = ("faust-count", "faust-aggregate", "quix-count", "quix-window")  # bench/peers.py PEERS, in run order
PEER_ROWS = {
    "faust-count": "faust-count (count-only agent)",
    "faust-aggregate": "faust-aggregate (group_by + table, hourly)",
    "quix-count": "quix-count (stateful count per key)",
    "quix-window": "quix-window (group_by + 1 h tumbling, final)",
}
POLL_SECONDS = 0.1  # /metrics: cheap to serve
STAGE1_REPORT_SECONDS = 2.0  # reports cost the worker more: rarely while stage 1 runs,
FINAL_REPORT_SECONDS = 0.2  # then often enough to time the end
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

LOG_PROBLEM = re.compile(r"\b(WARNING|WARN|ERROR|CRITICAL)\b|^Traceback")
LOG_PREFIX = re.compile(r"^\[?\d{4}-\d\d-\d\d[ T][\d:,.]+\]?\s*(\[\d+\]\s*)?")
NUMBER = re.compile(r"\d+(\.\d+)?")
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x08]")  # a peer's stderr may hold terminal controls

console = Console(stderr=True, soft_wrap=True)  # progress and errors; the table and JSON go to stdout
out = Console() if sys.stdout.isatty() else Console(width=170)  # a log file gets the whole table


class BenchError(Exception):
    """A stage failed; the message says which and why."""


class BrokerUnreachable(BenchError):
    pass


# --------------------------------------------------------------------------- records
@dataclass
class Workload:
    records: list[tuple[str, bytes, bytes]]  # (topic suffix, key, value), in simulated event-time order
    per_topic: Counter[str]
    engagement_per_initiative: Counter[str]
    days: int
    seconds: float

    @property
    def engagement(self) -> int:
        return self.per_topic["engagement"]


def generate(n: int, seed: int) -> Workload:
    """The first n records of a simulated run long enough to hold them."""
    from monitor.events import encode
    from simulation.simulator import SimulationSpec, simulate

    started = time.perf_counter()
    days = max(2, -(-n // RECORDS_PER_DAY) + 1)
    while True:
        records: list[tuple[str, bytes, bytes]] = []
        per_topic: Counter[str] = Counter()
        per_initiative: Counter[str] = Counter()
        for record in itertools.islice(simulate(SimulationSpec(seed=seed, days=days)), n):
            records.append((record.topic, record.key.encode(), encode(record.event)))
            per_topic[record.topic] += 1
            if record.topic == "engagement":
                per_initiative[record.event.initiative] += 1
        if len(records) == n:
            return Workload(records, per_topic, per_initiative, days, time.perf_counter() - started)
        days *= 2


async def stage2_input_bytes(settings: Settings, timeout: float = 60.0) -> tuple[int, int]:
    """(messages, bytes of their values) on the worker's internal topic: what stage 2 read, committed only."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from streams.ingest import PARTIALS_TOPIC

    topic = PARTIALS_TOPIC.format(app_id=settings.app_id)
    consumer = AIOKafkaConsumer(**kafka_options(settings), group_id=None, enable_auto_commit=False,
                                isolation_level="read_committed")
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())
                      ] or [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        messages = size = 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            positions = [await consumer.position(tp) for tp in partitions]
            if all(position >= ends[tp] for position, tp in zip(positions, partitions, strict=True)):
                break
            for records in (await consumer.getmany(timeout_ms=500)).values():
                messages += len(records)
                size += sum(len(r.value or b"") for r in records)
        return messages, size
    finally:
        await consumer.stop()


# --------------------------------------------------------------------------- broker
def kafka_options(settings: Settings) -> dict[str, Any]:
    from streams.kafka_io import client_options

    return client_options(settings)


async def check_broker(settings: Settings, timeout: float = 20.0) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    noisy = logging.getLogger("aiokafka")
    level = noisy.level
    noisy.setLevel(logging.CRITICAL)  # one clear message instead of aiokafka's connection errors
    admin = AIOKafkaAdminClient(**kafka_options(settings), request_timeout_ms=int(timeout * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout)
        await asyncio.wait_for(admin.list_topics(), timeout)
    except Exception as exc:  # noqa: BLE001 - whatever failed, there is no usable broker
        raise BrokerUnreachable(
            f"no Kafka broker reachable at {settings.kafka_bootstrap} ({exc or type(exc).__name__}) — "
            "start one with `make kafka-up` (or `PMON_KAFKA_PORT=19092 bash scripts/kafka-local.sh up`) "
            "and pass --bootstrap HOST:PORT or set PMON_KAFKA_BOOTSTRAP") from None
    finally:
        with contextlib.suppress(Exception):  # closing a client that never connected
            await admin.close()
        noisy.setLevel(level)


def kafka_version(bootstrap: str) -> str:
    """The broker's version when it is the project's local broker (its jars tell), else PMON_KAFKA_VERSION."""
    host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
    if host in ("127.0.0.1", "localhost", "::1", "[::1]") and port.isdigit():
        run_dir = os.environ.get("PMON_KAFKA_RUN_DIR") or os.path.join(
            os.environ.get("TMPDIR", "/tmp"), f"pmon-kafka-{port}")
        try:
            pid = Path(run_dir, "kafka.pid").read_text().strip()
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            classpath = args[args.index(b"-cp") + 1].decode()
            for entry in classpath.split(os.pathsep):
                for jar in glob.glob(os.path.join(os.path.dirname(entry), "kafka_2.1*-*.jar")):
                    match = re.fullmatch(r"kafka_2\.1\d-(\d+\.\d+\.\d+)\.jar", os.path.basename(jar))
                    if match:
                        return match.group(1)
        except (OSError, ValueError, IndexError):
            pass
    return os.environ.get("PMON_KAFKA_VERSION", "unknown")


class _FreshTopicRetries(logging.Filter):
    """Fresh topics answer NotLeaderForPartition for a moment and the producer retries: no warning each time."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "NotLeaderForPartitionError" not in record.getMessage()


async def produce_all(settings: Settings, workload: Workload) -> float:
    from streams.kafka_io import ensure_topics, produce

    await ensure_topics(settings)
    await keep_records(settings, settings.topic("engagement"))
    sender, quiet = logging.getLogger("aiokafka.producer.sender"), _FreshTopicRetries()
    sender.addFilter(quiet)
    started = time.perf_counter()
    try:
        sent = await produce(settings, workload.records)
    finally:
        sender.removeFilter(quiet)
    elapsed = time.perf_counter() - started
    if sent != len(workload.records):
        raise BenchError(f"produced {sent:,} of {len(workload.records):,} records")
    return elapsed


async def keep_records(settings: Settings, topic: str) -> None:
    """No time retention on the input topic (the run deletes it at the end). Quix's re-keyed topic copies the
    setting, and its records carry the simulated event times, weeks old: under the broker's 7-day retention its
    rolled segments were deleted while quix-window still read them ("offset out of range")."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = AIOKafkaAdminClient(**kafka_options(settings), request_timeout_ms=20_000)
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, {"retention.ms": "-1"})])
    finally:
        await admin.close()


# --------------------------------------------------------------------------- rates
@dataclass
class Rate:
    records: int  # records the rate counts
    seconds: float
    total_seconds: float = 0.0  # from the start of the stage, start-up included
    cpu_seconds: float | None = None  # user + system CPU (all threads) of the process doing the work

    @property
    def per_second(self) -> float:
        """0.0 when the stage ended within the clock's (or the polling's) resolution: use more --events."""
        return self.records / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_us_per_record(self) -> float | None:
        return self.cpu_seconds / self.records * 1e6 if self.cpu_seconds is not None and self.records else None


# --------------------------------------------------------------------------- bare consumer
BARE_PASSES = 3  # the baseline is the best of these: one pass lasts about a second, and swung 3-fold in one session


async def bare_consumer(settings: Settings, workload: Workload, timeout: float, run: int = 1) -> Rate:
    from aiokafka import AIOKafkaConsumer

    n = len(workload.records)
    consumer = AIOKafkaConsumer(
        *(settings.topic(t) for t in EVENT_TOPICS), **kafka_options(settings),
        group_id=f"{settings.app_id}-bare-consumer-{run}", auto_offset_reset="earliest", enable_auto_commit=False)
    started = time.perf_counter()
    deadline = time.monotonic() + timeout
    await consumer.start()
    seen = 0
    assigned_at = cpu_at = 0.0
    try:
        while seen < n:
            if time.monotonic() > deadline:
                raise BenchError(f"the bare consumer read {seen:,} of {n:,} records in {timeout:.0f} s")
            if not assigned_at:  # the clock starts when the group has assigned the partitions
                if not consumer.assignment():
                    await asyncio.sleep(0.005)  # polling interval, not synchronisation
                    continue
                assigned_at, cpu_at = time.perf_counter(), time.process_time()
            batches = await consumer.getmany(timeout_ms=500)
            for messages in batches.values():
                for message in messages:
                    orjson.loads(message.value)
                seen += len(messages)
        last_at, cpu = time.perf_counter(), time.process_time() - cpu_at
    finally:
        await consumer.stop()
    if seen != n:
        raise BenchError(f"the bare consumer read {seen:,} records, expected {n:,}")
    return Rate(n, last_at - assigned_at, last_at - started, cpu)


# --------------------------------------------------------------------------- worker
@dataclass
class WorkerResult:
    end_to_end: Rate
    stage1: Rate
    startup_seconds: float  # process start to the first record seen
    per_topic: dict[str, int]
    counted: int
    late_dropped: int
    dead_letters: int
    incident_transitions: int
    peak_rss_mib: float | None
    stop_seconds: float | None  # SIGTERM to exit; None when it had to be killed
    log_problems: Counter[str]  # warning and error lines of the worker's log, numbers masked, counted
    samples: list[dict[str, Any]] = field(default_factory=list)  # progress as polled


def log_problems(worker: Worker) -> Counter[str]:
    """The warning and error lines of the worker's log, numbers masked, counted."""
    found: Counter[str] = Counter()
    for line in worker.log_path.read_text(errors="replace").splitlines():
        if LOG_PROBLEM.search(line):
            found[NUMBER.sub("N", LOG_PREFIX.sub("", line)).strip()[:200]] += 1
    return found


def log_tail(worker: Worker, lines: int = 40) -> str:
    return "\n".join(worker.log_path.read_text(errors="replace").splitlines()[-lines:]) or "(empty)"


def alive(worker: Worker) -> None:
    try:
        worker.check_alive()
    except WorkerExited as exc:
        raise BenchError(str(exc)) from None


def figures(worker: Worker) -> tuple[dict[str, int], int, int]:
    """Records received per input topic, dead letters, incident transitions (the worker's /metrics)."""
    received: dict[str, int] = {}
    dead = incidents = 0
    for name, labels, value in worker.samples():
        if name == "pmon_records_total":
            received[labels["topic"]] = int(value)
        elif name == "pmon_dead_letters_total":
            dead += int(value)
        elif name == "pmon_incident_transitions_total":
            incidents += int(value)
    return received, dead, incidents


def counted_in(worker: Worker, initiative: str) -> tuple[int, int]:
    """(counted_events, late_dropped) of one initiative; (0, 0) until the worker has seen it."""
    # The lightest report (the counts do not depend on window or detail): the worker serves it while timed.
    report = worker.report(initiative, window="7d", detail="summary")
    return (0, 0) if report is None else (int(report["counted_events"]), int(report["late_dropped"]))


def cpu_seconds(worker: Worker) -> float | None:
    """User + system CPU time of the worker process, all threads."""
    try:
        fields = Path(f"/proc/{worker.process.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    except (OSError, IndexError, ValueError):
        return None


def peak_rss_mib(worker: Worker) -> float | None:
    try:
        for line in Path(f"/proc/{worker.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class Profiler:
    """`py-spy record --gil` attached to the worker while it processes: where its Python CPU time goes."""

    def __init__(self, pid: int, path: Path) -> None:
        fmt = {".svg": "flamegraph", ".json": "speedscope"}.get(path.suffix, "raw")
        spy = Path(sys.executable).parent / "py-spy"
        self.path = path
        self.process = subprocess.Popen(
            [str(spy) if spy.exists() else "py-spy", "record", "--pid", str(pid), "--rate", "200", "--gil",
             "--format", fmt, "--output", str(path), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # py-spy writes its output when interrupted
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        error = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
        if self.path.exists():
            console.print(f"worker profile written to {self.path}")
        else:
            console.print(f"[yellow]py-spy wrote no profile:[/] {error.strip()[-500:]}")


def run_worker(settings: Settings, workload: Workload, workdir: Path, *, command: list[str], timeout: float,
               startup_timeout: float, profile: Path | None) -> WorkerResult:
    n, engagement = len(workload.records), workload.engagement
    initiatives = sorted(workload.engagement_per_initiative)
    worker = Worker(settings, workdir / "worker.log", command=command)
    profiler: Profiler | None = None
    try:
        # Start-up: until the web server answers with a received record.
        def first_records() -> dict[str, int] | None:
            try:
                received, _, _ = figures(worker)
            except OSError:
                return None  # not serving yet
            return received if sum(received.values()) else None

        try:
            received = worker.wait(first_records, timeout=startup_timeout, interval=0.05,
                                   what="the worker's first record", on_timeout=lambda: log_tail(worker))
        except (WaitTimeout, WorkerExited) as exc:
            raise BenchError(str(exc)) from None
        first_at, first_count, first_cpu = time.perf_counter(), sum(received.values()), cpu_seconds(worker)
        if profile is not None:
            profiler = Profiler(worker.process.pid, profile)

        # Stage 1: every record received per input topic; stage 2: every engagement event counted.
        deadline = time.monotonic() + timeout
        stage1_at = end_at = next_report = 0.0
        stage1_cpu = end_cpu = None
        counted = 0
        samples: list[dict[str, Any]] = []
        while not end_at:
            alive(worker)
            if time.monotonic() > deadline:
                raise BenchError(
                    f"the worker did not finish within {timeout:.0f} s: stage 1 received {sum(received.values()):,}"
                    f" of {n:,} records {received}, stage 2 counted {counted:,} of {engagement:,} engagement "
                    f"events; the end of its log:\n{log_tail(worker)}")
            try:
                received, _, _ = figures(worker)
                now = time.perf_counter()
                if not stage1_at and all(received.get(t, 0) >= count for t, count in workload.per_topic.items()):
                    stage1_at, stage1_cpu, next_report = now, cpu_seconds(worker), 0.0  # reports at once
                if now >= next_report:
                    counted = sum(sum(counted_in(worker, name)) for name in initiatives)
                    now = time.perf_counter()
                    next_report = now + (FINAL_REPORT_SECONDS if stage1_at else STAGE1_REPORT_SECONDS)
                    if stage1_at and counted >= engagement:
                        end_at, end_cpu = now, cpu_seconds(worker)
                samples.append({"t": round(now - first_at, 3), **received, "counted": counted})
            except OSError:
                pass  # a slow or refused answer; alive() tells a dead worker from a busy one
            if not end_at:
                time.sleep(POLL_SECONDS)  # polling interval, not synchronisation
        if profiler is not None:
            profiler.stop()
            profiler = None
        received, dead, incidents = figures(worker)
        pairs = [counted_in(worker, name) for name in initiatives]
        peak_rss = peak_rss_mib(worker)
    finally:
        if profiler is not None:
            profiler.stop()
        worker.stop()  # SIGTERM, SIGKILL after 30 s (the harness logs a kill)
        stop_seconds = worker.stop_seconds  # None when it had to be killed

    def cpu_since_first(at: float | None) -> float | None:
        return at - first_cpu if at is not None and first_cpu is not None else None

    return WorkerResult(
        end_to_end=Rate(n - first_count, end_at - first_at, end_at - worker.started, cpu_since_first(end_cpu)),
        stage1=Rate(n - first_count, stage1_at - first_at, stage1_at - worker.started, cpu_since_first(stage1_cpu)),
        startup_seconds=first_at - worker.started, per_topic=received, counted=sum(p[0] for p in pairs),
        late_dropped=sum(p[1] for p in pairs), dead_letters=dead, incident_transitions=incidents,
        peak_rss_mib=peak_rss, stop_seconds=stop_seconds, log_problems=log_problems(worker), samples=samples)


# --------------------------------------------------------------------------- embedded
@dataclass
class EmbeddedResult:
    rate: Rate
    rss_before_mib: float
    rss_peak_mib: float
    memory_method: str
    counted: int
    late_dropped: int
    incidents: int
    dead_letters: int

    @property
    def peak_delta_mib(self) -> float:
        return self.rss_peak_mib - self.rss_before_mib


def run_embedded(settings: Settings, workload: Workload, workdir: Path, timeout: float) -> EmbeddedResult:
    """The embedded driver in a child process, so that its memory is measured alone."""
    records_path = workdir / "records.pickle"
    with records_path.open("wb") as file:
        pickle.dump(workload.records, file, protocol=pickle.HIGHEST_PROTOCOL)
    child_settings = settings.model_copy(update={"plan_dir": workdir / "embedded-plans"})
    try:
        result = subprocess.run([sys.executable, str(Path(__file__).resolve()), CHILD_FLAG, str(records_path)],
                                env=pmon_env(child_settings), cwd=workdir, capture_output=True,
                                timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise BenchError(f"the embedded driver did not finish within {timeout:.0f} s") from None
    finally:
        records_path.unlink(missing_ok=True)
    if result.returncode != 0 or not result.stdout.strip():
        raise BenchError(f"the embedded driver failed (exit {result.returncode}):\n"
                         f"{result.stderr.decode(errors='replace')[-3000:]}")
    data = orjson.loads(result.stdout.strip().splitlines()[-1])
    return EmbeddedResult(
        rate=Rate(data["records"], data["seconds"], data["seconds"], data["cpu_seconds"]),
        rss_before_mib=data["rss_before_kib"] / 1024, rss_peak_mib=data["rss_peak_kib"] / 1024,
        memory_method=data["memory_method"], counted=data["counted"], late_dropped=data["late_dropped"],
        incidents=data["incidents"], dead_letters=data["dead_letters"])


def _proc_status_kib(name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def embedded_child(records_path: str) -> NoReturn:
    """Child process: load the records, run the driver over them, print one JSON line."""
    from cli.main import tune_garbage_collector
    from streams.embedded import EmbeddedDriver

    tune_garbage_collector()  # as in every `pmon` process that runs the driver
    logging.basicConfig(level=logging.WARNING)
    with open(records_path, "rb") as file:
        records = pickle.load(file)
    driver = EmbeddedDriver(Settings())  # the parent's settings, from the PMON_* environment
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: the peak RSS (VmHWM) restarts from here
        before, method = _proc_status_kib("VmRSS"), "peak RSS (VmHWM) during the run - RSS before it"
    except OSError:
        before = None
    if before is None:
        before, method = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "getrusage maxrss delta"
    started, cpu_started = time.perf_counter(), time.process_time()
    run = asyncio.run(driver.run(records))
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    peak = _proc_status_kib("VmHWM") if method.startswith("peak") else None
    if peak is None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    clocks = [c for c in driver.initiative_stage.state.clocks.values() if c is not None]
    sys.stdout.write(orjson.dumps({
        "records": run.records, "seconds": seconds, "cpu_seconds": cpu_seconds,
        "rss_before_kib": before, "rss_peak_kib": peak, "memory_method": f"{method}, child process",
        "counted": sum(c.counted for c in clocks), "late_dropped": sum(c.late_dropped for c in clocks),
        "incidents": len(run.incidents), "dead_letters": len(run.dead_letters),
    }).decode() + "\n")
    sys.exit(0)


# --------------------------------------------------------------------------- peers
@dataclass
class PeerResult:
    name: str
    rate: Rate
    startup_seconds: float  # the peer's start to its first record: not in the rate
    extra: dict[str, Any]  # what the peer reports besides the rate (rows, late, windows closed, ...)


def quix_grace_seconds(value: str | None, workload: Workload) -> int:
    """quix-window's grace: `run` (the default) is the whole simulated span, so that no record is late."""
    return workload.days * 86_400 if value in (None, "run") else int(value)


def run_peer(name: str, settings: Settings, workload: Workload, workdir: Path, *, timeout: float,
             startup_timeout: float, quix_grace: str | None = None) -> PeerResult:
    """`bench/peers.py NAME` in a subprocess on the engagement topic; it must see every engagement record."""
    expect = workload.engagement
    if not expect:
        raise BenchError(f"{name}: the run has no engagement record")
    peer_dir = workdir / f"peer-{name}"
    peer_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(PEERS_SCRIPT), name, "--bootstrap", settings.kafka_bootstrap,
               "--topic", settings.topic("engagement"), "--expect", str(expect),
               "--group", f"{settings.app_id}-{name}", "--partitions", str(settings.topic_partitions),
               "--workdir", str(peer_dir), "--bucket-seconds", str(settings.bucket_seconds),
               "--grace-seconds", str(quix_grace_seconds(quix_grace, workload)),
               "--timeout", str(timeout), "--startup-timeout", str(startup_timeout)]
    try:
        result = subprocess.run(command, cwd=peer_dir, capture_output=True, stdin=subprocess.DEVNULL,
                                timeout=timeout + startup_timeout + 60, check=False)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{name} did not finish within {timeout + startup_timeout + 60:.0f} s") from None
    data: dict[str, Any] | None = None
    for line in reversed(result.stdout.decode(errors="replace").splitlines()):
        try:
            candidate = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(candidate, dict) and candidate.get("peer") == name:
            data = candidate
            break
    stderr = ANSI_ESCAPE.sub("", result.stderr.decode(errors="replace")).strip()
    if data is None or "error" in data or result.returncode != 0:
        why = data.get("error") if data else f"no result line (exit {result.returncode})"
        raise BenchError(f"{name} failed: {why}; the end of its stderr:\n{stderr[-2000:] or '(empty)'}")
    if data["seen"] != expect:
        raise BenchError(f"{name} saw {data['seen']:,} of {expect:,} engagement records")
    extra = {k: v for k, v in data.items()
             if k not in ("peer", "expect", "seen", "records", "seconds", "cpu_seconds", "startup_s")}
    return PeerResult(name, Rate(data["records"], data["seconds"], data["seconds"] + data["startup_s"],
                                 data["cpu_seconds"]), data["startup_s"], extra)


def parse_peers(value: str) -> list[str]:
    if value.strip().lower() in ("all", ""):
        return list(PEERS)
    if value.strip().lower() == "none":
        return []
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown peer(s) {', '.join(unknown)}; choose from {', '.join(PEERS)}, "
                                         "all or none")
    return [p for p in PEERS if p in names]  # run order


def peer_key(name: str) -> str:
    return name.replace("-", "_")


# --------------------------------------------------------------------------- output
def ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if a and b else None


def rounded(value: float | None, digits: int = 1) -> float | None:
    return round(value, digits) if value is not None else None


def _error_summary(text: str, width: int | None = None) -> str:
    """The first and the last line of an error (its whole text is on stderr and in the JSON line)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    summary = (lines[0] + (f" … {lines[-1]}" if len(lines) > 1 else "")) if lines else "?"
    return summary if width is None or len(summary) <= width else summary[:width - 1] + "…"


def _peer_note(name: str, summary: dict[str, Any]) -> str:
    key = peer_key(name)
    note = f"engagement only; start-up {summary[f'{key}_startup_s']:.1f} s not included"
    if name == "faust-aggregate":
        note += (f"; {summary[f'{key}_rows']:,} table rows, {summary[f'{key}_aggregated']:,} events in them; "
                 f"changelog flush after the last record {summary[f'{key}_flush_s']:.2f} s")
    elif name == "quix-window":
        late = summary[f"{key}_late_dropped"]
        note += (f"; grace {summary[f'{key}_grace_s']:,} s, closing by {summary[f'{key}_closing_strategy']}: "
                 f"{late:,} late dropped, "
                 f"{summary[f'{key}_windows_closed']:,} windows closed")
    return note


COLUMNS = (("path", "left"), ("records/s", "right"), ("vs bare consumer", "right"), ("seconds", "right"),
           ("CPU µs/record", "right"), ("notes", "left"))


def result_rows(summary: dict[str, Any]) -> list[tuple[tuple[str, ...], bool]]:
    """The table's rows, plain text, each with whether it is a headline row (bold)."""
    rows: list[tuple[tuple[str, ...], bool]] = []

    def cpu(key: str) -> str:
        return f"{summary[key]:,.1f}" if summary.get(key) is not None else "-"

    rows.append((("produce (aiokafka, acks=all, once)", f"{summary['produce_rps']:,}", "",
                  f"{summary['produce_s']:.1f}", "", "streams.kafka_io.produce"), False))
    rows.append((("bare consumer (orjson.loads only)", f"{summary['bare_consumer_rps']:,}", "1.000",
                  f"{summary['bare_consumer_s']:.1f}", cpu("bare_consumer_cpu_us"),
                  f"from partition assignment; best of {len(summary['bare_consumer_passes_rps'])} passes"),
                 False))
    if "worker_rps" in summary:
        rows.append((("faust worker, stage 1 (received)", f"{summary['worker_stage1_rps']:,}",
                      f"{summary['worker_stage1_vs_bare'] or 0:.3f}", f"{summary['worker_stage1_s']:.1f}",
                      cpu("worker_stage1_cpu_us"), "pmon_records_total = N"), False))
        rss = summary["worker_peak_rss_mib"]
        rows.append((("faust worker, end to end", f"{summary['worker_rps']:,}", f"{summary['worker_vs_bare'] or 0:.3f}",
                      f"{summary['worker_s']:.1f}", cpu("worker_cpu_us"),
                      f"and counted by stage 2; start-up {summary['worker_startup_s']:.1f} s not included; "
                      f"peak RSS {f'{rss:.0f} MiB' if rss else '?'}"), True))
    if "embedded_rps" in summary:
        rows.append((("embedded driver", f"{summary['embedded_rps']:,}", f"{summary['embedded_vs_bare'] or 0:.3f}",
                      f"{summary['embedded_s']:.1f}", cpu("embedded_cpu_us"),
                      f"peak memory +{summary['embedded_peak_mib']:.0f} MiB ({summary['memory_method']})"), True))
    for stage, label in (("worker", "faust worker"), ("embedded", "embedded driver")):
        if f"{stage}_error" in summary:
            rows.append(((f"{label}: FAILED", "-", "-", "-", "-", _error_summary(summary[f"{stage}_error"], 160)),
                         False))
    for name in summary.get("peers", []):
        key = peer_key(name)
        if f"{key}_error" in summary:
            rows.append(((f"peer {name}: FAILED", "-", "-", "-", "-", _error_summary(summary[f"{key}_error"], 160)),
                         False))
            continue
        rows.append(((f"peer {PEER_ROWS[name]}", f"{summary[f'{key}_rps']:,}", f"{summary[f'{key}_vs_bare'] or 0:.3f}",
                      f"{summary[f'{key}_s']:.1f}", cpu(f"{key}_cpu_us"), _peer_note(name, summary)), False))
    return rows


def result_lines(summary: dict[str, Any]) -> list[str]:
    """The lines under the table: what each driver counted, failures, stage 2's input, the load."""
    lines = []
    if "worker_rps" in summary:
        stopped = "killed" if summary["worker_stop_s"] is None else f"stopped {summary['worker_stop_s']} s"
        lines.append(f"worker: counted {summary['worker_counted']:,} + late {summary['worker_late_dropped']:,} of "
                     f"{summary['engagement']:,} engagement events, {summary['worker_dead_letters']} dead letters, "
                     f"{summary['worker_incident_transitions']} incident transitions, "
                     f"{summary['worker_log_problems']} warning/error log lines, {stopped} after SIGTERM")
        if summary.get("stage2_input_pct") is not None:
            lines.append(f"stage 2 input: {summary['stage2_messages']:,} messages, {summary['stage2_bytes']:,} bytes "
                         f"for {summary['input_bytes']:,} bytes of input records "
                         f"({summary['stage2_input_pct']:.2f} %; target <= 1 %)")
    if "embedded_rps" in summary:
        lines.append(f"embedded: counted {summary['embedded_counted']:,} + late {summary['embedded_late_dropped']:,}, "
                     f"{summary['embedded_dead_letters']} dead letters, "
                     f"{summary['embedded_incident_transitions']} incident transitions")
    for stage in ("worker", "embedded", *(peer_key(n) for n in summary.get("peers", []))):
        if f"{stage}_error" in summary:  # in full on stderr when it happened, and in the JSON line
            lines.append(f"{stage} failed: {_error_summary(summary[f'{stage}_error'])}")
    lines.append(f"load average before/after: {summary['loadavg_before']} / {summary['loadavg_after']} "
                 "(other work on the machine skews the rates; CPU µs/record much less)")
    return lines


def _title(summary: dict[str, Any]) -> str:
    return (f"pmon throughput: {summary['events']:,} records ({summary['engagement']:,} engagement), "
            f"Kafka {summary['kafka_version']}, {summary['cpus']} CPUs, Python {summary['python']}")


def print_results(summary: dict[str, Any]) -> None:
    table = Table(title=_title(summary))
    for name, justify in COLUMNS:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for cells, bold in result_rows(summary):
        style = "bold" if bold else "red" if cells[0].endswith("FAILED") else None
        table.add_row(*(escape(cell) for cell in cells), style=style)
    out.print(table)
    for line in result_lines(summary):
        out.print(line, highlight=False, markup=False)
    out.print(orjson.dumps(summary).decode(), soft_wrap=True, highlight=False, markup=False)


def page_body(summary: dict[str, Any]) -> str:
    """The figures as the page shows them: a Markdown table, the lines under it, the JSON line."""
    def cell(text: str, bold: bool) -> str:
        text = text.replace("|", "\\|")
        return f"**{text}**" if bold and text else text

    lines = [f"{_title(summary)}; every row on the same topic in the same run.", "",
             "| " + " | ".join(name for name, _ in COLUMNS) + " |",
             "|" + "|".join("---" if justify == "left" else "---:" for _, justify in COLUMNS) + "|"]
    lines += ["| " + " | ".join(cell(c, bold and n in (0, 1, 2)) for n, c in enumerate(cells)) + " |"
              for cells, bold in result_rows(summary)]
    lines += ["", *(f"- {line}" for line in result_lines(summary)), "",
              "Every figure of the run (the bench's last line on stdout):", "",
              "```json", orjson.dumps(summary).decode(), "```"]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/throughput.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=DEFAULT_EVENTS, help="records to simulate (default %(default)s)")
    parser.add_argument("--bootstrap", default=os.environ.get("PMON_KAFKA_BOOTSTRAP", "localhost:9092"),
                        help="Kafka bootstrap servers (default PMON_KAFKA_BOOTSTRAP, else localhost:9092)")
    parser.add_argument("--seed", type=int, default=7, help="simulation seed (default %(default)s)")
    parser.add_argument("--partitions", type=int, default=None,
                        help="partitions of the bench topics (default PMON_TOPIC_PARTITIONS, else 4)")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="deadline of each path's processing, seconds (default %(default)s)")
    parser.add_argument("--startup-timeout", type=float, default=180.0,
                        help="deadline for the worker's first record, seconds (default %(default)s)")
    parser.add_argument("--skip-worker", action="store_true", help="do not run the Faust worker")
    parser.add_argument("--skip-embedded", action="store_true", help="do not run the embedded driver")
    parser.add_argument("--worker-command", default=None, metavar="CMD",
                        help="run CMD instead of `pmon worker`, in the same PMON_* environment (A/B experiments)")
    parser.add_argument("--profile-worker", type=Path, default=None, metavar="FILE",
                        help="py-spy record the worker while it processes: .svg flame graph, .json speedscope, "
                             "anything else collapsed stacks")
    parser.add_argument("--samples", type=Path, default=None, metavar="FILE",
                        help="write the worker's progress as polled (JSON lines) to FILE")
    parser.add_argument("--peers", type=parse_peers, default=list(PEERS), metavar="LIST",
                        help=f"peers to run on the engagement topic: all (default), none, or a comma list of "
                             f"{', '.join(PEERS)}")
    parser.add_argument("--quix-grace", default="run", metavar="SECONDS",
                        help="grace of quix-window's windows: `run` (default: the whole simulated span, no record "
                             "late) or seconds, e.g. 600, the monitor's allowed lateness")
    parser.add_argument("--keep-topics", action="store_true", help="do not delete the bench topics")
    parser.add_argument("--out", type=Path, default=None, metavar="FILE",
                        help="where to write the page (default docs/benchmarks/throughput.md, only after a full "
                             "run: every stage and peer, none failed, no --worker-command)")
    args = parser.parse_args(argv)
    if args.events < 1:
        parser.error("--events must be at least 1")
    if args.partitions is not None and args.partitions < 1:
        parser.error("--partitions must be at least 1")
    if args.quix_grace != "run" and not (args.quix_grace.isdigit()):
        parser.error("--quix-grace must be `run` or a number of seconds")
    return args


def _interrupted(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # so that SIGTERM also stops the worker and deletes the topics


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    commit = pages.checkout_commit()  # the code measured: the checkout as the run starts
    signal.signal(signal.SIGTERM, _interrupted)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    run = f"bench-{uuid.uuid4().hex[:8]}"
    workdir = Path(tempfile.mkdtemp(prefix=f"pmon-{run}-"))
    overrides: dict[str, Any] = dict(topic_prefix=run, app_id=run, web_host="127.0.0.1", plan_dir=workdir / "plans")
    if args.partitions is not None:
        overrides["topic_partitions"] = args.partitions
    settings = pmon_harness.isolated_settings(args.bootstrap, workdir, **overrides)
    summary: dict[str, Any] = {
        "events": args.events, "run": run, "bootstrap": args.bootstrap, "partitions": settings.topic_partitions,
        "batch_size": settings.batch_size, "cpus": os.cpu_count(), "python": platform.python_version(),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()]}
    produced = finished = False
    failures: list[str] = []  # stages after the bare consumer that failed; the others still ran
    try:
        asyncio.run(check_broker(settings))
        summary["kafka_version"] = kafka_version(args.bootstrap)

        with console.status(f"simulating {args.events:,} records"):
            workload = generate(args.events, args.seed)
        summary.update(engagement=workload.engagement, consent=workload.per_topic["consent"],
                       rule_changes=workload.per_topic["rule-changes"], simulated_days=workload.days)
        console.print(f"simulated {args.events:,} records in {workload.seconds:.1f} s: {dict(workload.per_topic)} "
                      f"(the first of {workload.days} simulated days)", highlight=False)

        produced = True  # from here on there may be topics to delete
        with console.status(f"producing to {run}.* at {args.bootstrap}"):
            seconds = asyncio.run(produce_all(settings, workload))
        summary.update(produce_s=round(seconds, 3), produce_rps=round(args.events / seconds))
        console.print(f"produced in {seconds:.1f} s")

        with console.status("bare consumer"):
            passes = [asyncio.run(bare_consumer(settings, workload, args.timeout, run))
                      for run in range(1, BARE_PASSES + 1)]
        bare = max(passes, key=lambda rate: rate.per_second)
        summary.update(bare_consumer_rps=round(bare.per_second), bare_consumer_s=round(bare.seconds, 3),
                       bare_consumer_cpu_us=rounded(bare.cpu_us_per_record),
                       bare_consumer_passes_rps=[round(rate.per_second) for rate in passes])
        console.print(f"bare consumer: {bare.per_second:,.0f} records/s, the best of "
                      f"{', '.join(f'{rate.per_second:,.0f}' for rate in passes)}")

        worker: WorkerResult | None = None
        if not args.skip_worker:
            command = shlex.split(args.worker_command) if args.worker_command else [str(PMON), "worker"]
            try:
                with console.status(f"faust worker ({' '.join(command)})"):
                    worker = run_worker(settings, workload, workdir, command=command, timeout=args.timeout,
                                        startup_timeout=args.startup_timeout, profile=args.profile_worker)
            except BenchError as exc:  # the other stages still run; the exit code says a stage failed
                failures.append("worker")
                summary.update(worker_command=" ".join(command), worker_error=str(exc))
                console.print(f"[red]bench: the worker failed:[/] {exc}", highlight=False)
        if worker is not None:
            summary.update(
                worker_command=" ".join(command),
                worker_rps=round(worker.end_to_end.per_second), worker_s=round(worker.end_to_end.seconds, 3),
                worker_cpu_us=rounded(worker.end_to_end.cpu_us_per_record),
                worker_cpu_util=rounded((worker.end_to_end.cpu_seconds or 0) / worker.end_to_end.seconds, 2)
                if worker.end_to_end.seconds else None,
                worker_vs_bare=ratio(worker.end_to_end.per_second, bare.per_second),
                worker_stage1_rps=round(worker.stage1.per_second), worker_stage1_s=round(worker.stage1.seconds, 3),
                worker_stage1_cpu_us=rounded(worker.stage1.cpu_us_per_record),
                worker_stage1_vs_bare=ratio(worker.stage1.per_second, bare.per_second),
                worker_startup_s=round(worker.startup_seconds, 3),
                worker_counted=worker.counted, worker_late_dropped=worker.late_dropped,
                worker_dead_letters=worker.dead_letters, worker_incident_transitions=worker.incident_transitions,
                worker_peak_rss_mib=rounded(worker.peak_rss_mib), worker_stop_s=rounded(worker.stop_seconds, 2),
                worker_log_problems=sum(worker.log_problems.values()))
            for line, count in worker.log_problems.most_common(8):
                console.print(f"worker log, {count} x: {line}", highlight=False, markup=False)
            if args.samples is not None:
                args.samples.write_bytes(b"".join(orjson.dumps(sample) + b"\n" for sample in worker.samples))
            console.print(f"worker: {worker.end_to_end.per_second:,.0f} records/s end to end "
                          f"(stage 1 {worker.stage1.per_second:,.0f}/s)")
            messages, size = asyncio.run(stage2_input_bytes(settings))
            input_bytes = sum(len(value) for _, _, value in workload.records)
            summary.update(stage2_messages=messages, stage2_bytes=size, input_bytes=input_bytes,
                           stage2_input_pct=round(100.0 * size / input_bytes, 3) if input_bytes else None)
            console.print(f"stage 2 input: {messages:,} messages, {size:,} bytes for {input_bytes:,} bytes of "
                          f"input records ({100.0 * size / input_bytes:.2f} %; target <= 1 %)", highlight=False)

        embedded: EmbeddedResult | None = None
        if not args.skip_embedded:
            try:
                with console.status("embedded driver"):
                    embedded = run_embedded(settings, workload, workdir, args.timeout)
            except BenchError as exc:
                failures.append("embedded")
                summary["embedded_error"] = str(exc)
                console.print(f"[red]bench: the embedded driver failed:[/] {exc}", highlight=False)
        if embedded is not None:
            summary.update(
                embedded_rps=round(embedded.rate.per_second), embedded_s=round(embedded.rate.seconds, 3),
                embedded_cpu_us=rounded(embedded.rate.cpu_us_per_record),
                embedded_vs_bare=ratio(embedded.rate.per_second, bare.per_second),
                embedded_peak_mib=round(embedded.peak_delta_mib, 1),
                embedded_peak_rss_mib=round(embedded.rss_peak_mib, 1), memory_method=embedded.memory_method,
                embedded_counted=embedded.counted, embedded_late_dropped=embedded.late_dropped,
                embedded_incident_transitions=embedded.incidents, embedded_dead_letters=embedded.dead_letters)
            console.print(f"embedded: {embedded.rate.per_second:,.0f} records/s")

        summary["peers"] = args.peers
        for name in args.peers:
            key = peer_key(name)
            try:
                with console.status(f"peer {name}"):
                    peer = run_peer(name, settings, workload, workdir, timeout=args.timeout,
                                    startup_timeout=args.startup_timeout, quix_grace=args.quix_grace)
            except BenchError as exc:
                failures.append(name)
                summary[f"{key}_error"] = str(exc)
                console.print(f"[red]bench: peer {name} failed:[/] {exc}", highlight=False)
                continue
            summary.update({
                f"{key}_rps": round(peer.rate.per_second), f"{key}_s": round(peer.rate.seconds, 3),
                f"{key}_cpu_us": rounded(peer.rate.cpu_us_per_record),
                f"{key}_vs_bare": ratio(peer.rate.per_second, bare.per_second),
                f"{key}_startup_s": round(peer.startup_seconds, 3),
                **{f"{key}_{k}": (round(v, 3) if isinstance(v, float) else v) for k, v in peer.extra.items()}})
            console.print(f"peer {name}: {peer.rate.per_second:,.0f} records/s", highlight=False)
        finished = True
    except BrokerUnreachable as exc:
        console.print(f"[red]bench: error:[/] {exc}", highlight=False)
        return 2
    except BenchError as exc:
        console.print(f"[red]bench: failed:[/] {exc}", highlight=False)
        return 1
    except KeyboardInterrupt:
        console.print("[red]bench: interrupted[/]")
        return 1
    finally:
        if produced and not args.keep_topics:
            try:
                # Quix Streams names its internal topics `repartition__<group>--...` and `changelog__<group>--...`:
                # the run id is inside the name, not at its start.
                deleted = asyncio.run(broker.delete_topics(settings, lambda name: run in name))
                console.print(f"deleted {len(deleted)} bench topics ({run}*)")
            except Exception as exc:  # noqa: BLE001 - best effort
                console.print(f"[yellow]could not delete the bench topics {run}*: {exc!r}[/]")
        if (finished and "worker" not in failures) or not (workdir / "worker.log").exists():
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            console.print(f"kept {workdir} (worker.log, plans) for inspection")
    summary["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    if failures:
        summary["failed"] = failures
    print_results(summary)
    full = not (failures or args.skip_worker or args.skip_embedded or args.worker_command
                or args.profile_worker or args.peers != list(PEERS))
    if args.out is not None or full:
        pages.write_page("throughput", "Throughput: both drivers against a bare consumer and the peers",
                         page_body(summary), argv=argv, load_before=tuple(summary["loadavg_before"]),
                         load_after=tuple(summary["loadavg_after"]), out=args.out, commit=commit)
    else:
        console.print("page not written: not a full run (pass --out FILE to write one)")
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == CHILD_FLAG:
        embedded_child(sys.argv[2])
    sys.exit(main())
