"""`pmon incidents tail|list`: on-call from the terminal, over the real broker's incidents topic or a stored state."""

from __future__ import annotations

import asyncio
import queue
import signal
import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Any

import orjson
import pytest

from cli import oncall
from incidents.model import Evidence, IncidentEvent, transition_event_id
from monitor.settings import RosterRole
from pmon_harness import PMON, pmon_env
from streams.kafka_io import produce
from tests.helpers import (
    DETECTION,
    INITIATIVE,
    one_line,
    run_pmon,
    stored_threshold_state,
    threshold_series,
    two_days_ago,
)

AT = datetime(2026, 11, 11, 16, tzinfo=timezone.utc)
SERIES = ["PLG Onboarding|new_user|web|treatment", "PLG Onboarding|returning|email|control"]


def event(transition: str = "opened", *, incident: str = "inc-1", sequence: int = 1, at: datetime = AT,
          severity: str = "warning", initiative: str = "PLG Onboarding", owner: str = "Testing Lead",
          detail: dict[str, Any] | None = None, observed: float = 0.0512, expected: float = 0.1066) -> IncidentEvent:
    return IncidentEvent(
        event_id=transition_event_id(incident, transition, sequence), incident_id=incident, transition=transition,
        kind="conversion_drop", severity=severity, initiative=initiative, series=SERIES, period="2026-11-11T15:00",
        owner=owner, rung=0, playbook="Check rule changes.",
        evidence=Evidence(observed=observed, expected=expected, score=0.5, bucket_start=at - timedelta(hours=1),
                          bucket_end=at, detail={"kpi": "cvr"} if detail is None else detail),
        occurred_at=at)


# --------------------------------------------------------------------------- pure parts
@pytest.mark.parametrize(("text", "seconds"), [("15m", 900), ("2h", 7200), ("7d", 604_800), ("30s", 30),
                                               ("1w", 604_800), ("1h30m", 5400), (" 2H ", 7200)])
def test_a_duration_is_a_whole_number_and_a_unit(text: str, seconds: int) -> None:
    assert oncall.parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "15", "m", "5x", "-5m", "1.5h", "2 h", "h2", "0m", "15m later"])
def test_anything_else_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError, match=r"^--since .* (is not a duration|is no time at all)$"):
        oncall.parse_duration(text)


def test_the_severity_order_is_the_incident_models() -> None:
    assert oncall.SEVERITIES == ("warning", "critical")
    warning, critical = event(severity="warning"), event(severity="critical")
    assert [oncall.matches(e, severity="warning") for e in (warning, critical)] == [True, True]
    assert [oncall.matches(e, severity="critical") for e in (warning, critical)] == [False, True]


def test_the_initiative_filter_ignores_case_and_surrounding_spaces() -> None:
    assert oncall.matches(event(), initiative="  plg onboarding ")
    assert not oncall.matches(event(), initiative="PLG")
    assert oncall.matches(event(severity="critical"), initiative="PLG ONBOARDING", severity="critical")
    assert not oncall.matches(event(severity="warning"), initiative="PLG Onboarding", severity="critical")


def test_folding_keeps_the_opening_and_the_latest_transition_once_each() -> None:
    opened = event("opened", at=AT)
    escalated = event("escalated", sequence=2, at=AT + timedelta(hours=2), severity="critical",
                      owner="Personalization Architect")
    resolved = event("resolved", sequence=3, at=AT + timedelta(hours=5), severity="critical",
                     owner="Personalization Architect")
    earlier = event("opened", incident="inc-0", at=AT - timedelta(hours=1))
    # A transition read twice counts once; another incident opened earlier comes first.
    [first, second] = oncall.fold([opened, escalated, opened, earlier, resolved, escalated], {})
    assert first.opened == earlier and first.latest == earlier and first.is_open
    assert second.opened == opened and second.latest == resolved and not second.is_open


def test_an_incident_whose_opening_is_gone_stands_with_its_first_transition() -> None:
    updated = event("updated", sequence=2, at=AT + timedelta(hours=1))
    escalated = event("escalated", sequence=3, at=AT + timedelta(hours=2))
    [incident] = oncall.fold([updated, escalated], {})
    assert (incident.opened, incident.latest) == (updated, escalated)


def test_the_assignee_is_the_person_on_duty_for_the_latest_owner() -> None:
    roster = {"Personalization Architect": RosterRole(people=["Cy", "Dee"],
                                                      unavailable={"Cy": [(AT.date(), AT.date())]})}
    escalated = event("escalated", sequence=2, owner="Personalization Architect")
    [incident] = oncall.fold([event(), escalated], roster)
    assert (incident.assignee, incident.assignee_reason) == ("Dee", f"Cy unavailable on {AT.date().isoformat()}")
    [unrostered] = oncall.fold([event()], roster)
    assert (unrostered.assignee, unrostered.assignee_reason) == (None, None)
    assert oncall.from_pairs([(event(), escalated)], roster) == [incident]


