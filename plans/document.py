"""The plan document: the audit trail of one personalization initiative.

A plan is a frozen pydantic model. Nothing mutates it: every update function
takes a plan and returns a new one with ``revision + 1`` and ``updated_at`` set,
or returns the very same object when the update changes nothing, so a caller
can tell with ``new is not old`` whether a write to the plan sink is needed.

Every change of thresholds, cadence or success metrics leaves a change-log
entry (who, when, which field, old and new value, why).

>>> from datetime import datetime, timezone
>>> t0 = datetime(2024, 5, 1, 9, 0, tzinfo=timezone.utc)
>>> plan = new_plan("PLG Onboarding", thresholds={"alert_threshold": 0.2}, at=t0)
>>> plan.revision, plan.pattern, [s.name for s in plan.stages][:3]
(1, 'diamond', ['ingest', 'windowing', 'detection'])
>>> plan2 = with_stage(plan, "ingest", "active", at=t0)
>>> plan2.revision, plan2.stage("ingest").status, plan.stage("ingest").status
(2, 'active', 'planned')
>>> with_stage(plan2, "ingest", "active", at=t0) is plan2
True
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from experiments.memo import MemoSummary
from plans.exceptions import InvalidPlanError, UnknownPlanItemError

SCHEMA_VERSION = 1


def _to_utc(value: datetime) -> datetime:
    # One time zone everywhere, so equality, ordering and file names agree.
    return value.astimezone(timezone.utc)


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]
Name = Annotated[str, Field(min_length=1, max_length=200)]
Number = float | int
# A change-log value: a threshold, a metric value, or None for "absent".
ChangeValue = float | int | str | None

StageStatus = Literal["planned", "active", "degraded", "done"]
FeedStatus = Literal["fresh", "stale", "unknown"]
IncidentStatus = Literal["open", "escalated", "resolved"]
Severity = Literal["warning", "critical"]
EdgeKind = Literal["feeds", "gates", "owns", "approves"]
Priority = Literal["P1", "P2", "P3"]
BacklogStatus = Literal["open", "in_progress", "done"]
ApprovalStatus = Literal["pending", "approved", "rejected"]

# Roles named by the design: the escalation ladder and the owners of the graph's teams.
TESTING_LEAD = "Testing Lead"
PERSONALIZATION_ARCHITECT = "Personalization Architect"
DATA_PRIVACY_LEAD = "Data Privacy Lead"
DATA_ENGINEERING_LEAD = "Data Engineering Lead"
ESCALATION_LADDER: tuple[str, ...] = (TESTING_LEAD, PERSONALIZATION_ARCHITECT, DATA_PRIVACY_LEAD)
DEFAULT_RETRY_LIMIT = 2
DEFAULT_BUCKET_SECONDS = 3600

DEFAULT_INPUT_TOPICS: tuple[str, ...] = ("pmon.engagement", "pmon.consent", "pmon.rule-changes")
# Rule changes are rare by nature, so their feed may stay quiet for a day before it is stale.
_FRESHNESS_OBJECTIVES_BY_SUFFIX: dict[str, float] = {
    "engagement": 900.0,
    "consent": 3600.0,
    "rule-changes": 86_400.0,
}
_DEFAULT_FRESHNESS_OBJECTIVE = 3600.0

POST_INCIDENT_REVIEW = "post-incident review"


class _PlanModel(BaseModel):
    # NaN/inf are refused: NaN != NaN would log a "change" on every update,
    # and orjson would write them as null.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class MergeGate(_PlanModel):
    """Where the diamond's branches meet: `before` runs only once every stage in `waits_for` has."""

    name: Name = "merge-gate"
    waits_for: tuple[Name, ...] = Field(min_length=2)
    before: Name
    rule: str = ""


class Stage(_PlanModel):
    """One stage of the monitoring pipeline and how it is doing."""

    name: Name
    status: StageStatus = "planned"
    owner_role: Name
    updated_at: UtcDatetime


