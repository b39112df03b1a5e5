"""Throughput of the monitor's paths over the same simulated records.

    .venv/bin/python bench/throughput.py [--events N] [--bootstrap HOST:PORT]

1. Simulates N records (`streams.simulator`), encodes them (`streams.events.encode`)
   and produces them once to fresh `bench-<uuid8>.*` topics.
2. Bare consumer: plain aiokafka, its own group, reads the three input topics from
   the beginning and only `orjson.loads` each value: the ceiling of this broker,
   client library and machine.
3. Faust worker: `pmon worker` in a subprocess on those topics; its `/metrics`
   (stage 1, `pmon_records_total`) and `/pmon/report/` (stage 2, `counted_events`
   + `late_dropped` per initiative) are polled until every record has been
   received and every engagement event counted (end to end).
4. Embedded driver: `EmbeddedDriver(settings).run(records)` in a child process,
   so its peak memory is that process's `getrusage` maxrss delta over the run.
5. Prints a table and, last, one JSON line with the figures.

Rates are "records after the first one was seen / time since it was seen": for
the consumers, the time of the first fetched batch (its records are excluded);
for the worker, the first `/metrics` answer with a record in it (the count at
that moment is excluded). Group join and worker start-up are therefore not in
the rates, and polling granularity (0.1 s) is the worker figure's resolution.

The bench topics are deleted at the end (best effort). Exit codes: 0 success,
1 a stage failed or timed out, 2 usage error or broker unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import glob
import itertools
import logging
import os
import pickle
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/throughput.py` puts bench/ first, not the repo
    sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from streams.settings import Settings  # noqa: E402

PMON = Path(sys.executable).parent / "pmon"
DEFAULT_EVENTS = 200_000
INPUT_TOPICS = ("engagement", "consent", "rule-changes")
CHILD_FLAG = "--embedded-child"
POLL_SECONDS = 0.1
REPORT_POLL_SECONDS = 1.0  # during stage 1; every POLL_SECONDS once stage 1 is done

log = logging.getLogger("bench")
console = Console(stderr=True)  # progress and errors; the table and JSON go to stdout
out = Console()


class BenchError(Exception):
    """A stage failed; the message says which and why."""


class BrokerUnreachable(BenchError):
    pass


# --------------------------------------------------------------------------- records
@dataclass
class Workload:
    records: list[tuple[str, bytes, bytes]]
    per_topic: Counter[str]
    engagement_per_initiative: Counter[str]
    days: int
    seconds: float

    @property
    def engagement(self) -> int:
        return self.per_topic["engagement"]


def generate(n: int, seed: int) -> Workload:
    """The first n records of a simulated run long enough to hold them."""
    from streams.events import encode
    from streams.simulator import SimulationSpec, simulate

    started = time.perf_counter()
    days = max(2, -(-n // 50_000) + 1)  # ~54k records a simulated day with the default program
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


# --------------------------------------------------------------------------- broker
def kafka_options(settings: Settings) -> dict[str, Any]:
    from streams.kafka_io import client_options

    return client_options(settings)


async def check_broker(settings: Settings, timeout: float = 20.0) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    quiet = logging.getLogger("aiokafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # one clear message instead of aiokafka's connection errors
    admin = AIOKafkaAdminClient(**kafka_options(settings), request_timeout_ms=int(timeout * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout)
        await asyncio.wait_for(admin.list_topics(), timeout)
    except Exception as exc:  # noqa: BLE001 - any failure here means "no usable broker"
        raise BrokerUnreachable(
            f"no Kafka broker reachable at {settings.kafka_bootstrap} ({type(exc).__name__}: {exc}) — "
            "start one with `make kafka-up` (or `PMON_KAFKA_PORT=19092 bash scripts/kafka-local.sh up`) "
            "and pass --bootstrap HOST:PORT or set PMON_KAFKA_BOOTSTRAP") from None
    finally:
        try:
            await admin.close()
        except Exception:  # noqa: BLE001
            pass
        quiet.setLevel(level)


def kafka_version(bootstrap: str) -> str:
    """The broker's version when it is the project's local broker (its jars say), else what we know."""
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
                    name = os.path.basename(jar)[len("kafka_2.13-"):-len(".jar")]
                    if name and name[0].isdigit() and "-" not in name:
                        return name
        except (OSError, ValueError, IndexError):
            pass
    return os.environ.get("PMON_KAFKA_VERSION", "unknown (not the local pmon broker)")


async def produce_all(settings: Settings, workload: Workload) -> float:
    from streams.kafka_io import produce

    started = time.perf_counter()
    sent = await produce(settings, workload.records)
    elapsed = time.perf_counter() - started
    if sent != len(workload.records):
        raise BenchError(f"produced {sent} of {len(workload.records)} records")
    return elapsed


async def delete_topics(settings: Settings, prefix: str) -> list[str]:
    """Best effort: every topic of this run (inputs, outputs, the app's internal and changelog topics)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**kafka_options(settings), request_timeout_ms=20_000)
    try:
        await asyncio.wait_for(admin.start(), 20)
        names = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if names:
            await admin.delete_topics(names, timeout_ms=20_000)
        return names
    finally:
        await admin.close()


# --------------------------------------------------------------------------- bare consumer
@dataclass
class Rate:
    records: int  # records counted in the rate (after the first observation)
    seconds: float
    total_seconds: float = 0.0  # from the start of the stage, start-up included

    @property
    def per_second(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else float("nan")


async def bare_consumer(settings: Settings, workload: Workload, timeout: float) -> Rate:
    from aiokafka import AIOKafkaConsumer

    n = len(workload.records)
    consumer = AIOKafkaConsumer(
        *(settings.topic(t) for t in INPUT_TOPICS), **kafka_options(settings),
        group_id=f"{settings.app_id}-bare-consumer", auto_offset_reset="earliest", enable_auto_commit=False)
    started = time.perf_counter()
    await consumer.start()
    seen = first_batch = 0
    first_at = last_at = 0.0
    deadline = time.monotonic() + timeout
    try:
        while seen < n:
            if time.monotonic() > deadline:
                raise BenchError(f"bare consumer: read {seen:,} of {n:,} records in {timeout:.0f} s")
            batches = await consumer.getmany(timeout_ms=500)
            for messages in batches.values():
                for message in messages:
                    orjson.loads(message.value)
                seen += len(messages)
            if batches:
                last_at = time.perf_counter()
                if not first_at:
                    first_at, first_batch = last_at, seen
    finally:
        await consumer.stop()
    if seen != n:
        raise BenchError(f"bare consumer read {seen:,} records, expected {n:,}")
    return Rate(n - first_batch, last_at - first_at, last_at - started)


# --------------------------------------------------------------------------- worker
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as PMON_* variables (and no others), for a child process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PMON_")}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[f"PMON_{name.upper()}"] = str(value)
    return env


@dataclass
class WorkerResult:
    end_to_end: Rate
    stage1: Rate
    startup_seconds: float  # process start to first record seen
    per_topic: dict[str, int]
    counted: int
    late_dropped: int
    dead_letters: int
    incident_transitions: int
    peak_rss_mib: float | None
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (s since first record, stage 1, stage 2)


class Worker:
    def __init__(self, settings: Settings, workdir: Path) -> None:
        self.settings = settings
        self.url = f"http://{settings.web_host}:{settings.web_port}"
        self.log_path = workdir / "worker.log"
        self._log = self.log_path.open("wb")
        # cwd: Faust writes its `<app id>-data` directory there.
        self.process = subprocess.Popen([str(PMON), "worker"], env=settings_env(settings), cwd=workdir,
                                        stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.started = time.perf_counter()

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:]) or "(empty)"

    def alive(self) -> None:
        if self.process.poll() is not None:
            raise BenchError(f"the worker exited with code {self.process.returncode}; its log "
                             f"({self.log_path}):\n{self.log_tail()}")

    def _get(self, path: str) -> bytes:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=10) as response:  # noqa: S310 - our worker
            return response.read()

    def metrics(self) -> tuple[dict[str, int], int, int]:
        """Records received per input topic, dead letters, incident transitions."""
        from prometheus_client.parser import text_string_to_metric_families

        received: dict[str, int] = {}
        dead = incidents = 0
        for family in text_string_to_metric_families(self._get("/metrics").decode()):
            for sample in family.samples:
                if sample.name == "pmon_records_total":
                    received[sample.labels["topic"]] = int(sample.value)
                elif sample.name == "pmon_dead_letters_total":
                    dead += int(sample.value)
                elif sample.name == "pmon_incident_transitions_total":
                    incidents += int(sample.value)
        return received, dead, incidents

    def counted(self, initiative: str) -> tuple[int, int]:
        """(counted_events, late_dropped) of one initiative; (0, 0) before the worker has seen it."""
        query = urllib.parse.urlencode({"initiative": initiative})
        try:
            report = orjson.loads(self._get(f"/pmon/report/?{query}"))
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return 0, 0
            raise
        return int(report["counted_events"]), int(report["late_dropped"])

    def peak_rss_mib(self) -> float | None:
        try:
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return None

    def stop(self, timeout: float = 30.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                console.print(f"[yellow]worker did not stop {timeout:.0f} s after SIGTERM; killing pid "
                              f"{self.process.pid}[/]")
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()


class Profiler:
    """`py-spy record` attached to the worker while it works (optional)."""

    def __init__(self, pid: int, path: Path) -> None:
        fmt = {".svg": "flamegraph", ".json": "speedscope"}.get(path.suffix, "raw")
        spy = Path(sys.executable).parent / "py-spy"
        self.path = path
        self.process = subprocess.Popen(
            [str(spy if spy.exists() else "py-spy"), "record", "--pid", str(pid), "--rate", "200",
             "--format", fmt, "--output", str(path), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
        if self.path.exists():
            console.print(f"worker profile written to {self.path}")
        else:
            console.print(f"[yellow]py-spy wrote no profile[/]: {err.strip()[-500:]}")


def run_worker(settings: Settings, workload: Workload, workdir: Path, *, timeout: float,
               startup_timeout: float, profile: Path | None) -> WorkerResult:
    n, engagement = len(workload.records), workload.engagement
    initiatives = sorted(workload.engagement_per_initiative)
    worker = Worker(settings, workdir)
    profiler: Profiler | None = None
    try:
        # Start-up: the web server answers, then the first record arrives.
        deadline = time.monotonic() + startup_timeout
        first_at = 0.0
        first_count = 0
        while not first_at:
            worker.alive()
            if time.monotonic() > deadline:
                raise BenchError(f"the worker received no record within {startup_timeout:.0f} s of starting; "
                                 f"its log:\n{worker.log_tail()}")
            try:
                received, _, _ = worker.metrics()
            except OSError:
                received = {}
            if sum(received.values()):
                first_at, first_count = time.perf_counter(), sum(received.values())
                if profile is not None:
                    profiler = Profiler(worker.process.pid, profile)
            else:
                time.sleep(0.05)  # polling interval, not synchronisation
        startup = first_at - worker.started

        # Processing: stage 1 (records received per topic) and stage 2 (engagement counted per initiative).
        deadline = time.monotonic() + timeout
        stage1_at = end_at = 0.0
        counted = late = 0
        samples: list[tuple[float, int, int]] = []
        next_report = 0.0
        while not end_at:
            worker.alive()
            now = time.perf_counter()
            if time.monotonic() > deadline:
                raise BenchError(
                    f"the worker did not finish within {timeout:.0f} s: stage 1 received "
                    f"{sum(received.values()):,} of {n:,} records {dict(received)}, stage 2 counted "
                    f"{counted + late:,} of {engagement:,} engagement events; its log:\n{worker.log_tail()}")
            received, _, _ = worker.metrics()
            now = time.perf_counter()
            if not stage1_at and all(received.get(t, 0) >= workload.per_topic[t] for t in INPUT_TOPICS
                                     if workload.per_topic[t]):
                stage1_at = now
            if stage1_at or now >= next_report:
                pairs = [worker.counted(name) for name in initiatives]
                counted, late = sum(p[0] for p in pairs), sum(p[1] for p in pairs)
                next_report = time.perf_counter() + REPORT_POLL_SECONDS
                if stage1_at and counted + late >= engagement:
                    end_at = time.perf_counter()
            samples.append((round(now - first_at, 3), sum(received.values()), counted + late))
            if not end_at:
                time.sleep(POLL_SECONDS)  # polling interval, not synchronisation
        if profiler is not None:
            profiler.stop()
            profiler = None
        received, dead, incidents = worker.metrics()
        pairs = [worker.counted(name) for name in initiatives]
        return WorkerResult(
            end_to_end=Rate(n - first_count, end_at - first_at, end_at - worker.started),
            stage1=Rate(n - first_count, stage1_at - first_at, stage1_at - worker.started),
            startup_seconds=startup, per_topic=received, counted=sum(p[0] for p in pairs),
            late_dropped=sum(p[1] for p in pairs), dead_letters=dead, incident_transitions=incidents,
            peak_rss_mib=worker.peak_rss_mib(), samples=samples)
    finally:
        if profiler is not None:
            profiler.stop()
        worker.stop()


# --------------------------------------------------------------------------- embedded
@dataclass
class EmbeddedResult:
    rate: Rate
    maxrss_before_mib: float
    maxrss_after_mib: float
    counted: int
    late_dropped: int
    incidents: int
    dead_letters: int

    @property
    def peak_delta_mib(self) -> float:
        return self.maxrss_after_mib - self.maxrss_before_mib


def run_embedded(settings: Settings, workload: Workload, workdir: Path, timeout: float) -> EmbeddedResult:
    """The embedded driver in a child process (so getrusage maxrss measures it alone)."""
    records_path = workdir / "records.pickle"
    with records_path.open("wb") as file:
        pickle.dump(workload.records, file, protocol=pickle.HIGHEST_PROTOCOL)
    embedded_settings = settings.model_copy(update={"plan_dir": workdir / "embedded-plans"})
    try:
        result = subprocess.run([sys.executable, str(Path(__file__).resolve()), CHILD_FLAG, str(records_path)],
                                env=settings_env(embedded_settings), cwd=workdir, capture_output=True,
                                timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise BenchError(f"the embedded driver did not finish within {timeout:.0f} s") from None
    if result.returncode != 0:
        raise BenchError(f"the embedded driver failed (exit {result.returncode}):\n"
                         f"{result.stderr.decode(errors='replace')[-3000:]}")
    data = orjson.loads(result.stdout.strip().splitlines()[-1])
    return EmbeddedResult(rate=Rate(data["records"], data["seconds"], data["seconds"]),
                          maxrss_before_mib=data["maxrss_before_kib"] / 1024,
                          maxrss_after_mib=data["maxrss_after_kib"] / 1024, counted=data["counted"],
                          late_dropped=data["late_dropped"], incidents=data["incidents"],
                          dead_letters=data["dead_letters"])


def embedded_child(records_path: str) -> None:
    """Child process: load the records, then time the driver; print one JSON line."""
    from streams.embedded import EmbeddedDriver

    logging.basicConfig(level=logging.WARNING)
    with open(records_path, "rb") as file:
        records = pickle.load(file)
    settings = Settings()
    driver = EmbeddedDriver(settings)
    gc.collect()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    started = time.perf_counter()
    run = asyncio.run(driver.run(records))
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    clocks = [c for c in driver.pipeline.state.clocks.values() if c is not None]
    sys.stdout.write(orjson.dumps({
        "records": run.records, "seconds": seconds, "maxrss_before_kib": before, "maxrss_after_kib": after,
        "counted": sum(c.counted for c in clocks), "late_dropped": sum(c.late_dropped for c in clocks),
        "incidents": len(run.incidents), "dead_letters": len(run.dead_letters),
    }).decode() + "\n")


# --------------------------------------------------------------------------- output
def ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def print_results(summary: dict[str, Any]) -> None:
    table = Table(title=f"pmon throughput — {summary['events']:,} records "
                        f"({summary['engagement']:,} engagement), Kafka {summary['kafka_version']}, "
                        f"{summary['cpus']} CPUs, Python {summary['python']}")
    table.add_column("path")
    table.add_column("records/s", justify="right")
    table.add_column("vs bare consumer", justify="right")
    table.add_column("seconds", justify="right")
    table.add_column("notes")
    table.add_row("produce (aiokafka, acks=all)", f"{summary['produce_rps']:,.0f}",
                  "", f"{summary['produce_s']:.1f}", "streams.kafka_io.produce, once")
    table.add_row("bare consumer (orjson.loads only)", f"{summary['bare_consumer_rps']:,.0f}", "1.000",
                  f"{summary['bare_consumer_s']:.1f}", "from its first fetched batch")
    if summary.get("worker_rps") is not None:
        table.add_row("faust worker, stage 1 (received)", f"{summary['worker_stage1_rps']:,.0f}",
                      f"{summary['worker_stage1_vs_bare']:.3f}", f"{summary['worker_stage1_s']:.1f}",
                      "pmon_records_total")
        table.add_row("[bold]faust worker, end to end[/]", f"[bold]{summary['worker_rps']:,.0f}[/]",
                      f"[bold]{summary['worker_vs_bare']:.3f}[/]", f"{summary['worker_s']:.1f}",
                      f"+ counted by stage 2; start-up {summary['worker_startup_s']:.1f} s not included; "
                      f"peak RSS {summary['worker_peak_rss_mib'] or float('nan'):.0f} MiB")
    if summary.get("embedded_rps") is not None:
        table.add_row("[bold]embedded driver[/]", f"[bold]{summary['embedded_rps']:,.0f}[/]",
                      f"[bold]{summary['embedded_vs_bare']:.3f}[/]", f"{summary['embedded_s']:.1f}",
                      f"peak memory +{summary['embedded_peak_mib']:.0f} MiB ({summary['memory_method']})")
    out.print(table)
    checks = []
    if summary.get("worker_rps") is not None:
        checks.append(f"worker counted {summary['worker_counted']:,} + late {summary['worker_late_dropped']:,}, "
                      f"dead letters {summary['worker_dead_letters']}, "
                      f"incident transitions {summary['worker_incident_transitions']}")
    if summary.get("embedded_rps") is not None:
        checks.append(f"embedded counted {summary['embedded_counted']:,} + late "
                      f"{summary['embedded_late_dropped']:,}, dead letters {summary['embedded_dead_letters']}, "
                      f"incident transitions {summary['embedded_incident_transitions']}")
    for line in checks:
        out.print(line)
    out.print(orjson.dumps(summary).decode(), soft_wrap=True, highlight=False)


# --------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/throughput.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=DEFAULT_EVENTS, help="records to simulate (default %(default)s)")
    parser.add_argument("--bootstrap", default=os.environ.get("PMON_KAFKA_BOOTSTRAP", "localhost:9092"),
                        help="Kafka bootstrap servers (default PMON_KAFKA_BOOTSTRAP or localhost:9092)")
    parser.add_argument("--seed", type=int, default=7, help="simulation seed (default %(default)s)")
    parser.add_argument("--partitions", type=int, default=None,
                        help="partitions of the bench topics (default PMON_TOPIC_PARTITIONS or the settings' 4)")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="deadline of each stage's processing, seconds (default %(default)s)")
    parser.add_argument("--startup-timeout", type=float, default=180.0,
                        help="deadline for the worker's first record, seconds (default %(default)s)")
    parser.add_argument("--skip-worker", action="store_true", help="do not run the Faust worker")
    parser.add_argument("--skip-embedded", action="store_true", help="do not run the embedded driver")
    parser.add_argument("--profile-worker", type=Path, default=None, metavar="FILE",
                        help="py-spy record the worker while it processes (.svg flame graph, .json speedscope, "
                             "anything else collapsed stacks)")
    parser.add_argument("--keep-topics", action="store_true", help="do not delete the bench topics")
    args = parser.parse_args(argv)
    if args.events < 1:
        parser.error("--events must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    run = f"bench-{uuid.uuid4().hex[:8]}"
    workdir = Path(tempfile.mkdtemp(prefix=f"pmon-{run}-"))
    overrides: dict[str, Any] = dict(kafka_bootstrap=args.bootstrap, topic_prefix=run, app_id=run,
                                     web_host="127.0.0.1", web_port=free_port(), plan_dir=workdir / "plans",
                                     log_level="WARNING")
    if args.partitions is not None:
        overrides["topic_partitions"] = args.partitions
    settings = Settings(**overrides)
    summary: dict[str, Any] = {"events": args.events, "run": run, "bootstrap": args.bootstrap,
                               "partitions": settings.topic_partitions, "batch_size": settings.batch_size,
                               "cpus": os.cpu_count(), "python": platform.python_version()}
    produced = False
    try:
        asyncio.run(check_broker(settings))
        summary["kafka_version"] = kafka_version(args.bootstrap)

        with console.status(f"simulating {args.events:,} records"):
            workload = generate(args.events, args.seed)
        summary.update(engagement=workload.engagement, consent=workload.per_topic["consent"],
                       rule_changes=workload.per_topic["rule-changes"], simulated_days=workload.days)
        console.print(f"simulated {len(workload.records):,} records in {workload.seconds:.1f} s "
                      f"({dict(workload.per_topic)}, {workload.days} days cut at N)")

        with console.status(f"producing to {run}.* at {args.bootstrap}"):
            produced = True
            seconds = asyncio.run(produce_all(settings, workload))
        summary.update(produce_s=round(seconds, 3), produce_rps=round(args.events / seconds))
        console.print(f"produced in {seconds:.1f} s")

        with console.status("bare consumer"):
            bare = asyncio.run(bare_consumer(settings, workload, args.timeout))
        summary.update(bare_consumer_rps=round(bare.per_second), bare_consumer_s=round(bare.seconds, 3))
        console.print(f"bare consumer: {bare.per_second:,.0f} records/s")

        if not args.skip_worker:
            with console.status("faust worker (pmon worker)"):
                worker = run_worker(settings, workload, workdir, timeout=args.timeout,
                                    startup_timeout=args.startup_timeout, profile=args.profile_worker)
            summary.update(
                worker_rps=round(worker.end_to_end.per_second), worker_s=round(worker.end_to_end.seconds, 3),
                worker_stage1_rps=round(worker.stage1.per_second), worker_stage1_s=round(worker.stage1.seconds, 3),
                worker_startup_s=round(worker.startup_seconds, 3),
                worker_vs_bare=ratio(worker.end_to_end.per_second, bare.per_second),
                worker_stage1_vs_bare=ratio(worker.stage1.per_second, bare.per_second),
                worker_counted=worker.counted, worker_late_dropped=worker.late_dropped,
                worker_dead_letters=worker.dead_letters, worker_incident_transitions=worker.incident_transitions,
                worker_peak_rss_mib=round(worker.peak_rss_mib, 1) if worker.peak_rss_mib else None)
            console.print(f"worker: {worker.end_to_end.per_second:,.0f} records/s end to end "
                          f"(stage 1 {worker.stage1.per_second:,.0f}/s)")

        if not args.skip_embedded:
            with console.status("embedded driver"):
                embedded = run_embedded(settings, workload, workdir, args.timeout)
            summary.update(
                embedded_rps=round(embedded.rate.per_second), embedded_s=round(embedded.rate.seconds, 3),
                embedded_vs_bare=ratio(embedded.rate.per_second, bare.per_second),
                embedded_peak_mib=round(embedded.peak_delta_mib, 1),
                embedded_maxrss_mib=round(embedded.maxrss_after_mib, 1),
                memory_method="getrusage maxrss delta over the run, child process",
                embedded_counted=embedded.counted, embedded_late_dropped=embedded.late_dropped,
                embedded_incident_transitions=embedded.incidents, embedded_dead_letters=embedded.dead_letters)
            console.print(f"embedded: {embedded.rate.per_second:,.0f} records/s")
    except BrokerUnreachable as exc:
        console.print(f"[red]bench: error:[/] {exc}")
        return 2
    except BenchError as exc:
        console.print(f"[red]bench: failed:[/] {exc}")
        return 1
    except KeyboardInterrupt:
        console.print("[red]bench: interrupted[/]")
        return 1
    finally:
        if produced and not args.keep_topics:
            try:
                deleted = asyncio.run(delete_topics(settings, run))
                console.print(f"deleted {len(deleted)} bench topics ({run}*)")
            except Exception as exc:  # noqa: BLE001 - best effort
                console.print(f"[yellow]could not delete the bench topics {run}*: {exc!r}[/]")
        shutil.rmtree(workdir, ignore_errors=True)
    print_results(summary)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == CHILD_FLAG:
        embedded_child(sys.argv[2])
        sys.exit(0)
    sys.exit(main())
