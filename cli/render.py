"""Prints a report in the terminal with rich tables."""

from __future__ import annotations

from rich.console import Console, Group
from rich.markdown import Markdown
from rich.panel import Panel
from rich.table import Table

from experiments.memo import render_memo
from plans.document import ChecklistItem, PlanDocument
from monitor.report import DashboardRow, Report


def _pct(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value * 100:.{digits}f} %"


RATES = {"ctr", "cvr", "fallback_rate", "exposure_share", "consent_rate"}
COUNTS = {"exposures", "violations", "rule_changes"}


def measured(value: float, measure: str) -> str:
    """An incident's observed or expected value in its own unit.

    >>> measured(0.0512, "cvr"), measured(102.0, "exposures"), measured(1005.7, "age_seconds"), measured(44.04, "latency_ms")
    ('5.12 %', '102', '16.8 min', '44.0 ms')
    >>> measured(19.0, "violations"), measured(0.2725, "fallback_rate")
    ('19', '27.25 %')
    """
    if measure in RATES:
        return _pct(value)
    if measure in COUNTS:
        return f"{value:,.0f}"
    if measure == "age_seconds":
        return f"{value / 60:.1f} min"
    if measure == "latency_ms":
        return f"{value:.1f} ms"
    return f"{value:,.2f}"


def _dashboard_table(title: str, rows: list[DashboardRow], threshold: float) -> Table:
    table = Table(title=title, title_justify="left", expand=False)
    for column in ("value", "exposures", "clicks", "conversions", "revenue", "CTR", "CVR", "fallback",
                   "CVR 24 h", "change"):
        table.add_column(column, justify="left" if column == "value" else "right")
    for row in rows:
        change = "–" if row.change is None else f"{row.change * 100:+.1f} %"
        if row.flagged:
            change = f"[bold red]{change} ≥{threshold * 100:.0f} % drop[/]"
        table.add_row(row.value, f"{row.exposures:,}", f"{row.clicks:,}", f"{row.conversions:,}",
                      f"{row.revenue:,.2f}", _pct(row.ctr), _pct(row.cvr), _pct(row.fallback_rate),
                      _pct(row.recent_cvr), change)
    return table


_STATUS_STYLE = {"pass": "[green]pass[/]", "fail": "[bold red]FAIL[/]", "pending": "[yellow]pending[/]"}


def checklist_table(title: str, items: list[tuple[str, ChecklistItem]], *, show_initiative: bool = False) -> Table:
    """The governance checklist: one row per (initiative, item), its status, owner and summary."""
    table = Table(title=title, title_justify="left")
    for column in (("initiative",) if show_initiative else ()) + ("item", "status", "owner", "summary"):
        table.add_column(column)
    for initiative, item in items:
        cells = (item.item, _STATUS_STYLE[item.status], item.owner, item.summary)
        table.add_row(*(((initiative,) if show_initiative else ()) + cells))
    return table


def _dead_letters(report: Report) -> str:
    if not report.dead_letters:
        return "\ninput: no dead letters"
    reasons = " · ".join(f"{kind} {n:,}" for kind, n in report.dead_letters.items())
    return f"\n[bold red]input: {sum(report.dead_letters.values()):,} records dead-lettered[/] ({reasons})"


