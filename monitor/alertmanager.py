"""Incidents as Alertmanager alerts (API v2, `POST /api/v2/alerts`): the pure mapping the worker pushes.

Identity. Alertmanager identifies an alert by its whole label set: `alertname=PmonIncident`,
`incident_id`, `kind`, `severity`, `initiative`, `owner_role`. The incident id is deterministic, so a
replayed or re-sent transition is the same alert. Severity and owner role may change within one
incident (an escalation); the label set that was firing is then ended at that transition, and a
resolution ends the label set that was firing, so no stale alert is left behind.

Time. `startsAt` is when the incident opened. A resolution sets `endsAt` to its time. A firing alert
gets `endsAt` a lease ahead of the wall clock (`LEASE_CHECKS` timer checks), and the worker re-sends
every open incident at every check (`firing_alerts`): Alertmanager expects clients to re-send active
alerts, keeps them in memory only (a restarted Alertmanager learns them again at the next check), and
ends an alert nobody re-sends at its `endsAt`. So an incident the worker stops vouching for (worker
down, resolved by a person, a one-shot `monitoring_degraded`) ends within the lease instead of firing
forever. Event times ahead of the wall clock are clamped to it: Alertmanager's times are wall times.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson

from incidents.model import IncidentEvent, measure_of
from plans.document import PlanDocument

ALERTNAME = "PmonIncident"
SINK = "alertmanager"  # the emitter's sink name: retries, dead letters and monitoring_degraded say so
LEASE_CHECKS = 4  # a firing alert outlives this many missed re-sends (Prometheus uses 4 too)

Known = tuple[IncidentEvent, IncidentEvent]  # an incident's opening transition and its latest one


def labels_of(incident: IncidentEvent) -> dict[str, str]:
    """The labels that identify the alert of `incident` (and that routes match)."""
    return {
        "alertname": ALERTNAME,
        "incident_id": incident.incident_id,
        "kind": incident.kind,
        "severity": incident.severity,
        "initiative": incident.initiative,
        "owner_role": incident.owner,
    }


def annotations_of(incident: IncidentEvent) -> dict[str, str]:
    """What a responder reads: a summary, the playbook, the series, observed against expected."""
    evidence, measure = incident.evidence, measure_of(incident)
    series = len(incident.series)
    return {
        "summary": f"{incident.kind} {incident.transition} on {incident.initiative}: {measure} "
        f"{evidence.observed:.4g} against {evidence.expected:.4g} expected "
        f"({series} series)",
        "playbook": incident.playbook,
        "series": ", ".join(incident.series),
        "measure": measure,
        "observed": f"{evidence.observed:.6g}",
        "expected": f"{evidence.expected:.6g}",
        "transition": incident.transition,
        "rung": str(incident.rung),
        "period": incident.period,
        "occurred_at": _rfc3339(incident.occurred_at),
    }


def alerts_of(incident: IncidentEvent, *, known: Known | None, now: datetime, lease: timedelta) -> list[dict[str, Any]]:
    """The alerts that carry one transition; `known` is the incident's (opened, latest) before it, if any.

    >>> from incidents.model import Evidence
    >>> t = datetime(2026, 11, 10, 14, tzinfo=timezone.utc)
    >>> opened = IncidentEvent(event_id="i:opened:1", incident_id="inc-1", transition="opened",
    ...     kind="kpi_threshold", severity="warning", initiative="PLG", series=["PLG|new|web|control"],
    ...     period="2026-11-10T13:00", owner="Testing Lead", rung=0, playbook="Check rule changes.",
    ...     evidence=Evidence(observed=0.17, expected=0.2, score=3.6, bucket_start=t, bucket_end=t),
    ...     occurred_at=t)
    >>> now, lease = t + timedelta(hours=1), timedelta(minutes=4)
    >>> [alert] = alerts_of(opened, known=None, now=now, lease=lease)
    >>> alert["labels"]["incident_id"], alert["labels"]["owner_role"], alert["startsAt"], alert["endsAt"]
    ('inc-1', 'Testing Lead', '2026-11-10T14:00:00Z', '2026-11-10T15:04:00Z')
    >>> alert["annotations"]["summary"]
    'kpi_threshold opened on PLG: value 0.17 against 0.2 expected (1 series)'

    An escalation changes the owner: the label set that fired ends, the new one fires.

    >>> escalated = opened.model_copy(update={"transition": "escalated", "rung": 1, "severity": "critical",
    ...     "owner": "Personalization Architect", "occurred_at": t + timedelta(hours=6)})
    >>> [(a["labels"]["owner_role"], a["endsAt"]) for a in alerts_of(escalated, known=(opened, opened),
    ...                                                                 now=now, lease=lease)]
    [('Testing Lead', '2026-11-10T15:00:00Z'), ('Personalization Architect', '2026-11-10T15:04:00Z')]

    A resolution ends what was firing, at its time.

    >>> resolved = escalated.model_copy(update={"transition": "resolved", "severity": "warning",
    ...     "occurred_at": t + timedelta(minutes=30)})
    >>> [(a["labels"]["severity"], a["startsAt"], a["endsAt"]) for a in alerts_of(resolved,
    ...     known=(opened, escalated), now=now, lease=lease)]
    [('critical', '2026-11-10T14:00:00Z', '2026-11-10T14:30:00Z')]
    """
    opened, previous = known if known is not None else (incident, None)
    if previous is not None and previous.transition == "resolved":
        previous = None  # nothing of it is firing
    starts = min(opened.occurred_at, incident.occurred_at, now)
    ended = max(starts, min(incident.occurred_at, now))
    if incident.transition == "resolved":
        return [_alert(labels_of(previous or incident), incident, starts, ended)]
    alerts = []
    if previous is not None and labels_of(previous) != labels_of(incident):
        alerts.append(_alert(labels_of(previous), incident, starts, ended))
    alerts.append(_alert(labels_of(incident), incident, starts, now + lease))
    return alerts


def firing_alerts(open_incidents: Iterable[Known], *, now: datetime, lease: timedelta) -> list[dict[str, Any]]:
    """The re-sent alerts of the open incidents: firing until a lease from `now`, with their latest labels."""
    return [
        _alert(labels_of(latest), latest, min(opened.occurred_at, now), now + lease)
        for opened, latest in open_incidents
        if latest.transition != "resolved"
    ]


def open_incidents(
    plans: Mapping[str, PlanDocument], incidents: Mapping[str, Known], initiatives: Iterable[str]
) -> list[Known]:
    """The incidents open in the initiatives' plans (so one a person resolved is not re-sent), as the stage
    knows them (`InitiativeState.plans` and `.incidents`)."""
    found = []
    for initiative in initiatives:
        plan = plans.get(initiative)
        for summary in plan.open_incidents if plan is not None else ():
            known = incidents.get(summary.incident_id)
            if known is not None and known[1].transition != "resolved":
                found.append(known)
    return found


def alert_body(alerts: list[dict[str, Any]]) -> bytes:
    """The request body of `POST /api/v2/alerts`: a JSON list of alerts."""
    return orjson.dumps(alerts)


def _alert(labels: dict[str, str], incident: IncidentEvent, starts: datetime, ends: datetime) -> dict[str, Any]:
    return {
        "labels": labels,
        "annotations": annotations_of(incident),
        "startsAt": _rfc3339(starts),
        "endsAt": _rfc3339(ends),
    }


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
