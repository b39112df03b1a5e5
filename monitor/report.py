"""The report: dashboard snapshot, incidents with owners, warm-up status.

Built from the pipeline's state by both drivers (the worker serves it as JSON
at `/pmon/report/`); `cli.render` prints it. The window ends at the
initiative's watermark (event time), so a replay reports what live would.
"""

from __future__ import annotations

from datetime import datetime, timezone
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from experiments.memo import ExperimentMemo
from governance.scan import GOVERNANCE_KINDS, GovernanceState, adherence_pct
from incidents.model import IncidentEvent
from incidents.roster import assignee_of
from plans.document import BacklogItem, ChecklistItem
from monitor.messages import Counters
from monitor.windows import BucketRow

if TYPE_CHECKING:  # the stage imports nothing from here; the annotation only documents the argument
    from monitor.initiative_stage import InitiativeStage

WINDOWS = {"7d": 7, "14d": 14, "30d": 30}
Dimension = Literal["profile", "channel", "variant", "cohort"]
SUMMARY_DIMENSIONS: tuple[Dimension, ...] = ("profile", "channel", "variant")
_SERIES_PARTS = {"profile": 1, "channel": 2, "variant": 3}


class ReportRequest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    initiative: str = Field(min_length=1)
    window: Literal["7d", "14d", "30d"] = "7d"
    detail: Literal["summary", "full"] = "summary"
    dimension: Literal["profile", "channel", "cohort"] | None = None
    alert_threshold: float | None = Field(None, gt=0, lt=1)

    @classmethod
    def from_query(cls, query: dict[str, str]) -> "ReportRequest":
        return cls.model_validate({k: v for k, v in query.items() if v != ""})


class DashboardRow(BaseModel):
    dimension: str
    value: str
    exposures: int
    clicks: int
    conversions: int
    revenue: float
    ctr: float | None
    cvr: float | None
    fallback_rate: float | None
    recent_cvr: float | None = Field(description="Conversion rate over the last 24 closed hours.")
    change: float | None = Field(description="Relative change of the recent rate against the window's.")
    flagged: bool = Field(description="The recent rate dropped by at least the alert threshold.")


class IncidentLine(BaseModel):
    incident_id: str
    kind: str
    status: str = Field(description="The latest transition.")
    severity: str
    owner: str
    series: list[str]
    period: str
    observed: float = Field(description="The observed value when the incident opened.")
    expected: float = Field(description="The expected value when the incident opened.")
    measure: str = Field(description="What observed and expected measure: a KPI name, `exposure_share`, or "
                                     "`age_seconds` for a feed.")
    opened_at: datetime
    updated_at: datetime
    playbook: str
    assignee: str | None = Field(None, description="The person on duty for the owner role (PMON_ROSTER).")
    assignee_reason: str | None = Field(None, description="Why the assignee is not the role's lead.")


class AdherenceLine(BaseModel):
    channel: str
    personalized: int = Field(description="Personalized (non-fallback) exposures in the window's closed buckets.")
    violations: int = Field(description="Of them (or of later ones, convicted at once), to users without consent: "
                                        "violations by exposures since the window's start.")
    adherence_pct: float | None


class Report(BaseModel):
    initiative: str
    window: str
    window_start: datetime | None
    window_end: datetime | None
    window_note: str | None = Field(None, description="Set when the window is longer than the data: what it covers.")
    detail: str
    alert_threshold: float
    totals: DashboardRow
    dashboard: list[DashboardRow]
    series: list[DashboardRow]
    incidents: list[IncidentLine] = Field(description="Opened in the window, or open or resolved during it.")
    warming_up: list[str]
    counted_events: int
    late_dropped: int
    duplicates_skipped: int = Field(0, description="Redelivered records not counted twice.")
    dead_letters: dict[str, int] = Field(default_factory=dict, description=(
        "Input records sent to the dead-letter topic since the initiative was first seen, by reason (values "
        "left out); counted with the engagement batches they arrived in."))
    source_offsets_lost: int = Field(0, description="Source offsets no partial covered: lost between the stages, "
                                                    "each gap also a monitoring_degraded incident.")
    plan_revision: int | None
    plan_dir: str
    governance_checklist: list[ChecklistItem] = Field(description=(
        "Pass / fail / pending, evidence and owner, over the window: consent from the window's adherence, the other "
        "items' status at the window's end with the incidents of their kind in the window."))
    consent_adherence: list[AdherenceLine]
    pending_approvals: list[dict] = Field(description="Rule changes waiting for an approver.")
    experiments: list[ExperimentMemo] = Field(description="Per experiment of the initiative, the latest readout, "
                                                          "recommendation and memo.")
    backlog: list[BacklogItem] = Field(default_factory=list, description=(
        "The plan's backlog: each incident's remediation steps and post-incident review, with owner and due "
        "time; open items first, soonest due first."))