class DataFeed(_PlanModel):
    """An input topic and its freshness: when its last event happened and when it was last seen."""

    name: Name = Field(description="The topic name.")
    last_event_time: UtcDatetime | None = None
    last_seen_at: UtcDatetime | None = Field(default=None, description="Wall-clock time the last record arrived.")
    freshness_objective_seconds: float = Field(gt=0)
    status: FeedStatus = "unknown"

    def assessed(self, now: datetime) -> DataFeed:
        """This feed with `status` judged at wall-clock `now` (same object when unchanged).

        >>> from datetime import datetime, timezone
        >>> seen = datetime(2024, 5, 1, 9, 0, tzinfo=timezone.utc)
        >>> feed = DataFeed(name="pmon.consent", last_seen_at=seen, freshness_objective_seconds=60)
        >>> feed.assessed(datetime(2024, 5, 1, 9, 0, 30, tzinfo=timezone.utc)).status
        'fresh'
        >>> feed.assessed(datetime(2024, 5, 1, 9, 5, tzinfo=timezone.utc)).status
        'stale'
        """
        status = feed_status(self.last_seen_at, now=now, objective_seconds=self.freshness_objective_seconds)
        return self if status == self.status else self.model_copy(update={"status": status})


class GraphNode(_PlanModel):
    """A team or a stage in the dependency graph."""

    id: Name
    kind: Literal["team", "stage"]
    owner_role: Name


class GraphEdge(_PlanModel):
    """`source` → `target`: data flows (feeds), a gate, ownership or a required approval."""

    source: Name
    target: Name
    kind: EdgeKind


class DependencyGraph(_PlanModel):
    nodes: tuple[GraphNode, ...]
    edges: tuple[GraphEdge, ...]

    @model_validator(mode="after")
    def _edges_join_known_nodes(self) -> DependencyGraph:
        ids = [node.id for node in self.nodes]
        _require_unique(ids, "dependency graph node")
        known = set(ids)
        for edge in self.edges:
            missing = {edge.source, edge.target} - known
            if missing:
                raise ValueError(f"edge {edge.source} -> {edge.target} names unknown node(s) {sorted(missing)}")
        return self


class ErrorHandling(_PlanModel):
    """Retries before dead-lettering, who is escalated to in turn, and who stands in for whom."""

    retry_limit: int = Field(default=DEFAULT_RETRY_LIMIT, ge=0, le=10)
    escalation_ladder: tuple[Name, ...] = Field(default=ESCALATION_LADDER, min_length=1)
    fallback_owners: dict[str, str] = Field(description="Role -> who takes over when that role's owner is unavailable.")

    @model_validator(mode="after")
    def _ladder_and_fallbacks_are_sane(self) -> ErrorHandling:
        _require_unique(self.escalation_ladder, "escalation ladder rung")
        for role, fallback in self.fallback_owners.items():
            if role == fallback:
                raise ValueError(f"role {role!r} cannot be its own fallback owner")
        return self


class Cadence(_PlanModel):
    """How often the monitor decides: one window bucket, evaluated every N closed buckets."""

    bucket_seconds: int = Field(default=DEFAULT_BUCKET_SECONDS, gt=0)
    evaluate_every_buckets: int = Field(default=1, ge=1)
    freshness_check_seconds: float = Field(default=60.0, gt=0)


class SuccessMetric(_PlanModel):
    """A success metric: target, current value (None until measured), unit and which way is good."""

    name: Name
    target: float
    current: float | None = None
    unit: str
    direction: Literal["at_least", "at_most"]
    description: str = ""

    @property
    def met(self) -> bool | None:
        """Whether the current value meets the target; None while unmeasured."""
        if self.current is None:
            return None
        return self.current >= self.target if self.direction == "at_least" else self.current <= self.target


class IncidentSummary(_PlanModel):
    """What the plan keeps of an incident; `last_transition` is when its status last changed."""

    incident_id: Name
    kind: Name
    severity: Severity
    series: tuple[str, ...] = ()
    owner: Name
    opened_at: UtcDatetime
    last_transition: UtcDatetime
    status: IncidentStatus = "open"
    escalation_level: int = Field(default=0, ge=0)
    playbook: str | None = None
    acknowledged_at: UtcDatetime | None = None
    acknowledged_by: str | None = None
    assignee: str | None = Field(None, description="The person on duty for the owner role (the roster's).")
    assignee_reason: str | None = Field(None, description="Why the assignee is not the role's lead.")

    @model_validator(mode="after")
    def _transition_not_before_opening(self) -> IncidentSummary:
        if self.last_transition < self.opened_at:
            raise ValueError(
                f"incident {self.incident_id}: last transition {self.last_transition.isoformat()} "
                f"precedes its opening {self.opened_at.isoformat()}"
            )
        return self


class BacklogItem(_PlanModel):
    """Work someone owns; `source` says what created it (e.g. an incident id)."""

    id: Name
    title: Name
    owner: Name
    priority: Priority = "P2"
    source: str | None = None
    status: BacklogStatus = "open"
    created_at: UtcDatetime
    due_at: UtcDatetime | None = None


