"""The report as one self-contained HTML dashboard: inline CSS and SVG drawn here, nothing fetched.

Each part is a `<section id=...>`: the header (initiative, window, counts, dead letters), KPI trends (CVR,
CTR and exposures per hour, one small multiple per series, with incidents and rule changes on the time
axis and the buckets that opened an incident marked), exposures and conversions by variant, each
experiment's lift over time with its interval band, governance (consent adherence, the checklist, rule
changes), the incident timeline with owners and assignees, and the backlog.

The charts are SVG generated here, not a vendored charting library: on the 14-day demo the file is a
fraction of the size (Vega-Lite's three scripts alone are 813 KB, plotly.js 4.6 MB) and Chromium shows
it sooner, with no script to run (the measurement: docs/dashboard.md). The trend and lift charts need a
report built with `ReportRequest(trends=True)`; without it those sections say so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from html import escape

from cli.render import measured, pct
from incidents.series import split_variant
from incidents.timeutil import utc
from monitor.report import IncidentLine, LiftHistory, Report, RuleChangeLine, SeriesTrend

# (key, title, unit) of the KPI charts, in the order shown.
KPIS: tuple[tuple[str, str, str], ...] = (
    ("cvr", "CVR (conversions per exposure)", "rate"),
    ("ctr", "CTR (clicks per exposure)", "rate"),
    ("exposures", "Exposures", "count"),
)
# The KPI chart an incident's measure belongs to; an anomaly of another measure (fallbacks, latency,
# revenue, violations) is ringed on every chart of its series instead of dotted on one.
_MEASURE_KPIS: dict[str, frozenset[str]] = {
    "cvr": frozenset({"cvr"}),
    "ctr": frozenset({"ctr"}),
    "ctr+cvr": frozenset({"ctr", "cvr"}),
    "exposures": frozenset({"exposures"}),
    "exposure_share": frozenset({"exposures"}),
}
# Colour per variant (by order of first appearance): control-like first, colour-blind safe (Okabe-Ito).
DECISION = "experiment_decision"
_VARIANT_COLOURS = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#000000")

_CSS = """
:root { --ink: #1f2933; --muted: #616e7c; --rule: #d9e2ec; --bg: #f7f9fb; --bad: #c62828; --warn: #ef6c00;
        --good: #2e7d32; --change: #6a1b9a; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: var(--ink); background: var(--bg); }
main { max-width: 1240px; margin: 0 auto; padding: 16px 20px 40px; }
section { background: #fff; border: 1px solid var(--rule); border-radius: 6px; padding: 12px 18px 16px;
          margin: 0 0 16px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 0 0 8px; }
h3 { font-size: 14px; margin: 12px 0 4px; }
p.note { color: var(--muted); margin: 4px 0; }
.facts { display: flex; flex-wrap: wrap; gap: 8px 24px; margin: 8px 0 0; padding: 0; list-style: none; }
.facts li b { display: block; font-size: 18px; }
.facts li span { color: var(--muted); font-size: 12px; }
table { border-collapse: collapse; width: 100%; margin: 6px 0; font-size: 13px; }
th, td { text-align: left; padding: 3px 8px; border-bottom: 1px solid var(--rule); vertical-align: top; }
th { background: var(--bg); font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.nowrap { white-space: nowrap; }
.badge { display: inline-block; padding: 0 6px; border-radius: 3px; font-size: 12px; font-weight: 600; color: #fff; }
.pass { background: var(--good); } .fail { background: var(--bad); } .pending { background: var(--warn); }
.critical { color: var(--bad); font-weight: 600; } .warning { color: var(--warn); }
figure.chart { margin: 8px 0 12px; } figcaption { font-weight: 600; margin: 0 0 4px; }
.multiples { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 4px 16px; }
.series-name { font-size: 11.5px; font-family: ui-monospace, "DejaVu Sans Mono", monospace; color: var(--muted); }
.legend { font-size: 12px; color: var(--muted); margin: 2px 0 6px; }
.legend i { display: inline-block; width: 10px; height: 10px; margin: 0 4px 0 12px; vertical-align: -1px; }
svg { display: block; width: 100%; height: auto; overflow: visible; }
svg text { font-size: 10px; fill: var(--muted); }
svg .grid { stroke: var(--rule); stroke-width: 1; }
svg .line { fill: none; stroke-width: 1.3; stroke-linejoin: round; }
svg .incident { stroke: var(--bad); stroke-width: 1; stroke-dasharray: 3 2; }
svg .change { stroke: var(--change); stroke-width: 1; stroke-dasharray: 1 2; }
svg .anomaly { fill: var(--bad); stroke: #fff; stroke-width: 1; }
svg .ring { fill: none; stroke: var(--bad); stroke-width: 1.5; }
svg .band { fill: #0072b2; fill-opacity: 0.18; stroke: none; }
svg .zero { stroke: var(--ink); stroke-width: 1; }
"""


_NO_TRENDS = '<p class="note">No time series: build the report with trends (ReportRequest(trends=True)).</p>'


# --------------------------------------------------------------------------- small formatting helpers
def _when(at: datetime | None) -> str:
    return "" if at is None else f"{at:%Y-%m-%d %H:%M}"


def _table(
    columns: Sequence[str], rows: Iterable[Sequence[str]], numeric: Iterable[int] = (), nowrap: Iterable[int] = ()
) -> str:
    """An HTML table; cells are HTML already (escape text before), `numeric` columns right-aligned, `nowrap`
    columns (ids, series, times) kept on one line."""
    classes = {i: "num" for i in numeric}
    for i in nowrap:
        classes[i] = (classes.get(i, "") + " nowrap").strip()
    attr = lambda i: f' class="{classes[i]}"' if i in classes else ""  # noqa: E731
    head = "".join(f"<th{attr(i)}>{escape(c)}</th>" for i, c in enumerate(columns))
    body = "".join(
        "<tr>" + "".join(f"<td{attr(i)}>{cell}</td>" for i, cell in enumerate(row)) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _badge(status: str) -> str:
    return f'<span class="badge {escape(status)}">{escape(status)}</span>'


def _f(value: float) -> str:
    """An SVG coordinate: one decimal keeps files small and lines sharp."""
    return f"{value:.1f}"


# --------------------------------------------------------------------------- scales and axes
@dataclass(frozen=True)
class _Scale:
    """A linear map from a domain [lo, hi] onto a pixel range [start, end]."""

    lo: float
    hi: float
    start: float
    end: float

    def __call__(self, value: float) -> float:
        span = self.hi - self.lo or 1.0
        return self.start + (value - self.lo) * (self.end - self.start) / span


def _nice_ticks(lo: float, hi: float, count: int = 4) -> list[float]:
    """Round tick values covering [lo, hi] (steps of 1, 2 or 5 times a power of ten).

    >>> _nice_ticks(0, 0.137)
    [0.0, 0.05, 0.1, 0.15]
    """
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(lo / step) * step
    ticks, value = [], first
    while value < hi + step * 0.5:
        ticks.append(round(value, 12))
        if value >= hi:
            break
        value += step
    return ticks


def _tick_label(value: float, unit: str) -> str:
    if unit == "rate":
        return f"{value * 100:.{0 if round(value * 100, 6).is_integer() else 1}f} %"
    if unit == "lift":
        return f"{value * 100:+.0f} %"
    return f"{value / 1000:.0f}k" if value >= 10_000 else f"{value:,.0f}"


def _time_ticks(lo: float, hi: float, most: int = 8) -> list[float]:
    """Midnights (UTC) in [lo, hi]: every day, or every few days so that at most `most` are labelled."""
    step = max(1, math.ceil((hi - lo) / 86_400 / most))
    first = utc(lo).replace(hour=0, minute=0, second=0, microsecond=0)
    if first.timestamp() < lo:
        first += timedelta(days=1)
    ticks, at = [], first
    while at.timestamp() <= hi:
        ticks.append(at.timestamp())
        at += timedelta(days=step)
    return ticks


def _axes(x: _Scale, y: _Scale, unit: str, *, most: int = 8) -> list[str]:
    """Horizontal grid lines with their labels, and the days (at most `most` labels) under the plot."""
    out = []
    for value in _nice_ticks(y.lo, y.hi):
        if y.lo <= value <= y.hi:
            py = _f(y(value))
            out.append(
                f'<line class="grid" x1="{_f(x.start)}" x2="{_f(x.end)}" y1="{py}" y2="{py}"/>'
                f'<text x="{_f(x.start - 4)}" y="{py}" dy="3" text-anchor="end">'
                f"{_tick_label(value, unit)}</text>"
            )
    for at in _time_ticks(x.lo, x.hi, most):
        px = _f(x(at))
        out.append(
            f'<line class="grid" x1="{px}" x2="{px}" y1="{_f(y.start)}" y2="{_f(y.start + 3)}"/>'
            f'<text x="{px}" y="{_f(y.start + 13)}" text-anchor="middle">'
            f"{utc(at):%m-%d}</text>"
        )
    return out


def _path(points: Iterable[tuple[float, float | None]], x: _Scale, y: _Scale) -> str:
    """An SVG path through the points; a None value breaks the line (an hour without exposures)."""
    parts, pen_down = [], False
    for at, value in points:
        if value is None:
            pen_down = False
            continue
        parts.append(f"{'L' if pen_down else 'M'}{_f(x(at))} {_f(y(value))}")
        pen_down = True
    return "".join(parts)


def _markers(x: _Scale, y: _Scale, incidents: Iterable[IncidentLine], changes: Iterable[RuleChangeLine]) -> list[str]:
    """Dashed lines at incidents' opening, dotted ones at rule changes, each with a tooltip."""
    marks = [
        ("incident", line.opened_at, f"{line.incident_id} {line.kind} opened {_when(line.opened_at)}")
        for line in incidents
    ]
    marks += [
        (
            "change",
            change.at,
            f"{change.action} of {change.rule_id} by {change.author} {_when(change.at)}"
            + ("" if change.approved else " (not approved)"),
        )
        for change in changes
    ]
    out = []
    for css, when, title in marks:
        if x.lo <= when.timestamp() <= x.hi:
            px = _f(x(when.timestamp()))
            out.append(
                f'<line class="{css}" x1="{px}" x2="{px}" y1="{_f(y.end)}" y2="{_f(y.start)}">'
                f"<title>{escape(title)}</title></line>"
            )
    return out


def _svg(width: int, height: int, label: str, body: Iterable[str]) -> str:
    return f'<svg viewBox="0 0 {width} {height}" role="img" aria-label="{escape(label)}">{"".join(body)}</svg>'


def _time_domain(report: Report) -> tuple[float, float] | None:
    starts = [p.start.timestamp() for trend in report.trends for p in trend.points[:1]]
    ends = [p.start.timestamp() for trend in report.trends for p in trend.points[-1:]]
    if starts:
        return min(starts), max(ends) + 3600.0
    if report.window_start and report.window_end:
        return report.window_start.timestamp(), report.window_end.timestamp()
    return None


# --------------------------------------------------------------------------- sections
def _header(report: Report) -> str:
    span = (
        f"{_when(report.window_start)} → {_when(report.window_end)} UTC"
        if report.window_start and report.window_end
        else "no closed bucket yet"
    )
    t = report.totals
    facts = [
        ("events counted", f"{report.counted_events:,}"),
        ("exposures", f"{t.exposures:,}"),
        ("clicks", f"{t.clicks:,}"),
        ("conversions", f"{t.conversions:,}"),
        ("CTR", pct(t.ctr)),
        ("CVR", pct(t.cvr)),
        ("CVR 24 h", pct(t.recent_cvr)),
        ("incidents", f"{len(report.incidents):,}"),
        ("late and dropped", f"{report.late_dropped:,}"),
        ("redelivered and skipped", f"{report.duplicates_skipped:,}"),
        ("dead letters", f"{sum(report.dead_letters.values()):,}"),
    ]
    dead = (
        " · ".join(f"{escape(kind)} {n:,}" for kind, n in report.dead_letters.items())
        if report.dead_letters
        else "none"
    )
    plan = "not written yet" if report.plan_revision is None else f"revision {report.plan_revision}"
    warming = ", ".join(report.warming_up) if report.warming_up else "none"
    return (
        f'<section id="header"><h1>{escape(report.initiative)}</h1>'
        f'<p class="note">Personalization Monitor · window {escape(report.window)} ({escape(span)}) · '
        f"alert threshold {report.alert_threshold * 100:.0f} % relative drop · plan {escape(plan)}</p>"
        + (f'<p class="note">{escape(report.window_note)}</p>' if report.window_note else "")
        + '<ul class="facts">'
        + "".join(f"<li><b>{escape(v)}</b><span>{escape(k)}</span></li>" for k, v in facts)
        + f'</ul><p class="note">Dead letters by reason: {dead}</p>'
        f'<p class="note">Series still warming up (no alerts yet): {escape(warming)}</p></section>'
    )


def _variant(series: str) -> str:
    return split_variant(series)[1]


def _palette(names: Iterable[str]) -> dict[str, str]:
    """A colour per variant (the last part of a series name), in order of first appearance."""
    variants = list(dict.fromkeys(_variant(name) for name in names))
    return {v: _VARIANT_COLOURS[i % len(_VARIANT_COLOURS)] for i, v in enumerate(variants)}


def _kpi_panel(
    trend: SeriesTrend,
    kpi: str,
    unit: str,
    x: _Scale,
    top: float,
    colour: str,
    incidents: dict[str, IncidentLine],
    report: Report,
) -> str:
    width, height = 600, 128
    y = _Scale(0.0, top, height - 22, 6)
    points = [(p.start.timestamp() + 1800.0, getattr(p, kpi)) for p in trend.points]  # drawn at mid-hour
    body = _axes(x, y, unit)
    mine = [line for line in incidents.values() if trend.series in line.series]
    body += _markers(x, y, mine, report.rule_changes)
    body.append(f'<path class="line" stroke="{colour}" d="{_path(points, x, y)}"/>')
    for p, (at, v) in zip(trend.points, points, strict=True):
        for incident_id in p.anomalies:
            line = incidents.get(incident_id)
            if line is None:
                continue
            matches = kpi in _MEASURE_KPIS.get(line.measure, frozenset())
            if not matches and line.measure in _MEASURE_KPIS:
                continue  # another KPI's anomaly: dotted on that KPI's chart
            tip = (
                f"<title>{escape(line.incident_id)} {escape(line.kind)}: observed "
                f"{escape(measured(line.observed, line.measure))}, expected "
                f"{escape(measured(line.expected, line.measure))} ({_when(p.start)})</title>"
            )
            cy = _f(y(min(v if v is not None else 0.0, top)))
            shape = "anomaly" if matches else "ring"
            body.append(
                f'<circle class="{shape}" cx="{_f(x(at))}" cy="{cy}" r="{3.5 if matches else 5}">{tip}</circle>'
            )
    return (
        f'<div class="panel"><div class="series-name">{escape(trend.series)}</div>'
        + _svg(width, height, f"{kpi} of {trend.series}", body)
        + "</div>"
    )


def _kpi_trends(report: Report) -> str:
    head = '<section id="kpi-trends"><h2>KPI trends per series</h2>'
    domain = _time_domain(report)
    if not report.trends or domain is None:
        return head + _NO_TRENDS + "</section>"
    x = _Scale(domain[0], domain[1], 52, 594)
    incidents = {line.incident_id: line for line in report.incidents}
    palette = _palette(t.series for t in report.trends)
    legend = (
        '<div class="legend">'
        + "".join(f'<i style="background:{colour}"></i>{escape(variant)}' for variant, colour in palette.items())
        + '<i style="background:var(--bad)"></i>incident opened (dashed; dot: the bucket that opened it, '
        'ring: an anomaly of another measure)<i style="background:var(--change)"></i>rule change (dotted)</div>'
    )
    figures = []
    for kpi, title, unit in KPIS:
        values = [getattr(p, kpi) for t in report.trends for p in t.points if getattr(p, kpi) is not None]
        top = _nice_ticks(0.0, max(values, default=0.0) or 1.0)[-1]
        panels = "".join(
            _kpi_panel(t, kpi, unit, x, top, palette[_variant(t.series)], incidents, report) for t in report.trends
        )
        figures.append(
            f'<figure class="chart" data-kpi="{kpi}"><figcaption>{escape(title)} per hour, one panel '
            f'per series (same scale)</figcaption>{legend}<div class="multiples">{panels}</div></figure>'
        )
    return head + "".join(figures) + "</section>"


def _by_variant(report: Report) -> list[tuple[str, int, int]]:
    """(variant, exposures, conversions) over the window."""
    rows = [(r.value, r.exposures, r.conversions) for r in report.dashboard if r.dimension == "variant"]
    if rows:
        return rows
    # A report of one other dimension: add up its series instead.
    sums: dict[str, list[int]] = {}
    for row in report.series:
        cell = sums.setdefault(_variant(row.value), [0, 0])
        cell[0] += row.exposures
        cell[1] += row.conversions
    for trend in report.trends if not sums else ():
        cell = sums.setdefault(_variant(trend.series), [0, 0])
        cell[0] += sum(p.exposures for p in trend.points)
        cell[1] += sum(p.conversions for p in trend.points)
    return [(variant, e, c) for variant, (e, c) in sorted(sums.items())]


def _bars(title: str, kpi: str, rows: list[tuple[str, int]], colours: list[str]) -> str:
    width, bar, gap, label = 560, 22, 8, 110
    height = len(rows) * (bar + gap) + 6
    x = _Scale(0.0, max((n for _, n in rows), default=0) or 1.0, label, width - 90)
    body = []
    for i, (name, n) in enumerate(rows):
        top = 4 + i * (bar + gap)
        body.append(
            f'<text x="{label - 6}" y="{top + bar / 2 + 3:.1f}" text-anchor="end">{escape(name)}</text>'
            f'<rect x="{label}" y="{top}" width="{_f(max(x(n) - label, 1.0))}" height="{bar}" '
            f'fill="{colours[i % len(colours)]}"><title>{escape(name)}: {n:,}</title></rect>'
            f'<text x="{_f(x(n) + 6)}" y="{top + bar / 2 + 3:.1f}">{n:,}</text>'
        )
    return (
        f'<figure class="chart" data-chart="{kpi}-by-variant"><figcaption>{escape(title)}</figcaption>'
        + _svg(width, height, title, body)
        + "</figure>"
    )


def _variants(report: Report) -> str:
    rows = _by_variant(report)
    head = '<section id="variants"><h2>Exposures and conversions by variant</h2>'
    if not rows:
        return head + '<p class="note">No exposure in the window.</p></section>'
    palette = _palette(name for name, _, _ in rows)
    colours = [palette[name] for name, _, _ in rows]
    charts = _bars("Exposures by variant", "exposures", [(n, e) for n, e, _ in rows], colours) + _bars(
        "Conversions by variant", "conversions", [(n, c) for n, _, c in rows], colours
    )
    table = _table(
        ("variant", "exposures", "conversions", "CVR"),
        [(escape(n), f"{e:,}", f"{c:,}", pct(c / e if e else None)) for n, e, c in rows],
        numeric=(1, 2, 3),
    )
    return head + f'<div class="multiples">{charts}</div>{table}</section>'


def _lift_chart(history: LiftHistory, domain: tuple[float, float] | None) -> str:
    points = [(p.at.timestamp() - 1800.0, p) for p in history.points]  # a look reads the bucket before it
    drawn = [(at, p) for at, p in points if p.lift is not None]
    if not drawn:
        return (
            f'<p class="note">{escape(history.experiment)}: no lift yet (the comparison needs users in every '
            f"variant).</p>"
        )
    lo, hi = domain if domain else (drawn[0][0] - 1800.0, drawn[-1][0] + 1800.0)
    width, height = 1180, 220
    x = _Scale(lo, hi, 56, width - 10)
    # The interval of the first looks spans hundreds of percent; scale to the lifts and the settled intervals.
    settled = drawn[len(drawn) // 4 :]
    lifts = [p.lift for _, p in drawn if p.lift is not None]  # each of `drawn` has one: the check types them float
    values = lifts + [v for _, p in settled for v in (p.lift_low, p.lift_high) if v is not None]
    ticks = _nice_ticks(min(min(values), 0.0), max(max(values), 0.0), 5)
    y = _Scale(ticks[0], ticks[-1], height - 22, 6)
    clamp = lambda v: min(max(v, ticks[0]), ticks[-1])  # noqa: E731
    band = [(at, p) for at, p in drawn if p.lift_low is not None and p.lift_high is not None]
    body = _axes(x, y, "lift", most=16)
    if band:
        upper = " ".join(f"{_f(x(at))},{_f(y(clamp(p.lift_high)))}" for at, p in band)
        lower = " ".join(f"{_f(x(at))},{_f(y(clamp(p.lift_low)))}" for at, p in reversed(band))
        body.append(f'<polygon class="band" points="{upper} {lower}"><title>interval of the lift</title></polygon>')
    body.append(f'<line class="zero" x1="{_f(x.start)}" x2="{_f(x.end)}" y1="{_f(y(0.0))}" y2="{_f(y(0.0))}"/>')
    body.append(
        f'<path class="line" stroke="#0072b2" stroke-width="2" '
        f'd="{_path(((at, clamp(p.lift)) for at, p in drawn), x, y)}"/>'
    )
    last = drawn[-1][1]
    interval = (
        f" [{last.lift_low:+.1%}, {last.lift_high:+.1%}]"
        if last.lift_low is not None and last.lift_high is not None
        else ""
    )
    caption = (
        f"{history.experiment}: relative lift of {history.metric}, {history.variant or 'treatment'} against "
        f"control, per look, with its interval (latest {last.lift:+.1%}{interval})"
    )
    return (
        f'<figure class="chart" data-chart="lift" data-experiment="{escape(history.experiment)}">'
        f"<figcaption>{escape(caption)}</figcaption>" + _svg(width, height, caption, body) + "</figure>"
    )


def _experiments(report: Report) -> str:
    head = '<section id="experiments"><h2>Experiments: lift over time</h2>'
    if not report.experiments and not report.lift_history:
        return head + (
            '<p class="note">No experiment: no experiment traffic seen for this initiative '
            "(events name none), or none has a plan to read it against.</p></section>"
        )
    parts = []
    domain = _time_domain(report)
    histories = {h.experiment: h for h in report.lift_history}
    for memo in report.experiments:
        s = memo.summary
        parts.append(
            f"<h3>{escape(s.experiment)}: {escape(s.state.replace('_', ' '))}"
            f"{' ' + escape(s.variant) if s.variant else ''}</h3><p>{escape(s.headline)}</p>"
        )
        history = histories.get(s.experiment)
        parts.append(_lift_chart(history, domain) if history is not None else _NO_TRENDS)
        if s.reasons:
            parts.append("<ul>" + "".join(f"<li>{escape(reason)}</li>" for reason in s.reasons) + "</ul>")
    return head + "".join(parts) + "</section>"


def _governance(report: Report) -> str:
    adherence = _table(
        ("channel", "personalized exposures", "violations", "adherence"),
        [
            (
                escape(a.channel),
                f"{a.personalized:,}",
                f"{a.violations:,}",
                "–" if a.adherence_pct is None else f"{a.adherence_pct:.3f} %",
            )
            for a in report.consent_adherence
        ],
        numeric=(1, 2, 3),
    )
    checklist = _table(
        ("item", "status", "owner", "summary"),
        [(escape(i.item), _badge(i.status), escape(i.owner), escape(i.summary)) for i in report.governance_checklist],
    )
    changes = _table(
        ("time (UTC)", "rule", "action", "author", "approver", "ticket", "approved"),
        [
            (
                _when(c.at),
                escape(c.rule_id),
                escape(c.action),
                escape(c.author),
                escape(c.approver or "–"),
                escape(c.ticket or "–"),
                _badge("pass" if c.approved else "fail"),
            )
            for c in report.rule_changes
        ],
        nowrap=(0,),
    )
    if not report.consent_adherence:
        adherence = '<p class="note">No personalized exposure in the window.</p>'
    if not report.rule_changes:
        changes = '<p class="note">No rule change in the window.</p>'
    pending = "".join(
        f'<p class="note">Pending approval: {escape(str(c["action"]))} of {escape(str(c["rule_id"]))} '
        f"by {escape(str(c['author']))} at {escape(str(c['at'])[:16])}</p>"
        for c in report.pending_approvals
    )
    return (
        '<section id="governance"><h2>Consent adherence and governance</h2><h3>Consent adherence</h3>'
        f"{adherence}<h3>Governance checklist</h3>{checklist}<h3>Rule changes</h3>{changes}{pending}</section>"
    )


def _owner(line: IncidentLine) -> str:
    """The owning role, and who is on duty for it when a roster says."""
    if line.assignee is None:
        return escape(line.owner)
    reason = f" ({escape(line.assignee_reason)})" if line.assignee_reason else ""
    return f"{escape(line.owner)}: <b>{escape(line.assignee)}</b>{reason}"


def _incident_timeline(report: Report) -> str:
    head = f'<section id="incidents"><h2>Incident timeline ({len(report.incidents)})</h2>'
    if not report.incidents:
        return head + '<p class="note">No incident in the window.</p></section>'
    domain = _time_domain(report)
    end = report.window_end.timestamp() if report.window_end else None
    row, label, width = 18, 360, 1180
    opened = [line.opened_at.timestamp() for line in report.incidents]
    lo, hi = domain if domain else (min(opened), max(opened + ([end] if end else [])) + 3600.0)
    x = _Scale(lo, hi, label, width - 170)  # room right of the bars for the owner
    height = len(report.incidents) * row + 24
    body = []
    for at in _time_ticks(lo, hi, 16):
        px = _f(x(at))
        body.append(
            f'<line class="grid" x1="{px}" x2="{px}" y1="0" y2="{height - 20}"/>'
            f'<text x="{px}" y="{height - 7}" text-anchor="middle">'
            f"{utc(at):%m-%d}</text>"
        )
    for i, line in enumerate(report.incidents):
        top = i * row + 2
        start = max(line.opened_at.timestamp(), lo)
        stop = line.updated_at.timestamp() if line.status == "resolved" else (end or hi)
        colour = "var(--bad)" if line.severity == "critical" else "var(--warn)"
        owner = line.owner + (f": {line.assignee}" if line.assignee else "")
        tip = (
            f"<title>{escape(line.incident_id)} {escape(line.kind)} · {escape(line.status)} · {escape(owner)} · "
            f"opened {_when(line.opened_at)}</title>"
        )
        body.append(
            f'<text x="{label - 8}" y="{top + 11}" text-anchor="end">{escape(line.incident_id)} '
            f"{escape(line.kind)}</text>"
        )
        if line.kind == DECISION:  # a recommendation holds until the next one: a point in time, not an outage
            cx, cy = x(start), top + row / 2 - 1
            body.append(f'<path d="M{_f(cx)} {_f(cy - 6)}l6 6-6 6-6-6z" fill="{colour}">{tip}</path>')
            stop = start
        else:
            body.append(
                f'<rect x="{_f(x(start))}" y="{top + 2}" width="{_f(max(x(min(stop, hi)) - x(start), 3.0))}" '
                f'height="{row - 6}" rx="2" fill="{colour}" '
                f'fill-opacity="{0.9 if line.status != "resolved" else 0.45}">{tip}</rect>'
            )
        body.append(f'<text x="{_f(x(min(stop, hi)) + 8)}" y="{top + 11}">{escape(owner)}</text>')
    chart = (
        '<figure class="chart" data-chart="incidents"><figcaption>Open (solid) and resolved (pale) incidents, '
        "from opening to resolution; experiment decisions as diamonds; red: critical, orange: warning"
        "</figcaption>" + _svg(width, height, "incident timeline", body) + "</figure>"
    )
    table = _table(
        ("incident", "kind, severity", "status", "owner: assignee", "series", "opened (UTC)", "observed", "expected"),
        [
            (
                escape(line.incident_id),
                f'{escape(line.kind)}<br><span class="{escape(line.severity)}">{escape(line.severity)}</span>',
                escape(line.status if line.status == "opened" else f"{line.status} {line.updated_at:%m-%d %H:%M}"),
                _owner(line),
                '<span class="series-name">' + "<br>".join(escape(s) for s in line.series) + "</span>",
                f"{line.opened_at:%m-%d %H:%M}",
                escape(measured(line.observed, line.measure)),
                escape(measured(line.expected, line.measure)),
            )
            for line in report.incidents
        ],
        numeric=(6, 7),
        nowrap=(0, 4, 6, 7),
    )
    return head + chart + table + "</section>"


def _backlog(report: Report) -> str:
    open_items = [item for item in report.backlog if item.status == "open"]
    head = f'<section id="backlog"><h2>Backlog ({len(open_items)} open of {len(report.backlog)})</h2>'
    if not report.backlog:
        return head + '<p class="note">The plan has no backlog item.</p></section>'
    return (
        head
        + _table(
            ("item", "owner", "priority", "due (UTC)", "status", "source"),
            [
                (
                    escape(b.title),
                    escape(b.owner),
                    escape(b.priority),
                    _when(b.due_at),
                    escape(b.status),
                    escape(b.source or ""),
                )
                for b in report.backlog
            ],
            nowrap=(3, 5),
        )
        + "</section>"
    )


SECTIONS: tuple[tuple[str, Callable[[Report], str]], ...] = (
    ("header", _header),
    ("kpi-trends", _kpi_trends),
    ("variants", _variants),
    ("experiments", _experiments),
    ("governance", _governance),
    ("incidents", _incident_timeline),
    ("backlog", _backlog),
)


def render_html(report: Report) -> str:
    """The report as one HTML document that opens offline: no script, no external resource.

    Build the report with `ReportRequest(trends=True)` for the trend and lift charts. The section ids
    are those of `SECTIONS`; each chart is a `<figure class="chart">` (`data-kpi` for the KPI trends).
    """
    title = f"{report.initiative} · Personalization Monitor"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body><main>"
        + "".join(section(report) for _, section in SECTIONS)
        + "</main></body></html>\n"
    )
