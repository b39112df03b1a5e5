"""Fixtures: one Kafka broker per session, uuid-named topics and groups per test, worker processes.

The broker is the project's own (`scripts/kafka-local.sh`): `make test` starts
it; when pytest runs alone and none answers, the session starts one and stops
it at the end. Integration tests never skip for want of a broker.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from monitor.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
PMON = Path(sys.executable).parent / "pmon"


def _port_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.hookimpl(tryfirst=True)   # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Every test that reaches the broker is a `kafka` test, marked or not: `make test` runs those apart from the
    # pure ones, and the `broker_faults` ones (they freeze, stop or renew it) on a broker of their own.
    for item in items:
        if "kafka_bootstrap" in getattr(item, "fixturenames", ()) and not item.get_closest_marker("kafka"):
            item.add_marker(pytest.mark.kafka)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    bootstrap = os.environ.get("PMON_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    host, _, port = bootstrap.rpartition(":")
    started_here = False
    if not _port_answers(host, int(port)):
        env = {**os.environ, "PMON_KAFKA_PORT": port}
        subprocess.run(["bash", str(ROOT / "scripts" / "kafka-local.sh"), "up"], check=True, env=env)
        started_here = True
    yield bootstrap
    if started_here:
        subprocess.run(["bash", str(ROOT / "scripts" / "kafka-local.sh"), "down"], check=False,
                       env={**os.environ, "PMON_KAFKA_PORT": port})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def isolated_settings(kafka_bootstrap: str, tmp_path: Path) -> Callable[..., Settings]:
    """Settings with uuid-named topics and app id, a free web port, a temporary plan dir and a random pseudonym
    key of the test (as in production: the worker refuses the development key)."""
    key = secrets.token_hex(16)

    def make(**overrides: Any) -> Settings:
        run = uuid.uuid4().hex[:10]
        values: dict[str, Any] = {
            "kafka_bootstrap": kafka_bootstrap, "topic_prefix": f"t{run}", "app_id": f"pmon-test-{run}",
            "topic_partitions": 2, "web_port": free_port(), "plan_dir": tmp_path / f"plans-{run}",
            "log_level": "WARNING", "pseudonym_key": key,
        }
        values.update(overrides)
        return Settings(**values)

    return make


def settings_env(settings: Settings) -> dict[str, str]:
    return settings.as_environment(dict(os.environ))


@dataclass
class WorkerProcess:
    settings: Settings
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://{self.settings.web_host}:{self.settings.web_port}"

    def get_json(self, path: str, **query: str) -> Any:
        url = f"{self.url}{path}?{urllib.parse.urlencode(query)}" if query else f"{self.url}{path}"
        with urllib.request.urlopen(url, timeout=5) as response:
            return orjson.loads(response.read())

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as response:
            return response.read().decode()

    def report(self, initiative: str) -> dict[str, Any] | None:
        try:
            return self.get_json("/pmon/report/", initiative=initiative, window="30d", detail="full")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def wait_for(condition: Callable[[], Any], *, timeout: float, interval: float = 0.5, what: str,
              on_timeout: Callable[[], str] = lambda: "") -> Any:
    """Poll `condition` until it returns something truthy; fail with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{on_timeout()}")
        time.sleep(interval)  # polling interval, not synchronisation


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[[Settings], WorkerProcess]]:
    workers: list[WorkerProcess] = []

    def start(settings: Settings) -> WorkerProcess:
        log_path = tmp_path / f"worker-{len(workers)}.log"
        log_file = log_path.open("wb")
        process = subprocess.Popen([str(PMON), "worker"], env=settings_env(settings), stdout=log_file,
                                   stderr=subprocess.STDOUT, cwd=tmp_path)
        worker = WorkerProcess(settings, process, log_path)
        workers.append(worker)

        def ready() -> bool:
            if process.poll() is not None:
                pytest.fail(f"worker exited with {process.returncode}:\n{worker.log()}")
            try:
                worker.metrics_text()
                return True
            except OSError:
                return False

        wait_for(ready, timeout=90, what="the worker's web server", on_timeout=worker.log)
        return worker

    yield start
    for worker in workers:
        worker.stop()


async def _consume(settings: Settings, topic: str, *, want: int, timeout: float, settle: float) -> list[Any]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.kafka_bootstrap,
                                group_id=f"reader-{uuid.uuid4().hex[:8]}", auto_offset_reset="earliest",
                                enable_auto_commit=False, isolation_level="read_committed")
    await consumer.start()
    messages: list[Any] = []
    try:
        deadline = time.monotonic() + timeout
        while len(messages) < want and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for batch in batches.values():
                messages.extend(batch)
        # Whatever else arrives shortly after is there to be counted too.
        settle_until = time.monotonic() + settle
        while time.monotonic() < settle_until:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                messages.extend(batch)
    finally:
        await consumer.stop()
    return messages


def consume(settings: Settings, topic: str, *, want: int, timeout: float = 60, settle: float = 2.0) -> list[Any]:
    """Read a topic from the beginning with a plain aiokafka consumer until `want` records or the deadline."""
    return asyncio.run(_consume(settings, settings.topic(topic), want=want, timeout=timeout, settle=settle))


def consume_raw(settings: Settings, topic: str, *, timeout: float = 3) -> list[Any]:
    """Every record of a topic named in full (an internal topic, a changelog), read for `timeout` seconds."""
    return asyncio.run(_consume(settings, topic, want=10**9, timeout=timeout, settle=0))
