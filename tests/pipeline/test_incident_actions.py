"""`pmon incidents ack|resolve|note`: a person's actions reach the plan's change log and its response time."""

from __future__ import annotations

from pathlib import Path

from monitor.stored_state import load
from plans.plan_sink import latest
from tests.helpers import INITIATIVE, one_line, run_pmon, stored_threshold_state


def test_an_acknowledgement_and_a_note_land_in_the_plan_with_the_response_time(tmp_path: Path) -> None:
    state = stored_threshold_state(tmp_path)
    [incident_id] = [i for i, (opened, _) in load(state).state.incidents.items() if opened.kind == "kpi_threshold"]

    acked = run_pmon("incidents", "ack", incident_id, "--by", "Ana Ortiz", "--state", str(state), cwd=tmp_path)
    assert acked.returncode == 0, acked.stderr
    noted = run_pmon("incidents", "note", incident_id, "--by", "Ana Ortiz", "--text", "rolled back rule r-7",
                     "--state", str(state), cwd=tmp_path)
    assert noted.returncode == 0, noted.stderr

    log = run_pmon("plan", "log", "--initiative", INITIATIVE, cwd=tmp_path).stdout
    [ack] = [line for line in log.splitlines() if f"open_incidents.{incident_id}.acknowledged" in line]
    assert "Ana Ortiz" in ack and "response" in ack and "min" in ack
    assert any("rolled back rule r-7" in line and "Ana Ortiz" in line for line in log.splitlines())
    plan = latest(tmp_path / "plans", INITIATIVE)
    assert plan.metric("incident_response_minutes").current is not None
    # The action is kept with the state: a later report sees the acknowledged plan.
    assert load(state).state.plans[INITIATIVE].revision == plan.revision
    assert len((state / "incident-actions.jsonl").read_text().splitlines()) == 2

    unknown = run_pmon("incidents", "ack", "inc-nope", "--by", "Ana", "--state", str(state), cwd=tmp_path)
    assert unknown.returncode == 2 and "no incident 'inc-nope'" in one_line(unknown.stderr)
    no_route = run_pmon("incidents", "resolve", incident_id, "--by", "Ana", cwd=tmp_path)
    assert no_route.returncode == 2 and "--initiative is required" in one_line(no_route.stderr)
