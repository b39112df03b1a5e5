"""`monitoring_degraded`: the monitor itself lost something (a sink write, a step, source offsets).

One incident per cause and hour: its id is deterministic in (initiative, cause,
hour), so the same fault seen again by a restarted worker updates no new incident.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from incidents.model import Evidence, IncidentEvent, incident_id, transition_event_id
from incidents.playbooks import owner_at, playbook_for

KIND = "monitoring_degraded"


def degraded_incident(
    cause: str, *, at: datetime, initiative: str = "pmon", observed: float = 1, detail: dict[str, Any] | None = None
) -> IncidentEvent:
    """The `opened` transition of a monitoring_degraded incident for `cause` in the hour of `at`.

    >>> from datetime import timezone
    >>> event = degraded_incident("plan-file", at=datetime(2026, 1, 1, 10, 30, tzinfo=timezone.utc))
    >>> event.kind, event.period, event.severity, event.series
    ('monitoring_degraded', '2026-01-01T10', 'critical', ['plan-file'])
    """
    period = at.strftime("%Y-%m-%dT%H")
    incident = incident_id(initiative, KIND, cause, period)
    playbook = playbook_for(KIND)
    return IncidentEvent(
        event_id=transition_event_id(incident, "opened", 1),
        incident_id=incident,
        transition="opened",
        kind=KIND,
        severity="critical",
        initiative=initiative,
        series=[cause],
        period=period,
        owner=owner_at(playbook.first_rung),
        rung=playbook.first_rung,
        playbook=playbook.text,
        evidence=Evidence(observed=observed, expected=0, score=1, bucket_start=at, bucket_end=at, detail=detail or {}),
        occurred_at=at,
    )