def _rates(dimension: str, value: str, window: Counters, recent: Counters, threshold: float) -> DashboardRow:
    cvr = window.conversions / window.exposures if window.exposures else None
    recent_cvr = recent.conversions / recent.exposures if recent.exposures else None
    change = (recent_cvr / cvr - 1.0) if cvr and recent_cvr is not None else None
    return DashboardRow(
        dimension=dimension, value=value, exposures=window.exposures, clicks=window.clicks,
        conversions=window.conversions, revenue=round(window.revenue, 2),
        ctr=window.clicks / window.exposures if window.exposures else None, cvr=cvr,
        fallback_rate=window.fallbacks / window.exposures if window.exposures else None,
        recent_cvr=recent_cvr, change=change, flagged=change is not None and change <= -threshold)


def _adherence_in(rows: list[BucketRow], governance: GovernanceState, since: float | None) -> list[AdherenceLine]:
    """Per channel: the window's personalized exposures (its closed buckets), and the violations convicted among
    exposures since the window's start (also in buckets still open: a violation counts at once)."""
    counts: dict[str, list[int]] = {}
    for row in rows:
        for channel, n in row.governance.personalized.items():
            counts.setdefault(channel, [0, 0])[0] += n
    for at, channel in governance.convicted.values():
        if since is None or at >= since:
            counts.setdefault(channel, [0, 0])[1] += 1
    return [AdherenceLine(channel=channel, personalized=n, violations=v, adherence_pct=adherence_pct(n, v))
            for channel, (n, v) in sorted(counts.items())]


def _incident_line(opened: IncidentEvent, latest: IncidentEvent, roster: Mapping[str, Any]) -> IncidentLine:
    assignee, reason = assignee_of(roster, latest.owner, latest.occurred_at.date())
    return IncidentLine(
        assignee=assignee, assignee_reason=reason,
        incident_id=latest.incident_id, kind=latest.kind, status=latest.transition, severity=latest.severity,
        owner=latest.owner, series=latest.series, period=latest.period, observed=opened.evidence.observed,
        expected=opened.evidence.expected, measure=measure_of(opened), opened_at=opened.occurred_at,
        updated_at=latest.occurred_at, playbook=latest.playbook)


def measure_of(incident: IncidentEvent) -> str:
    detail = incident.evidence.detail
    return "age_seconds" if "age_seconds" in detail else str(detail.get("kpi", "value"))


