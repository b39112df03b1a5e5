"""Prints a report in the terminal with rich tables, fitted to the terminal's width.

At 80 columns nothing is cut: numbers never wrap, tables that would not fit
stack (a block per series or incident), series names are printed whole on their
own line. The summary is one screen (at most 40 lines at 80 columns); `--detail
full` prints every table and the glossary. Cells and the glossary are shared
with the Markdown view (`cli.markdown`).
"""

from __future__ import annotations

from rich import box
from rich.console import Console, Group
from rich.markdown import Markdown
from rich.panel import Panel
from rich.table import Table

from experiments.memo import render_memo
from monitor.report import DashboardRow, IncidentLine, Report
from plans.document import ChecklistItem, PlanDocument

WIDE = 120  # from this width the dashboard shows every column in one table and series in place

# One name per definition, in every view and the docs (docs/cli.md quotes this list).
GLOSSARY = {
    "exposures": "personalized or fallback impressions counted in the window's closed buckets",
    "CTR": "clicks / exposures",
    "CVR": "conversions / exposures (per exposure, not per user)",
    "fallback": "share of exposures served by the fallback rule instead of a personalized one",
    "CVR 24 h": "CVR over the last 24 closed hours of the window",
    "change": "CVR 24 h / CVR - 1; `!` marks a drop of at least the alert threshold",
    "users converting": "in an experiment memo (its metric `conversion`): share of a variant's users with at "
    "least one conversion",
    "conversions_per_user": "in an experiment memo: conversions / users of the variant",
    "consent adherence": "1 - violations / personalized exposures, over the window",
    "observed / expected": "an incident's value and its expectation when it opened, in the unit of its measure",
}


def pct(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value * 100:.{digits}f} %"


RATES = {"ctr", "cvr", "fallback_rate", "exposure_share", "consent_rate"}
COUNTS = {"exposures", "violations", "rule_changes"}


def measured(value: float, measure: str) -> str:
    """An incident's observed or expected value in its own unit.

    >>> measured(0.0512, "cvr"), measured(102.0, "exposures"), measured(1005.7, "age_seconds")
    ('5.12 %', '102', '16.8 min')
    >>> measured(44.04, "latency_ms")
    '44.0 ms'
    >>> measured(19.0, "violations"), measured(0.2725, "fallback_rate")
    ('19', '27.25 %')
    """
    if measure in RATES:
        return pct(value)
    if measure in COUNTS:
        return f"{value:,.0f}"
    if measure == "age_seconds":
        return f"{value / 60:.1f} min"
    if measure == "latency_ms":
        return f"{value:.1f} ms"
    return f"{value:,.2f}"


_STATUS_STYLE = {"pass": "[green]pass[/]", "fail": "[bold red]FAIL[/]", "pending": "[yellow]pending[/]"}


def status_word(status: str) -> str:
    """A checklist status as the terminal shows it (FAIL stands out)."""
    return _STATUS_STYLE[status]


def checklist_table(title: str, items: list[ChecklistItem]) -> Table:
    """The governance checklist: one row per item, its status, owner and summary."""
    table = Table(title=title, title_justify="left")
    for column in ("item", "status", "owner", "summary"):
        table.add_column(column)
    for item in items:
        table.add_row(item.item, _STATUS_STYLE[item.status], item.owner, item.summary)
    return table


def _dead_letters(report: Report) -> str:
    if not report.dead_letters:
        return " · no dead letters"
    reasons = " · ".join(f"{kind} {n:,}" for kind, n in report.dead_letters.items())
    return f"\n[bold red]input: {sum(report.dead_letters.values()):,} records dead-lettered[/] ({reasons})"


DASHBOARD_COLUMNS = (
    "value",
    "exposures",
    "clicks",
    "conversions",
    "revenue",
    "CTR",
    "CVR",
    "fallback",
    "CVR 24 h",
    "change",
)
_RATE_COLUMNS = ("value", "exposures", "CTR", "CVR", "fallback", "CVR 24 h", "change")
_COUNT_COLUMNS = ("value", "exposures", "clicks", "conversions", "revenue")
INCIDENT_COLUMNS = (
    "incident",
    "kind",
    "status",
    "severity",
    "owner",
    "series",
    "period",
    "opened",
    "observed",
    "expected",
)


