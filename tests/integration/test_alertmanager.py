"""PMON_ALERTMANAGER_URL: incidents reach people through a real Alertmanager (Debian's prometheus-alertmanager).

Alertmanager runs with its own config in tmp_path, routing every alert to a webhook receiver this test
serves on loopback; the test reads what a Slack, PagerDuty or email receiver would have been sent.
"""

from __future__ import annotations

import asyncio
import doctest
import shutil
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

import monitor.alertmanager
from incidents.model import IncidentAction, IncidentEvent
from monitor.alertmanager import alerts_of, firing_alerts, open_incidents
from monitor.emitter import Emitter
from monitor.events import DeadLetter, EngagementEvent, encode
from monitor.initiative_stage import Outputs
from monitor.metrics import PipelineMetrics
from monitor.settings import Settings
from pmon_harness import free_port, wait_for
from streams.alertmanager import AlertmanagerClient
from streams.embedded import EmbeddedDriver
from streams.kafka_io import produce
from tests.conftest import consume
from tests.helpers import CLEAN, CONVERSIONS, DETECTION, DROP, EXPOSURES, INITIATIVE, threshold_series, two_days_ago

ALERTMANAGER = shutil.which("prometheus-alertmanager") or "/usr/bin/prometheus-alertmanager"
SERIES = f"{INITIATIVE}|p|web|control"


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _threshold(incidents: list[IncidentEvent], transition: str) -> IncidentEvent:
    [found] = [e for e in incidents if e.kind == "kpi_threshold" and e.transition == transition]
    return found


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> EmbeddedDriver:
    """The threshold test's hours in one process: a kpi_threshold incident opens, then resolves."""
    driver = EmbeddedDriver(Settings(plan_dir=tmp_path_factory.mktemp("plans"), alert_threshold=0.1, **DETECTION))
    asyncio.run(driver.run(threshold_series(two_days_ago())))
    return driver


# -------------------------------------------------------------------------------------------- the mapping
def test_the_module_doctests_pass() -> None:
    assert doctest.testmod(monitor.alertmanager).failed == 0


def test_an_incident_maps_to_an_alert_that_fires_then_ends_at_its_resolution(replayed: EmbeddedDriver) -> None:
    opened, resolved = (_threshold(replayed.run_result.incidents, t) for t in ("opened", "resolved"))
    now, lease = datetime.now(timezone.utc), timedelta(minutes=4)
    [firing] = alerts_of(opened, known=None, now=now, lease=lease)
    assert firing["labels"] == {"alertname": "PmonIncident", "incident_id": opened.incident_id,
                                "kind": "kpi_threshold", "severity": "warning", "initiative": INITIATIVE,
                                "owner_role": "Testing Lead"}
    notes = firing["annotations"]
    assert notes["series"] == SERIES and notes["playbook"] == opened.playbook and notes["measure"] == "cvr"
    assert float(notes["observed"]) == pytest.approx(opened.evidence.observed, rel=1e-5)
    assert float(notes["expected"]) == pytest.approx(opened.evidence.expected, rel=1e-5)
    assert all(isinstance(v, str) for v in notes.values()), "Alertmanager annotations are strings"
    assert _at(firing["startsAt"]) == opened.occurred_at
    assert _at(firing["endsAt"]) == now + lease, "firing: a lease ahead of the wall clock, refreshed by the worker"

    [ended] = alerts_of(resolved, known=(opened, opened), now=now, lease=lease)
    assert ended["labels"] == firing["labels"], "the same alert for Alertmanager: its labels identify it"
    assert (_at(ended["startsAt"]), _at(ended["endsAt"])) == (opened.occurred_at, resolved.occurred_at)


