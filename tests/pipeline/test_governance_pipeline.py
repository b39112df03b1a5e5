"""Governance through the whole embedded pipeline: the simulator's injected violations, found and carried
into the plan; approval-aware escalation; and no raw user id in any output."""

from __future__ import annotations

import asyncio
import logging
import pickle
import pickletools
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from cli.main import ANSWERS, _match_labels
from monitor.events import encode
from monitor.settings import Settings
from plans.plan_sink import latest
from simulation.simulator import Injection, SimulationSpec, default_program, labels, simulate
from streams.embedded import EmbeddedDriver, EmbeddedRun

GOVERNANCE_INJECTIONS = {"consent_violation", "unapproved_rule_change", "experiment_rule_change", "fallback_surge"}
GOVERNANCE_KINDS = {"consent_violation", "unapproved_rule_change", "experiment_integrity", "rule_fallback",
                    "variant_imbalance"}
RAW_USER_ID = re.compile(rb"u\d{6}")  # the simulator's raw ids: u000000 ... u019999


def _records(spec: SimulationSpec) -> list[tuple[str, bytes, bytes]]:
    return [(r.topic, r.key.encode(), encode(r.event)) for r in simulate(spec)]


def _settings(tmp_path: Path, spec: SimulationSpec, **overrides: Any) -> Settings:
    allocations = {i.name: dict(zip(i.variants, i.allocation, strict=True)) for i in spec.initiatives if i.experiment}
    return Settings(**{"plan_dir": tmp_path / "plans", "allocations": allocations, "log_level": "DEBUG", **overrides})


@pytest.fixture(scope="module")
def program_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, SimulationSpec, EmbeddedRun,
                                                                    EmbeddedDriver, list[str], bytes]:
    """The default program over 8 days, its injections squeezed in: run once, judged by several tests."""
    tmp_path = tmp_path_factory.mktemp("program")
    spec = SimulationSpec(seed=7, days=8)
    settings = _settings(tmp_path, spec)
    registry = CollectorRegistry()
    driver = EmbeddedDriver(settings, registry=registry, replay=True)
    handler, root = _Capture(), logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)  # every line any module logs, incidents included
    try:
        run = asyncio.run(driver.run(_records(spec)))
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    return settings, spec, run, driver, handler.lines, generate_latest(registry)


def _strings_of(pickled: bytes) -> bytes:
    """Every string a pickle holds (keys, names, ids), one per line: the state's text, without the binary
    numbers that could spell `u` and six digits by chance."""
    return "\n".join(arg for _, arg, _ in pickletools.genops(pickled) if isinstance(arg, str)).encode()


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_every_injected_governance_violation_is_found_and_nothing_else_is(program_run) -> None:
    _, spec, run, _, _, _ = program_run
    truth = [label for label in labels(spec) if label["kind"] in GOVERNANCE_INJECTIONS]
    assert {label["kind"] for label in truth} == GOVERNANCE_INJECTIONS
    found, unexplained = _match_labels(run.incidents, truth)
    for label, hits in found.items():
        wanted = ANSWERS[label.split(" on ")[0]] & GOVERNANCE_KINDS
        assert wanted <= {hit.kind for hit in hits}, f"{label}: found only as {sorted(h.kind for h in hits)}"
    assert [i.kind for i in unexplained if i.kind in GOVERNANCE_KINDS] == [], "a governance false alarm"
    violation = next(i for i in run.incidents if i.kind == "consent_violation" and i.transition == "opened")
    assert (violation.owner, violation.severity) == ("Data Privacy Lead", "critical")


def test_the_plans_carry_the_checklist_approvals_and_consent_adherence(program_run) -> None:
    settings, spec, _, _, _, _ = program_run
    statuses = {}
    for initiative in spec.initiatives:
        plan = latest(settings.plan_dir, initiative.name)
        assert plan is not None
        statuses[initiative.name] = {item.item: item.status for item in plan.governance_checklist}
        assert {item.owner for item in plan.governance_checklist} <= {
            "Testing Lead", "Personalization Architect", "Data Privacy Lead"}
    assert statuses["PLG Onboarding"]["consent_adherence"] == "fail"
    assert statuses["Pricing Page Recs"]["rule_change_approval"] == "fail"
    assert statuses["Win-back Emails"]["experiment_integrity"] == "fail"
    assert statuses["Pricing Page Recs"]["consent_adherence"] == "pass"
    pricing = latest(settings.plan_dir, "Pricing Page Recs")
    pending = [a for a in pricing.approvals if a.status == "pending"]
    assert pending and {a.approver_role for a in pending} == {"Personalization Architect"}
    plg = latest(settings.plan_dir, "PLG Onboarding")
    assert plg.metric("consent_adherence_pct").current < 100.0


def test_no_raw_user_id_reaches_any_output_state_log_or_metric(program_run) -> None:
    settings, _, run, driver, log_lines, metrics = program_run
    assert run.records > 100_000 and log_lines, "the check must look at a real run"
    outputs = {
        "incidents": b"\n".join(i.model_dump_json().encode() for i in run.incidents),
        "plan updates": b"\n".join(run.plan_updates),
        "plan files": b"\n".join(p.read_bytes() for p in settings.plan_dir.rglob("*.json")),
        "dead-letter reasons": b"\n".join((d.reason + d.error).encode() for d in run.dead_letters),
        "state": _strings_of(pickle.dumps(driver.initiative_stage.state)),
        "log": "\n".join(log_lines).encode(),
        "metrics": metrics,
    }
    leaked = {where: RAW_USER_ID.findall(blob)[:3] for where, blob in outputs.items() if RAW_USER_ID.search(blob)}
    assert leaked == {}
    violation = next(i for i in run.incidents if i.kind == "consent_violation")
    assert violation.evidence.detail["users_listed"][0].encode() in outputs["incidents"]
    assert len(driver.users) > 1000, "users are in the ledger, under pseudonyms"


def test_a_kpi_incident_lists_the_unapproved_rule_change_before_it_and_starts_a_rung_higher(tmp_path: Path) -> None:
    plg = next(spec for spec in default_program() if spec.name == "PLG Onboarding")
    start = SimulationSpec(days=1, injections=()).start
    change = Injection("unapproved_rule_change", plg.name, start + timedelta(days=3, hours=11), 1, 1.0,
                       channel="web")
    dip = Injection("conversion_drop", plg.name, start + timedelta(days=3, hours=12), 6, 0.6, profile="new_user",
                    channel="web", variant="treatment")
    spec = SimulationSpec(seed=3, days=4, users=6000, initiatives=(plg,), injections=(change, dip))
    run = asyncio.run(EmbeddedDriver(_settings(tmp_path, spec, log_level="WARNING"), replay=True)
                      .run(_records(spec)))
    drops = [i for i in run.incidents if i.kind == "conversion_drop" and i.transition == "opened"]
    assert drops, "the planted dip must open an incident"
    causes = drops[0].evidence.detail["probable_causes"]
    assert [(c["rule_id"], c["approved"]) for c in causes] == [("plg-checklist-web", False)] * 2
    assert (drops[0].rung, drops[0].owner, drops[0].severity) == (1, "Personalization Architect", "critical"), \
        "a dip after an unapproved change starts one rung higher"
    audit = [i for i in run.incidents if i.kind == "unapproved_rule_change"]
    assert [i.transition for i in audit] == ["opened", "updated"]
