"""On-call from the terminal, the pure parts of `pmon incidents tail|list`: filter, fold, format, `--since`.

No Kafka here: `streams.kafka_io` reads the incidents topic, `cli.main` wires the two.

>>> parse_duration("15m"), parse_duration("2h"), parse_duration("7d")
(datetime.timedelta(seconds=900), datetime.timedelta(seconds=7200), datetime.timedelta(days=7))
>>> at_or_above("critical", "warning"), at_or_above("warning", "critical")
(True, False)
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, get_args

import orjson

from incidents.model import IncidentEvent, measure_of
from incidents.roster import assignee_of

# Least to most severe, as the incident model spells them: one home for the levels and their order.
SEVERITIES: tuple[str, ...] = get_args(IncidentEvent.model_fields["severity"].annotation)
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
DURATION_HINT = "write a whole number and a unit (s, m, h, d, w), e.g. 15m, 2h or 7d"
_DURATION = re.compile(r"(\d+)([smhdw])")


def parse_duration(text: str) -> timedelta:
    """`15m`, `2h`, `7d`, also `1h30m`; a ValueError saying what is wrong otherwise."""
    compact = text.strip().lower()
    parts = _DURATION.findall(compact)
    if not compact or "".join(f"{n}{unit}" for n, unit in parts) != compact:
        raise ValueError(f"--since {text!r} is not a duration")
    seconds = sum(int(n) * DURATION_UNITS[unit] for n, unit in parts)
    if seconds == 0:
        raise ValueError(f"--since {text!r} is no time at all")
    return timedelta(seconds=seconds)


def at_or_above(severity: str, level: str) -> bool:
    return SEVERITIES.index(severity) >= SEVERITIES.index(level)


def matches(event: IncidentEvent, *, initiative: str | None = None, severity: str | None = None) -> bool:
    """Whether `event` is of `initiative` (any case, surrounding spaces ignored) and at or above `severity`."""
    if initiative is not None and event.initiative.strip().casefold() != initiative.strip().casefold():
        return False
    return severity is None or at_or_above(event.severity, severity)


@dataclass(frozen=True)
class CurrentIncident:
    """An incident as it stands: how it opened, its latest transition, and who is on duty for its owner role."""

    opened: IncidentEvent
    latest: IncidentEvent
    assignee: str | None = None
    assignee_reason: str | None = None

    @property
    def is_open(self) -> bool:
        return self.latest.transition != "resolved"


def current(opened: IncidentEvent, latest: IncidentEvent, roster: Mapping[str, Any]) -> CurrentIncident:
    # As the report assigns it: the owner role's person on duty on the day of the latest transition.
    assignee, reason = assignee_of(roster, latest.owner, latest.occurred_at.date())
    return CurrentIncident(opened, latest, assignee, reason)


def fold(events: Iterable[IncidentEvent], roster: Mapping[str, Any]) -> list[CurrentIncident]:
    """The current state of every incident in `events` (in topic order), oldest opening first.

    A transition seen twice (same `event_id`: a read-uncommitted copy, a repeated replay) counts once. An incident
    whose opening is no longer on the topic (retention) stands with its first transition seen.
    """
    first: dict[str, IncidentEvent] = {}
    latest: dict[str, IncidentEvent] = {}
    seen: set[str] = set()
    for event in events:
        if event.event_id in seen:
            continue
        seen.add(event.event_id)
        known = first.get(event.incident_id)
        if known is None or (known.transition != "opened" and event.transition == "opened"):
            first[event.incident_id] = event
        latest[event.incident_id] = event
    return from_pairs(((first[i], latest[i]) for i in first), roster)


def from_pairs(
    pairs: Iterable[tuple[IncidentEvent, IncidentEvent]], roster: Mapping[str, Any]
) -> list[CurrentIncident]:
    """(opened, latest) pairs, as a stored state keeps them, as current incidents, oldest opening first."""
    found = [current(opened, latest, roster) for opened, latest in pairs]
    return sorted(found, key=lambda c: (c.opened.occurred_at, c.opened.incident_id))


def _when(at: datetime) -> str:
    return f"{at.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC"


def _owner(owner: str, assignee: str | None, reason: str | None) -> str:
    return owner if assignee is None else f"{owner}: {assignee}" + (f" ({reason})" if reason else "")


def _observed(event: IncidentEvent) -> str:
    from cli.render import measured  # rich's markdown comes with it: loaded when a line is printed, not for --help

    measure = measure_of(event)
    return (
        f"observed {measured(event.evidence.observed, measure)} vs expected "
        f"{measured(event.evidence.expected, measure)}"
    )


def transition_line(event: IncidentEvent, roster: Mapping[str, Any] | None = None) -> str:
    """One readable line per transition: when (event time, UTC), where, what, who, the series, the evidence."""
    assignee, reason = assignee_of(roster or {}, event.owner, event.occurred_at.date())
    return "  ".join(
        (
            _when(event.occurred_at),
            event.initiative,
            event.kind,
            event.transition,
            event.severity,
            _owner(event.owner, assignee, reason),
            ", ".join(event.series),
            _observed(event),
            event.incident_id,
        )
    )


def state_line(incident: CurrentIncident) -> str:
    """One line per incident: id, opening, status (with its time when it moved since), evidence at opening."""
    opened, latest = incident.opened, incident.latest
    moved = latest.event_id != opened.event_id
    status = f"{latest.transition} {_when(latest.occurred_at)}" if moved else latest.transition
    return "  ".join(
        (
            opened.incident_id,
            f"opened {_when(opened.occurred_at)}",
            opened.initiative,
            opened.kind,
            status,
            latest.severity,
            _owner(latest.owner, incident.assignee, incident.assignee_reason),
            ", ".join(latest.series),
            _observed(opened),
        )
    )


def event_json(event: IncidentEvent) -> str:
    """The transition as the topic carries it, on one line."""
    return orjson.dumps(event.model_dump(mode="json")).decode()


def state_json(incident: CurrentIncident) -> str:
    """The incident's current state on one line: its status and assignee, its opening and latest transitions."""
    return orjson.dumps(
        {
            "incident_id": incident.latest.incident_id,
            "initiative": incident.latest.initiative,
            "status": incident.latest.transition,
            "open": incident.is_open,
            "assignee": incident.assignee,
            "assignee_reason": incident.assignee_reason,
            "opened": incident.opened.model_dump(mode="json"),
            "latest": incident.latest.model_dump(mode="json"),
        }
    ).decode()
