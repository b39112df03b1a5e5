"""The `pmon` console entry point, run as a user would: a subprocess, exit codes, one-line errors."""

from __future__ import annotations

import doctest
import os
import socket
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest

from monitor import settings_reference
from monitor.events import ConsentEvent, EngagementEvent
from monitor.settings import Settings
from pmon_harness import PMON
from tests.helpers import one_line, run_pmon

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def events_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two closed hours of "PLG Onboarding" (20 exposures, 2 clicks, 2 conversions), one of another initiative."""
    lines: list[dict[str, object]] = []

    def engagement(n: int, initiative: str, at: datetime, event_type: str = "exposure", revenue: float = 0.0) -> None:
        event = EngagementEvent(event_id=f"e{n}", event_type=event_type, event_time=at, user_id=f"u{n:06d}",
                                initiative=initiative, profile="new_user", channel="web", variant="control",
                                revenue=revenue)
        lines.append({"topic": "engagement", "key": f"u{n:06d}", "value": event.model_dump(mode="json")})

    for user in range(1, 30):  # every user consented before the first exposure
        grant = ConsentEvent(event_id=f"g{user}", event_time=T0 - timedelta(minutes=1), user_id=f"u{user:06d}",
                             purpose="personalization", status="granted", region="EU")
        lines.append({"topic": "consent", "key": f"u{user:06d}", "value": grant.model_dump(mode="json")})
    n = 0
    for hour in (0, 1):
        for i in range(10):
            engagement(n := n + 1, "PLG Onboarding", T0 + timedelta(hours=hour, minutes=3 * i))
        engagement(n := n + 1, "PLG Onboarding", T0 + timedelta(hours=hour, minutes=40), "click")
        engagement(n := n + 1, "PLG Onboarding", T0 + timedelta(hours=hour, minutes=41), "conversion", 12.5)
        engagement(n := n + 1, "Pricing Page Recs", T0 + timedelta(hours=hour, minutes=42))
    engagement(n := n + 1, "PLG Onboarding", T0 + timedelta(hours=2, minutes=15))  # closes hours 0 and 1
    consent = ConsentEvent(event_id="c1", event_time=T0, user_id="u000001", purpose="personalization",
                           status="granted")
    lines.append({"topic": "consent", "key": "u000001", "value": consent.model_dump(mode="json")})
    path = tmp_path_factory.mktemp("events") / "events.jsonl"
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    return path


def test_the_console_script_is_installed_next_to_the_interpreter() -> None:
    assert PMON.is_file() and os.access(PMON, os.X_OK)


@pytest.mark.parametrize("entry", ["main", "monitor_main"])
def test_both_console_scripts_make_the_garbage_collector_rarer_before_the_command_runs(entry: str) -> None:
    import gc

    from cli import main as cli_main

    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        with pytest.raises(SystemExit) as exit_info:
            getattr(cli_main, entry)(["--help"])
        assert exit_info.value.code == 0
        assert gc.get_threshold() == cli_main.GC_THRESHOLDS
        assert cli_main.GC_THRESHOLDS[0] > 700
    finally:
        gc.set_threshold(*before)


def test_monitor_with_an_unknown_window_exits_2_naming_the_valid_choices(tmp_path: Path) -> None:
    result = run_pmon("monitor", "--initiative", "X", "--window", "9d", cwd=tmp_path)
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert "9d" in line and all(choice in line for choice in ("7d", "14d", "30d"))
    assert result.stdout == ""


@pytest.mark.parametrize("command", [["monitor"], ["plan", "show"], ["incidents", "list"]])
@pytest.mark.parametrize("blank", ["", "   "])
def test_a_blank_initiative_exits_2_in_one_line_before_anything_runs(tmp_path: Path, command: list[str],
                                                                    blank: str) -> None:
    # `monitor` without --events asks a worker: the name was checked only there, a traceback before.
    result = run_pmon(*command, "--initiative", blank, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    line = one_line(result.stderr)
    assert "--initiative" in line and "blank" in line and "Traceback" not in result.stderr


def test_monitor_with_an_unknown_initiative_exits_2_naming_the_known_ones(tmp_path: Path, events_file: Path) -> None:
    result = run_pmon("monitor", "--initiative", "Nope", "--events", str(events_file), cwd=tmp_path)
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert "Nope" in line and "PLG Onboarding" in line and "Pricing Page Recs" in line
    assert "--initiative" in line
    assert not (tmp_path / "plans").exists(), "rejected before the replay: nothing was written"


def test_monitor_takes_the_initiative_in_any_case_and_suggests_a_near_miss(tmp_path: Path, events_file: Path) -> None:
    typo = run_pmon("monitor", "--initiative", "PLG Onbording", "--events", str(events_file), cwd=tmp_path)
    assert typo.returncode == 2 and "did you mean 'PLG Onboarding'?" in one_line(typo.stderr)
    folded = run_pmon("monitor", "--initiative", "plg onboarding", "--events", str(events_file), cwd=tmp_path)
    assert folded.returncode == 0, folded.stderr
    assert "PLG Onboarding" in folded.stdout


def test_monitor_over_a_file_without_any_valid_record_says_so(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text("not json\n{\"topic\": \"engagement\"}\n")
    result = run_pmon("monitor", "--initiative", "PLG Onboarding", "--events", str(garbage), cwd=tmp_path)
    assert result.returncode == 2 and "names no initiative" in one_line(result.stderr)


def test_plan_log_diff_and_show_read_the_history_a_threshold_change_left(tmp_path: Path, events_file: Path) -> None:
    for threshold in ("0.3", "0.25"):
        ran = run_pmon("monitor", "--initiative", "PLG Onboarding", "--events", str(events_file),
                       "--alert-threshold", threshold, cwd=tmp_path)
        assert ran.returncode == 0, ran.stderr
    log = run_pmon("plan", "log", "--initiative", "plg onboarding", cwd=tmp_path)
    assert log.returncode == 0, log.stderr
    assert log.stdout.startswith("r1 ") and "created" in log.stdout
    [entry] = [line for line in log.stdout.splitlines() if "thresholds.alert_threshold" in line]
    assert "0.3 -> 0.25" in entry and "`pmon monitor` options" in entry
    diff = run_pmon("plan", "diff", "--initiative", "PLG Onboarding", "--from", "1", cwd=tmp_path)
    assert diff.returncode == 0 and "thresholds.alert_threshold: 0.3 -> 0.25" in diff.stdout
    shown = run_pmon("plan", "show", "--initiative", "PLG Onboarding", "--json", cwd=tmp_path)
    latest = orjson.loads(shown.stdout)
    assert latest["thresholds"]["alert_threshold"] == 0.25 and diff.stdout.startswith(f"r1 -> r{latest['revision']}")
    default = run_pmon("plan", "diff", "--initiative", "PLG Onboarding", cwd=tmp_path)
    assert default.stdout.startswith(f"r{latest['revision'] - 1} -> r{latest['revision']}")
    missing = run_pmon("plan", "show", "--initiative", "Nope", cwd=tmp_path)
    assert missing.returncode == 2 and "plg-onboarding" in one_line(missing.stderr)


def test_a_stored_state_answers_later_reports_without_a_replay(tmp_path: Path, events_file: Path) -> None:
    state = tmp_path / "state"
    args = ("monitor", "--initiative", "PLG Onboarding", "--window", "14d", "--detail", "full")
    first = run_pmon(*args, "--events", str(events_file), "--state", str(state), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    stored = (state / "state.pickle").stat().st_mtime_ns
    again = run_pmon(*args, "--events", str(events_file), "--state", str(state), cwd=tmp_path)
    alone = run_pmon(*args, "--state", str(state), cwd=tmp_path)
    assert again.stdout.strip() == first.stdout.strip() == alone.stdout.strip()
    assert (state / "state.pickle").stat().st_mtime_ns == stored, "read, not replayed"
    other = run_pmon(*args, "--state", str(state), "--alert-threshold", "0.1", "--events", str(events_file),
                     cwd=tmp_path)
    assert other.returncode == 0 and (state / "state.pickle").stat().st_mtime_ns != stored, \
        "other settings: replayed and stored again"
    empty = run_pmon(*args, "--state", str(tmp_path / "nothing"), cwd=tmp_path)
    assert empty.returncode == 2 and "--events FILE --state" in one_line(empty.stderr)


def test_monitor_without_a_reachable_worker_exits_2_saying_how_to_fix(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago, now closed: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = run_pmon("monitor", "--initiative", "X", cwd=tmp_path,
                      env={"PMON_WEB_HOST": "127.0.0.1", "PMON_WEB_PORT": str(port)})
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert "no worker reachable" in line and f"127.0.0.1:{port}" in line
    assert "pmon worker" in line and "--events" in line  # how to fix it


def test_simulate_without_a_destination_exits_2(tmp_path: Path) -> None:
    result = run_pmon("simulate", cwd=tmp_path)
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert "--to-file" in line and "--to-kafka" in line
    assert list(tmp_path.iterdir()) == []  # wrote nothing


def test_monitor_over_an_events_file_prints_the_dashboard(tmp_path: Path, events_file: Path) -> None:
    result = run_pmon("monitor", "--events", str(events_file), "--initiative", "PLG Onboarding", "--window", "7d",
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("PLG Onboarding · 7d window") and "events counted 25" in out and "late and dropped 0" in out
    # Piped at 200 columns: every column in one table. The two closed hours: 20 exposures, 2 clicks,
    # 2 conversions, 25.00 revenue, CVR 10 %.
    header = next(line for line in out.splitlines() if line.startswith("value "))
    total = next(line for line in out.splitlines() if line.startswith("total "))
    assert header.split()[:5] == ["value", "exposures", "clicks", "conversions", "revenue"]
    assert total.split()[:5] == ["total", "20", "2", "2", "25.00"]
    assert "10.00 %" in total
    assert "Incidents: 0 in the window, 0 not resolved" in out


def _seasonal_csv(path: Path, *, dip_at: int | None = None, hours: int = 24 * 6) -> Path:
    import math

    t0 = datetime(2026, 11, 1)
    lines = ["timestamp,value"]
    for h in range(hours):
        value = 100 + 30 * math.sin(2 * math.pi * h / 24) + (h % 5 - 2)
        lines.append(f"{(t0 + timedelta(hours=h)).isoformat()},{40.0 if h == dip_at else value}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_detect_backtests_a_csv_and_flags_the_planted_dip_only(tmp_path: Path) -> None:
    series = _seasonal_csv(tmp_path / "kpi.csv", dip_at=130)
    result = run_pmon("detect", "--csv", str(series), "--out", str(tmp_path / "out.csv"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = (tmp_path / "out.csv").read_text().splitlines()
    assert rows[0] == "timestamp,value,anomaly_score,alert"
    assert len(rows) == 1 + 24 * 6
    alerts = [row.split(",")[0] for row in rows[1:] if row.endswith(",true")]
    assert alerts == ["2026-11-06T10:00:00+00:00"], "naive timestamps are UTC; only the dip alerts"


def test_detect_names_the_bad_line_and_leaves_no_partial_output(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,value\n2026-11-01T00:00:00Z,1\n2026-11-01T01:00:00Z,lots\n")
    result = run_pmon("detect", "--csv", str(bad), "--out", str(tmp_path / "out.csv"), cwd=tmp_path)
    assert result.returncode == 2
    assert f"{bad}:3: value 'lots' is not a number" in one_line(result.stderr)
    assert not (tmp_path / "out.csv").exists()


def test_detect_reads_a_series_as_spreadsheets_and_exporters_write_it(tmp_path: Path) -> None:
    plain = _seasonal_csv(tmp_path / "kpi.csv", dip_at=130)
    rows = [line.split(",") for line in plain.read_text().splitlines()[1:]]
    variants = {
        # Excel's "CSV UTF-8" in a comma-decimal locale: a byte-order mark, semicolons, decimal commas, CRLF.
        "excel.csv": ("\ufefftimestamp;value\r\n" + "".join(f"{t};{v.replace('.', ',')}\r\n" for t, v in rows)),
        # Unix time in milliseconds, tab-separated, the header capitalised.
        "unix_ms.tsv": "Timestamp\t Value\n" + "".join(
            f"{int(datetime.fromisoformat(t).replace(tzinfo=timezone.utc).timestamp() * 1000)}\t{v}\n"
            for t, v in rows),
    }
    expected = run_pmon("detect", "--csv", str(plain), cwd=tmp_path)
    assert expected.returncode == 0, expected.stderr
    for name, text in variants.items():
        path = tmp_path / name
        path.write_text(text, encoding="utf-8", newline="")
        result = run_pmon("detect", "--csv", str(path), cwd=tmp_path)
        assert result.returncode == 0, (name, result.stderr)
        assert result.stdout == expected.stdout, name
    assert sum(line.endswith(",true") for line in expected.stdout.splitlines()) == 1


def test_detect_of_a_file_that_is_not_utf8_text_exits_2_in_one_line(tmp_path: Path) -> None:
    binary = tmp_path / "export.csv"
    binary.write_bytes(b"timestamp,value\n2026-11-01T00:00:00Z,\xff\xfe\n")
    result = run_pmon("detect", "--csv", str(binary), cwd=tmp_path)
    assert result.returncode == 2
    assert f"{binary} is not UTF-8 text" in one_line(result.stderr)


def test_detect_with_a_rate_detector_exits_2_listing_the_usable_ones(tmp_path: Path) -> None:
    series = _seasonal_csv(tmp_path / "kpi.csv")
    result = run_pmon("detect", "--csv", str(series), "--detector", "cvr_drop", cwd=tmp_path)
    assert result.returncode == 2
    assert "seasonal_profile" in one_line(result.stderr)


@pytest.mark.parametrize("name", ["configuration.md", "cli.md", "operations.md"])
def test_the_generated_parts_of_the_docs_are_current(name: str) -> None:
    from cli import docs

    text = (Path(__file__).resolve().parents[2] / "docs" / name).read_text()
    assert "<!-- " in text and docs.rewritten(text) == text, f"docs/{name} is stale: run `make docs`"
    assert doctest.testmod(settings_reference).failed == 0 and doctest.testmod(docs).failed == 0


def test_the_configuration_table_lists_every_setting() -> None:
    table = settings_reference.settings_table()
    assert all(f"| `PMON_{name.upper()}` |" in table for name in Settings.model_fields)


def test_a_short_demo_replays_records_made_in_a_second_process_and_writes_every_plan(tmp_path: Path) -> None:
    result = run_pmon("demo", "--days", "4", cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert " records in " in result.stdout and "plan files in" in result.stdout, result.stdout[-2000:]
    plans = {path.parent.name for path in (tmp_path / "plans").glob("*/plan-*.json")}
    assert plans == {"plg-onboarding", "pricing-page-recs", "win-back-emails", "checkout-upsell", "search-ranking"}