def _change(row: DashboardRow) -> str:
    return "–" if row.change is None else f"{row.change * 100:+.1f} %" + ("!" if row.flagged else "")


def dashboard_cells(row: DashboardRow) -> list[str]:
    """The cells of DASHBOARD_COLUMNS for one row."""
    return [
        row.value,
        f"{row.exposures:,}",
        f"{row.clicks:,}",
        f"{row.conversions:,}",
        f"{row.revenue:,.2f}",
        pct(row.ctr),
        pct(row.cvr),
        pct(row.fallback_rate),
        pct(row.recent_cvr),
        _change(row),
    ]


def _owner(line: IncidentLine) -> str:
    if line.assignee is None:
        return line.owner
    return f"{line.owner}: {line.assignee}" + (f" ({line.assignee_reason})" if line.assignee_reason else "")


def _status(line: IncidentLine) -> str:
    return line.status if line.status == "opened" else f"{line.status} {line.updated_at:%m-%d %H:%M}"


def incident_cells(line: IncidentLine) -> list[str]:
    """The cells of INCIDENT_COLUMNS for one incident; series one per line."""
    return [
        line.incident_id,
        line.kind,
        _status(line),
        line.severity,
        _owner(line),
        "\n".join(line.series),
        line.period,
        f"{line.opened_at:%m-%d %H:%M}",
        measured(line.observed, line.measure),
        measured(line.expected, line.measure),
    ]


def warming_summary(report: Report) -> str:
    """Series still warming up, counted per detector: `none`, or `cvr_cusum 3 · volume_cusum 2`."""
    return " · ".join(f"{detector} {len(series)}" for detector, series in sorted(report.warming_up.items())) or "none"


def _table(title: str | None, columns: tuple[str, ...], *, text: tuple[str, ...] = ()) -> Table:
    # Numbers never wrap (a cut number is a wrong number); text columns fold instead.
    table = Table(
        title=title, title_justify="left", box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False, show_edge=False
    )
    for column in columns:
        if column in text or column == "value":
            table.add_column(column, overflow="fold")
        else:
            table.add_column(column, justify="right", no_wrap=True)
    return table


def _pick(cells: list[str], columns: tuple[str, ...]) -> list[str]:
    return [cells[DASHBOARD_COLUMNS.index(column)] for column in columns]


def _dashboard(report: Report, console: Console) -> None:
    """Total and every dimension's values in one table (labelled `dimension value`); narrow: rates only here."""
    columns = DASHBOARD_COLUMNS if console.width >= WIDE else _RATE_COLUMNS
    table = _table(f"Dashboard ({report.window})", columns)
    rows = [report.totals, *report.dashboard]
    for row in rows:
        cells = dashboard_cells(row)
        cells[0] = "total" if row.dimension == "total" else f"{row.dimension} {row.value}"
        table.add_row(*_pick(cells, columns))
    console.print(table)
    if report.detail == "full" and columns != DASHBOARD_COLUMNS:
        counts = _table("Dashboard counts", _COUNT_COLUMNS)
        for row in rows:
            cells = dashboard_cells(row)
            cells[0] = "total" if row.dimension == "total" else f"{row.dimension} {row.value}"
            counts.add_row(*_pick(cells, _COUNT_COLUMNS))
        console.print(counts)


def _series(report: Report, console: Console) -> None:
    if console.width >= WIDE:
        table = _table("By series (initiative | profile | channel | variant)", DASHBOARD_COLUMNS)
        for row in report.series:
            table.add_row(*dashboard_cells(row))
        console.print(table)
        return
    console.print("[bold]By series[/] (initiative | profile | channel | variant)")
    for row in report.series:
        cells = dict(zip(DASHBOARD_COLUMNS, dashboard_cells(row), strict=True))
        console.print(row.value, overflow="ignore", crop=False, soft_wrap=True)
        console.print("  " + " · ".join(f"{c} {cells[c]}" for c in ("exposures", "clicks", "conversions", "revenue")))
        console.print("  " + " · ".join(f"{c} {cells[c]}" for c in ("CTR", "CVR", "fallback", "CVR 24 h", "change")))