def build_report(pipeline: InitiativeStage, request: ReportRequest) -> Report | None:
    """The report of one initiative, or None when the monitor has never seen it."""
    state, settings = pipeline.state, pipeline.settings
    clock = state.clocks.get(request.initiative)
    if clock is None:
        return None
    threshold = request.alert_threshold or settings.effective_alert_threshold
    end = clock.closed_until
    since = end - WINDOWS[request.window] * 86_400 if end else None
    kept = pipeline.windows.closed_rows(request.initiative, end - settings.retention_days * 86_400) if end else []
    rows = [row for row in kept if row.start >= since] if since is not None else []
    recent_since = (end or 0) - 86_400
    dimensions: tuple[Dimension, ...] = (request.dimension,) if request.dimension else SUMMARY_DIMENSIONS
    window_totals, recent_totals = Counters(), Counters()
    by_value: dict[tuple[str, str], tuple[Counters, Counters]] = {}
    by_series: dict[str, tuple[Counters, Counters]] = {}
    for row in rows:
        recent = row.start >= recent_since
        for series, counters in row.series.items():
            window_totals.merge(counters)
            if recent:
                recent_totals.merge(counters)
            pair = by_series.setdefault(series, (Counters(), Counters()))
            pair[0].merge(counters)
            if recent:
                pair[1].merge(counters)
            parts = series.split("|")
            for dimension in dimensions:
                if dimension in _SERIES_PARTS:
                    cell = by_value.setdefault((dimension, parts[_SERIES_PARTS[dimension]]), (Counters(), Counters()))
                    cell[0].merge(counters)
                    if recent:
                        cell[1].merge(counters)
        if "cohort" in dimensions:
            for cohort, counters in row.cohorts.items():
                cell = by_value.setdefault(("cohort", cohort), (Counters(), Counters()))
                cell[0].merge(counters)
                if recent:
                    cell[1].merge(counters)
    prefix = request.initiative + "|"
    # The window's incidents: opened in it, or open (or resolved) during it.
    incidents = sorted((pair for pair in state.incidents.values()
                        if pair is not None and pair[0].initiative == request.initiative
                        and (since is None or pair[1].transition != "resolved" or pair[1].occurred_at.timestamp() >= since)),
                       key=lambda pair: (pair[0].occurred_at, pair[0].incident_id))
    note = None
    if kept and since is not None and kept[0].start - since > settings.bucket_seconds:  # not for the edge bucket
        days = (end - kept[0].start) / 86_400
        note = (f"the window asks for {WINDOWS[request.window]} days; the data hold {days:.1f} days of closed "
                f"buckets, from {datetime.fromtimestamp(kept[0].start, tz=timezone.utc):%Y-%m-%d %H:%M} UTC")
    warming = sorted(key.rsplit("|", 1)[0] for key, series in state.series.items()
                     if key.startswith(prefix) and series is not None and series.detector.warming_up)
    plan = state.plans.get(request.initiative)
    governance = state.governance.get(request.initiative) or GovernanceState()
    adherence = _adherence_in(rows, governance, since)
    opened_in_window: dict[str, list[str]] = {}
    for opened, _ in incidents:
        if opened.kind in GOVERNANCE_KINDS and (since is None or opened.occurred_at.timestamp() >= since):
            opened_in_window.setdefault(opened.kind, []).append(opened.incident_id)
    utc = lambda epoch: datetime.fromtimestamp(epoch, tz=timezone.utc) if epoch is not None else None  # noqa: E731
    return Report(
        initiative=request.initiative, window=request.window,
        window_start=utc(rows[0].start) if rows else None, window_end=utc(end), window_note=note,
        detail=request.detail,
        alert_threshold=threshold,
        totals=_rates("total", "all", window_totals, recent_totals, threshold),
        dashboard=[_rates(d, v, *by_value[(d, v)], threshold) for d, v in sorted(by_value)],
        series=[_rates("series", s, *by_series[s], threshold) for s in sorted(by_series)]
        if request.detail == "full" else [],
        incidents=[_incident_line(*pair, settings.roster) for pair in incidents],
        warming_up=warming,
        counted_events=clock.counted, late_dropped=clock.late_dropped, duplicates_skipped=clock.duplicates, source_offsets_lost=clock.gaps,
        dead_letters=dict(sorted(clock.dead_letters.items(), key=lambda kv: -kv[1])),
        plan_revision=plan.revision if plan is not None else None,
        backlog=sorted(plan.backlog if plan is not None else (),
                       key=lambda b: (b.status != "open", b.due_at or b.created_at, b.id)),
        plan_dir=str(settings.plan_dir),
        governance_checklist=list(pipeline.governance.checklist(
            governance, adherence={line.channel: (line.personalized, line.violations) for line in adherence},
            opened=opened_in_window)),
        consent_adherence=adherence,
        pending_approvals=[change.describe() for change in governance.audit.pending_approvals()],
        experiments=[state.memo for _, state in sorted((state.experiments.get(request.initiative) or {}).items())
                     if state.memo is not None])

