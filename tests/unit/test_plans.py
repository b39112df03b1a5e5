"""The plan document: defaults, pure updates, JSON Schema and the atomic file sink."""

from __future__ import annotations

import doctest
import math
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pydantic
import pytest

import plans.document
import plans.plan_sink
import plans.schema
from plans import (
    Approval,
    DataFeed,
    IncidentSummary,
    InvalidPlanError,
    PlanDocument,
    PlanReadError,
    PlanWriteError,
    PlanWriter,
    UnknownPlanItemError,
    latest,
    new_plan,
    plan_bytes,
    plan_files,
    plan_json_schema,
    plan_schema_bytes,
    slugify,
    with_approval,
    with_feed,
    with_incident,
    with_metric,
    with_stage,
    with_thresholds,
)

T0 = datetime(2024, 5, 1, 9, 0, tzinfo=timezone.utc)
THRESHOLDS: dict[str, float | int] = {
    "alert_threshold": 0.2,
    "min_exposures": 200,
    "significance": 0.001,
    "bucket_seconds": 3600,
}
REPO_ROOT = Path(__file__).resolve().parents[2]


def make_plan(initiative: str = "PLG Onboarding") -> PlanDocument:
    return new_plan(initiative, thresholds=THRESHOLDS, at=T0)


def make_incident(status: str = "open", *, at: datetime = T0, severity: str = "warning",
                  owner: str = "Testing Lead", escalation_level: int = 0) -> IncidentSummary:
    return IncidentSummary(
        incident_id="inc-conv-drop-1", kind="conversion_drop", severity=severity,
        series=("PLG Onboarding|trial|email|B",), owner=owner, opened_at=T0,
        last_transition=at, status=status, escalation_level=escalation_level)


def busy_plan() -> PlanDocument:
    """A plan that has been through every kind of update, for schema and file checks."""
    plan = make_plan()
    plan = with_thresholds(plan, {"alert_threshold": 0.25}, at=T0 + timedelta(minutes=1),
                           actor="ana", reason="fewer false alarms")
    plan = with_stage(plan, "ingest", "active", at=T0 + timedelta(minutes=2))
    plan = with_incident(plan, make_incident(), at=T0 + timedelta(minutes=3))
    plan = with_metric(plan, "lift_pct", current=3.5, at=T0 + timedelta(minutes=4), actor="pmon",
                       reason="readout")
    plan = with_approval(plan, Approval(item="thresholds.alert_threshold", requested_by="ana",
                                        approver_role="Personalization Architect",
                                        requested_at=T0 + timedelta(minutes=5)),
                         at=T0 + timedelta(minutes=5))
    return plan


# --------------------------------------------------------------------------- JSON Schema

def validation_errors(document: Any, schema: dict[str, Any]) -> list[str]:
    return [error.message for error in jsonschema.Draft202012Validator(schema).iter_errors(document)]


# --------------------------------------------------------------------------- defaults

def test_new_plan_defaults_are_valid_and_complete() -> None:
    plan = make_plan()

    assert PlanDocument.model_validate_json(plan_bytes(plan)) == plan
    assert (plan.schema_version, plan.revision, plan.updated_at, plan.created_at) == (1, 1, T0, T0)
    assert plan.pattern == "diamond"
    assert plan.merge_gate is not None
    assert set(plan.merge_gate.waits_for) == {"governance", "experiments"}
    assert plan.merge_gate.before == "reporting"
    assert [s.name for s in plan.stages] == ["ingest", "windowing", "detection", "governance",
                                            "experiments", "reporting"]
    assert {s.status for s in plan.stages} == {"planned"}
    assert [f.name for f in plan.feeds] == ["pmon.engagement", "pmon.consent", "pmon.rule-changes"]
    assert {f.status for f in plan.feeds} == {"unknown"}
    assert all(f.freshness_objective_seconds > 0 for f in plan.feeds)
    node_ids = {node.id for node in plan.dependency_graph.nodes}
    assert {"data-engineering", "privacy", "experimentation"} <= node_ids
    assert {s.name for s in plan.stages} <= node_ids
    assert {edge.kind for edge in plan.dependency_graph.edges} >= {"feeds", "gates", "owns", "approves"}
    assert plan.error_handling.retry_limit == 2
    assert plan.error_handling.escalation_ladder == ("Testing Lead", "Personalization Architect",
                                                     "Data Privacy Lead")
    assert set(plan.error_handling.escalation_ladder) <= set(plan.error_handling.fallback_owners)
    assert plan.thresholds == THRESHOLDS
    assert plan.cadence.bucket_seconds == 3600
    assert {m.name: (m.target, m.current, m.unit) for m in plan.success_metrics} == {
        "lift_pct": (5.0, None, "%"),
        "incident_response_minutes": (30.0, None, "min"),
        "consent_adherence_pct": (100.0, None, "%"),
    }
    assert (plan.open_incidents, plan.backlog, plan.approvals) == ((), (), ())
    assert [(e.field, e.reason, e.at) for e in plan.change_log] == [("plan", "plan created", T0)]


