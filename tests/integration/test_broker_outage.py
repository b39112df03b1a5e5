"""Broker faults on the real broker: frozen for 70 s, stopped and started again, its producers fenced, back empty,
topics that do not match, not there yet; and SIGTERM within seconds in each state.

The broker is the session's (`scripts/kafka-local.sh`); tests run one at a time, so a test may freeze, stop or
renew it, and the `broker` fixture always leaves it running.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from monitor.events import EngagementEvent, encode
from monitor.settings import Settings
from pmon_harness import PMON, Worker, pmon_env, wait_for
from streams.kafka_io import produce
from tests.conftest import ROOT
from tests.helpers import T0, http_json, one_line

pytestmark = [pytest.mark.kafka, pytest.mark.broker_faults]

INITIATIVE = "Outage O"
SIGTERM_SECONDS = 15   # "stops within seconds", in every state of the broker
# A commit interval of seconds holds transactions open when the broker goes (the broker may abort them once they
# outlive the transaction timeout, 30 s, which fences their producers: the fencing test takes that path for sure).
# INFO: the log of a failure shows the rebalances and the partitions taken, and from which offsets.
OUTAGE = {"ready_fetch_seconds": 3, "commit_interval_seconds": 3, "log_level": "INFO"}
log = logging.getLogger(__name__)


class SessionBroker:
    """The session's broker, driven through scripts/kafka-local.sh (its pid from the script's run dir)."""

    def __init__(self, bootstrap: str) -> None:
        self.port = bootstrap.rpartition(":")[2]
        self.run_dir = Path(os.environ.get("PMON_KAFKA_RUN_DIR")
                            or Path(tempfile.gettempdir()) / f"pmon-kafka-{self.port}")
        self.frozen = False
        self.stopped = False
        self.pid()  # fail early when the broker is not the script's

    def pid(self) -> int:
        pid_file = self.run_dir / "kafka.pid"
        if not pid_file.is_file():
            pytest.fail(f"no pid file at {pid_file}: the session's broker is not scripts/kafka-local.sh's")
        return int(pid_file.read_text().split()[0])

    def _script(self, command: str) -> None:
        subprocess.run(["bash", str(ROOT / "scripts" / "kafka-local.sh"), command], check=True,
                       env={**os.environ, "PMON_KAFKA_PORT": self.port})

    def freeze(self) -> None:
        os.kill(self.pid(), signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        os.kill(self.pid(), signal.SIGCONT)
        self.frozen = False

    def stop(self) -> None:
        """Stop it, keeping its data (topics, offsets, transactions)."""
        self._script("stop")
        self.stopped = True

    def start(self) -> None:
        self._script("start")
        self.stopped = False

    def renew(self) -> None:
        """Stop it and start an empty one (a new cluster) in its place."""
        self.stopped = True
        self._script("down")
        self._script("up")
        self.stopped = False

    def restore(self) -> None:
        if self.frozen:
            self.thaw()
        if self.stopped:
            self._script("up" if not (self.run_dir / "data").is_dir() else "start")
            self.stopped = False


@pytest.fixture
def broker(kafka_bootstrap: str) -> Iterator[SessionBroker]:
    """The session's broker; running again (thawed, started) whatever the test's outcome."""
    session = SessionBroker(kafka_bootstrap)
    try:
        yield session
    finally:
        session.restore()


def _records(first: int, n: int) -> list[tuple[str, bytes, bytes]]:
    return [("engagement", f"outage-user-{i}".encode(), encode(EngagementEvent(
        event_id=f"o-{i}", event_type="exposure", event_time=T0 + timedelta(seconds=i), user_id=f"outage-user-{i}",
        initiative=INITIATIVE, profile="new_user", channel="web", variant="control"))) for i in range(first, first + n)]


def _report(worker: Any) -> dict[str, Any] | None:
    try:
        return worker.report(INITIATIVE)
    except OSError:
        return None


def counted(worker: Any) -> int | None:
    report = _report(worker)
    return None if report is None else report["counted_events"] + report["late_dropped"]


def _progress(worker: Any) -> str:
    report = _report(worker) or {}
    try:
        ready = http_json(f"{worker.url}/ready")
    except OSError as exc:
        ready = repr(exc)
    return (f"counted {report.get('counted_events')} late {report.get('late_dropped')} "
            f"lost {report.get('source_offsets_lost')} skipped {report.get('duplicates_skipped')}; "
            f"worker {'up' if worker.process.poll() is None else f'exit {worker.process.returncode}'}; "
            f"/ready {ready}\n{worker.log()}")


def _ready(worker: Any) -> int:
    try:
        return http_json(f"{worker.url}/ready")[0]
    except OSError:
        return 0


def _counts_everything_once(worker: Any, produced: int, what: str, timeout: float = 180) -> None:
    """Every record counted, none twice, none reported lost, and the count stays there for 3 s (a partial counted
    twice would arrive meanwhile). The report reads the worker's state as it is, so the count may fall back while
    an aborted transaction's steps are undone: only more than `produced` fails at once."""
    since: list[float] = []

    def settled() -> bool:
        report = _report(worker) or {"counted_events": 0, "late_dropped": 0, "source_offsets_lost": 0}
        assert report["counted_events"] + report["late_dropped"] <= produced, f"counted twice: {_progress(worker)}"
        assert report["source_offsets_lost"] == 0, _progress(worker)
        if report["counted_events"] != produced:
            since.clear()
            return False
        since.append(time.monotonic())
        return since[-1] - since[0] >= 3

    wait_for(settled, timeout=timeout, what=what, on_timeout=lambda: _progress(worker))


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[[Settings], Worker]]:
    workers: list[Worker] = []

    def start(settings: Settings) -> Worker:
        # Not waited for: it may wait for its broker, or refuse to start.
        workers.append(Worker(settings, tmp_path / f"spawned-{len(workers)}.log"))
        return workers[-1]

    yield start
    for worker in workers:
        worker.stop(signal.SIGKILL)