class Approval(_PlanModel):
    """A sign-off requested from a role; `item` identifies what is to be approved."""

    item: Name
    requested_by: Name
    approver_role: Name
    status: ApprovalStatus = "pending"
    requested_at: UtcDatetime
    decided_at: UtcDatetime | None = None


class ChecklistItem(_PlanModel):
    """One governance check: pass, fail or pending, with its evidence and the role that owns it."""

    item: Name
    status: Literal["pass", "fail", "pending"]
    owner: Name
    summary: str
    evidence: dict[str, Any] = Field(default_factory=dict)


class ChangeLogEntry(_PlanModel):
    """One audited change: `field` is a dotted path such as ``thresholds.alert_threshold``."""

    at: UtcDatetime
    actor: Name
    field: Name
    old: ChangeValue = None
    new: ChangeValue = None
    reason: str = ""


class PlanDocument(_PlanModel):
    """The plan of one initiative, version 1 of the document schema."""

    schema_version: Literal[1]
    initiative: Name
    revision: int = Field(ge=1)
    created_at: UtcDatetime
    updated_at: UtcDatetime = Field(
        description="When this revision was written (the writer's clock; the `with_*` "
        "functions set the event time, the monitor's stage restamps it)."
    )
    watermark: UtcDatetime | None = Field(
        description=(
            "The event-time watermark this revision reflects (the monitor's: every source partition read up to it)."
        )
    )
    pattern: Literal["pipeline", "diamond"]
    merge_gate: MergeGate | None
    owners: dict[str, str] = Field(description="Role -> the person or team who holds it.")
    stages: tuple[Stage, ...]
    feeds: tuple[DataFeed, ...]
    dependency_graph: DependencyGraph
    error_handling: ErrorHandling
    thresholds: dict[str, Number | str]  # a number, or a choice such as alert_kpi
    cadence: Cadence
    success_metrics: tuple[SuccessMetric, ...]
    open_incidents: tuple[IncidentSummary, ...]
    backlog: tuple[BacklogItem, ...]
    approvals: tuple[Approval, ...]
    governance_checklist: tuple[ChecklistItem, ...]
    experiment_memos: tuple[MemoSummary, ...] = Field(
        description="Per experiment, the memo of its latest recommendation (written when the recommendation changes)."
    )
    change_log: tuple[ChangeLogEntry, ...]

    @model_validator(mode="after")
    def _consistent(self) -> PlanDocument:
        stage_names = [stage.name for stage in self.stages]
        _require_unique(stage_names, "stage")
        _require_unique([feed.name for feed in self.feeds], "feed")
        _require_unique([metric.name for metric in self.success_metrics], "success metric")
        _require_unique([incident.incident_id for incident in self.open_incidents], "open incident")
        _require_unique([item.id for item in self.backlog], "backlog item")
        _require_unique([approval.item for approval in self.approvals], "approval")
        _require_unique([check.item for check in self.governance_checklist], "checklist item")
        if self.pattern == "diamond":
            if self.merge_gate is None:
                raise ValueError("a diamond plan needs a merge_gate where its branches meet")
            missing = ({*self.merge_gate.waits_for, self.merge_gate.before}) - set(stage_names)
            if missing:
                raise ValueError(f"merge gate {self.merge_gate.name!r} names unknown stage(s) {sorted(missing)}")
        elif self.merge_gate is not None:
            raise ValueError("a pipeline plan has no merge gate; use pattern 'diamond'")
        for incident in self.open_incidents:
            if incident.status == "resolved":
                raise ValueError(f"incident {incident.incident_id} is resolved but listed as open")
        bucket_threshold = self.thresholds.get("bucket_seconds")
        if bucket_threshold is not None and bucket_threshold != self.cadence.bucket_seconds:
            raise ValueError(
                f"thresholds.bucket_seconds={bucket_threshold} disagrees with cadence.bucket_seconds="
                f"{self.cadence.bucket_seconds}"
            )
        if self.updated_at < self.created_at:
            raise ValueError("updated_at precedes created_at")
        return self

    def stage(self, name: str) -> Stage:
        """The stage called `name`; UnknownPlanItemError if there is none."""
        return _find(self.stages, name, lambda stage: stage.name, "stage")

    def feed(self, name: str) -> DataFeed:
        """The feed of topic `name`; UnknownPlanItemError if there is none."""
        return _find(self.feeds, name, lambda feed: feed.name, "feed")

    def metric(self, name: str) -> SuccessMetric:
        """The success metric called `name`; UnknownPlanItemError if there is none."""
        return _find(self.success_metrics, name, lambda metric: metric.name, "success metric")

    def incident(self, incident_id: str) -> IncidentSummary | None:
        """The open incident with this id, or None."""
        return next((i for i in self.open_incidents if i.incident_id == incident_id), None)


