"""The incident event: one transition of an incident's lifecycle.

Defined here, in the pure package that decides incidents; `monitor.events`
re-exports it as the value schema of the incidents topic.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

# "updated": more series joined an open (grouped) incident.
Transition = Literal["opened", "updated", "escalated", "resolved"]


class Evidence(BaseModel):
    """What a responder needs to judge an alert without opening a notebook."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    observed: float
    expected: float
    score: float
    bucket_start: datetime
    bucket_end: datetime
    detail: dict[str, Any] = Field(default_factory=dict)


class IncidentEvent(BaseModel):
    """One transition of an incident; the Kafka key is `incident_id`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: str
    incident_id: str
    transition: Transition
    kind: str
    severity: Literal["warning", "critical"]
    initiative: str
    series: list[str]
    period: str
    owner: str
    rung: int = Field(ge=0)
    playbook: str
    evidence: Evidence
    occurred_at: datetime


def measure_of(incident: IncidentEvent) -> str:
    """What an incident's observed and expected values measure: a KPI name, `age_seconds` for a feed, or `value`."""
    detail = incident.evidence.detail
    return "age_seconds" if "age_seconds" in detail else str(detail.get("kpi", "value"))


def incident_id(initiative: str, kind: str, series: str, period: str) -> str:
    """Deterministic id, so a replay or a restarted worker never doubles an incident.

    >>> incident_id("PLG Onboarding", "conversion_drop", "PLG Onboarding|new|web|control", "2026-11-10T14:00")
    'inc-c181c25299d6631e98aa'
    """
    digest = hashlib.sha256("\x1f".join((initiative, kind, series, period)).encode()).hexdigest()
    return f"inc-{digest[:20]}"


def transition_event_id(incident: str, transition: Transition, sequence: int | str) -> str:
    """Deterministic id of one transition: the same replay emits the same ids."""
    return f"{incident}:{transition}:{sequence}"


class IncidentAction(BaseModel):
    """What a person did about an incident: acknowledged it, resolved it, or noted a remediation step.

    The Kafka key of the incident-actions topic is `incident_id`; `event_id` makes a repeated action harmless.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: str = Field(min_length=1, max_length=200)
    incident_id: str = Field(min_length=1, max_length=200)
    initiative: str = Field(min_length=1, max_length=200)
    action: Literal["acknowledged", "resolved", "note"]
    by: str = Field(min_length=1, max_length=200, description="Who did it: a person, not a role.")
    text: str = Field("", max_length=2000)
    # Aware and plausible, as the input events' times: a naive time cannot be compared with an incident's,
    # and one in 1970 or 2100 would skew the response time.
    at: Annotated[
        AwareDatetime, Field(ge=datetime(2000, 1, 1, tzinfo=timezone.utc), lt=datetime(2100, 1, 1, tzinfo=timezone.utc))
    ]


def resolved_by_person(latest: IncidentEvent, action: IncidentAction) -> IncidentEvent:
    """The `resolved` transition of an incident a person closed by hand (`pmon incidents resolve`), after its
    `latest` transition; its id is the action's, so a repeated action yields the same event.

    >>> from datetime import datetime, timezone
    >>> t = datetime(2026, 11, 10, 14, tzinfo=timezone.utc)
    >>> opened = IncidentEvent(event_id="inc-1:opened:1", incident_id="inc-1", transition="opened", kind="ctr_drop",
    ...     severity="warning", initiative="I", series=["I|p|web|control"], period="2026-11-10T13:00", owner="Analyst",
    ...     rung=0, playbook="", evidence=Evidence(observed=0.01, expected=0.02, score=0.9, bucket_start=t,
    ...     bucket_end=t), occurred_at=t)
    >>> action = IncidentAction(event_id="act-7", incident_id="inc-1", initiative="I", action="resolved", by="Ana",
    ...     at=datetime(2026, 11, 10, 15, tzinfo=timezone.utc))
    >>> event = resolved_by_person(opened, action)
    >>> event.event_id, event.transition, event.evidence.detail["resolved_by"], event.occurred_at.hour
    ('inc-1:resolved:by-act-7', 'resolved', 'Ana', 15)
    """
    return resolution(latest, f"by-{action.event_id}", action.at, resolved_by=action.by, action_id=action.event_id)


def resolution(latest: IncidentEvent, sequence: int | str, at: datetime, **detail: Any) -> IncidentEvent:
    """The `resolved` transition that follows an incident's `latest` one at `at`, `detail` added to its
    evidence's: for a resolution decided outside the breach policy (a person, a superseding decision)."""
    return latest.model_copy(
        update={
            "event_id": transition_event_id(latest.incident_id, "resolved", sequence),
            "transition": "resolved",
            "occurred_at": at,
            "evidence": latest.evidence.model_copy(update={"detail": {**latest.evidence.detail, **detail}}),
        }
    )
