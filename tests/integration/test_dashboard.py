"""The HTML dashboard: the report's time series, and the page as headless Chromium renders it."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from cli import chromium
from cli.dashboard import KPIS, SECTIONS, render_html
from monitor.initiative_stage import LIFT_HISTORY, InitiativeStage
from monitor.report import Report, ReportRequest, build_report
from monitor.stored_state import load, save

INITIATIVE = "PLG Onboarding"


@pytest.fixture(scope="module")
def stage(demo_stage: InitiativeStage) -> InitiativeStage:
    return demo_stage


@pytest.fixture(scope="module")
def report(stage: InitiativeStage) -> Report:
    built = build_report(stage, ReportRequest(initiative=INITIATIVE, window="7d", detail="full", trends=True))
    assert built is not None
    return built


@pytest.fixture(scope="module")
def dom(report: Report, tmp_path_factory: pytest.TempPathFactory) -> str:
    page = tmp_path_factory.mktemp("dashboard") / "dashboard.html"
    page.write_text(render_html(report), encoding="utf-8")
    try:
        return chromium.dump_dom(page)
    except chromium.ChromiumError as exc:
        pytest.fail(str(exc))  # says that `make test` installs it


class _Page(HTMLParser):
    """What the checks need from a page: tags with attributes, text, and the drawing of each chart."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self.raw_text: list[str] = []         # style and script bodies
        self.sections: list[str] = []
        self.charts: dict[str, list[str]] = {}  # data-kpi -> the path data drawn inside its figure
        self._chart: str | None = None
        self._depth = 0
        self._in_raw = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        self.tags.append((tag, values))
        self._in_raw = tag in ("style", "script")
        if tag == "section":
            self.sections.append(values.get("id", ""))
        if tag == "figure" and "data-kpi" in values:
            self._chart, self._depth = values["data-kpi"], 0
            self.charts.setdefault(self._chart, [])
        elif self._chart is not None and tag == "figure":
            self._depth += 1
        if self._chart is not None and tag in ("path", "polyline"):
            self.charts[self._chart].append(values.get("d") or values.get("points", ""))

    def handle_endtag(self, tag: str) -> None:
        self._in_raw = False
        if tag == "figure" and self._chart is not None:
            if self._depth == 0:
                self._chart = None
            else:
                self._depth -= 1

    def handle_data(self, data: str) -> None:
        (self.raw_text if self._in_raw else self.text).append(data)


def _parsed(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


# ----------------------------------------------------------------------------- the report's series
def test_trends_hold_one_point_per_closed_bucket_per_series_and_add_up_to_the_series_rows(report: Report) -> None:
    by_series = {row.value: row for row in report.series}
    assert {t.series for t in report.trends} == set(by_series) and len(by_series) == 8
    lengths = {len(t.points) for t in report.trends}
    assert len(lengths) == 1 and lengths.pop() == (report.window_end - report.window_start).total_seconds() // 3600
    for trend in report.trends:
        row = by_series[trend.series]
        assert sum(p.exposures for p in trend.points) == row.exposures
        assert sum(p.conversions for p in trend.points) == row.conversions
        assert all(p.cvr is None if p.exposures == 0 else p.cvr == p.conversions / p.exposures for p in trend.points)


def test_anomalies_name_the_incidents_opened_on_their_series(report: Report) -> None:
    incidents = {line.incident_id: line for line in report.incidents}
    marked = {(t.series, incident) for t in report.trends for p in t.points for incident in p.anomalies}
    assert marked, "the demo's first days open incidents on series"
    assert all(series in incidents[incident].series for series, incident in marked)


def test_rule_changes_and_lift_history_come_with_the_report(stage: InitiativeStage, report: Report) -> None:
    audit = stage.state.governance[INITIATIVE].audit
    assert [(c.rule_id, c.action) for c in report.rule_changes] == [(c.rule_id, c.action) for c in audit.log]
    [history] = report.lift_history
    looks = stage.state.experiments[INITIATIVE][history.experiment].history
    assert history.experiment == "onboarding-checklist" and 0 < len(history.points) == len(looks) <= LIFT_HISTORY
    assert [p.at for p in history.points] == sorted(p.at for p in history.points)
    latest = history.points[-1]
    summary = report.experiments[0].summary
    assert (latest.lift, latest.lift_low, latest.lift_high) == (summary.primary_lift, summary.primary_lift_low,
                                                               summary.primary_lift_high)


def test_without_trends_the_report_carries_no_series(stage: InitiativeStage) -> None:
    plain = build_report(stage, ReportRequest(initiative=INITIATIVE, window="7d"))
    assert plain is not None and plain.trends == [] and plain.lift_history == [] and plain.rule_changes


def test_the_lift_history_survives_the_stored_state(stage: InitiativeStage, tmp_path: Path) -> None:
    save(tmp_path, "fingerprint", stage.state, [])
    stored = load(tmp_path)
    assert stored is not None
    for name, state in stage.state.experiments[INITIATIVE].items():
        assert stored.state.experiments[INITIATIVE][name].history == state.history != ()


# ----------------------------------------------------------------------------- the page
def test_the_page_references_nothing_outside_itself(report: Report) -> None:
    page = _parsed(render_html(report))
    tags = {tag for tag, _ in page.tags}
    assert not tags & {"script", "link", "img", "iframe", "object", "embed"}, tags
    external = [(tag, name, value) for tag, attrs in page.tags for name, value in attrs.items()
                if re.search(r"https?:|//|url\(", value)]
    assert external == []
    assert not re.search(r"https?:|url\(|@import", "".join(page.raw_text))


def test_chromium_shows_every_section_and_a_drawn_chart_per_kpi(report: Report, dom: str) -> None:
    page = _parsed(dom)
    assert page.sections == [name for name, _ in SECTIONS]
    for kpi, _, _ in KPIS:
        drawn = [d for d in page.charts.get(kpi, []) if d.count("L") >= 10]
        assert len(drawn) == len(report.trends), f"{kpi}: {len(drawn)} drawn lines for {len(report.trends)} series"
    assert re.search(r'<figure class="chart" data-chart="lift"[^>]*>.*?<polygon class="band" points="[\d., ]{40,}',
                     dom, re.S), "the lift chart draws its interval band"
    assert re.search(r'data-chart="exposures-by-variant".*?<rect', dom, re.S)


def test_incident_ids_and_series_names_appear_whole(report: Report, dom: str) -> None:
    text = {chunk.strip() for chunk in _parsed(dom).text}
    assert report.incidents
    missing = [line.incident_id for line in report.incidents if line.incident_id not in text]
    assert missing == []
    names = {t.series for t in report.trends} | {s for line in report.incidents for s in line.series}
    assert sorted(name for name in names if name not in text) == []
    assert {line.owner for line in report.incidents} <= text


def test_text_is_escaped_and_missing_trends_are_explained(report: Report) -> None:
    hostile = report.model_copy(update={"initiative": "<script>alert(1)</script>", "trends": [], "lift_history": []})
    html = render_html(hostile)
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert 'data-kpi="cvr"' not in html and "ReportRequest(trends=True)" in html