# --------------------------------------------------------------------------- helpers

_Item = TypeVar("_Item")


def _require_unique(names: Iterable[str], what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"duplicate {what} {name!r}")
        seen.add(name)


def _find(items: Iterable[_Item], name: str, key: Any, what: str) -> _Item:
    for item in items:
        if key(item) == name:
            return item
    raise UnknownPlanItemError(f"plan has no {what} {name!r}")


def _upsert(items: tuple[_Item, ...], item: Any, wanted: str, key: Any) -> tuple[Any, ...]:
    # Replace in place so the order people read stays stable; append what is new.
    # `item` may be a plain dict: _revise validates it with the whole document.
    for index, existing in enumerate(items):
        if key(existing) == wanted:
            return (*items[:index], item, *items[index + 1 :])
    return (*items, item)


def _revise(plan: PlanDocument, *, at: datetime, **changes: Any) -> PlanDocument:
    """A validated copy of `plan` with `changes`, the next revision, stamped `at`.

    `updated_at` never goes backwards (a clock step or an out-of-order caller),
    so plan files, named by time then revision, sort in revision order.
    """
    data = {name: getattr(plan, name) for name in PlanDocument.model_fields}
    data.update(changes)
    data["revision"] = plan.revision + 1
    try:
        # Validating (rather than model_copy) keeps every invariant of the document true.
        at_utc = _aware(at)
        data["updated_at"] = max(at_utc, plan.updated_at)
        return PlanDocument.model_validate(data)
    except ValidationError as exc:
        raise InvalidPlanError(f"update of plan {plan.initiative!r} is invalid: {exc}") from exc


def _stamp(plan: PlanDocument, at: datetime) -> datetime:
    """When a change happened, for its log entry or item: `at`, never before the plan's last logged change.
    (Not `updated_at`: that is when a revision was written, the writer's clock, not the change's time.)"""
    last = plan.change_log[-1].at if plan.change_log else plan.created_at
    return max(_aware(at), last)


def _aware(at: datetime) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise InvalidPlanError(f"timestamp {at.isoformat()} has no time zone; plans use aware UTC times")
    return at.astimezone(timezone.utc)


def feed_status(last_seen_at: datetime | None, *, now: datetime, objective_seconds: float) -> FeedStatus:
    """`fresh` if a record arrived within the objective before `now`, `stale` if not, `unknown` if never.

    >>> from datetime import datetime, timezone
    >>> now = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    >>> feed_status(None, now=now, objective_seconds=60)
    'unknown'
    >>> feed_status(datetime(2024, 5, 1, 11, 0, tzinfo=timezone.utc), now=now, objective_seconds=60)
    'stale'
    """
    if last_seen_at is None:
        return "unknown"
    return "fresh" if now - last_seen_at <= timedelta(seconds=objective_seconds) else "stale"


# --------------------------------------------------------------------------- defaults

_STAGE_OWNERS: dict[str, str] = {
    "ingest": DATA_ENGINEERING_LEAD,
    "windowing": DATA_ENGINEERING_LEAD,
    "detection": TESTING_LEAD,
    "governance": DATA_PRIVACY_LEAD,
    "experiments": TESTING_LEAD,
    "reporting": PERSONALIZATION_ARCHITECT,
}

_TEAMS: dict[str, str] = {
    "data-engineering": DATA_ENGINEERING_LEAD,
    "privacy": DATA_PRIVACY_LEAD,
    "experimentation": TESTING_LEAD,
}

# Governance and experiments both read the windows and run side by side; the
# report waits for both (the diamond's merge gate), the privacy lead approves
# what governance and experiments may do with consented users.
_EDGES: tuple[tuple[str, str, EdgeKind], ...] = (
    ("data-engineering", "ingest", "owns"),
    ("data-engineering", "windowing", "owns"),
    ("experimentation", "detection", "owns"),
    ("experimentation", "experiments", "owns"),
    ("privacy", "governance", "owns"),
    ("privacy", "experiments", "approves"),
    ("ingest", "windowing", "feeds"),
    ("windowing", "detection", "feeds"),
    ("windowing", "governance", "feeds"),
    ("windowing", "experiments", "feeds"),
    ("detection", "reporting", "feeds"),
    ("governance", "reporting", "gates"),
    ("experiments", "reporting", "gates"),
)

