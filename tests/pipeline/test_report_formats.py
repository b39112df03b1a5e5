"""The report as JSON (valid against its published schema), Markdown (every section renders) and a terminal view
that fits 80 columns (no number cut, every series whole, the summary one screen)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from markdown_it import MarkdownIt
from rich.console import Console

from cli.markdown import render_markdown
from cli.render import dashboard_cells, render_report
from monitor.report import Report, ReportRequest, build_report
from monitor.schemas import report_json_schema
from tests.helpers import run_pmon

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = ("Dashboard", "Incidents", "Governance checklist", "Consent adherence", "Backlog", "Experiments", "Status")


@pytest.fixture(scope="module")
def stage(demo_stage: Any) -> Any:
    return demo_stage


def _reports(stage: Any, detail: str) -> list[Report]:
    reports = [build_report(stage, ReportRequest(initiative=name, window="14d", detail=detail))
               for name in sorted(stage.state.clocks)]
    assert len(reports) >= 3 and all(r is not None for r in reports)
    return reports


def test_the_published_schema_is_the_models(tmp_path: Path) -> None:
    published = json.loads((ROOT / "schemas" / "report.schema.json").read_text())
    assert published == report_json_schema(), "schemas/report.schema.json is stale: run `.venv/bin/pmon schemas`"


def test_json_output_validates_against_its_schema_for_every_initiative(stage: Any) -> None:
    validator = jsonschema.Draft202012Validator(report_json_schema())
    with_incidents = []
    for report in _reports(stage, "full"):
        document = json.loads(report.model_dump_json())
        errors = sorted(validator.iter_errors(document), key=str)
        assert not errors, f"{report.initiative}: {errors[0].message} at {list(errors[0].absolute_path)}"
        if document["incidents"]:
            with_incidents.append(document["initiative"])
    assert len(with_incidents) >= 3, with_incidents   # the incident sections are validated, not only empty ones


def test_markdown_renders_every_section_with_its_tables_and_whole_series(stage: Any) -> None:
    for report in _reports(stage, "full"):
        text = render_markdown(report)
        html = MarkdownIt("commonmark").enable("table").render(text)
        for section in SECTIONS:
            assert f"<h2>{section}" in html, f"{report.initiative}: section {section} missing"
        assert html.count("<table>") >= 4, f"{report.initiative}: tables did not render"
        for row in report.series:
            # A series name holds pipes; escaped, it stays one cell.
            assert f"<td>{row.value}</td>" in html, row.value
        for line in report.incidents:
            assert line.incident_id in html


def _terminal(report: Report, width: int = 80) -> list[str]:
    buffer = io.StringIO()
    render_report(report, Console(file=buffer, width=width, color_system=None, force_terminal=False))
    return buffer.getvalue().splitlines()


@pytest.mark.parametrize("detail", ["summary", "full"])
def test_at_80_columns_no_number_is_cut_and_every_series_is_whole(stage: Any, detail: str) -> None:
    for report in _reports(stage, detail):
        lines = _terminal(report)
        text = "\n".join(lines)
        assert max(len(line.rstrip()) for line in lines) <= 80
        for row in [report.totals, *report.dashboard, *report.series]:
            # Every rate and count of the dashboard is printed whole (the summary leaves counts to `full`).
            cells = dashboard_cells(row)[1:]
            wanted = cells if detail == "full" else [cells[0], *cells[5:]]
            missing = [cell for cell in wanted if cell not in text]
            assert not missing, f"{report.initiative} {row.value}: {missing} not printed whole"
        for row in report.series:
            assert any(line.strip() == row.value for line in lines), f"series {row.value} not on a line whole"
        shown = report.incidents if detail == "full" else report.incidents[-3:]
        for incident in shown:
            assert incident.incident_id in text
            series = incident.series if detail == "full" else incident.series[:1]
            assert all(name in text for name in series), incident.series
        if detail == "summary":
            assert len(lines) <= 40, f"{report.initiative}: the summary is {len(lines)} lines at 80 columns"
        else:
            assert "Glossary" in text and "CVR: conversions / exposures" in text


def test_warming_up_series_are_counted_per_detector(stage: Any) -> None:
    report = _reports(stage, "summary")[0]
    assert report.warming_up, "the check needs series still warming up"
    lines = _terminal(report)
    starts = [n for n, line in enumerate(lines) if line.startswith("Warming up")]
    assert len(starts) == 1
    # The sentence wraps at 80 columns: it runs to the next blank line.
    end = next((n for n in range(starts[0], len(lines)) if not lines[n].strip()), len(lines))
    sentence = " ".join(line.strip() for line in lines[starts[0]:end])
    for detector, series in report.warming_up.items():
        assert f"{detector} {len(series)}" in sentence


def test_the_command_writes_each_format_to_a_file(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    assert run_pmon("simulate", "--days", "2", "--to-file", str(events), cwd=tmp_path).returncode == 0
    state = tmp_path / "state"
    out = {fmt: tmp_path / f"report.{fmt}" for fmt in ("json", "markdown", "terminal")}
    for fmt, path in out.items():
        result = run_pmon("monitor", "--initiative", "plg onboarding", "--events", str(events), "--state", str(state),
                          "--format", fmt, "--out", str(path), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stdout == "" and f"wrote the {fmt} report of PLG Onboarding to {path}" in result.stderr
    jsonschema.validate(json.loads(out["json"].read_text()), report_json_schema())
    assert out["markdown"].read_text().startswith("# Personalization Monitor: PLG Onboarding")
    assert "\x1b[" not in out["terminal"].read_text(), "a file gets plain text, no terminal colours"
    piped = run_pmon("monitor", "--initiative", "PLG Onboarding", "--state", str(state), "--format", "json",
                     cwd=tmp_path)
    assert json.loads(piped.stdout)["initiative"] == "PLG Onboarding"
    bad = run_pmon("monitor", "--initiative", "PLG Onboarding", "--state", str(state), "--format", "json",
                   "--out", str(tmp_path / "missing" / "r.json"), cwd=tmp_path)
    assert bad.returncode == 2 and "pass a writable --out path" in bad.stderr