def test_a_transition_is_one_readable_line_with_every_series_and_its_evidence() -> None:
    line = oncall.transition_line(event(at=datetime(2026, 11, 11, 17, tzinfo=timezone(timedelta(hours=1)))))
    assert "\n" not in line
    for part in ("2026-11-11 16:00 UTC", "PLG Onboarding", "conversion_drop", "opened", "warning", "Testing Lead",
                 ", ".join(SERIES), "observed 5.12 % vs expected 10.66 %", "inc-1"):
        assert part in line, (part, line)
    feed = oncall.transition_line(event(detail={"age_seconds": 1005.7}, observed=1005.7, expected=600.0))
    assert "observed 16.8 min vs expected 10.0 min" in feed
    roster = {"Testing Lead": RosterRole(people=["Ana"])}
    assert "Testing Lead: Ana" in oncall.transition_line(event(), roster)


def test_a_state_line_says_when_the_incident_opened_and_where_it_stands() -> None:
    [incident] = oncall.fold([event(), event("escalated", sequence=2, at=AT + timedelta(hours=2),
                                             severity="critical", observed=0.01)], {})
    line = oncall.state_line(incident)
    for part in ("inc-1", "opened 2026-11-11 16:00 UTC", "escalated 2026-11-11 18:00 UTC", "critical",
                 "observed 5.12 % vs expected 10.66 %"):  # the evidence is the opening's, as in the report
        assert part in line, (part, line)
    [fresh] = oncall.fold([event()], {})
    assert "  opened  warning  " in oncall.state_line(fresh)


def test_json_is_the_event_as_the_topic_carries_it_one_line_each() -> None:
    line = oncall.event_json(event())
    assert "\n" not in line
    assert IncidentEvent.model_validate_json(line) == event()
    assert orjson.loads(line) == event().model_dump(mode="json")
    [incident] = oncall.fold([event(), event("resolved", sequence=2)], {})
    state = orjson.loads(oncall.state_json(incident))
    assert (state["incident_id"], state["status"], state["open"]) == ("inc-1", "resolved", False)
    assert IncidentEvent.model_validate(state["opened"]) == event()


# --------------------------------------------------------------------------- misuse
@pytest.mark.parametrize(("args", "says"), [
    (["tail", "--since", "soon"], "--since 'soon' is not a duration — write a whole number and a unit"),
    (["tail", "--since", "0h"], "--since '0h' is no time at all — write"),
    (["tail", "--since", "1h", "--from-beginning"], "--since and --from-beginning both say where to start — pass"),
    (["tail", "--state", "somewhere"], "a stored state does not change, so there is nothing to follow — use "
                                       "`pmon incidents list --state somewhere`"),
    (["tail", "--group", " "], "--group is empty — name the consumer group"),
    (["tail", "--severity", "loud"], "Invalid value for '--severity'"),
    (["list", "--state", "nowhere"], "no stored state in nowhere — build it with `pmon monitor --events FILE"),
])
def test_misuse_is_one_line_and_exit_code_2(tmp_path: Path, args: list[str], says: str) -> None:
    result = run_pmon("incidents", *args, cwd=tmp_path)
    line = one_line(result.stderr)
    assert result.returncode == 2 and line.startswith(f"pmon incidents {args[0]}: error: ") and says in line, line