_DEFAULT_FALLBACK_OWNERS: dict[str, str] = {
    TESTING_LEAD: PERSONALIZATION_ARCHITECT,
    PERSONALIZATION_ARCHITECT: DATA_PRIVACY_LEAD,
    DATA_PRIVACY_LEAD: PERSONALIZATION_ARCHITECT,
    DATA_ENGINEERING_LEAD: PERSONALIZATION_ARCHITECT,
}


def _default_success_metrics() -> tuple[SuccessMetric, ...]:
    return (
        SuccessMetric(
            name="lift_pct",
            target=5.0,
            unit="%",
            direction="at_least",
            description="Relative conversion lift of the personalized variant over control.",
        ),
        SuccessMetric(
            name="incident_response_minutes",
            target=30.0,
            unit="min",
            direction="at_most",
            description="Median minutes from an incident opening to its acknowledgement by a person "
            "(or to its resolution, for one resolved unacknowledged).",
        ),
        SuccessMetric(
            name="consent_adherence_pct",
            target=100.0,
            unit="%",
            direction="at_least",
            description="Share of personalized exposures that reached a user with personalization consent.",
        ),
    )


def _freshness_objective(topic: str) -> float:
    for suffix, seconds in _FRESHNESS_OBJECTIVES_BY_SUFFIX.items():
        if topic.endswith(suffix):
            return seconds
    return _DEFAULT_FRESHNESS_OBJECTIVE


def new_plan(
    initiative: str,
    *,
    thresholds: Mapping[str, Number | str],
    at: datetime,
    owners: Mapping[str, str] | None = None,
    feeds: Iterable[str] = DEFAULT_INPUT_TOPICS,
    actor: str = "pmon",
) -> PlanDocument:
    """A first-revision plan with the design's defaults.

    Diamond pattern (governance and experiments side by side, reporting behind
    a merge gate), six planned stages, one feed per input topic with freshness
    unknown, the dependency graph of data engineering, privacy and
    experimentation, retry limit 2 and the escalation ladder, the three success
    metrics, and a "plan created" change-log entry. `owners` maps roles to the
    people who hold them; a role not named is held by its own title.
    `thresholds` may carry ``bucket_seconds``, which then sets the cadence.

    >>> from datetime import datetime, timezone
    >>> plan = new_plan("PLG Onboarding", thresholds={"alert_threshold": 0.2, "bucket_seconds": 900},
    ...                 at=datetime(2024, 5, 1, tzinfo=timezone.utc), owners={"Testing Lead": "ana"})
    >>> plan.cadence.bucket_seconds, plan.owners["Testing Lead"], plan.owners["Data Privacy Lead"]
    (900, 'ana', 'Data Privacy Lead')
    >>> [feed.name for feed in plan.feeds]
    ['pmon.engagement', 'pmon.consent', 'pmon.rule-changes']
    >>> plan.change_log[0].field, plan.error_handling.retry_limit
    ('plan', 2)
    """
    created = _aware(at)
    role_owners = {role: role for role in (*ESCALATION_LADDER, DATA_ENGINEERING_LEAD)}
    role_owners.update(owners or {})
    threshold_values = dict(thresholds)
    bucket_seconds = threshold_values.get("bucket_seconds", DEFAULT_BUCKET_SECONDS)
    nodes = [GraphNode(id=team, kind="team", owner_role=role) for team, role in _TEAMS.items()]
    nodes += [GraphNode(id=stage, kind="stage", owner_role=role) for stage, role in _STAGE_OWNERS.items()]
    data = {
        "schema_version": SCHEMA_VERSION,
        "initiative": initiative,
        "revision": 1,
        "created_at": created,
        "watermark": None,
        "updated_at": created,
        "pattern": "diamond",
        "merge_gate": MergeGate(
            waits_for=("governance", "experiments"),
            before="reporting",
            rule="the report is published only when the governance checklist and the experiment "
            "readout for the same closed buckets are both complete",
        ),
        "owners": role_owners,
        # Caller-influenced parts stay plain dicts so validation errors surface as InvalidPlanError.
        "stages": tuple(
            {"name": name, "owner_role": role, "updated_at": created} for name, role in _STAGE_OWNERS.items()
        ),
        "feeds": tuple({"name": topic, "freshness_objective_seconds": _freshness_objective(topic)} for topic in feeds),
        "dependency_graph": DependencyGraph(
            nodes=tuple(nodes), edges=tuple(GraphEdge(source=s, target=t, kind=k) for s, t, k in _EDGES)
        ),
        "error_handling": ErrorHandling(fallback_owners=dict(_DEFAULT_FALLBACK_OWNERS)),
        "thresholds": threshold_values,
        "cadence": {"bucket_seconds": bucket_seconds},
        "success_metrics": _default_success_metrics(),
        "open_incidents": (),
        "backlog": (),
        "approvals": (),
        "governance_checklist": (),
        "experiment_memos": (),
        "change_log": ({"at": created, "actor": actor, "field": "plan", "new": initiative, "reason": "plan created"},),
    }
    try:
        return PlanDocument.model_validate(data)
    except ValidationError as exc:
        raise InvalidPlanError(f"cannot create a plan for {initiative!r}: {exc}") from exc