def test_the_refresh_re_sends_what_the_plan_holds_open_and_not_what_a_person_resolved(tmp_path: Path) -> None:
    driver = EmbeddedDriver(Settings(plan_dir=tmp_path, alert_threshold=0.1, **DETECTION))
    asyncio.run(driver.run(threshold_series(two_days_ago(), after=0)))   # the drop lasts: the incident stays open
    state = driver.initiative_stage.state
    still_open = open_incidents(state.plans, state.incidents, [INITIATIVE])
    opened = _threshold(driver.run_result.incidents, "opened")
    assert opened.incident_id in [latest.incident_id for _, latest in still_open]
    now = datetime.now(timezone.utc)
    alerts = {a["labels"]["incident_id"]: a for a in firing_alerts(still_open, now=now, lease=timedelta(minutes=4))}
    assert _at(alerts[opened.incident_id]["endsAt"]) == now + timedelta(minutes=4)

    action = IncidentAction(event_id="a1", incident_id=opened.incident_id, initiative=INITIATIVE,
                            action="resolved", by="Ana Ortiz", at=now)
    stage = driver.initiative_stage
    [resolved] = stage.on_action(action).incidents
    stage.commit()
    after = open_incidents(state.plans, state.incidents, [INITIATIVE])
    assert opened.incident_id not in [latest.incident_id for _, latest in after], \
        "resolved by a person: no longer re-sent"
    # ... and the incidents topic says so, and the push ends the alert at once, not at its lease.
    assert (resolved.incident_id, resolved.transition, resolved.occurred_at) == (opened.incident_id, "resolved", now)
    assert resolved.evidence.detail["resolved_by"] == "Ana Ortiz" and resolved.event_id.endswith(":resolved:by-a1")
    [ended] = alerts_of(resolved, known=(opened, opened), now=now, lease=timedelta(minutes=4))
    assert _at(ended["endsAt"]) == now
    assert stage.on_action(action).incidents == [], "the same action again: no second transition"
    # The series recovering later resolves nothing more: a person did first.
    recovery = resolved.model_copy(update={"event_id": f"{opened.incident_id}:resolved:9", "evidence": opened.evidence})
    assert stage._fold(INITIATIVE, {}, until=now.timestamp(), direct=[recovery]).incidents == []


# ----------------------------------------------------------------------- a failing Alertmanager, no broker
def test_a_push_nobody_answers_is_retried_then_dead_lettered_and_raises_monitoring_degraded(
        tmp_path: Path, replayed: EmbeddedDriver) -> None:
    opened = _threshold(replayed.run_result.incidents, "opened")
    settings = Settings(plan_dir=tmp_path, alertmanager_url=f"http://127.0.0.1:{free_port()}", retry_limit=2)
    registry = CollectorRegistry()
    sent: list[tuple[str, bytes, bytes]] = []

    async def emit() -> None:
        client = AlertmanagerClient(settings.alertmanager_url, timeout_seconds=settings.alertmanager_timeout_seconds)
        emitter = Emitter(settings, PipelineMetrics(registry), send=lambda t, k, v: sent.append((t, k, v)),
                          alerts=client)
        try:
            await emitter.emit(Outputs(incidents=[opened]))
        finally:
            await client.close()

    asyncio.run(emit())
    assert [topic for topic, _, _ in sent] == ["incidents", "dead-letters", "incidents"]
    assert registry.get_sample_value("pmon_sink_retries_total", {"sink": "alertmanager"}) == 3, \
        "one try and retry_limit=2 retries"
    letter = DeadLetter.model_validate_json(sent[1][2])
    assert (letter.stage, letter.source_topic) == ("sink", "pmon.alertmanager")
    assert [a["labels"]["incident_id"] for a in orjson.loads(letter.raw())] == [opened.incident_id], \
        "the unsent alerts are kept whole, to be pushed again"
    degraded = IncidentEvent.model_validate_json(sent[2][2])
    assert (degraded.kind, degraded.series, degraded.evidence.detail["sink"]) == (
        "monitoring_degraded", ["alertmanager"], "alertmanager")


