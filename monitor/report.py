"""The report: dashboard snapshot, incidents with owners, warm-up status.

Built from the pipeline's state by both drivers (the worker serves it as JSON
at `/pmon/report/`); `cli.render` prints it. The window ends at the
initiative's watermark (event time), so a replay reports what live would.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from experiments.memo import ExperimentMemo
from governance.scan import GOVERNANCE_KINDS, GovernanceState, adherence_pct
from incidents.model import IncidentEvent, measure_of
from incidents.roster import assignee_of
from incidents.series import FIELDS, SEPARATOR, split_detector_key
from incidents.timeutil import utc
from monitor.messages import Counters
from monitor.report_request import WINDOWS, Detail, ReportRequest, Window
from monitor.windows import BucketRow
from plans.document import BacklogItem, ChecklistItem

if TYPE_CHECKING:  # the stage imports nothing from here; the annotation only documents the argument
    from monitor.initiative_stage import InitiativeStage

Dimension = Literal["profile", "channel", "variant", "cohort"]
SUMMARY_DIMENSIONS: tuple[Dimension, ...] = ("profile", "channel", "variant")
_SERIES_PARTS = {name: FIELDS.index(name) for name in ("profile", "channel", "variant")}  # the dimensions in a key


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
    measure: str = Field(
        description="What observed and expected measure: a KPI name, `exposure_share`, or `age_seconds` for a feed."
    )
    opened_at: datetime
    updated_at: datetime
    playbook: str
    assignee: str | None = Field(None, description="The person on duty for the owner role (PMON_ROSTER).")
    assignee_reason: str | None = Field(None, description="Why the assignee is not the role's lead.")


class AdherenceLine(BaseModel):
    channel: str
    personalized: int = Field(description="Personalized (non-fallback) exposures in the window's closed buckets.")
    violations: int = Field(
        description="Of them (or of later ones, convicted at once), to users without consent: "
        "violations by exposures since the window's start."
    )
    adherence_pct: float | None


class TrendPoint(BaseModel):
    start: datetime = Field(description="The closed bucket's start.")
    exposures: int = Field(description="Exposures of the series in the bucket.")
    clicks: int = Field(description="Clicks of the series in the bucket.")
    conversions: int = Field(description="Conversions of the series in the bucket.")
    ctr: float | None = Field(description="Clicks per exposure; None without exposures.")
    cvr: float | None = Field(description="Conversions per exposure; None without exposures.")
    anomalies: list[str] = Field(
        default_factory=list,
        description=("Incidents whose opening judged this bucket of this series (their ids): the anomalies to mark."),
    )


class SeriesTrend(BaseModel):
    series: str = Field(description="initiative|profile|channel|variant.")
    points: list[TrendPoint] = Field(
        description="One per closed bucket of the window, oldest first; zeros for an hour the series was silent in."
    )


class RuleChangeLine(BaseModel):
    at: datetime = Field(description="The change's event time.")
    rule_id: str = Field(description="The rule changed.")
    action: str = Field(description="What was done to it (created, updated, rolled_out, ...).")
    author: str = Field(description="Who made the change.")
    approver: str | None = Field(description="Who approved it; None when nobody did.")
    ticket: str | None = Field(description="The change ticket; None without one.")
    experiment: str | None = Field(description="The experiment the change names, if any.")
    approved: bool = Field(description="Approved with a ticket: change control satisfied.")


class LiftPoint(BaseModel):
    at: datetime = Field(description="The end of the bucket the look read.")
    lift: float | None = Field(description="Relative lift of the primary metric; None while it cannot be computed.")
    lift_low: float | None = Field(
        description="Lower bound of the lift's interval (always-valid for the sequential method)."
    )
    lift_high: float | None = Field(description="Upper bound of the lift's interval.")


class LiftHistory(BaseModel):
    experiment: str = Field(description="The experiment.")
    variant: str | None = Field(description="The variant compared with the control, as the latest memo names it.")
    metric: str = Field(description="The primary success metric the lift is of.")
    points: list[LiftPoint] = Field(
        description="One per readout look in the window, oldest first (the stage keeps the last 720 looks)."
    )


class Report(BaseModel):
    initiative: str
    window: Window
    window_start: datetime | None
    window_end: datetime | None
    window_note: str | None = Field(None, description="Set when the window is longer than the data: what it covers.")
    detail: Detail
    alert_threshold: float
    totals: DashboardRow
    dashboard: list[DashboardRow]
    series: list[DashboardRow]
    incidents: list[IncidentLine] = Field(description="Opened in the window, or open or resolved during it.")
    warming_up: dict[str, list[str]] = Field(
        description="Detector -> the series it watches that are still warming up (no alert from it yet)."
    )
    counted_events: int
    late_dropped: int
    duplicates_skipped: int = Field(0, description="Redelivered records not counted twice.")
    dead_letters: dict[str, int] = Field(
        default_factory=dict,
        description=(
            "Input records sent to the dead-letter topic since the initiative was first seen, by reason (values "
            "left out); counted with the engagement batches they arrived in."
        ),
    )
    source_offsets_lost: int = Field(
        0,
        description="Source offsets no partial covered: lost between the stages, "
        "each gap also a monitoring_degraded incident.",
    )
    plan_revision: int | None
    plan_dir: str
    governance_checklist: list[ChecklistItem] = Field(
        description=(
            "Pass / fail / pending, evidence and owner, over the window: consent from the window's adherence, "
            "the other items' status at the window's end with the incidents of their kind in the window."
        )
    )
    consent_adherence: list[AdherenceLine]
    pending_approvals: list[dict] = Field(description="Rule changes waiting for an approver.")
    experiments: list[ExperimentMemo] = Field(
        description="Per experiment of the initiative, the latest readout, recommendation and memo."
    )
    backlog: list[BacklogItem] = Field(
        default_factory=list,
        description=(
            "The plan's backlog: each incident's remediation steps and post-incident review, with owner and due "
            "time; open items first, soonest due first."
        ),
    )
    rule_changes: list[RuleChangeLine] = Field(
        default_factory=list,
        description=(
            "The audit log's rule changes since the window's start, oldest first (the log keeps the last 200)."
        ),
    )
    trends: list[SeriesTrend] = Field(
        default_factory=list,
        description=("With `trends`: per series of the window, its counts and rates per closed bucket."),
    )
    lift_history: list[LiftHistory] = Field(
        default_factory=list,
        description=(
            "With `trends`: per experiment with a readout, its primary lift and interval per look in the window."
        ),
    )


def _rates(dimension: str, value: str, window: Counters, recent: Counters, threshold: float) -> DashboardRow:
    cvr = window.conversions / window.exposures if window.exposures else None
    recent_cvr = recent.conversions / recent.exposures if recent.exposures else None
    change = (recent_cvr / cvr - 1.0) if cvr and recent_cvr is not None else None
    return DashboardRow(
        dimension=dimension,
        value=value,
        exposures=window.exposures,
        clicks=window.clicks,
        conversions=window.conversions,
        revenue=round(window.revenue, 2),
        ctr=window.clicks / window.exposures if window.exposures else None,
        cvr=cvr,
        fallback_rate=window.fallbacks / window.exposures if window.exposures else None,
        recent_cvr=recent_cvr,
        change=change,
        flagged=change is not None and change <= -threshold,
    )


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
    return [
        AdherenceLine(channel=channel, personalized=n, violations=v, adherence_pct=adherence_pct(n, v))
        for channel, (n, v) in sorted(counts.items())
    ]


def _incident_line(opened: IncidentEvent, latest: IncidentEvent, roster: Mapping[str, Any]) -> IncidentLine:
    assignee, reason = assignee_of(roster, latest.owner, latest.occurred_at.date())
    return IncidentLine(
        assignee=assignee,
        assignee_reason=reason,
        incident_id=latest.incident_id,
        kind=latest.kind,
        status=latest.transition,
        severity=latest.severity,
        owner=latest.owner,
        series=latest.series,
        period=latest.period,
        observed=opened.evidence.observed,
        expected=opened.evidence.expected,
        measure=measure_of(opened),
        opened_at=opened.occurred_at,
        updated_at=latest.occurred_at,
        playbook=latest.playbook,
    )


def _trends(
    rows: list[BucketRow], series: list[str], anomalies: dict[tuple[str, float], list[str]]
) -> list[SeriesTrend]:
    """Per series, one point per row: every series on the same time axis."""
    silent = Counters()
    trends = []
    for name in series:
        points = []
        for row in rows:
            c = row.series.get(name, silent)
            points.append(
                TrendPoint(
                    start=utc(row.start),
                    exposures=c.exposures,
                    clicks=c.clicks,
                    conversions=c.conversions,
                    ctr=c.clicks / c.exposures if c.exposures else None,
                    cvr=c.conversions / c.exposures if c.exposures else None,
                    anomalies=anomalies.get((name, row.start), []),
                )
            )
        trends.append(SeriesTrend(series=name, points=points))
    return trends


def _lift_history(experiments: Mapping[str, Any], since: float | None) -> list[LiftHistory]:
    return [
        LiftHistory(
            experiment=name,
            variant=state.memo.summary.variant,
            metric=state.memo.summary.primary_metric,
            points=[
                LiftPoint(at=utc(look.at), lift=look.lift, lift_low=look.low, lift_high=look.high)
                for look in state.history
                if since is None or look.at > since
            ],
        )
        for name, state in sorted(experiments.items())
        if state.memo is not None
    ]


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
            parts = series.split(SEPARATOR)  # once per series, not once per dimension (`field_of`)
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
    incidents = sorted(
        (
            pair
            for pair in state.incidents.values()
            if pair is not None
            and pair[0].initiative == request.initiative
            and (since is None or pair[1].transition != "resolved" or pair[1].occurred_at.timestamp() >= since)
        ),
        key=lambda pair: (pair[0].occurred_at, pair[0].incident_id),
    )
    note = None
    if kept and since is not None and kept[0].start - since > settings.bucket_seconds:  # not for the edge bucket
        assert end is not None  # since is set only with an end
        days = (end - kept[0].start) / 86_400
        note = (
            f"the window asks for {WINDOWS[request.window]} days; the data hold {days:.1f} days of closed "
            f"buckets, from {utc(kept[0].start):%Y-%m-%d %H:%M} UTC"
        )
    warming: dict[str, list[str]] = {}
    for key, series_state in sorted(state.series.items()):
        if key.startswith(prefix) and series_state is not None and series_state.detector.warming_up:
            name, detector = split_detector_key(key)
            warming.setdefault(detector, []).append(name)
    plan = state.plans.get(request.initiative)
    governance = state.governance.get(request.initiative) or GovernanceState()
    adherence = _adherence_in(rows, governance, since)
    opened_in_window: dict[str, list[str]] = {}
    for opened, _ in incidents:
        if opened.kind in GOVERNANCE_KINDS and (since is None or opened.occurred_at.timestamp() >= since):
            opened_in_window.setdefault(opened.kind, []).append(opened.incident_id)
    anomalies: dict[tuple[str, float], list[str]] = {}
    for opened, _ in incidents:
        for name in opened.series:
            anomalies.setdefault((name, opened.evidence.bucket_start.timestamp()), []).append(opened.incident_id)
    experiments = state.experiments.get(request.initiative) or {}
    return Report(
        initiative=request.initiative,
        window=request.window,
        window_start=utc(rows[0].start) if rows else None,
        window_end=None if end is None else utc(end),
        window_note=note,
        detail=request.detail,
        alert_threshold=threshold,
        totals=_rates("total", "all", window_totals, recent_totals, threshold),
        dashboard=[_rates(d, v, *by_value[(d, v)], threshold) for d, v in sorted(by_value)],
        series=[_rates("series", s, *by_series[s], threshold) for s in sorted(by_series)]
        if request.detail == "full"
        else [],
        incidents=[_incident_line(*pair, settings.roster) for pair in incidents],
        warming_up=warming,
        counted_events=clock.counted,
        late_dropped=clock.late_dropped,
        duplicates_skipped=clock.duplicates,
        source_offsets_lost=clock.gaps,
        dead_letters=dict(sorted(clock.dead_letters.items(), key=lambda kv: -kv[1])),
        plan_revision=plan.revision if plan is not None else None,
        backlog=sorted(
            plan.backlog if plan is not None else (), key=lambda b: (b.status != "open", b.due_at or b.created_at, b.id)
        ),
        plan_dir=str(settings.plan_dir),
        governance_checklist=list(
            pipeline.governance.checklist(
                governance,
                adherence={line.channel: (line.personalized, line.violations) for line in adherence},
                opened=opened_in_window,
            )
        ),
        consent_adherence=adherence,
        pending_approvals=[change.describe() for change in governance.audit.pending_approvals()],
        experiments=[state.memo for _, state in sorted(experiments.items()) if state.memo is not None],
        rule_changes=[
            RuleChangeLine(
                at=datetime.fromtimestamp(c.at, tz=timezone.utc),
                rule_id=c.rule_id,
                action=c.action,
                author=c.author,
                approver=c.approver,
                ticket=c.ticket,
                experiment=c.experiment,
                approved=c.approved,
            )
            for c in governance.audit.log
            if since is None or c.at >= since
        ],
        trends=_trends(rows, sorted(by_series), anomalies) if request.trends else [],
        lift_history=_lift_history(experiments, since) if request.trends else [],
    )