# --------------------------------------------------------------------------- updates


def with_thresholds(
    plan: PlanDocument,
    thresholds: Mapping[str, Number | str],
    *,
    at: datetime,
    actor: str,
    reason: str,
) -> PlanDocument:
    """`plan` with `thresholds` merged in, one change-log entry per key whose value changed.

    Keys not given are kept. A new key is a change from None. When nothing
    changes the same plan object is returned. ``bucket_seconds`` also moves
    the cadence.

    >>> from datetime import datetime, timezone
    >>> t0 = datetime(2024, 5, 1, tzinfo=timezone.utc)
    >>> plan = new_plan("Demo", thresholds={"alert_threshold": 0.2, "min_exposures": 200}, at=t0)
    >>> changed = with_thresholds(plan, {"alert_threshold": 0.25, "min_exposures": 200},
    ...                           at=t0, actor="ana", reason="too noisy")
    >>> [(e.field, e.old, e.new) for e in changed.change_log[1:]]
    [('thresholds.alert_threshold', 0.2, 0.25)]
    >>> with_thresholds(changed, {"alert_threshold": 0.25}, at=t0, actor="ana", reason="") is changed
    True
    """
    changed = {
        key: value
        for key, value in sorted(thresholds.items())
        if key not in plan.thresholds or plan.thresholds[key] != value
    }
    if not changed:
        return plan
    stamp = _stamp(plan, at)
    # Plain dicts: _revise validates them with the document, so a bad value is an InvalidPlanError.
    entries = tuple(
        {
            "at": stamp,
            "actor": actor,
            "field": f"thresholds.{key}",
            "old": plan.thresholds.get(key),
            "new": value,
            "reason": reason,
        }
        for key, value in changed.items()
    )
    updates: dict[str, Any] = {
        "thresholds": {**plan.thresholds, **changed},
        "change_log": plan.change_log + entries,
    }
    if "bucket_seconds" in changed:
        updates["cadence"] = {**plan.cadence.model_dump(), "bucket_seconds": changed["bucket_seconds"]}
    return _revise(plan, at=at, **updates)


def with_metric(
    plan: PlanDocument,
    name: str,
    *,
    at: datetime,
    actor: str,
    reason: str,
    target: float | None = None,
    current: float | None = None,
) -> PlanDocument:
    """`plan` with the success metric `name` given a new target and/or current value.

    Arguments left None are not changed (a measured value is never reset to
    None). Each changed value leaves one change-log entry; no change returns
    the same plan.
    """
    metric = plan.metric(name)
    changed = {
        field: value
        for field, value in (("target", target), ("current", current))
        if value is not None and getattr(metric, field) != value
    }
    if not changed:
        return plan
    stamp = _stamp(plan, at)
    entries = tuple(
        {
            "at": stamp,
            "actor": actor,
            "field": f"success_metrics.{name}.{field}",
            "old": getattr(metric, field),
            "new": value,
            "reason": reason,
        }
        for field, value in changed.items()
    )
    updated_metric = {**metric.model_dump(), **changed}
    return _revise(
        plan,
        at=at,
        success_metrics=_upsert(plan.success_metrics, updated_metric, name, lambda m: m.name),
        change_log=plan.change_log + entries,
    )


