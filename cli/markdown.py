"""The report as Markdown (GitHub-flavoured tables) to paste into a ticket or a wiki page.

Same sections and numbers as the terminal view (`cli.render`), in the same units.

>>> from cli.render import pct
>>> from monitor.report import DashboardRow
>>> row = DashboardRow(dimension="profile", value="new|user", exposures=1200, clicks=60, conversions=12,
...                    revenue=10.0, ctr=0.05, cvr=0.01, fallback_rate=0.0, recent_cvr=None, change=None, flagged=False)
>>> print(table(["value", "exposures", "CVR"], [[row.value, f"{row.exposures:,}", pct(row.cvr)]]))
| value | exposures | CVR |
|---|---|---|
| new\\|user | 1,200 | 1.00 % |
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from cli.render import DASHBOARD_COLUMNS, GLOSSARY, INCIDENT_COLUMNS, dashboard_cells, incident_cells, warming_summary
from experiments.memo import render_memo
from monitor.report import Report


def _cell(text: object) -> str:
    # A pipe would end the cell (series names are joined with pipes); a newline would end the row.
    return str(text).replace("|", "\\|").replace("\n", "<br>")


def table(columns: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(report: Report) -> str:
    span = (
        f"{report.window_start:%Y-%m-%d %H:%M} → {report.window_end:%Y-%m-%d %H:%M} UTC"
        if report.window_start and report.window_end
        else "no closed bucket yet"
    )
    dead = ", ".join(f"{reason} {n:,}" for reason, n in report.dead_letters.items()) if report.dead_letters else "none"
    parts = [
        f"# Personalization Monitor: {report.initiative}",
        "",
        f"Window {report.window} ({span}) · detail {report.detail} · alert threshold "
        f"{report.alert_threshold:.0%} relative drop",
        "",
    ]
    if report.window_note:
        parts += [f"> {report.window_note}", ""]
    parts += [
        f"Events counted {report.counted_events:,} · late and dropped {report.late_dropped:,} · "
        f"redelivered and skipped {report.duplicates_skipped:,} · dead letters: {dead}",
        "",
        "## Dashboard",
        "",
        "### Total",
        "",
        table(DASHBOARD_COLUMNS, [dashboard_cells(report.totals)]),
    ]
    for dimension in dict.fromkeys(row.dimension for row in report.dashboard):
        rows = [dashboard_cells(row) for row in report.dashboard if row.dimension == dimension]
        parts += ["", f"### By {dimension}", "", table(DASHBOARD_COLUMNS, rows)]
    if report.series:
        parts += [
            "",
            "### By series (initiative | profile | channel | variant)",
            "",
            table(DASHBOARD_COLUMNS, [dashboard_cells(row) for row in report.series]),
        ]
    parts += ["", f"## Incidents ({len(report.incidents)})", ""]
    parts.append(
        table(INCIDENT_COLUMNS, [incident_cells(line) for line in report.incidents])
        if report.incidents
        else "No incident opened or open in the window."
    )
    if report.detail == "full":
        playbooks = {line.kind: line.playbook for line in report.incidents}
        if playbooks:
            parts += ["", "### Playbooks", ""] + [f"- **{kind}**: {text}" for kind, text in sorted(playbooks.items())]
    parts += [
        "",
        "## Governance checklist",
        "",
        table(
            ["item", "status", "owner", "summary"],
            [
                [item.item, item.status.upper() if item.status == "fail" else item.status, item.owner, item.summary]
                for item in report.governance_checklist
            ],
        ),
    ]
    parts += ["", "## Consent adherence", ""]
    parts.append(
        table(
            ["channel", "personalized", "violations", "adherence"],
            [
                [
                    line.channel,
                    f"{line.personalized:,}",
                    f"{line.violations:,}",
                    "–" if line.adherence_pct is None else f"{line.adherence_pct:.3f} %",
                ]
                for line in report.consent_adherence
            ],
        )
        if report.consent_adherence
        else "No personalized exposure in the window."
    )
    if report.pending_approvals:
        parts += ["", "## Pending approvals", ""] + [
            f"- {c['action']} of {c['rule_id']} by {c['author']} at {c['at'][:16]} (ticket {c['ticket'] or 'none'})"
            for c in report.pending_approvals
        ]
    open_items = [item for item in report.backlog if item.status == "open"]
    parts += ["", f"## Backlog ({len(open_items)} open of {len(report.backlog)})", ""]
    shown = report.backlog if report.detail == "full" else open_items
    parts.append(
        table(
            ["item", "owner", "priority", "due", "status"],
            [
                [
                    item.title,
                    item.owner,
                    item.priority,
                    f"{item.due_at:%Y-%m-%d %H:%M}" if item.due_at else "",
                    item.status,
                ]
                for item in shown
            ],
        )
        if shown
        else "No open backlog item."
    )
    parts += ["", "## Experiments", ""]
    if not report.experiments:
        parts.append("No experiment traffic seen for this initiative in the events.")
    for memo in report.experiments:
        # The memo's own headings go one level down, under this section.
        parts.append(render_memo(memo, detail=report.detail).replace("## Experiment", "### Experiment", 1))
    revision = "not written yet" if report.plan_revision is None else f"revision {report.plan_revision}"
    parts += [
        "",
        "## Status",
        "",
        f"- Series still warming up (no alerts yet): {warming_summary(report)}",
        f"- Plan: {revision}, in `{report.plan_dir}/`",
    ]
    if report.detail == "full":
        parts += ["", "## Glossary", ""] + [f"- **{name}**: {meaning}" for name, meaning in GLOSSARY.items()]
    return "\n".join(parts) + "\n"