def render_report(report: Report, console: Console | None = None) -> None:
    console = console or Console()
    span = (f"{report.window_start:%Y-%m-%d %H:%M} → {report.window_end:%Y-%m-%d %H:%M} UTC"
            if report.window_start and report.window_end else "no closed bucket yet")
    console.print(Panel(
        f"[bold]{report.initiative}[/] · window {report.window} ({span}) · detail {report.detail}\n"
        + (f"[yellow]{report.window_note}[/]\n" if report.window_note else "") +
        f"events counted {report.counted_events:,} · late and dropped {report.late_dropped:,} · "
        f"redelivered and skipped {report.duplicates_skipped:,} · "
        f"alert threshold {report.alert_threshold * 100:.0f} % relative drop" + _dead_letters(report),
        title="Personalization Monitor"))
    console.print(_dashboard_table("Total", [report.totals], report.alert_threshold))
    for dimension in dict.fromkeys(row.dimension for row in report.dashboard):
        rows = [row for row in report.dashboard if row.dimension == dimension]
        console.print(_dashboard_table(f"By {dimension}", rows, report.alert_threshold))
    if report.series:
        console.print(_dashboard_table("By series (initiative | profile | channel | variant)", report.series,
                                       report.alert_threshold))
    incidents = Table(title=f"Incidents ({len(report.incidents)})", title_justify="left")
    for column in ("incident", "kind", "status", "severity", "owner", "series", "period", "opened",
                   "observed", "expected"):
        incidents.add_column(column)
    for line in report.incidents:
        status = line.status if line.status == "opened" else f"{line.status} {line.updated_at:%m-%d %H:%M}"
        owner = line.owner if line.assignee is None else f"{line.owner}: {line.assignee}" + (
            f" ({line.assignee_reason})" if line.assignee_reason else "")
        incidents.add_row(line.incident_id, line.kind, status, line.severity, owner,
                          "\n".join(line.series), line.period, f"{line.opened_at:%m-%d %H:%M}",
                          measured(line.observed, line.measure), measured(line.expected, line.measure))
    console.print(incidents)
    if report.detail == "full":
        playbooks = {line.kind: line.playbook for line in report.incidents}
        if playbooks:
            console.print(Panel(Group(*(f"[bold]{kind}[/]: {text}" for kind, text in sorted(playbooks.items()))),
                                title="Playbooks"))
    console.print(checklist_table(f"Governance checklist: {report.initiative}",
                                  [(report.initiative, item) for item in report.governance_checklist]))
    if report.consent_adherence:
        console.print("Consent adherence: " + " · ".join(
            f"{line.channel} {line.adherence_pct:.3f} % ({line.violations:,} of {line.personalized:,})"
            for line in report.consent_adherence if line.adherence_pct is not None))
    for change in report.pending_approvals:
        console.print(f"Pending approval: {change['action']} of {change['rule_id']} by {change['author']} "
                      f"at {change['at'][:16]} (ticket {change['ticket'] or 'none'})")
    if report.backlog:
        open_items = [item for item in report.backlog if item.status == "open"]
        backlog = Table(title=f"Backlog ({len(open_items)} open of {len(report.backlog)})", title_justify="left")
        for column in ("item", "owner", "priority", "due", "status"):
            backlog.add_column(column)
        # Summary: the open items only; full: all of them.
        for item in report.backlog if report.detail == "full" else open_items:
            backlog.add_row(item.title, item.owner, item.priority,
                            f"{item.due_at:%m-%d %H:%M}" if item.due_at else "", item.status)
        console.print(backlog)
    if not report.experiments:
        console.print("Experiments: no experiment traffic seen for this initiative (events name none).")
    for memo in report.experiments:
        console.print(Panel(Markdown(render_memo(memo, detail=report.detail)),
                            title=f"Experiment memo: {memo.summary.experiment}"))
    warming = ", ".join(report.warming_up) if report.warming_up else "none"
    console.print(f"Series still warming up (no alerts yet): {warming}")
    revision = "not written yet" if report.plan_revision is None else f"revision {report.plan_revision}"
    console.print(f"Plan: {revision}, in {report.plan_dir}/")


def render_plan(plan: PlanDocument, console: Console) -> None:
    """One plan revision: header, stages, feeds, success metrics, open incidents, backlog."""
    console.print(Panel(f"[bold]{plan.initiative}[/] · revision {plan.revision} · written "
                        f"{plan.updated_at:%Y-%m-%d %H:%M} UTC · pattern {plan.pattern} · "
                        f"{len(plan.change_log)} change-log entries", title="Plan"))
    tables = [
        ("Stages", ("stage", "status", "owner"), [(s.name, s.status, s.owner_role) for s in plan.stages]),
        ("Feeds", ("feed", "status", "last event"),
         [(f.name, f.status, f"{f.last_event_time:%m-%d %H:%M}" if f.last_event_time else "") for f in plan.feeds]),
        ("Success metrics", ("metric", "current", "target", "unit"),
         [(m.name, "" if m.current is None else f"{m.current:g}", f"{m.direction} {m.target:g}", m.unit)
          for m in plan.success_metrics]),
        ("Open incidents", ("incident", "kind", "severity", "owner", "opened"),
         [(i.incident_id, i.kind, i.severity, i.owner, f"{i.opened_at:%m-%d %H:%M}") for i in plan.open_incidents]),
        ("Backlog", ("item", "owner", "priority", "due", "status"),
         [(b.title, b.owner, b.priority, f"{b.due_at:%m-%d %H:%M}" if b.due_at else "", b.status)
          for b in plan.backlog]),
    ]
    for title, columns, rows in tables:
        table = Table(title=f"{title} ({len(rows)})", title_justify="left")
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(*row)
        console.print(table)
