"""The breach policy: a breach is a warning, the second within a span is an incident.

Like a Prometheus rule's `for`: the first breach of a series puts it in
`pending`; a second breach within `breach_span_buckets` opens an incident;
further breaches climb the escalation ladder every `escalate_every` breaches;
`recovery_span_buckets` consecutive healthy buckets resolve it. The state is a
small picklable value kept per (series, kind) in a table.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from incidents.model import Evidence, IncidentEvent, Transition, incident_id, transition_event_id
from incidents.playbooks import ESCALATION_LADDER, owner_at, playbook_for


class BreachPolicyConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    breach_span_buckets: int = Field(3, ge=1)
    recovery_span_buckets: int = Field(3, ge=1)
    escalate_every: int = Field(6, ge=1)


@dataclass(frozen=True, slots=True)
class BreachState:
    status: Literal["ok", "pending", "firing"] = "ok"
    pending_start: datetime | None = None
    incident: str | None = None
    period: str | None = None
    rung: int = 0
    breaches_on_rung: int = 0
    healthy_streak: int = 0
    sequence: int = 0


def period_of(bucket_start: datetime) -> str:
    """The evaluation period an incident is named after: the bucket of its first breach (to the minute)."""
    return bucket_start.strftime("%Y-%m-%dT%H:%M")


class BreachPolicy:
    """Turns a series' breach / no-breach verdicts into incident transitions.

    >>> from datetime import datetime, timedelta, timezone
    >>> policy = BreachPolicy(BreachPolicyConfig(breach_span_buckets=2, recovery_span_buckets=1))
    >>> t0 = datetime(2026, 11, 10, 14, tzinfo=timezone.utc)
    >>> def ev(h): return Evidence(observed=0.05, expected=0.1, score=0.5,
    ...                            bucket_start=t0 + timedelta(hours=h), bucket_end=t0 + timedelta(hours=h + 1))
    >>> state = BreachState()
    >>> state, out = policy.observe(state, initiative="I", kind="conversion_drop", series="I|p|c|v", breached=True,
    ...                             evidence=ev(0))
    >>> state.status, out
    ('pending', [])
    >>> state, out = policy.observe(state, initiative="I", kind="conversion_drop", series="I|p|c|v", breached=True,
    ...                             evidence=ev(1))
    >>> state.status, [e.transition for e in out], out[0].owner
    ('firing', ['opened'], 'Testing Lead')
    >>> state, out = policy.observe(state, initiative="I", kind="conversion_drop", series="I|p|c|v", breached=False,
    ...                             evidence=ev(2))
    >>> state.status, [e.transition for e in out]
    ('ok', ['resolved'])
    """

    def __init__(self, config: BreachPolicyConfig) -> None:
        self.config = config

    def observe(
        self,
        state: BreachState,
        *,
        initiative: str,
        kind: str,
        series: str,
        breached: bool,
        evidence: Evidence,
        first_rung: int | None = None,
    ) -> tuple[BreachState, list[IncidentEvent]]:
        """Fold one scored bucket into the state; return the new state and the transitions it caused."""
        if state.status == "firing":
            return self._while_firing(state, initiative, kind, series, breached, evidence)
        if not breached:
            return (BreachState() if state.status == "pending" and self._span_over(state, evidence) else state), []
        if state.status == "pending" and not self._span_over(state, evidence):
            return self._open(state, initiative, kind, series, evidence, first_rung)
        return BreachState(status="pending", pending_start=evidence.bucket_start), []

    def _span_over(self, state: BreachState, evidence: Evidence) -> bool:
        width = evidence.bucket_end - evidence.bucket_start
        assert state.pending_start is not None, "only a pending state has a span"
        return evidence.bucket_start - state.pending_start > width * self.config.breach_span_buckets

    def _open(
        self, state: BreachState, initiative: str, kind: str, series: str, evidence: Evidence, first_rung: int | None
    ) -> tuple[BreachState, list[IncidentEvent]]:
        assert state.pending_start is not None, "an incident opens from a pending state"
        period = period_of(state.pending_start)
        rung = playbook_for(kind).first_rung if first_rung is None else first_rung
        opened = replace(
            state,
            status="firing",
            incident=incident_id(initiative, kind, series, period),
            period=period,
            rung=min(rung, len(ESCALATION_LADDER) - 1),
            breaches_on_rung=0,
            healthy_streak=0,
            sequence=1,
        )
        return opened, [_event(opened, "opened", initiative, kind, series, evidence)]

    def _while_firing(
        self, state: BreachState, initiative: str, kind: str, series: str, breached: bool, evidence: Evidence
    ) -> tuple[BreachState, list[IncidentEvent]]:
        if not breached:
            streak = state.healthy_streak + 1
            if streak < self.config.recovery_span_buckets:
                return replace(state, healthy_streak=streak), []
            resolved = replace(state, sequence=state.sequence + 1)
            return BreachState(), [_event(resolved, "resolved", initiative, kind, series, evidence)]
        breaches = state.breaches_on_rung + 1
        top = len(ESCALATION_LADDER) - 1
        if breaches < self.config.escalate_every or state.rung >= top:
            return replace(state, breaches_on_rung=breaches, healthy_streak=0), []
        escalated = replace(
            state, rung=state.rung + 1, breaches_on_rung=0, healthy_streak=0, sequence=state.sequence + 1
        )
        return escalated, [_event(escalated, "escalated", initiative, kind, series, evidence)]


def _event(
    state: BreachState, transition: Transition, initiative: str, kind: str, series: str, evidence: Evidence
) -> IncidentEvent:
    playbook = playbook_for(kind)
    assert state.incident is not None, "only a state with an incident has transitions"
    severity = "critical" if state.rung > playbook.first_rung or playbook.severity == "critical" else "warning"
    return IncidentEvent(
        event_id=transition_event_id(state.incident, transition, state.sequence),
        incident_id=state.incident,
        transition=transition,
        kind=kind,
        severity=severity,
        initiative=initiative,
        series=[series],
        period=state.period,
        owner=owner_at(state.rung),
        rung=state.rung,
        playbook=playbook.text,
        evidence=evidence,
        occurred_at=evidence.bucket_end,
    )