def _exits_on_sigterm_within_seconds(worker: Worker, state: str) -> None:
    worker.process.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    try:
        worker.process.wait(timeout=SIGTERM_SECONDS)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the worker ignored SIGTERM for {SIGTERM_SECONDS} s {state}\n{worker.log()}")
    log.info("worker stopped %.1f s after SIGTERM %s (exit %s)", time.monotonic() - sent, state,
             worker.process.returncode)


def _running_with_records(settings: Settings, start_worker: Any, n: int) -> Worker:
    worker = start_worker(settings)
    wait_for(lambda: _ready(worker) == 200, timeout=90, what="/ready", on_timeout=lambda: _progress(worker))
    asyncio.run(produce(settings, _records(0, n)))
    _counts_everything_once(worker, n, "the first records")
    return worker


@pytest.mark.timeout(300)
def test_a_broker_frozen_for_70_s_is_survived_without_a_restart(isolated_settings, start_worker, broker) -> None:
    worker = _running_with_records(isolated_settings(**OUTAGE), start_worker, 2000)
    bystander = _running_with_records(isolated_settings(), start_worker, 100)

    asyncio.run(produce(worker.settings, _records(2000, 2000)))
    broker.freeze()  # while the worker reads them: transactions open, heartbeats due
    frozen_at = time.monotonic()
    wait_for(lambda: _ready(worker) == 503, timeout=30, what="/ready to fail while the broker is frozen",
             on_timeout=lambda: _progress(worker))
    wait_for(lambda: time.monotonic() - frozen_at >= 25, timeout=30, interval=1, what="25 s of freeze")
    _exits_on_sigterm_within_seconds(bystander, "while the broker is frozen")
    wait_for(lambda: time.monotonic() - frozen_at >= 70, timeout=80, interval=1, what="70 s of freeze")
    assert _ready(worker) == 503 and worker.process.poll() is None, _progress(worker)
    broker.thaw()

    wait_for(lambda: _ready(worker) == 200, timeout=180, what="/ready after the freeze",
             on_timeout=lambda: _progress(worker))
    asyncio.run(produce(worker.settings, _records(4000, 2000)))
    _counts_everything_once(worker, 6000, "every record counted once, by the same process")
    assert worker.process.poll() is None, _progress(worker)


@pytest.mark.timeout(300)
def test_a_broker_stopped_and_started_again_is_survived_without_a_restart(isolated_settings, start_worker,
                                                                          broker) -> None:
    worker = _running_with_records(isolated_settings(**OUTAGE), start_worker, 2000)
    bystander = _running_with_records(isolated_settings(), start_worker, 100)

    asyncio.run(produce(worker.settings, _records(2000, 2000)))
    broker.stop()
    stopped_at = time.monotonic()
    wait_for(lambda: _ready(worker) == 503, timeout=30, what="/ready to fail while the broker is stopped",
             on_timeout=lambda: _progress(worker))
    _exits_on_sigterm_within_seconds(bystander, "while the broker is stopped")
    # Longer than the session timeout (20 s): the worker joins its groups anew when the broker is back.
    wait_for(lambda: time.monotonic() - stopped_at >= 25, timeout=40, interval=1, what="25 s of outage")
    assert _ready(worker) == 503 and worker.process.poll() is None, _progress(worker)
    broker.start()

    wait_for(lambda: _ready(worker) == 200, timeout=180, what="/ready after the broker's start",
             on_timeout=lambda: _progress(worker))
    asyncio.run(produce(worker.settings, _records(4000, 2000)))
    _counts_everything_once(worker, 6000, "every record counted once, by the same process")
    assert worker.process.poll() is None, _progress(worker)


def _fence(settings: Settings) -> None:
    """Fence every transactional producer of the worker, as the broker does when it aborts a transaction that
    outlived the transaction timeout (and as a worker taking a partition over does): a new epoch per id."""
    async def fence() -> None:
        for stage in ("users", "initiatives"):
            for p in range(settings.topic_partitions):
                producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap,
                                            transactional_id=f"{settings.app_id}-{stage}-{p}")
                await producer.start()
                await producer.stop()

    asyncio.run(fence())


