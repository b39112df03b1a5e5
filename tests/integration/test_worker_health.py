"""`/ready` tells the truth about the broker: unready while it is frozen, ready again after, and the worker goes on
counting without a restart, nothing lost."""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from monitor.events import EngagementEvent, encode
from pmon_harness import wait_for
from streams.kafka_io import produce
from tests.helpers import T0, http_json

pytestmark = [pytest.mark.kafka, pytest.mark.broker_faults]


@pytest.fixture
def frozen_broker(kafka_bootstrap: str) -> Iterator[int]:
    """The pid of the session's broker (scripts/kafka-local.sh's); it is thawed whatever the test's outcome."""
    port = kafka_bootstrap.rpartition(":")[2]
    pid_file = Path(os.environ.get("PMON_KAFKA_RUN_DIR") or Path(tempfile.gettempdir()) / f"pmon-kafka-{port}") \
        / "kafka.pid"
    assert pid_file.is_file(), f"no pid file at {pid_file}: the broker is not scripts/kafka-local.sh's"
    pid = int(pid_file.read_text().split()[0])
    yield pid
    os.kill(pid, signal.SIGCONT)


def _records(first: int, n: int) -> list[tuple[str, bytes, bytes]]:
    return [("engagement", f"health-user-{i}".encode(), encode(EngagementEvent(
        event_id=f"h-{i}", event_type="exposure", event_time=T0 + timedelta(seconds=i), user_id=f"health-user-{i}",
        initiative="Health H", profile="new_user", channel="web", variant="control"))) for i in range(first, first + n)]


def test_ready_goes_unready_while_the_broker_is_frozen_and_ready_after(isolated_settings, start_worker,
                                                                        frozen_broker) -> None:
    settings = isolated_settings(ready_fetch_seconds=3)
    worker = start_worker(settings)
    ready = lambda: http_json(f"{worker.url}/ready")  # noqa: E731
    wait_for(lambda: ready()[0] == 200, timeout=90, what="/ready", on_timeout=lambda: f"{ready()}\n{worker.log()}")
    asyncio.run(produce(settings, _records(0, 100)))
    wait_for(lambda: worker.records_seen("engagement") == 100, timeout=60, what="the first 100 records",
             on_timeout=worker.log)

    os.kill(frozen_broker, signal.SIGSTOP)
    _status, body = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(ready()), timeout=60,
                            what="/ready to fail while the broker is frozen", on_timeout=lambda: str(ready()))
    assert any("no fetch answered" in reason for reason in body["reasons"]), body
    assert http_json(f"{worker.url}/health") == (200, {"status": "alive"}), "alive though not ready"
    assert "pmon_ready 0.0" in worker.metrics_text()

    os.kill(frozen_broker, signal.SIGCONT)
    wait_for(lambda: ready()[0] == 200, timeout=120, what="/ready to recover with the broker",
             on_timeout=lambda: f"{ready()}\n{worker.log()}")
    asyncio.run(produce(settings, _records(100, 100)))
    wait_for(lambda: worker.records_seen("engagement") == 200, timeout=120,
             what="the worker to go on counting without a restart", on_timeout=worker.log)
    assert worker.process.poll() is None