# -------------------------------------------------------------------------------- a real Alertmanager
class Webhook:
    """The receiver Alertmanager notifies: a loopback HTTP server in a thread, keeping every JSON body."""

    def __init__(self) -> None:
        self.notifications: list[dict[str, Any]] = []
        lock = threading.Lock()
        received = self.notifications

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = orjson.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                with lock:
                    received.append(body)
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # no line per request: the test reports what it received

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, name="webhook", daemon=True)
        self.thread.start()

    def alerts(self, incident_id: str, status: str) -> list[dict[str, Any]]:
        """The alerts of `incident_id` notified with `status` (firing, resolved), in order."""
        return [alert for n in list(self.notifications) for alert in n["alerts"]
                if alert["labels"].get("incident_id") == incident_id and alert["status"] == status]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Alertmanager:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    webhook: Webhook = field(repr=False)

    def ready(self) -> bool:
        if self.process.poll() is not None:
            pytest.fail(f"Alertmanager exited with {self.process.returncode}:\n{self.log()}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def active(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.url}/api/v2/alerts?active=true", timeout=5) as response:
            return orjson.loads(response.read())

    def received(self, status: str) -> float:
        """Alerts Alertmanager received with `status` (firing, resolved), from its own metrics."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as response:
            lines = response.read().decode().splitlines()
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines
                   if line.startswith("alertmanager_alerts_received_total{") and f'status="{status}"' in line)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def progress(self) -> str:
        """What a failure message needs: what Alertmanager holds, what the receiver got, Alertmanager's log."""
        try:
            held = [(a["labels"], a["status"]["state"], a["endsAt"]) for a in self.active()]
        except (OSError, urllib.error.URLError) as exc:
            held = [f"unreadable: {exc!r}"]
        got = [(n["status"], [(a["labels"].get("incident_id"), a["labels"].get("owner_role"), a["status"])
                              for a in n["alerts"]]) for n in self.webhook.notifications]
        return f"Alertmanager holds {held}\nthe receiver got {got}\n--- Alertmanager's log:\n{self.log()}"


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[Alertmanager]:
    webhook = Webhook()
    config = tmp_path / "alertmanager.yml"
    # Grouped per incident, flushed within a second so the test is quick; resolutions notified too.
    config.write_text(f"""
route:
  receiver: pmon-test
  group_by: ['incident_id']
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: pmon-test
    webhook_configs:
      - url: {webhook.url}
        send_resolved: true
""")
    port = free_port()
    log_path = tmp_path / "alertmanager.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [ALERTMANAGER, f"--config.file={config}", f"--storage.path={tmp_path / 'alertmanager-data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=", "--log.level=debug"],
            stdout=log_file, stderr=subprocess.STDOUT)
    manager = Alertmanager(f"http://127.0.0.1:{port}", process, log_path, webhook)
    try:
        wait_for(manager.ready, timeout=60, what="Alertmanager's /-/ready", on_timeout=manager.log)
        yield manager
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        webhook.stop()


def test_an_escalation_moves_the_alert_to_the_new_owner_and_ends_the_old_one(
        tmp_path: Path, replayed: EmbeddedDriver, alertmanager: Alertmanager) -> None:
    opened = _threshold(replayed.run_result.incidents, "opened")
    escalated = opened.model_copy(update={"transition": "escalated", "rung": 1, "severity": "critical",
                                          "owner": "Personalization Architect",
                                          "occurred_at": opened.occurred_at + timedelta(hours=6)})
    settings = Settings(plan_dir=tmp_path, alertmanager_url=alertmanager.url)
    committed: dict[str, tuple[IncidentEvent, IncidentEvent]] = {}

    async def emit(incident: IncidentEvent) -> None:
        client = AlertmanagerClient(alertmanager.url, timeout_seconds=settings.alertmanager_timeout_seconds)
        emitter = Emitter(settings, PipelineMetrics(CollectorRegistry()), send=lambda t, k, v: None, alerts=client,
                          known=committed.get)
        try:
            await emitter.emit(Outputs(incidents=[incident]))
        finally:
            await client.close()
        committed[incident.incident_id] = (committed.get(incident.incident_id, (incident,))[0], incident)

    webhook, incident_id = alertmanager.webhook, opened.incident_id
    asyncio.run(emit(opened))
    wait_for(lambda: webhook.alerts(incident_id, "firing"), timeout=60, what="the firing notification",
             on_timeout=alertmanager.progress)
    asyncio.run(emit(escalated))

    def handed_over() -> bool:
        ended = [a["labels"]["owner_role"] for a in webhook.alerts(incident_id, "resolved")]
        firing = [a["labels"]["owner_role"] for a in webhook.alerts(incident_id, "firing")]
        return ended == ["Testing Lead"] and "Personalization Architect" in firing

    wait_for(handed_over, timeout=60, what="the escalation's notification: the new owner firing, the old one ended",
             on_timeout=alertmanager.progress)
    assert [(a["labels"]["owner_role"], a["labels"]["severity"]) for a in alertmanager.active()] == [
        ("Personalization Architect", "critical")]