# How soon backlog work is due after it was created, by what it is and the incident's severity:
# remediation steps first, the review once the incident is understood.
DUE_WITHIN: dict[tuple[str, str], timedelta] = {
    ("step", "critical"): timedelta(hours=4),
    ("step", "warning"): timedelta(days=1),
    ("review", "critical"): timedelta(days=2),
    ("review", "warning"): timedelta(days=5),
}


def with_incident(
    plan: PlanDocument, summary: IncidentSummary, *, at: datetime, steps: Iterable[str] = ()
) -> PlanDocument:
    """`plan` with the incident upserted among the open ones, or removed once resolved.

    The first time an incident id reaches the plan, its remediation `steps` (the
    playbook's) and a "post-incident review" become backlog items owned by the
    incident's owner, due per `DUE_WITHIN`; their ids are derived from the
    incident id, so a replayed or repeated incident never adds them twice.

    >>> from datetime import datetime, timezone
    >>> t0 = datetime(2024, 5, 1, tzinfo=timezone.utc)
    >>> plan = new_plan("Demo", thresholds={}, at=t0)
    >>> incident = IncidentSummary(incident_id="inc-1", kind="conversion_drop", severity="warning",
    ...                            owner="Testing Lead", opened_at=t0, last_transition=t0)
    >>> opened = with_incident(plan, incident, at=t0, steps=["Check rule changes."])
    >>> [i.incident_id for i in opened.open_incidents], [(b.id, b.due_at.day) for b in opened.backlog]
    (['inc-1'], [('inc-1-step-1', 2), ('review-inc-1', 6)])
    >>> with_incident(opened, incident, at=t0) is opened
    True
    >>> resolved = incident.model_copy(update={"status": "resolved"})
    >>> closed = with_incident(opened, resolved, at=t0)
    >>> closed.open_incidents, [b.id for b in closed.backlog]
    ((), ['inc-1-step-1', 'review-inc-1'])
    """
    updates: dict[str, Any] = {}
    current = plan.incident(summary.incident_id)
    if summary.status == "resolved":
        if current is not None:
            updates["open_incidents"] = tuple(i for i in plan.open_incidents if i.incident_id != summary.incident_id)
    elif current != summary:
        updates["open_incidents"] = _upsert(plan.open_incidents, summary, summary.incident_id, lambda i: i.incident_id)
    review_id = post_incident_review_id(summary.incident_id)
    # Also for an incident first seen resolved (e.g. the plan was lost and rebuilt):
    # it still deserves a review.
    if all(item.id != review_id for item in plan.backlog):
        created = _stamp(plan, at)
        severity = "critical" if summary.severity == "critical" else "warning"
        common = {
            "owner": summary.owner,
            "priority": "P1" if severity == "critical" else "P2",
            "source": summary.incident_id,
            "created_at": created,
        }
        items = [
            {
                **common,
                "id": f"{summary.incident_id}-step-{n}",
                "title": textwrap.shorten(f"{summary.kind}: {step}", width=200, placeholder=" …"),
                "due_at": created + DUE_WITHIN["step", severity],
            }
            for n, step in enumerate(steps, start=1)
        ]
        items.append(
            {
                **common,
                "id": review_id,
                "title": f"{POST_INCIDENT_REVIEW}: {summary.kind}",
                "due_at": created + DUE_WITHIN["review", severity],
            }
        )
        updates["backlog"] = (*plan.backlog, *items)
    if not updates:
        return plan
    return _revise(plan, at=at, **updates)


