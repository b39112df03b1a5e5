"""The deployment files are checked, not trusted: promtool on the rules and their unit tests, every metric a rule
or a Grafana panel names is one the worker exports, and the compose file holds together."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from cli.docs import alert_rules
from monitor.metrics import metric_reference

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def _promtool(*args: str) -> str:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make test` installs Debian's prometheus package, which has it"
    done = subprocess.run([promtool, *args], cwd=DEPLOY, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"promtool {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_promtool_checks_the_rules_and_the_prometheus_config() -> None:
    assert "SUCCESS" in _promtool("check", "rules", "alert-rules.yml")
    assert "SUCCESS" in _promtool("check", "config", "prometheus.yml")


def test_amtool_checks_the_alertmanager_config() -> None:
    amtool = shutil.which("amtool")
    assert amtool, "amtool is missing: `make test` installs Debian's prometheus-alertmanager, which has it"
    done = subprocess.run([amtool, "check-config", "alertmanager.yml"], cwd=DEPLOY, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0 and "SUCCESS" in done.stdout, f"{done.stdout}\n{done.stderr}"


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    assert "SUCCESS" in _promtool("test", "rules", "alert-rules.test.yml")


def test_every_rule_has_a_unit_test() -> None:
    tests = yaml.safe_load((DEPLOY / "alert-rules.test.yml").read_text())["tests"]
    tested = {case["alertname"] for test in tests for case in test.get("alert_rule_test", [])}
    missing = [rule["alert"] for rule in alert_rules() if rule["alert"] not in tested]
    assert not missing, f"alert rules without a promtool test: {missing}"


def _exported() -> set[str]:
    names = set()
    for name, kind, _, _ in metric_reference():
        names.add(name)
        if kind == "histogram":
            names.update(name + suffix for suffix in HISTOGRAM_SUFFIXES)
    return names


def _named(expression: str) -> set[str]:
    return set(re.findall(r"\bpmon_[a-z0-9_]+", expression))


def test_every_metric_a_rule_names_is_exported() -> None:
    exported = _exported()
    for rule in alert_rules():
        unknown = _named(rule["expr"]) - exported
        assert not unknown, f"{rule['alert']} names metrics the worker does not export: {sorted(unknown)}"


def test_every_grafana_panel_queries_an_exported_metric() -> None:
    exported = _exported()
    dashboards = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
    assert dashboards
    for path in dashboards:
        panels = json.loads(path.read_text())["panels"]
        assert panels, path
        for panel in panels:
            for target in panel.get("targets", []):
                named = _named(target["expr"])
                assert named or "up{" in target["expr"], f"{path.name} {panel['title']!r}: no metric in its query"
                unknown = named - exported
                assert not unknown, f"{path.name} {panel['title']!r} queries unknown metrics {sorted(unknown)}"


def test_the_compose_file_mounts_files_that_exist_and_publishes_on_loopback_only() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"kafka", "worker", "prometheus", "alertmanager", "grafana"} <= set(services)
    assert services["worker"]["environment"]["PMON_ALERTMANAGER_URL"] == "http://alertmanager:9093"
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond the host's loopback"
        for volume in service.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).resolve().exists(), f"{name} mounts {source}, which is not in the repository"
        for dependency in service.get("depends_on", []):
            assert dependency in services, f"{name} depends on an unknown service {dependency}"
    # Where Docker Compose exists, its own check too (this machine has no compose plugin: the checks above stand).
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True,
                                                 timeout=60, check=False).returncode == 0:
        # The file requires a pseudonym key (no default); any value checks the rest.
        env = {**os.environ, "PMON_PSEUDONYM_KEY": os.environ.get("PMON_PSEUDONYM_KEY") or "compose-config-check"}
        done = subprocess.run(["docker", "compose", "config", "--quiet"], cwd=ROOT, capture_output=True, text=True,
                              timeout=120, check=False, env=env)
        assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_every_rule_says_what_to_do(rule: dict) -> None:
    annotations = rule.get("annotations", {})
    assert annotations.get("summary") and annotations.get("description")
    assert rule.get("labels", {}).get("severity")