def test_new_plan_owners_override_only_the_roles_named() -> None:
    plan = new_plan("Demo", thresholds={}, at=T0, owners={"Data Privacy Lead": "priya"})

    assert plan.owners["Data Privacy Lead"] == "priya"
    assert plan.owners["Testing Lead"] == "Testing Lead"


def test_new_plan_bucket_seconds_threshold_sets_cadence() -> None:
    plan = new_plan("Demo", thresholds={"bucket_seconds": 900}, at=T0)

    assert plan.cadence.bucket_seconds == 900


@pytest.mark.parametrize("bad", [
    {"initiative": ""},
    {"thresholds": {"alert_threshold": math.nan}},
    {"at": datetime(2024, 5, 1, 9, 0)},  # naive: no time zone
])
def test_new_plan_rejects_invalid_input_with_plan_error(bad: dict[str, Any]) -> None:
    arguments: dict[str, Any] = {"initiative": "Demo", "thresholds": {}, "at": T0, **bad}

    with pytest.raises(InvalidPlanError):
        new_plan(**arguments)


def test_plan_is_frozen_and_rejects_unknown_fields() -> None:
    plan = make_plan()
    data = orjson.loads(plan_bytes(plan))

    with pytest.raises(pydantic.ValidationError):
        plan.revision = 7  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError, match="surprise"):
        PlanDocument.model_validate({**data, "surprise": 1})
    with pytest.raises(pydantic.ValidationError, match="schema_version"):
        PlanDocument.model_validate({**data, "schema_version": 2})


def test_diamond_without_merge_gate_is_invalid() -> None:
    data = orjson.loads(plan_bytes(make_plan()))

    with pytest.raises(pydantic.ValidationError, match="merge_gate"):
        PlanDocument.model_validate({**data, "merge_gate": None})
    pipeline = PlanDocument.model_validate({**data, "pattern": "pipeline", "merge_gate": None})
    assert pipeline.pattern == "pipeline"


# --------------------------------------------------------------------------- schema

def test_schema_has_id_title_and_every_top_level_field_required() -> None:
    schema = plan_json_schema()

    assert schema["$id"] == "urn:pmon:schema:plan-document:1"
    assert schema["title"] == "Personalization Monitor plan document"
    assert set(schema["required"]) == set(PlanDocument.model_fields)
    assert schema["additionalProperties"] is False
    assert schema["properties"]["schema_version"]["const"] == 1


def test_schema_validates_a_real_plan_and_rejects_a_broken_one() -> None:
    schema = plan_json_schema()
    document = orjson.loads(plan_bytes(busy_plan()))

    assert validation_errors(document, schema) == []
    broken = {**document, "revision": "seven", "unexpected": True}
    del broken["initiative"]
    errors = validation_errors(broken, schema)
    assert len(errors) >= 3, errors


def test_checked_in_schema_is_current() -> None:
    exported = REPO_ROOT / "schemas" / "plan.schema.json"
    assert exported.exists(), "schemas/plan.schema.json is missing: run `make schemas` and commit it"
    assert orjson.loads(exported.read_bytes()) == orjson.loads(plan_schema_bytes())


