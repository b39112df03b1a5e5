"""`pmon worker` as a subprocess, for the tests and the benchmarks: the one harness both use.

It starts a worker on settings of its own (uuid-named topics and app id, a free web port, a random pseudonym
key), waits for it with a deadline and says in the failure how far it got, reads its `/metrics` and
`/pmon/report/`, and stops it as an operator would (SIGTERM, SIGKILL after a grace).

Why a top-level module, beside `pmon_errors.py`: `tests/` and `bench/` both need it, and `bench/` must not
import from `tests/` (a benchmark would depend on pytest's fixtures and layout); the packages (the pure ones,
`streams/`, `cli/`) are what ships, and subprocess and polling machinery has no place there. It is not installed with
the package: the tests run from the repository root (pytest puts it on the path), and the benchmarks put the
root on `sys.path` themselves. It uses the standard library, `Settings` and prometheus-client's parser; no
faust or aiokafka (only `streams/` imports those).

>>> pmon_env(Settings(web_port=8123), {"HOME": "/h"})["PMON_WEB_PORT"]
'8123'
"""

from __future__ import annotations

import logging
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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import orjson

from monitor.settings import Settings
from pmon_errors import PmonError

log = logging.getLogger(__name__)

# The `pmon` of the running interpreter's environment (a venv's bin/), not whatever is first on PATH.
PMON = Path(sys.executable).parent / "pmon"
READY_SECONDS = 90.0  # a cold worker on a shared 2-core machine: imports, group joins, topic checks
STOP_GRACE_SECONDS = 30.0  # Faust's graceful shutdown commits and leaves its groups within this


class HarnessError(PmonError):
    """Root of the harness's errors."""


class WaitTimeout(HarnessError):
    """A condition was not met by its deadline; the message names it and the progress made."""


class WorkerExited(HarnessError):
    """The worker process ended while it was waited for; the message holds the end of its log."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS's choice)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def isolated_settings(bootstrap: str, workdir: Path, *, tag: str = "t", **overrides: Any) -> Settings:
    """Settings no other run shares: topics `<tag><uuid>.*`, app id `pmon-<tag>-<uuid>`, a free web port, plans
    under `workdir`, WARNING logs, a random pseudonym key (the worker refuses the development key)."""
    run = uuid.uuid4().hex[:10]
    values: dict[str, Any] = {
        "kafka_bootstrap": bootstrap,
        "topic_prefix": f"{tag}{run}",
        "app_id": f"pmon-{tag}-{run}",
        "web_port": free_port(),
        "plan_dir": workdir / f"plans-{run}",
        "log_level": "WARNING",
        "pseudonym_key": secrets.token_hex(16),
    }
    values.update(overrides)
    return Settings(**values)


def pmon_env(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a `pmon` process reads `settings` from: `base` (default: ours) with every PMON_* set."""
    return settings.as_environment(dict(os.environ if base is None else base))


def wait_for(
    condition: Callable[[], Any],
    *,
    timeout: float,
    what: str,
    interval: float = 0.5,
    on_timeout: Callable[[], str] = lambda: "",
) -> Any:
    """Poll `condition` until it returns something truthy and return that; at the deadline raise WaitTimeout
    naming `what`, followed by `on_timeout()` (the progress made, a log tail).

    >>> wait_for(lambda: 3, timeout=1, what="three")
    3
    >>> wait_for(lambda: 0, timeout=0, interval=0, what="records", on_timeout=lambda: "0 of 5 received")
    Traceback (most recent call last):
    pmon_harness.WaitTimeout: timed out after 0 s waiting for records
    0 of 5 received
    """
    __tracebackhide__ = True  # pytest: the failure is the caller's line, not this loop
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout:.0f} s waiting for {what}\n{on_timeout()}")
        time.sleep(interval)  # polling interval, not synchronisation