def _healthy_hours(t0: datetime, first: int, count: int) -> list[tuple[str, bytes, bytes]]:
    """Healthy hours from hour `first` of the threshold series, then events an hour later that close them."""
    records = []
    for hour in range(first, first + count):
        for i in range(EXPOSURES + CONVERSIONS):
            user = f"u{i % 5000}"
            event = EngagementEvent(event_id=f"healthy-{hour}-{i}", event_type="exposure" if i < EXPOSURES
                                    else "conversion", event_time=t0 + timedelta(hours=hour, seconds=i), user_id=user,
                                    initiative=INITIATIVE, profile="p", channel="web", variant="control")
            records.append(("engagement", user.encode(), encode(event)))
    closing = [EngagementEvent(event_id=f"healthy-close-{u}", event_type="exposure", user_id=f"u{u}",
                               initiative=INITIATIVE, event_time=t0 + timedelta(hours=first + count + 1), profile="p",
                               channel="web", variant="control") for u in range(10)]
    return records + [("engagement", event.user_id.encode(), encode(event)) for event in closing]


@pytest.mark.kafka
def test_the_worker_pages_through_alertmanager_then_sends_the_resolution(
        isolated_settings: Any, start_worker: Any, alertmanager: Alertmanager) -> None:
    # Checks every 5 s: the worker re-sends the open incident while the test runs (its lease is 20 s).
    settings = isolated_settings(alert_threshold=0.1, alertmanager_url=alertmanager.url, check_interval_seconds=5,
                                 **DETECTION)
    t0 = two_days_ago()
    # Clean hours, then the drop: it opens and stays open.
    asyncio.run(produce(settings, threshold_series(t0, after=0)))
    worker = start_worker(settings)
    webhook = alertmanager.webhook

    def incidents() -> list[IncidentEvent]:
        return [IncidentEvent.model_validate_json(m.value)
                for m in consume(settings, "incidents", want=10**6, timeout=3, settle=0)]

    def progress() -> str:
        return f"{alertmanager.progress()}\n--- worker's log:\n{worker.log()}"

    def of_threshold(transition: str) -> list[IncidentEvent]:
        return [e for e in incidents() if e.kind == "kpi_threshold" and e.transition == transition]

    [opened] = wait_for(lambda: of_threshold("opened"), timeout=240, what="the worker to open the incident",
                        on_timeout=progress)
    [firing] = wait_for(lambda: webhook.alerts(opened.incident_id, "firing"), timeout=120,
                        what=f"Alertmanager's firing notification of {opened.incident_id}", on_timeout=progress)
    assert firing["labels"] == {"alertname": "PmonIncident", "incident_id": opened.incident_id,
                                "kind": "kpi_threshold", "severity": "warning", "initiative": INITIATIVE,
                                "owner_role": "Testing Lead"}
    assert firing["annotations"]["series"] == SERIES
    assert _at(firing["startsAt"]) == opened.occurred_at
    wait_for(lambda: alertmanager.received("firing") >= 2, timeout=60, what="the worker to re-send the open incident",
             on_timeout=progress)

    # Healthy hours after the drop: recovery_span_buckets of them resolve the incident.
    asyncio.run(produce(settings, _healthy_hours(t0, first=CLEAN + DROP, count=4)))
    [resolved] = wait_for(lambda: of_threshold("resolved"), timeout=240, what="the worker to resolve the incident",
                          on_timeout=progress)
    [ended] = wait_for(lambda: webhook.alerts(opened.incident_id, "resolved"), timeout=120,
                       what=f"Alertmanager's resolved notification of {opened.incident_id}", on_timeout=progress)
    assert ended["labels"] == firing["labels"] and ended["fingerprint"] == firing["fingerprint"], \
        "one alert from opening to resolution: Alertmanager deduplicated on the incident's labels"
    assert _at(ended["endsAt"]) == resolved.occurred_at, "ended by the resolution, not by its lease running out"
    pages = [n["status"] for n in webhook.notifications if n["groupLabels"] == {"incident_id": opened.incident_id}]
    assert pages == ["firing", "resolved"], f"one page and one resolution, nothing else: {webhook.notifications}"