# --------------------------------------------------------------------------- thresholds and metrics

def test_with_thresholds_logs_exactly_the_changed_keys() -> None:
    plan = make_plan()
    at = T0 + timedelta(hours=1)

    updated = with_thresholds(
        plan, {"alert_threshold": 0.3, "min_exposures": 200, "significance": 0.001, "warmup_buckets": 24},
        at=at, actor="ana", reason="quieter alerts")

    new_entries = updated.change_log[len(plan.change_log):]
    assert [(e.field, e.old, e.new) for e in new_entries] == [
        ("thresholds.alert_threshold", 0.2, 0.3),
        ("thresholds.warmup_buckets", None, 24),
    ]
    assert {(e.at, e.actor, e.reason) for e in new_entries} == {(at, "ana", "quieter alerts")}
    assert updated.thresholds == {**THRESHOLDS, "alert_threshold": 0.3, "warmup_buckets": 24}
    assert (updated.revision, updated.updated_at) == (plan.revision + 1, at)
    # The input plan is untouched.
    assert plan.thresholds == THRESHOLDS
    assert len(plan.change_log) == 1


def test_with_thresholds_unchanged_returns_the_same_plan() -> None:
    plan = make_plan()

    assert with_thresholds(plan, dict(THRESHOLDS), at=T0, actor="ana", reason="") is plan
    assert with_thresholds(plan, {}, at=T0, actor="ana", reason="") is plan


def test_with_thresholds_bucket_seconds_moves_cadence_with_one_entry() -> None:
    updated = with_thresholds(make_plan(), {"bucket_seconds": 900}, at=T0, actor="ana", reason="finer")

    assert updated.cadence.bucket_seconds == 900
    assert [(e.field, e.old, e.new) for e in updated.change_log[1:]] == [("thresholds.bucket_seconds", 3600, 900)]


def test_with_thresholds_rejects_nan_without_touching_the_plan() -> None:
    plan = make_plan()

    with pytest.raises(InvalidPlanError):
        with_thresholds(plan, {"alert_threshold": math.nan}, at=T0, actor="ana", reason="")
    assert plan.thresholds["alert_threshold"] == 0.2


def test_with_metric_logs_target_and_current_changes() -> None:
    plan = make_plan()

    updated = with_metric(plan, "lift_pct", target=4.0, current=3.5, at=T0, actor="ana", reason="q3 goal")

    assert updated.metric("lift_pct").current == 3.5
    assert updated.metric("lift_pct").met is False
    assert [(e.field, e.old, e.new) for e in updated.change_log[1:]] == [
        ("success_metrics.lift_pct.target", 5.0, 4.0),
        ("success_metrics.lift_pct.current", None, 3.5),
    ]
    assert with_metric(updated, "lift_pct", current=3.5, at=T0, actor="ana", reason="") is updated
    with pytest.raises(UnknownPlanItemError):
        with_metric(plan, "no_such_metric", current=1.0, at=T0, actor="ana", reason="")


# --------------------------------------------------------------------------- incidents

def test_incident_open_escalate_resolve_keeps_one_review_item() -> None:
    plan = make_plan()

    opened = with_incident(plan, make_incident(), at=T0)
    assert [i.incident_id for i in opened.open_incidents] == ["inc-conv-drop-1"]
    assert [(b.id, b.owner, b.source, b.priority) for b in opened.backlog] == [
        ("review-inc-conv-drop-1", "Testing Lead", "inc-conv-drop-1", "P2")]
    assert opened.backlog[0].title.startswith("post-incident review")
    assert opened.revision == plan.revision + 1

    assert with_incident(opened, make_incident(), at=T0 + timedelta(minutes=5)) is opened

    later = T0 + timedelta(hours=2)
    escalated = with_incident(
        opened, make_incident("escalated", at=later, owner="Personalization Architect", escalation_level=1),
        at=later)
    assert [(i.status, i.owner) for i in escalated.open_incidents] == [("escalated", "Personalization Architect")]
    assert len(escalated.backlog) == 1

    resolved = with_incident(escalated, make_incident("resolved", at=later), at=later)
    assert resolved.open_incidents == ()
    assert [b.id for b in resolved.backlog] == ["review-inc-conv-drop-1"]
    assert with_incident(resolved, make_incident("resolved", at=later), at=later) is resolved


