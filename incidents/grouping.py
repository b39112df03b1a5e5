"""One page for one cause: per-series transitions folded into one incident per initiative and kind.

The breach policy runs per series. When several series of an initiative breach
the same way at once (a broken rule, a feed that stopped), a responder wants
one incident listing them, like an Alertmanager group. The group opens with
the first series that fires, lists every series that joins while it is open
(an `updated` transition), climbs the ladder when any member climbs higher,
and resolves when the last member has recovered. Its id is deterministic:
(initiative, kind, "group", period of the bucket that opened it).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from incidents.breach_policy import period_of
from incidents.model import IncidentEvent, Transition, incident_id, transition_event_id
from incidents.playbooks import owner_at

GROUP_SERIES_KEY = "group"


@dataclass(frozen=True, slots=True)
class GroupState:
    incident: str | None = None
    period: str | None = None
    members: tuple[str, ...] = ()  # series firing now
    ever: tuple[str, ...] = ()  # every series that fired while the group was open
    rung: int = 0
    sequence: int = 0
    evaluated_until: float = float("-inf")  # end (epoch s) of the last bucket folded in: a replay folds it once


def fold_group(state: GroupState, transitions: list[IncidentEvent]) -> tuple[GroupState, list[IncidentEvent]]:
    """Fold one closed bucket's per-series transitions of ONE (initiative, kind) into group transitions.

    >>> from datetime import datetime, timezone
    >>> from incidents.model import Evidence
    >>> t = datetime(2026, 11, 10, 14, tzinfo=timezone.utc)
    >>> def ev(series, transition, rung=0):
    ...     return IncidentEvent(event_id="x", incident_id="s-" + series, transition=transition, kind="conversion_drop",
    ...         severity="warning", initiative="I", series=[series], period="p", owner="Testing Lead", rung=rung,
    ...         playbook="...", evidence=Evidence(observed=0.05, expected=0.1, score=0.5, bucket_start=t, bucket_end=t),
    ...         occurred_at=t)
    >>> state, out = fold_group(GroupState(), [ev("I|a", "opened"), ev("I|b", "opened")])
    >>> [(e.transition, e.series) for e in out]
    [('opened', ['I|a', 'I|b'])]
    >>> state, out = fold_group(state, [ev("I|a", "resolved")])
    >>> out, state.members
    ([], ('I|b',))
    >>> state, out = fold_group(state, [ev("I|b", "resolved")])
    >>> [(e.transition, e.series) for e in out]
    [('resolved', ['I|a', 'I|b'])]
    """
    if not transitions:
        return state, []
    first = transitions[0]
    members = list(state.members)
    ever = list(state.ever)
    joined, top_rung = [], state.rung
    for event in transitions:
        series = event.series[0]
        if event.transition == "resolved":
            if series in members:
                members.remove(series)
            continue
        if series not in members:
            members.append(series)
            joined.append(series)
        if series not in ever:
            ever.append(series)
        top_rung = max(top_rung, event.rung)
    out: list[IncidentEvent] = []
    if state.incident is None:
        if not joined:
            return state, []  # only resolutions of series the group never saw
        period = period_of(first.evidence.bucket_start)
        group = GroupState(
            incident_id(first.initiative, first.kind, GROUP_SERIES_KEY, period),
            period,
            tuple(members),
            tuple(ever),
            top_rung,
            1,
        )
        out.append(_group_event(group, "opened", transitions, group.ever))
        return group, out
    group = replace(state, members=tuple(members), ever=tuple(ever))
    if top_rung > state.rung:
        group = replace(group, rung=top_rung, sequence=group.sequence + 1)
        out.append(_group_event(group, "escalated", transitions, group.ever))
    elif joined:
        group = replace(group, sequence=group.sequence + 1)
        out.append(_group_event(group, "updated", transitions, group.ever))
    if not group.members:
        resolved = replace(group, sequence=group.sequence + 1)
        out.append(_group_event(resolved, "resolved", transitions, group.ever))
        return GroupState(), out
    return group, out


def _group_event(
    group: GroupState, transition: Transition, transitions: list[IncidentEvent], series: tuple[str, ...]
) -> IncidentEvent:
    """The group's transition, with the evidence of the most telling member transition of this bucket."""
    assert group.incident is not None, "only a group with an incident has transitions"
    wanted = "resolved" if transition == "resolved" else None
    source = next((e for e in transitions if wanted is None or e.transition == wanted), transitions[0])
    if transition != "resolved":
        source = max(
            (e for e in transitions if e.transition != "resolved"),
            key=lambda e: (e.rung, e.evidence.score),
            default=source,
        )
    return source.model_copy(
        update={
            "event_id": transition_event_id(group.incident, transition, group.sequence),
            "incident_id": group.incident,
            "transition": transition,
            "series": list(series),
            "period": group.period,
            "rung": group.rung,
            "owner": owner_at(group.rung),
        }
    )