class Worker:
    """One `pmon worker` subprocess (or `command`, in the same environment), its log in `log_path`, its working
    directory the log's (Faust writes its `<app id>-data` directory there)."""

    def __init__(self, settings: Settings, log_path: Path, *, command: Sequence[str] | None = None) -> None:
        self.settings = settings
        self.log_path = log_path
        self.command = list(command) if command is not None else [str(PMON), "worker"]
        self._log: IO[bytes] = log_path.open("wb")
        self.process = subprocess.Popen(
            self.command,
            env=pmon_env(settings),
            cwd=log_path.parent,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.started = time.perf_counter()
        self.stop_seconds: float | None = None  # from the signal to the exit, once stopped; None when killed
        self.killed = False  # it outlived its grace and got SIGKILL

    @property
    def url(self) -> str:
        return f"http://{self.settings.web_host}:{self.settings.web_port}"

    # ----------------------------------------------------------------------- the process
    def alive(self) -> bool:
        return self.process.poll() is None

    def check_alive(self) -> None:
        """Raise WorkerExited, with the end of the log, when the process has ended."""
        if self.process.poll() is not None:
            raise WorkerExited(
                f"the worker exited with code {self.process.returncode}; the end of its log "
                f"({self.log_path}):\n{self.log()}"
            )

    def log(self, tail: int = 5000) -> str:
        """The last `tail` characters of the worker's output."""
        return self.log_path.read_text(errors="replace")[-tail:]

    def wait(
        self,
        condition: Callable[[], Any],
        *,
        timeout: float,
        what: str,
        interval: float = 0.5,
        on_timeout: Callable[[], str] | None = None,
    ) -> Any:
        """`wait_for`, failing at once with WorkerExited when the process ends meanwhile; the failure shows the
        end of the log unless `on_timeout` says otherwise."""
        __tracebackhide__ = True

        def met() -> Any:
            self.check_alive()
            return condition()

        return wait_for(met, timeout=timeout, what=what, interval=interval, on_timeout=on_timeout or self.log)

    def wait_ready(self, timeout: float = READY_SECONDS) -> Worker:
        """Until the worker's web server answers /metrics."""
        __tracebackhide__ = True

        def serves() -> bool:
            try:
                self.metrics_text()
            except OSError:
                return False  # not serving yet
            return True

        self.wait(serves, timeout=timeout, what="the worker's web server")
        return self

    def stop(self, sig: int = signal.SIGTERM, grace: float = STOP_GRACE_SECONDS) -> int | None:
        """Send `sig` (SIGTERM: Faust's graceful shutdown), SIGKILL after `grace` seconds; the exit code."""
        if self.process.poll() is None:
            asked = time.perf_counter()
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=grace)
                self.stop_seconds = time.perf_counter() - asked
            except subprocess.TimeoutExpired:
                log.warning(
                    "the worker (pid %d) did not stop %.0f s after signal %d; killing it", self.process.pid, grace, sig
                )
                self.killed = True
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()
        return self.process.returncode

    # ----------------------------------------------------------------------- the web views
    def get(self, path: str, query: Mapping[str, str] | None = None, *, timeout: float = 10.0) -> bytes:
        url = f"{self.url}{path}?{urllib.parse.urlencode(query)}" if query else f"{self.url}{path}"
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bytes(response.read())

    def get_json(self, path: str, **query: str) -> Any:
        return orjson.loads(self.get(path, query))

    def metrics_text(self) -> str:
        return self.get("/metrics").decode()

    def samples(self) -> list[tuple[str, dict[str, str], float]]:
        """Every sample of /metrics: (name, labels, value)."""
        from prometheus_client.parser import text_string_to_metric_families

        return [
            (s.name, s.labels, s.value)
            for family in text_string_to_metric_families(self.metrics_text())
            for s in family.samples
        ]

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples called `name` that carry `labels`; 0 when there is none (yet)."""
        return sum(
            value
            for sample, have, value in self.samples()
            if sample == name and all(have.get(k) == v for k, v in labels.items())
        )

    def records_seen(self, topic: str) -> float:
        """Records of `topic` the worker's stage 1 has received."""
        return self.metric("pmon_records_total", topic=topic)

    def report(self, initiative: str, *, window: str = "30d", detail: str = "full") -> dict[str, Any] | None:
        """The initiative's report; None while the worker has not seen it (404)."""
        try:
            return dict(self.get_json("/pmon/report/", initiative=initiative, window=window, detail=detail))
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def counted(self, initiative: str) -> int:
        """Engagement events stage 2 has counted for `initiative`, late ones included (its report)."""
        report = self.report(initiative)
        return 0 if report is None else int(report["counted_events"]) + int(report["late_dropped"])


def start_worker(
    settings: Settings, log_path: Path, *, command: Sequence[str] | None = None, ready_timeout: float = READY_SECONDS
) -> Worker:
    """A worker whose web server answers; stopped again if it does not in time."""
    worker = Worker(settings, log_path, command=command)
    try:
        worker.wait_ready(ready_timeout)
    except BaseException:
        worker.stop()
        raise
    return worker
