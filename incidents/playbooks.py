"""Who owns an incident kind, where it starts on the escalation ladder, and what to do."""

from __future__ import annotations

from dataclasses import dataclass

from incidents.exceptions import UnknownIncidentKind

ESCALATION_LADDER: tuple[str, ...] = ("Testing Lead", "Personalization Architect", "Data Privacy Lead")


@dataclass(frozen=True)
class Playbook:
    kind: str
    first_rung: int
    severity: str
    text: str


PLAYBOOKS: dict[str, Playbook] = {
    playbook.kind: playbook
    for playbook in (
        Playbook(
            "conversion_drop", 0, "warning",
            "Conversion rate of the series fell below its baseline twice. 1) Check rule changes and "
            "deployments on the initiative in the preceding hours. 2) Compare the series with its control "
            "and sibling channels to tell a product issue from a traffic mix change. 3) If a rule change is "
            "the probable cause, roll it back or switch the series to the fallback experience."),
        Playbook(
            "monitoring_degraded", 1, "critical",
            "The monitor could not process or write a record after its retries; the record is on the "
            "dead-letter topic with its reason. Inspect it, fix the producer or the sink, and replay it."),
    )
}


def playbook_for(kind: str) -> Playbook:
    try:
        return PLAYBOOKS[kind]
    except KeyError:
        raise UnknownIncidentKind(f"no playbook for incident kind {kind!r}; known kinds: {sorted(PLAYBOOKS)}") from None


def owner_at(rung: int) -> str:
    """The owner at a rung; the top rung owns everything above it."""
    return ESCALATION_LADDER[min(rung, len(ESCALATION_LADDER) - 1)]