def with_incident_action(
    plan: PlanDocument, incident_id: str, action: str, *, by: str, text: str, at: datetime, action_id: str = ""
) -> PlanDocument:
    """`plan` with a person's action on an incident: one change-log entry each; an acknowledgement is kept on
    the open incident, a resolution closes it. UnknownPlanItemError for an incident the plan never had.
    An action whose `action_id` the change log already holds changes nothing (a redelivery).

    >>> from datetime import datetime, timedelta, timezone
    >>> t0 = datetime(2024, 5, 1, tzinfo=timezone.utc)
    >>> incident = IncidentSummary(incident_id="inc-1", kind="ctr_drop", severity="warning", owner="Testing Lead",
    ...                            opened_at=t0, last_transition=t0)
    >>> plan = with_incident(new_plan("Demo", thresholds={}, at=t0), incident, at=t0)
    >>> acked = with_incident_action(plan, "inc-1", "acknowledged", by="ana", text="", at=t0 + timedelta(minutes=12))
    >>> acked.incident("inc-1").acknowledged_by, acked.change_log[-1].field, acked.change_log[-1].reason
    ('ana', 'open_incidents.inc-1.acknowledged', 'response 12 min')
    """
    tag = f"[{action_id}]" if action_id else ""
    if tag and any(entry.reason.endswith(tag) for entry in plan.change_log):
        return plan
    known = plan.incident(incident_id)
    review = next((b for b in plan.backlog if b.id == post_incident_review_id(incident_id)), None)
    if known is None and review is None:
        raise UnknownPlanItemError(f"plan of {plan.initiative!r} has no incident {incident_id!r}")
    stamp = _stamp(plan, at)
    updates: dict[str, Any] = {}
    reason = text
    if action == "acknowledged" and known is not None:
        minutes = max(0.0, (_aware(at) - known.opened_at).total_seconds() / 60)
        reason = f"response {minutes:.0f} min" + (f"; {text}" if text else "")
        updates["open_incidents"] = _upsert(
            plan.open_incidents,
            known.model_copy(update={"acknowledged_at": stamp, "acknowledged_by": by}),
            incident_id,
            lambda i: i.incident_id,
        )
    elif action == "resolved" and known is not None:
        updates["open_incidents"] = tuple(i for i in plan.open_incidents if i.incident_id != incident_id)
    entry = {
        "at": stamp,
        "actor": by,
        "field": f"open_incidents.{incident_id}.{action}",
        "old": None,
        "new": text or action,
        "reason": f"{reason} {tag}".strip(),
    }
    return _revise(plan, at=at, change_log=(*plan.change_log, entry), **updates)


def post_incident_review_id(incident_id: str) -> str:
    """The backlog item id of the post-incident review of `incident_id`."""
    return f"review-{incident_id}"


def with_feed(plan: PlanDocument, feed: DataFeed, *, at: datetime) -> PlanDocument:
    """`plan` with `feed` replacing the feed of the same topic (or added); same plan if equal."""
    existing = next((f for f in plan.feeds if f.name == feed.name), None)
    if existing == feed:
        return plan
    return _revise(plan, at=at, feeds=_upsert(plan.feeds, feed, feed.name, lambda f: f.name))


def with_stage(plan: PlanDocument, name: str, status: StageStatus, *, at: datetime) -> PlanDocument:
    """`plan` with stage `name` set to `status`; same plan if it already has it.

    UnknownPlanItemError for a stage the plan does not have.
    """
    stage = plan.stage(name)
    if stage.status == status:
        return plan
    stamp = _stamp(plan, at)
    updated = {**stage.model_dump(), "status": status, "updated_at": stamp}
    return _revise(plan, at=at, stages=_upsert(plan.stages, updated, name, lambda s: s.name))


def with_approval(plan: PlanDocument, approval: Approval, *, at: datetime) -> PlanDocument:
    """`plan` with `approval` replacing the approval of the same item (or added); same plan if equal."""
    existing = next((a for a in plan.approvals if a.item == approval.item), None)
    if existing == approval:
        return plan
    return _revise(plan, at=at, approvals=_upsert(plan.approvals, approval, approval.item, lambda a: a.item))


def with_checklist(plan: PlanDocument, checklist: Iterable[ChecklistItem], *, at: datetime) -> PlanDocument:
    """`plan` with the governance checklist replaced; same plan if equal.

    >>> from datetime import datetime, timezone
    >>> t0 = datetime(2024, 5, 1, tzinfo=timezone.utc)
    >>> plan = new_plan("Demo", thresholds={}, at=t0)
    >>> item = ChecklistItem(item="consent_adherence", status="pass", owner="Data Privacy Lead", summary="no violation")
    >>> checked = with_checklist(plan, [item], at=t0)
    >>> [c.status for c in checked.governance_checklist], with_checklist(checked, [item], at=t0) is checked
    (['pass'], True)
    """
    items = tuple(checklist)
    if items == plan.governance_checklist:
        return plan
    return _revise(plan, at=at, governance_checklist=items)


def with_experiment_memo(plan: PlanDocument, memo: MemoSummary, *, at: datetime) -> PlanDocument:
    """`plan` with the memo of `memo.experiment` replaced (or added); same plan if equal."""
    existing = next((m for m in plan.experiment_memos if m.experiment == memo.experiment), None)
    if existing == memo:
        return plan
    memos = _upsert(plan.experiment_memos, memo, memo.experiment, lambda m: m.experiment)
    return _revise(plan, at=at, experiment_memos=memos)
