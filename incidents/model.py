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


def transition_event_id(incident: str, transition: Transition, sequence: int) -> str:
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