def _incidents(report: Report, console: Console) -> None:
    """A block per incident: the series whole on their own lines. The summary shows the three latest."""
    shown = report.incidents if report.detail == "full" else report.incidents[-3:]
    still_open = sum(1 for line in report.incidents if line.status != "resolved")
    more = f" (latest {len(shown)}; all with --detail full)" if len(shown) < len(report.incidents) else ""
    console.print(f"[bold]Incidents[/]: {len(report.incidents)} in the window, {still_open} not resolved{more}")
    for line in shown:
        console.print(f"  {line.incident_id} {line.kind} · {_status(line)}")
        if report.detail != "full":
            extra = f" (+{len(line.series) - 1} more)" if len(line.series) > 1 else ""
            console.print(f"    {line.severity} → {_owner(line)}")
            console.print(
                f"    {line.series[0] if line.series else ''}{extra}", overflow="ignore", crop=False, soft_wrap=True
            )
            continue
        console.print(f"    {line.severity} → {_owner(line)} · opened {line.opened_at:%m-%d %H:%M}")
        console.print(
            f"    observed {measured(line.observed, line.measure)} · expected "
            f"{measured(line.expected, line.measure)} ({line.measure}) · period {line.period} · series:"
        )
        for series in line.series:
            console.print(f"      {series}", overflow="ignore", crop=False, soft_wrap=True)
    if report.detail == "full":
        playbooks = {line.kind: line.playbook for line in report.incidents}
        if playbooks:
            console.print(
                Panel(
                    Group(*(f"[bold]{kind}[/]: {text}" for kind, text in sorted(playbooks.items()))), title="Playbooks"
                )
            )


def _checklist(report: Report, console: Console) -> None:
    if report.detail == "full" and console.width >= WIDE:
        console.print(checklist_table(f"Governance checklist ({report.window})", report.governance_checklist))
    elif report.detail == "full":
        console.print(f"[bold]Governance checklist ({report.window})[/]")
        for item in report.governance_checklist:
            console.print(f"  {_STATUS_STYLE[item.status]} {item.item} → {item.owner}")
            console.print(f"    {item.summary}")
    else:
        console.print(
            "[bold]Governance[/]: "
            + " · ".join(f"{item.item} {_STATUS_STYLE[item.status]}" for item in report.governance_checklist)
        )
        for item in report.governance_checklist:
            if item.status == "fail":
                console.print(f"  {item.item}: {item.summary} → {item.owner}")
    lines = [line for line in report.consent_adherence if line.adherence_pct is not None]
    if lines:
        console.print(
            "Consent adherence: "
            + " · ".join(
                f"{line.channel} {line.adherence_pct:.3f} % ({line.violations:,} of {line.personalized:,})"
                for line in lines
            )
        )
    for change in report.pending_approvals:
        console.print(
            f"Pending approval: {change['action']} of {change['rule_id']} by {change['author']} "
            f"at {change['at'][:16]} (ticket {change['ticket'] or 'none'})"
        )


def _backlog(report: Report, console: Console) -> None:
    open_items = [item for item in report.backlog if item.status == "open"]
    if report.detail != "full":
        if open_items:
            first = open_items[0]
            due = f"due {first.due_at:%m-%d %H:%M} " if first.due_at else ""
            console.print(
                f"[bold]Backlog[/]: {len(open_items)} open of {len(report.backlog)}; next {due}"
                f"{first.owner}: {first.title}",
                no_wrap=True,
                overflow="ellipsis",
            )
        else:
            console.print(f"[bold]Backlog[/]: nothing open ({len(report.backlog)} done)")
        return
    console.print(f"[bold]Backlog[/] ({len(open_items)} open of {len(report.backlog)})")
    for item in report.backlog:
        due = f" · due {item.due_at:%m-%d %H:%M}" if item.due_at else ""
        console.print(f"  {item.priority} {item.status}{due} · {item.owner}")
        console.print(f"    {item.title}")


def _experiments(report: Report, console: Console) -> None:
    if not report.experiments:
        console.print("Experiments: no experiment traffic seen for this initiative (events name none).")
    for memo in report.experiments:
        if report.detail == "full":
            text = render_memo(memo, detail="full")
            console.print(
                Panel(
                    Markdown(text if console.width >= WIDE else stack_tables(text)),
                    title=f"Experiment memo: {memo.summary.experiment}",
                )
            )
        else:
            state = memo.summary.state.replace("_", " ").upper()
            variant = f" {memo.summary.variant}" if memo.summary.variant else ""
            console.print(f"[bold]Experiment {memo.summary.experiment}[/]: {state}{variant} — {memo.summary.headline}")