# --------------------------------------------------------------------------- a stored state
def test_list_reads_an_embedded_runs_stored_state(tmp_path: Path) -> None:
    state = stored_threshold_state(tmp_path)

    listed = run_pmon("incidents", "list", "--open", "--initiative", INITIATIVE.upper(), "--state", str(state),
                      cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    [line] = [line for line in listed.stdout.splitlines() if "kpi_threshold" in line]
    assert INITIATIVE in line and f"{INITIATIVE}|p|web|control" in line and " UTC" in line

    as_json = run_pmon("incidents", "list", "--json", "--state", str(state), cwd=tmp_path)
    assert as_json.returncode == 0, as_json.stderr
    states = [orjson.loads(line) for line in as_json.stdout.splitlines()]
    [threshold] = [s for s in states if s["opened"]["kind"] == "kpi_threshold"]
    assert threshold["open"] and threshold["initiative"] == INITIATIVE and threshold["incident_id"] in line

    other = run_pmon("incidents", "list", "--initiative", "Elsewhere", "--state", str(state), cwd=tmp_path)
    assert other.returncode == 0 and other.stdout == ""
    assert one_line(other.stderr) == f"no 'Elsewhere' incidents in the state in {state} ({len(states)} in all)"


# --------------------------------------------------------------------------- the real broker
class Lines:
    """A subprocess's stream read line by line on a thread, so a test waits for a line with a deadline."""

    def __init__(self, stream: IO[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)  # end of stream

    def wait_for(self, wanted: Any, *, timeout: float, what: str, progress: Any = lambda: "") -> str:
        """The first line (after those already taken) for which `wanted` is true; fail at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self._queue.get(timeout=max(0.0, min(left, 1.0)))
            except queue.Empty:
                line = ""
            if line is None:
                pytest.fail(f"the stream ended before {what}; lines: {self.seen}\n{progress()}")
            if line:
                self.seen.append(line)
                if wanted(line):
                    return line
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; lines so far: {self.seen}\n"
                            f"{progress()}")


class Tail:
    def __init__(self, settings: Any, *args: str) -> None:
        self.process = subprocess.Popen([str(PMON), "incidents", "tail", *args], env=pmon_env(settings),
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        self.stdout, self.stderr = Lines(self.process.stdout), Lines(self.process.stderr)

    def ready(self) -> str:
        return self.stderr.wait_for(lambda line: "following" in line, timeout=60, what="tail to start following")

    def interrupt(self) -> int:
        """Ctrl-C, as a person ends it; the exit code."""
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout=30)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(timeout=10)


def _is_opened(line: str) -> bool:
    value = orjson.loads(line)
    return value["kind"] == "kpi_threshold" and value["transition"] == "opened"


@pytest.mark.kafka
def test_tail_json_shows_the_incident_the_worker_opens_and_list_shows_where_it_stands(
        isolated_settings: Any, start_worker: Any, tmp_path: Path) -> None:
    settings = isolated_settings(alert_threshold=0.1, **DETECTION)
    # Creates the topics; the drop lasts: it stays open.
    asyncio.run(produce(settings, threshold_series(two_days_ago(), after=0)))
    tail = Tail(settings, "--json", "--initiative", INITIATIVE.lower(), "--severity", "warning")
    tails = [tail]
    try:
        assert tail.ready().endswith(f"following {settings.topic('incidents')} (2 partitions) from the end; "
                                     "Ctrl-C stops")
        # A record that is not an incident event is reported on stderr, and tail goes on.
        asyncio.run(produce(settings, [("incidents", b"junk", b"not an incident")]))
        tail.stderr.wait_for(lambda line: "skipped a record that is not an incident event" in line, timeout=60,
                             what="tail to report the undecodable record")
        worker = start_worker(settings)
        started = time.monotonic()
        line = tail.stdout.wait_for(_is_opened, timeout=180, what="the worker's kpi_threshold incident on tail",
                                    progress=lambda: f"tail's stderr: {tail.stderr.seen}\nworker log:\n{worker.log()}")
        took = time.monotonic() - started
        incident = IncidentEvent.model_validate_json(line)
        assert incident.initiative == INITIATIVE and incident.series == [f"{INITIATIVE}|p|web|control"]
        assert all(orjson.loads(seen)["initiative"] == INITIATIVE for seen in tail.stdout.seen), took
        assert tail.interrupt() == 0
        assert not any("Traceback" in seen for seen in tail.stderr.seen), tail.stderr.seen

        # --since: what was written in the last hour, the incident among it; a group commits what it read.
        group = f"oncall-{settings.app_id}"
        since = Tail(settings, "--since", "1h", "--group", group)
        tails.append(since)
        since.ready()
        readable = since.stdout.wait_for(lambda seen: "kpi_threshold" in seen, timeout=60,
                                         what="tail --since 1h to show the incident")
        assert incident.incident_id in readable and "observed 17.00 % vs expected" in readable
        assert since.interrupt() == 0
        again = Tail(settings, "--group", group)
        tails.append(again)
        assert again.ready().endswith(f"from group {group}'s committed offsets; Ctrl-C stops")
        assert again.interrupt() == 0

        # list reads the topic to its end: the incident is open, its opening is the one tail showed.
        env = {k: v for k, v in pmon_env(settings).items() if k.startswith("PMON_")}
        listed = run_pmon("incidents", "list", "--open", "--json", cwd=tmp_path, env=env)
        assert listed.returncode == 0, listed.stderr
        assert "skipped a record that is not an incident event" in one_line(listed.stderr)
        states = {s["incident_id"]: s for s in map(orjson.loads, listed.stdout.splitlines())}
        assert states[incident.incident_id]["open"]
        assert IncidentEvent.model_validate(states[incident.incident_id]["opened"]) == incident
    finally:
        for process in tails:
            if process.process.poll() is None:
                process.process.kill()
                process.process.wait(timeout=10)