def test_incident_first_seen_resolved_still_gets_a_review() -> None:
    resolved = with_incident(make_plan(), make_incident("resolved", severity="critical"), at=T0)

    assert resolved.open_incidents == ()
    assert [(b.id, b.priority) for b in resolved.backlog] == [("review-inc-conv-drop-1", "P1")]


def test_incident_summary_rejects_transition_before_opening() -> None:
    with pytest.raises(pydantic.ValidationError, match="precedes"):
        make_incident(at=T0 - timedelta(seconds=1))


# --------------------------------------------------------------------------- stages and feeds

def test_with_stage_changes_status_once() -> None:
    plan = make_plan()
    at = T0 + timedelta(minutes=10)

    degraded = with_stage(plan, "detection", "degraded", at=at)

    assert (degraded.stage("detection").status, degraded.stage("detection").updated_at) == ("degraded", at)
    assert plan.stage("detection").status == "planned"
    assert with_stage(degraded, "detection", "degraded", at=at) is degraded
    with pytest.raises(UnknownPlanItemError):
        with_stage(plan, "no-such-stage", "active", at=at)
    with pytest.raises(InvalidPlanError):
        with_stage(plan, "detection", "exploded", at=at)  # type: ignore[arg-type]


def test_with_feed_updates_freshness_and_is_idempotent() -> None:
    plan = make_plan()
    seen = T0 + timedelta(minutes=1)
    feed = plan.feed("pmon.consent").model_copy(update={"last_event_time": T0, "last_seen_at": seen})
    feed = feed.assessed(seen + timedelta(seconds=10))

    updated = with_feed(plan, feed, at=seen)

    assert updated.feed("pmon.consent").status == "fresh"
    assert updated.feed("pmon.consent").last_event_time == T0
    assert [f.name for f in updated.feeds] == [f.name for f in plan.feeds]
    assert with_feed(updated, feed, at=seen) is updated
    stale = updated.feed("pmon.consent").assessed(seen + timedelta(days=1))
    assert stale.status == "stale"


def test_with_feed_adds_a_new_topic() -> None:
    feed = DataFeed(name="pmon.extra", freshness_objective_seconds=60)

    updated = with_feed(make_plan(), feed, at=T0)

    assert updated.feeds[-1] == feed


def test_updated_at_never_goes_backwards() -> None:
    plan = with_stage(make_plan(), "ingest", "active", at=T0 + timedelta(hours=1))

    earlier = with_stage(plan, "ingest", "done", at=T0)

    assert earlier.updated_at == plan.updated_at
    assert earlier.revision == plan.revision + 1


# --------------------------------------------------------------------------- files

def test_write_is_atomic_and_reads_back(tmp_path: Path) -> None:
    plan = busy_plan()
    writer = PlanWriter(tmp_path)

    path = writer.write(plan)

    assert path.parent == tmp_path / "plg-onboarding"
    assert path.name == f"plan-{plan.updated_at:%Y%m%dT%H%M%S%f}Z-r{plan.revision:06d}.json"
    assert os.listdir(path.parent) == [path.name]  # no temporary file left behind
    assert path.read_bytes() == plan_bytes(plan)
    assert PlanDocument.model_validate_json(path.read_bytes()) == plan


def test_plan_bytes_are_deterministic_sorted_json() -> None:
    plan = busy_plan()

    first, second = plan_bytes(plan), plan_bytes(PlanDocument.model_validate_json(plan_bytes(plan)))

    assert first == second
    keys = list(orjson.loads(first))
    assert keys == sorted(keys)
    assert first.startswith(b'{\n  "approvals"')


def test_writing_the_same_revision_twice_is_harmless(tmp_path: Path) -> None:
    plan = make_plan()
    writer = PlanWriter(tmp_path)

    first, second = writer.write(plan), writer.write(plan)

    assert first == second
    assert plan_files(tmp_path, plan.initiative) == [first]
    assert first.read_bytes() == plan_bytes(plan)


