"""Fixtures: one Kafka broker per session, uuid-named topics and groups per test, worker processes (on the
harness the benchmarks share, `pmon_harness`), and one embedded replay of the demo's program that the
report's and the dashboard's tests read.

The broker is the project's own (`scripts/kafka-local.sh`): `make test` starts
it; when pytest runs alone and none answers, the session starts one and stops
it at the end. Integration tests never skip for want of a broker.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import pmon_harness
from monitor.settings import Settings
from pmon_harness import Worker

ROOT = Path(__file__).resolve().parents[1]


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


@pytest.fixture
def isolated_settings(kafka_bootstrap: str, tmp_path: Path) -> Callable[..., Settings]:
    """Settings with uuid-named topics and app id, a free web port, a temporary plan dir and a random pseudonym
    key of the test (as in production: the worker refuses the development key)."""
    key = secrets.token_hex(16)

    def make(**overrides: Any) -> Settings:
        return pmon_harness.isolated_settings(kafka_bootstrap, tmp_path, tag="test",
                                              **{"topic_partitions": 2, "pseudonym_key": key, **overrides})

    return make


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[[Settings], Worker]]:
    """Start a `pmon worker` on the settings and wait until it serves; every one is stopped after the test."""
    workers: list[Worker] = []

    def start(settings: Settings) -> Worker:
        __tracebackhide__ = True
        workers.append(pmon_harness.start_worker(settings, tmp_path / f"worker-{len(workers)}.log"))
        return workers[-1]

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


@pytest.fixture(scope="session")
def demo_stage(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Four days of the demo's program with the demo's experiment plans, replayed embedded once a session (about
    30 s): every initiative has incidents, most an experiment. Read it; do not change it."""
    from cli.main import _encoded
    from simulation.simulator import SimulationSpec, demo_program, simulate
    from streams.embedded import EmbeddedDriver

    spec = SimulationSpec(seed=7, days=4, initiatives=demo_program(4))
    planned = {i.name: dict(zip(i.variants, i.planned_allocation, strict=True))
               for i in spec.initiatives if i.experiment}
    experiments = {i.experiment: {"allocation": planned[i.name],
                                  "success_metrics": [{"metric": "conversions_per_user"}]}
                   for i in spec.initiatives if i.experiment}
    settings = Settings(plan_dir=tmp_path_factory.mktemp("plans"), log_level="WARNING", allocations=planned,
                        experiments=experiments, alert_threshold=0.2)
    driver = EmbeddedDriver(settings, replay=True)
    asyncio.run(driver.run(_encoded(simulate(spec))))
    return driver.initiative_stage