@pytest.mark.timeout(180)
def test_fenced_producers_are_replaced_without_a_restart(isolated_settings, start_worker) -> None:
    worker = _running_with_records(isolated_settings(**OUTAGE), start_worker, 2000)
    asyncio.run(produce(worker.settings, _records(2000, 2000)))
    _fence(worker.settings)  # while the worker's transactions over these records are open
    _counts_everything_once(worker, 4000, "every record counted once after the fencing, by the same process")
    log_text = worker.log_path.read_text(errors="replace")
    assert "ProducerFenced" in log_text and worker.process.poll() is None, _progress(worker)
    asyncio.run(produce(worker.settings, _records(4000, 1000)))
    _counts_everything_once(worker, 5000, "the records after the fencing")


def _worker_topics(settings: Settings) -> list[str]:
    async def listed() -> list[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        await admin.start()
        try:
            return sorted(t for t in await admin.list_topics()
                          if t.startswith(f"{settings.topic_prefix}.") or t.startswith(settings.app_id))
        finally:
            await admin.close()

    return asyncio.run(listed())


def _stops_with_one_line(worker: Worker, timeout: float, what: str) -> str:
    try:
        worker.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the worker did not stop within {timeout:.0f} s {what}\n{worker.log()}")
    last = worker.log_path.read_text(errors="replace").strip().splitlines()[-1]
    assert worker.process.returncode == 2 and last.startswith("pmon worker: error: "), \
        f"exit {worker.process.returncode}\n{worker.log()}"
    return last


@pytest.mark.timeout(300)
def test_a_broker_back_empty_stops_the_worker_with_one_line_and_recreates_nothing(isolated_settings, start_worker,
                                                                                   broker) -> None:
    worker = _running_with_records(isolated_settings(), start_worker, 500)
    broker.renew()
    line = _stops_with_one_line(worker, 60, "after its broker came back empty")
    assert "another Kafka cluster" in line and "the worker stops rather than recreate them" in line, line
    assert _worker_topics(worker.settings) == [], "nothing of the worker's was created on the new cluster"


@pytest.mark.timeout(120)
def test_the_worker_stops_when_its_topics_are_deleted_under_it(isolated_settings, start_worker) -> None:
    worker = _running_with_records(isolated_settings(log_level="INFO"), start_worker, 500)
    settings = worker.settings

    names = _worker_topics(settings)

    async def delete() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        await admin.start()
        try:
            await admin.delete_topics(names)
        finally:
            await admin.close()

    asyncio.run(delete())
    line = _stops_with_one_line(worker, 60, "after its topics were deleted")
    assert "changed under it" in line and f"{settings.topic('engagement')} is missing" in line, line
    assert _worker_topics(settings) == [], "the worker recreated none of them"


def _create(settings: Settings, topics: list[NewTopic]) -> None:
    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        await admin.start()
        try:
            await admin.create_topics(topics)
        finally:
            await admin.close()

    asyncio.run(create())


@pytest.mark.timeout(120)
def test_the_worker_refuses_to_start_on_topics_that_do_not_match(isolated_settings, tmp_path) -> None:
    narrow = isolated_settings()
    _create(narrow, [NewTopic(narrow.topic("engagement"), 1, 1)])
    refused = subprocess.run([str(PMON), "worker"], env=pmon_env(narrow), capture_output=True, text=True,
                             timeout=60, cwd=tmp_path)
    line = one_line(refused.stderr)
    assert refused.returncode == 2 and line.startswith("pmon worker: error: the topics at "), refused.stderr
    assert f"{narrow.topic('engagement')} has 1 partition, not PMON_TOPIC_PARTITIONS=2" in line, line

    uncompacted = isolated_settings()
    changelog = f"{uncompacted.app_id}-users-changelog"
    _create(uncompacted, [NewTopic(changelog, 2, 1)])
    refused = subprocess.run([str(PMON), "worker"], env=pmon_env(uncompacted), capture_output=True, text=True,
                             timeout=60, cwd=tmp_path)
    line = one_line(refused.stderr)
    assert refused.returncode == 2 and f"{changelog} is not compacted (cleanup.policy=delete)" in line, line


@pytest.mark.timeout(200)
def test_a_worker_started_before_its_broker_waits_for_it_then_runs(isolated_settings, spawn, broker) -> None:
    broker.stop()
    waiting = spawn(isolated_settings(ready_fetch_seconds=3))
    impatient = spawn(isolated_settings(broker_wait_seconds=3))
    terminated = spawn(isolated_settings())
    wait_for(lambda: "waiting for it" in waiting.log_path.read_text(errors="replace"), timeout=30,
             what="the worker to say it waits for its broker", on_timeout=waiting.log)

    line = _stops_with_one_line(impatient, 30, "past PMON_BROKER_WAIT_SECONDS")
    assert f"no Kafka broker at {impatient.settings.kafka_bootstrap}" in line, line
    _exits_on_sigterm_within_seconds(terminated, "while it waits for its broker")

    broker.start()
    wait_for(lambda: _ready(waiting) == 200, timeout=120, what="the waiting worker to start and be ready",
             on_timeout=lambda: _progress(waiting))
    asyncio.run(produce(waiting.settings, _records(0, 500)))
    _counts_everything_once(waiting, 500, "the records, by the worker that waited")