def stack_tables(markdown: str) -> str:
    """Markdown with each table turned into a list, one item per row (`column value · ...`): a narrow terminal
    wraps a list but must cut a wide table.

    >>> print(stack_tables("x\\n\\n| a | b |\\n|---|---:|\\n| 1 | 2 |\\n| 3 | 4 |\\n\\ny"))
    x
    <BLANKLINE>
    - a 1 · b 2
    - a 3 · b 4
    <BLANKLINE>
    y
    """
    out: list[str] = []
    header: list[str] | None = None
    for line in markdown.splitlines():
        if not line.startswith("|"):
            header = None
            out.append(line)
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        elif not all(set(cell) <= set("-:") for cell in cells):
            # A row may have fewer cells than its header (or more): what is named is shown.
            pairs = zip(header, cells, strict=False)
            out.append("- " + " · ".join(f"{name} {value}" for name, value in pairs if value))
    return "\n".join(out)


def render_report(report: Report, console: Console | None = None) -> None:
    console = console or Console()
    span = (
        f"{report.window_start:%Y-%m-%d %H:%M} → {report.window_end:%Y-%m-%d %H:%M} UTC"
        if report.window_start and report.window_end
        else "no closed bucket yet"
    )
    console.print(f"[bold]{report.initiative}[/] · {report.window} window · {span}")
    if report.window_note:
        console.print(f"[yellow]{report.window_note}[/]")
    console.print(
        f"events counted {report.counted_events:,} · late and dropped {report.late_dropped:,} · "
        f"redelivered and skipped {report.duplicates_skipped:,}"
    )
    console.print(
        f"alert threshold {report.alert_threshold * 100:.0f} % relative drop · detail {report.detail}"
        + _dead_letters(report)
    )
    _dashboard(report, console)
    if report.series:
        _series(report, console)
    _incidents(report, console)
    _checklist(report, console)
    _backlog(report, console)
    _experiments(report, console)
    console.print(f"Warming up (series per detector, no alerts yet): {warming_summary(report)}")
    revision = "not written yet" if report.plan_revision is None else f"revision {report.plan_revision}"
    console.print(f"Plan: {revision}, in {report.plan_dir}/")
    if report.detail == "full":
        console.print(
            Panel("\n".join(f"[bold]{name}[/]: {meaning}" for name, meaning in GLOSSARY.items()), title="Glossary")
        )


def render_plan(plan: PlanDocument, console: Console) -> None:
    """One plan revision: header, stages, feeds, success metrics, open incidents, backlog."""
    console.print(
        Panel(
            f"[bold]{plan.initiative}[/] · revision {plan.revision} · written "
            f"{plan.updated_at:%Y-%m-%d %H:%M} UTC"
            + (f" (events to {plan.watermark:%Y-%m-%d %H:%M})" if plan.watermark else "")
            + f" · pattern {plan.pattern} · "
            f"{len(plan.change_log)} change-log entries",
            title="Plan",
        )
    )
    tables: list[tuple[str, tuple[str, ...], list[tuple[str, ...]]]] = [
        ("Stages", ("stage", "status", "owner"), [(s.name, s.status, s.owner_role) for s in plan.stages]),
        (
            "Feeds",
            ("feed", "status", "last event"),
            [(f.name, f.status, f"{f.last_event_time:%m-%d %H:%M}" if f.last_event_time else "") for f in plan.feeds],
        ),
        (
            "Success metrics",
            ("metric", "current", "target", "unit"),
            [
                (m.name, "" if m.current is None else f"{m.current:g}", f"{m.direction} {m.target:g}", m.unit)
                for m in plan.success_metrics
            ],
        ),
        (
            "Open incidents",
            ("incident", "kind", "severity", "owner", "opened"),
            [(i.incident_id, i.kind, i.severity, i.owner, f"{i.opened_at:%m-%d %H:%M}") for i in plan.open_incidents],
        ),
        (
            "Backlog",
            ("item", "owner", "priority", "due", "status"),
            [
                (b.title, b.owner, b.priority, f"{b.due_at:%m-%d %H:%M}" if b.due_at else "", b.status)
                for b in plan.backlog
            ],
        ),
    ]
    for title, columns, rows in tables:
        table = Table(title=f"{title} ({len(rows)})", title_justify="left")
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(*row)
        console.print(table)
