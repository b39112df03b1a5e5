"""Who owns an incident kind, where it starts on the escalation ladder, and what to do."""

from __future__ import annotations

import re
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
            "conversion_drop",
            0,
            "warning",
            "Conversion rate of the series fell below its baseline twice. 1) Check rule changes and "
            "deployments on the initiative in the preceding hours. 2) Compare the series with its control "
            "and sibling channels to tell a product issue from a traffic mix change. 3) If a rule change is "
            "the probable cause, roll it back or switch the series to the fallback experience.",
        ),
        Playbook(
            "kpi_threshold",
            0,
            "warning",
            "The series' KPI (PMON_ALERT_KPI) fell by the alert threshold or more below its baseline, "
            "significantly, twice. 1) Check rule changes and deployments on the initiative in the preceding "
            "hours. 2) Compare with its control and sibling channels to tell a product issue from a traffic mix "
            "change. 3) Roll back the probable cause or switch the series to the fallback experience.",
        ),
        Playbook(
            "ctr_drop",
            0,
            "warning",
            "Click-through rate of the series fell below its baseline twice. 1) Check what the series now shows "
            "(rule changes, content, layout) in the preceding hours. 2) Compare with its control and sibling "
            "channels. 3) Roll back the probable cause or switch the series to the fallback experience.",
        ),
        Playbook(
            "kpi_spike",
            0,
            "warning",
            "A rate of the series rose far above its baseline twice: often a tracking change (double-counted "
            "clicks or conversions) or a rule that targets too narrowly. Check event producers and recent rule "
            "changes before celebrating.",
        ),
        Playbook(
            "level_shift",
            0,
            "warning",
            "The series' level moved and stayed there (a drift, not a dip). Find the change that coincides with "
            "the shift (rule rollout, audience or traffic-mix change) and decide whether the new level is "
            "intended; if it is, acknowledge it so the baseline re-learns.",
        ),
        Playbook(
            "volume_drop",
            1,
            "warning",
            "Exposures of the series fell far below the forecast for this hour. Check the decisioning service "
            "and the engagement producer for the affected channel, then the targeting rules of the series.",
        ),
        Playbook(
            "latency_regression",
            1,
            "warning",
            "Decision latency of the series rose above its forecast twice. Check the decision service's "
            "deployments and dependencies; slow decisions time out into fallbacks and hurt conversion.",
        ),
        Playbook(
            "fallback_surge",
            1,
            "warning",
            "The share of fallback exposures rose twice: the decision tree is failing over. Check the rule's "
            "inputs (profile data freshness, feature service) and recent rule changes; fix or roll back.",
        ),
        Playbook(
            "variant_suppression",
            0,
            "critical",
            "A variant gets far less than its planned share of exposures (or none): the experiment's readout is "
            "biased. Check the assignment service and the rule serving the variant; pause the readout until fixed.",
        ),
        Playbook(
            "feed_stale",
            1,
            "critical",
            "A feed (topic x initiative) delivered no event within its freshness objective. Check the producer "
            "and the connector; until it is back, the initiative's KPIs and alerts are blind.",
        ),
        Playbook(
            "multi_metric_anomaly",
            1,
            "warning",
            "The initiative's KPIs moved together in an unusual way (half-space trees). Look at the dashboard by "
            "channel and profile for the moving parts, then at rule changes and deployments.",
        ),
        Playbook(
            "consent_violation",
            2,
            "critical",
            "Personalization reached users without personalization consent at the exposure's event time. "
            "1) Switch the listed series to the fallback experience until the consent check in the decisioning "
            "service is verified. 2) Check consent propagation (revocations reach decisioning within the grace "
            "period?) and the rule's consent filter. 3) Record the exposures for the privacy register; the "
            "evidence lists event ids and pseudonymous users.",
        ),
        Playbook(
            "unapproved_rule_change",
            1,
            "critical",
            "A rule was changed without an approver or a ticket. 1) Ask the author for the ticket and an "
            "approval from the rule's owner. 2) If the change cannot be approved now, roll it back. The "
            "incident resolves when an approved, ticketed change of the same rule follows.",
        ),
        Playbook(
            "experiment_integrity",
            0,
            "critical",
            "A rule serving a live experiment's variants changed during the experiment: the variants no longer "
            "compare what was planned. Decide whether to restart the experiment, cut the readout at the change, "
            "or accept it with a note in the memo.",
        ),
        Playbook(
            "rule_fallback",
            1,
            "warning",
            "A rule falls back to the default experience above the fallback threshold, or far above its own "
            "usual rate (a decision-tree health signal). Check the rule's inputs (profile data, feature "
            "service, consent filter) and its latest changes.",
        ),
        Playbook(
            "variant_imbalance",
            0,
            "critical",
            "An experiment's variants differ in consent or fallback rates beyond chance (chi-square): the "
            "readout compares different populations or experiences. Find why one variant falls back or reaches "
            "unconsented users more, fix it, and discount the affected period in the readout.",
        ),
        Playbook(
            "experiment_decision",
            0,
            "warning",
            "The experiment's recommendation changed (ship, roll back, keep running or investigate). Read the "
            "memo: the decision rule, the always-valid p-values and intervals, the guardrails and the rollout "
            "steps; act on it or record why not.",
        ),
        Playbook(
            "monitoring_degraded",
            1,
            "critical",
            "The monitor could not process or write a record after its retries; the record is on the "
            "dead-letter topic with its reason. Inspect it, fix the producer or the sink, and replay it.",
        ),
    )
}


def playbook_for(kind: str) -> Playbook:
    try:
        return PLAYBOOKS[kind]
    except KeyError:
        raise UnknownIncidentKind(f"no playbook for incident kind {kind!r}; known kinds: {sorted(PLAYBOOKS)}") from None


def playbook_steps(kind: str) -> tuple[str, ...]:
    """A playbook's numbered steps ("1) ... 2) ..."), or its whole text as one step.

    >>> playbook_steps("ctr_drop")[0]
    'Check what the series now shows (rule changes, content, layout) in the preceding hours.'
    >>> len(playbook_steps("volume_drop"))
    1
    """
    text = playbook_for(kind).text
    parts = re.split(r"\s*\d\) ", text)
    steps = tuple(part.strip() for part in parts[1:] if part.strip())
    return steps or (text,)


def owner_at(rung: int) -> str:
    """The owner at a rung; the top rung owns everything above it."""
    return ESCALATION_LADDER[min(rung, len(ESCALATION_LADDER) - 1)]
