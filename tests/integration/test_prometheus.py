"""The worker as Prometheus sees it: every documented metric on /metrics with its type, cardinality bounded after
10,000 distinct users, /health and /ready; and a real Prometheus (Debian's), scraping a real worker on the real
broker with the project's rules, fires PmonConsentViolation for an injected violation."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from monitor.events import ConsentEvent, EngagementEvent, encode
from monitor.metrics import metric_reference
from pmon_harness import free_port, wait_for
from streams.kafka_io import produce
from tests.helpers import T0, consent_incidents, http_json

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[2]
USERS = 10_000


def _engagement(n: int, later: timedelta = timedelta(0)) -> tuple[str, bytes, bytes]:
    user = f"metric-user-{n:05d}"
    return "engagement", user.encode(), encode(EngagementEvent(
        event_id=f"m-{n}-{later}", event_type="exposure", event_time=T0 + later + timedelta(seconds=n % 3600),
        user_id=user,
        initiative="Metrics M", profile="new_user", channel=("web", "email")[n % 2], variant="control"))


def _samples(text: str) -> dict[str, list[str]]:
    """Metric family -> its sample lines (by the `# TYPE` line each family opens with)."""
    families: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            current = line.split()[2]
            families[current] = []
        elif line and not line.startswith("#") and current is not None:
            families[current].append(line)
    return families


def test_metrics_health_and_bounded_cardinality_after_ten_thousand_users(isolated_settings, start_worker) -> None:
    settings = isolated_settings()
    worker = start_worker(settings)
    assert http_json(f"{worker.url}/health") == (200, {"status": "alive"})
    wait_for(lambda: http_json(f"{worker.url}/ready")[0] == 200, timeout=90,
             what="/ready to answer 200", on_timeout=lambda: f"{http_json(worker.url + '/ready')}\n{worker.log()}")
    # An hour of 10,000 users, then a few records two hours on (on every partition) to close that hour.
    closing = [_engagement(n, later=timedelta(hours=2)) for n in range(20)]
    asyncio.run(produce(settings, [_engagement(n) for n in range(USERS)] + closing))
    wait_for(lambda: worker.records_seen("engagement") == USERS + len(closing), timeout=180,
             what=f"{USERS:,} engagement records", on_timeout=lambda: f"{worker.records_seen('engagement')}")
    wait_for(lambda: "pmon_kpi{" in worker.metrics_text(), timeout=60, what="the closed hour's KPIs",
             on_timeout=worker.log)
    text = worker.metrics_text()
    families = _samples(text)
    for name, kind, _labels, _ in metric_reference():
        assert name in families, f"{name} is documented but not on /metrics"
        # The text format has no info type: an info metric is a gauge of value 1 with its labels.
        assert f"# TYPE {name} {'gauge' if kind == 'info' else kind}" in text, f"{name} is not a {kind}"
    assert "metric-user" not in text, "a user id in a label"
    bounded = {"pmon_consumer_lag": 2 * 3 * settings.topic_partitions,   # 2 groups, their topics, partitions
               "pmon_kpi": 2 * 4, "pmon_state_entries": 20, "pmon_event_time_lag_seconds": 1}
    for family, bound in bounded.items():
        assert 0 < len(families[family]) <= bound, f"{family}: {len(families[family])} series\n{families[family]}"
    lag = [line for line in families["pmon_consumer_lag"] if "engagement" in line]
    assert lag and all(line.endswith(" 0.0") for line in lag), f"caught up, yet behind: {lag}"
    users = [line for line in families["pmon_state_entries"] if "users" in line]
    assert users == ['pmon_state_entries{table="users"} 10000.0'], users


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Any]:
    """A factory: a real Prometheus scraping the given worker every second with the project's rules."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus is missing: `make test` installs Debian's prometheus package"
    started: list[subprocess.Popen[bytes]] = []

    def start(worker_port: int) -> str:
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(json.dumps({   # JSON is YAML
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ROOT / "deploy" / "alert-rules.yml")],
            "scrape_configs": [{"job_name": "pmon-worker", "static_configs": [
                {"targets": [f"127.0.0.1:{worker_port}"]}]}]}))
        log = (tmp_path / "prometheus.log").open("wb")
        process = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                    f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
        started.append(process)
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            if process.poll() is not None:
                pytest.fail(f"prometheus exited: {(tmp_path / 'prometheus.log').read_text()[-3000:]}")
            try:
                return urllib.request.urlopen(f"{url}/-/ready", timeout=2).status == 200
            except OSError:
                return False

        wait_for(ready, timeout=60, what="prometheus to be ready",
                 on_timeout=lambda: (tmp_path / "prometheus.log").read_text()[-3000:])
        return url

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=30)


def _api(url: str, path: str, **query: str) -> Any:
    with urllib.request.urlopen(f"{url}/api/v1/{path}?{urllib.parse.urlencode(query)}", timeout=5) as response:
        return json.loads(response.read())["data"]


def _firing(url: str, name: str) -> list[dict[str, Any]]:
    return [a for a in _api(url, "alerts")["alerts"] if a["labels"]["alertname"] == name and a["state"] == "firing"]


def test_a_consent_violation_fires_its_alert_in_a_real_prometheus(isolated_settings, start_worker,
                                                                   prometheus) -> None:
    settings = isolated_settings()
    worker = start_worker(settings)
    url = prometheus(settings.web_port)
    wait_for(lambda: _api(url, "query", query='pmon_ready{job="pmon-worker"} == 1')["result"], timeout=90,
             what="Prometheus to scrape a ready worker", on_timeout=lambda: str(_api(url, "targets")))
    assert not _firing(url, "PmonConsentViolation")

    user = "prom-user-0001"
    asyncio.run(produce(settings, [("consent", user.encode(), encode(ConsentEvent(
        event_id="c-prom-1", event_time=T0, user_id=user, purpose="personalization", status="revoked",
        source="privacy_center", region="EU")))]))
    wait_for(lambda: worker.records_seen("consent") == 1, timeout=60, what="the revocation", on_timeout=worker.log)
    asyncio.run(produce(settings, [("engagement", user.encode(), encode(EngagementEvent(
        event_id="x-prom-1", event_type="exposure", event_time=T0 + timedelta(minutes=5), user_id=user,
        initiative="Prom P", profile="new_user", channel="web", variant="treatment")))]))
    wait_for(lambda: consent_incidents(settings).get("Prom P"), timeout=60, what="the consent_violation incident",
             on_timeout=worker.log)
    [alert] = wait_for(lambda: _firing(url, "PmonConsentViolation"), timeout=60,
                       what="PmonConsentViolation to fire in Prometheus",
                       on_timeout=lambda: f"{_api(url, 'alerts')}\n{worker.metrics_text()[-2000:]}")
    assert alert["labels"]["severity"] == "critical" and alert["labels"]["owner"] == "Data Privacy Lead"