def test_later_revision_sorts_after_and_latest_returns_it(tmp_path: Path) -> None:
    writer = PlanWriter(tmp_path)
    plan = make_plan()
    # Same timestamp: the revision suffix alone must keep the names apart and ordered.
    same_instant = with_stage(plan, "ingest", "active", at=T0)
    later = with_stage(same_instant, "windowing", "active", at=T0 + timedelta(seconds=1))

    paths = [writer.write(p) for p in (later, plan, same_instant)]

    assert len(set(paths)) == 3
    assert plan_files(tmp_path, plan.initiative) == [paths[1], paths[2], paths[0]]
    assert sorted(p.name for p in paths) == [paths[1].name, paths[2].name, paths[0].name]
    assert latest(tmp_path, plan.initiative) == later
    assert writer.latest(plan.initiative) == later


def test_latest_is_none_without_plans(tmp_path: Path) -> None:
    assert latest(tmp_path, "PLG Onboarding") is None
    assert latest(tmp_path / "missing", "PLG Onboarding") is None


def test_latest_ignores_temporary_and_foreign_files(tmp_path: Path) -> None:
    plan = make_plan()
    path = PlanWriter(tmp_path).write(plan)
    (path.parent / ".plan-abc.tmp").write_bytes(b"{half")
    (path.parent / "notes.txt").write_text("not a plan")

    assert latest(tmp_path, plan.initiative) == plan


def test_latest_refuses_another_initiative_sharing_the_slug(tmp_path: Path) -> None:
    PlanWriter(tmp_path).write(make_plan("PLG Onboarding"))

    with pytest.raises(PlanReadError, match="PLG Onboarding"):
        latest(tmp_path, "plg onboarding")


def test_latest_reports_a_corrupt_file_with_its_path(tmp_path: Path) -> None:
    path = PlanWriter(tmp_path).write(make_plan())
    path.write_bytes(b'{"not": "a plan"}')

    with pytest.raises(PlanReadError, match=path.name):
        latest(tmp_path, "PLG Onboarding")


def test_write_into_unwritable_directory_raises_with_the_path(tmp_path: Path) -> None:
    regular_file = tmp_path / "a-file"
    regular_file.write_text("in the way")
    writer = PlanWriter(regular_file / "plans")

    with pytest.raises(PlanWriteError) as caught:
        writer.write(make_plan())

    assert str(regular_file / "plans" / "plg-onboarding") in str(caught.value)
    assert caught.value.filename == str(writer.path_for(make_plan()))
    assert isinstance(caught.value.__cause__, OSError)
    assert os.listdir(tmp_path) == ["a-file"]


def test_failed_replace_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = PlanWriter(tmp_path)
    plan = make_plan()

    def failing_replace(source: str, target: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(plans.plan_sink.os, "replace", failing_replace)
    with pytest.raises(PlanWriteError, match="No space left on device"):
        writer.write(plan)

    assert os.listdir(tmp_path / "plg-onboarding") == []


# --------------------------------------------------------------------------- slugs and doctests

@pytest.mark.parametrize(("initiative", "slug"), [
    ("PLG Onboarding", "plg-onboarding"),
    ("plg-onboarding", "plg-onboarding"),
    ("  Checkout  v2 ", "checkout-v2"),
    ("Café Crème / Q3", "cafe-creme-q3"),
    ("../../etc/passwd", "etc-passwd"),
    ("A" * 200, "a" * 80),
])
def test_slugify(initiative: str, slug: str) -> None:
    assert slugify(initiative) == slug


def test_slugify_of_a_name_without_latin_letters_is_stable_and_safe() -> None:
    slug = slugify("日本語")

    assert slug == slugify("日本語")
    assert slug != slugify("中文")
    assert slug.startswith("initiative-")
    assert set(slug) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")


@pytest.mark.parametrize("module", [plans.document, plans.plan_sink, plans.schema])
def test_doctests(module: Any) -> None:
    result = doctest.testmod(module)

    assert result.attempted > 0
    assert result.failed == 0
