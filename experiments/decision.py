"""The decision rule: a readout becomes ship, roll back, keep running or investigate, with rollout guidance.

In order, the first that applies:

1. **investigate** — a sample-ratio mismatch (any scope, p < `srm_threshold`), users in a
   variant the spec does not plan, or a caller's `InvestigationFlag` (variant suppression,
   an integrity breach from a rule change...). The readout is not to be trusted, whatever it says.
2. **keep running** — a variant lacks the minimum sample (users, converting users); the
   reasons say what is missing. No statistics are acted on before it.
3. **ship** — a variant improves at least one success metric significantly (after the
   correction), worsens none, and every guardrail is non-inferior within its margin.
   Of several such variants, the one with the largest lift on the first success metric.
4. **roll back** — a variant worsens a success metric significantly, or a guardrail is
   inferior beyond its margin; or (`stop_at_planned_sample`) the planned sample is reached
   with nothing shipped: no detectable improvement, keep the control.
5. **keep running** — with the users per variant still needed for the planned effect.

`decision_event` turns a change of recommendation into an `IncidentEvent` of kind
`experiment_decision` for the incidents topic, owned by the Testing Lead.

>>> from experiments.readout import read_experiment
>>> from experiments.spec import ExperimentSpec
>>> from experiments.state import ExperimentTotals, VariantTotals
>>> spec = ExperimentSpec(experiment="e", allocation={"control": 0.5, "treatment": 0.5})
>>> few = ExperimentTotals({"control": VariantTotals(users=80, converting_users=8, conversions=8, conversions_sq=8),
...                         "treatment": VariantTotals(users=90, converting_users=9, conversions=9, conversions_sq=9)})
>>> recommendation = recommend(spec, read_experiment(spec, few))
>>> recommendation.state, recommendation.reasons[0]
('keep_running', 'minimum sample not reached: control: 80 of 100 users')
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from experiments.readout import Comparison, ExperimentReadout, per_variant
from experiments.spec import ExperimentSpec
from experiments.state import metric_name
from incidents.model import Evidence, IncidentEvent, incident_id, resolution, transition_event_id
from incidents.playbooks import ESCALATION_LADDER

logger = logging.getLogger(__name__)

State = Literal["ship", "roll_back", "keep_running", "investigate"]
FlagKind = Literal[
    "sample_ratio_mismatch", "unexpected_variant", "variant_suppression", "integrity_breach", "variant_imbalance"
]
DECISION_KIND = "experiment_decision"
DECISION_OWNER = ESCALATION_LADDER[0]  # the Testing Lead owns experiment readouts
DECISION_PLAYBOOK = (
    "An experiment's recommendation changed. 1) Read the memo: the state, its reasons and the evidence. "
    "2) Ship: ramp the variant by the listed steps, holding each step while the guardrails stay non-inferior. "
    "Roll back: send all traffic to the control. Investigate: freeze the allocation and do not act on the "
    "readout until the flagged cause (sample ratio, suppression, rule change) is fixed. "
    "3) Record the decision in the plan."
)


class _DecisionModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class InvestigationFlag(_DecisionModel):
    """A reason the readout cannot be trusted; the stream passes its own (variant suppression incidents,
    integrity breaches from rule changes) with the evidence, the readout adds sample-ratio mismatches."""

    kind: FlagKind
    summary: str
    variant: str | None = None
    incident_id: str | None = None
    evidence: dict[str, Any] = Field(default_factory=dict)


class Recommendation(_DecisionModel):
    """What to do with an experiment now, why, and how to roll it out."""

    experiment: str
    state: State
    variant: str | None = Field(None, description="The variant to ship or roll back; None otherwise.")
    reasons: tuple[str, ...]
    rollout: tuple[str, ...]
    flags: tuple[InvestigationFlag, ...] = ()
    remaining_users_per_variant: dict[str, int] | None = None
    look: int = Field(ge=1)


def recommend(
    spec: ExperimentSpec, readout: ExperimentReadout, flags: Sequence[InvestigationFlag] = ()
) -> Recommendation:
    """Apply the decision rule (module docstring) to a readout and the caller's investigation flags."""
    flags = (*_readout_flags(readout), *flags)
    base = dict(experiment=readout.experiment, look=readout.look)
    remaining = readout.planned.remaining_users_per_variant if readout.planned else None
    if flags:
        return Recommendation(
            **base,
            state="investigate",
            reasons=tuple(f"{f.kind}: {f.summary}" for f in flags),
            flags=flags,
            rollout=(
                "freeze the allocation; do not ship or roll back on this readout",
                "fix the flagged cause, then read the experiment again",
            ),
        )
    if not readout.sample.sufficient:
        return Recommendation(
            **base,
            state="keep_running",
            reasons=tuple(f"minimum sample not reached: {m}" for m in readout.sample.missing),
            rollout=("hold the planned allocation",),
            remaining_users_per_variant=remaining,
        )
    by_variant = {v: [c for c in readout.comparisons if c.variant == v] for v in spec.treatments}
    shippable = [v for v, cs in by_variant.items() if _ship_verdict(spec, v, cs)[0]]
    if shippable:
        primary = spec.success_metrics[0].metric
        best = max(shippable, key=lambda v: _primary_lift(readout.comparison(v, primary), spec))
        return Recommendation(
            **base,
            state="ship",
            variant=best,
            reasons=_ship_verdict(spec, best, by_variant[best])[1],
            rollout=_ramp(spec, best),
        )
    for variant, comparisons in by_variant.items():
        harms = _harms(comparisons)
        if harms:
            return Recommendation(
                **base,
                state="roll_back",
                variant=variant,
                reasons=tuple(harms),
                rollout=(f"send all traffic to {spec.control}; switch {variant} off",),
            )
    if spec.rules.stop_at_planned_sample and readout.planned is not None and readout.planned.reached:
        return Recommendation(
            **base,
            state="roll_back",
            variant=None,
            reasons=(
                f"planned sample reached ({per_variant(readout.planned.required_users_per_variant)} users) "
                f"with no significant "
                f"improvement of {metric_name(readout.planned.metric)} at the planned effect of {spec.mde:.1%}",
            ),
            rollout=(f"end the experiment and keep {spec.control}",),
        )
    improved = [
        f"{metric_name(c.metric)} of {c.variant} improves by {_lift_text(c)} (adjusted p = {c.adjusted_p_value:.3g})"
        for c in readout.comparisons
        if c.role == "success" and c.improved
    ]
    reasons = improved or ["no success metric improves significantly yet"]
    for variant, comparisons in by_variant.items():
        reasons += [r for r in _ship_verdict(spec, variant, comparisons)[1] if r.startswith("guardrail")]
    if remaining is not None:
        reasons.append(
            "about "
            + ", ".join(f"{n} more users in {v}" for v, n in remaining.items())
            + f" for {spec.rules.power:.0%} power at a {spec.mde:.1%} lift"
        )
    return Recommendation(
        **base,
        state="keep_running",
        reasons=tuple(reasons),
        rollout=("hold the planned allocation",),
        remaining_users_per_variant=remaining,
    )


def _readout_flags(readout: ExperimentReadout) -> list[InvestigationFlag]:
    flags = [
        InvestigationFlag(
            kind="sample_ratio_mismatch",
            summary=f"users per variant in {check.scope} are {check.users}, expected "
            f"{ {k: round(v, 1) for k, v in check.expected.items()} } "
            f"(chi-square p = {check.p_value:.2g})",
            evidence={"scope": check.scope, "p_value": check.p_value, "statistic": check.statistic},
        )
        for check in readout.sample_ratio_mismatch
    ]
    flags += [
        InvestigationFlag(
            kind="unexpected_variant",
            variant=name,
            summary=f"users in variant {name!r}, which the experiment does not plan",
        )
        for name in readout.unexpected_variants
    ]
    return flags


def _ship_verdict(spec: ExperimentSpec, variant: str, comparisons: list[Comparison]) -> tuple[bool, tuple[str, ...]]:
    """(whether `variant` may ship, the reasons for or against)."""
    improved = [c for c in comparisons if c.role == "success" and c.improved]
    worsened = [c for c in comparisons if c.role == "success" and c.worsened]
    guarded = {c.metric: c for c in comparisons if c.role == "guardrail"}
    reasons = [
        f"{metric_name(c.metric)} improves by {_lift_text(c)} (adjusted p = {c.adjusted_p_value:.3g})" for c in improved
    ]
    failing = []
    for guardrail in spec.guardrails:
        c = guarded.get(guardrail.metric)
        if c is None or c.non_inferior is None:
            failing.append(f"guardrail {metric_name(guardrail.metric)} of {variant} cannot be judged yet")
        elif c.non_inferior:
            reasons.append(
                f"guardrail {metric_name(c.metric)} non-inferior: lift {_lift_text(c)}, margin {guardrail.margin:.1%}"
            )
        else:
            failing.append(
                f"guardrail {metric_name(c.metric)} of {variant} not yet non-inferior: "
                f"lift {_lift_text(c)}, margin {guardrail.margin:.1%}"
            )
    ok = bool(improved) and not worsened and not failing
    return ok, tuple(reasons if ok else failing)


def _harms(comparisons: list[Comparison]) -> list[str]:
    harms = [
        f"{metric_name(c.metric)} of {c.variant} worsens by {_lift_text(c)} (adjusted p = {c.adjusted_p_value:.3g})"
        for c in comparisons
        if c.role == "success" and c.worsened
    ]
    harms += [
        f"guardrail {metric_name(c.metric)} of {c.variant} is inferior beyond its margin of {c.margin:.1%}: "
        f"lift {_lift_text(c)}"
        for c in comparisons
        if c.role == "guardrail" and c.inferior_beyond_margin
    ]
    return harms


def _primary_lift(comparison: Comparison | None, spec: ExperimentSpec) -> float:
    if comparison is None or comparison.relative_lift is None:
        return float("-inf")
    return comparison.relative_lift if comparison.higher_is_better else -comparison.relative_lift


def _lift_text(c: Comparison) -> str:
    if c.relative_lift is None:
        return f"{c.difference:+.4g} (absolute)"
    return f"{c.relative_lift:+.1%} [{c.lift_low:+.1%}, {c.lift_high:+.1%}]"


def _ramp(spec: ExperimentSpec, variant: str) -> tuple[str, ...]:
    guardrails = ", ".join(g.metric for g in spec.guardrails) or "the success metrics"
    steps = [f"ramp {variant} to {share:.0%} of traffic" for share in spec.rules.ramp_steps]
    return (
        *(f"{step}; hold while {guardrails} stay non-inferior" for step in steps[:-1]),
        f"{steps[-1]}: end the experiment and make {variant} the default",
    )


# --------------------------------------------------------------------------- change events


class DecisionChange(_DecisionModel):
    """Whether a recommendation changed since the previous one, the incident event that says so, and the
    previous decision's incident resolved by it (a decision stands until the next one replaces it)."""

    changed: bool
    previous_state: State
    event: IncidentEvent | None = None
    superseded: IncidentEvent | None = None


def decision_change(
    previous: Recommendation | None,
    current: Recommendation,
    readout: ExperimentReadout,
    *,
    window_start: datetime,
    window_end: datetime,
    previous_event: IncidentEvent | None = None,
) -> DecisionChange:
    """Compare a new recommendation with the previous one (None: the experiment just started, which reads as
    "keep running"); on a change of state or of the variant, build the `experiment_decision` incident, and
    resolve `previous_event` (the last transition of the previous decision's incident) unless it is resolved.

    The incident id is deterministic in (initiative, experiment, new state, variant, evaluation period: the
    end of the readout's window), so a replay or a restarted worker emits the same event. Evidence: the first
    success metric of the variant (or of the first treatment) — observed = variant, expected = control,
    score = relative lift — and the reasons, p-values and flags in `detail`.

    >>> from datetime import datetime, timezone
    >>> rec = Recommendation(experiment="e", state="ship", variant="treatment", reasons=("conversion improves",),
    ...                      rollout=("ramp treatment to 5% of traffic",), look=7)
    >>> from experiments.readout import ExperimentReadout, SampleCheck
    >>> readout = ExperimentReadout(experiment="e", initiative="PLG", control="control", method="sequential",
    ...     correction="holm", alpha=0.05, look=7, variants=(), comparisons=(), sample_ratio=(),
    ...     sample=SampleCheck(sufficient=True))
    >>> t0, t1 = datetime(2026, 11, 1, tzinfo=timezone.utc), datetime(2026, 11, 8, tzinfo=timezone.utc)
    >>> change = decision_change(None, rec, readout, window_start=t0, window_end=t1)
    >>> change.changed, change.event.kind, change.event.owner, change.event.event_id
    (True, 'experiment_decision', 'Testing Lead', 'inc-d2cf00df9160b9b7da5b:opened:7')
    >>> decision_change(rec, rec, readout, window_start=t0, window_end=t1).changed
    False
    >>> stop = rec.model_copy(update={"state": "roll_back", "look": 9})
    >>> later = decision_change(rec, stop, readout, window_start=t0, window_end=t1, previous_event=change.event)
    >>> later.superseded.event_id, later.superseded.evidence.detail["superseded_by"] == later.event.incident_id
    ('inc-d2cf00df9160b9b7da5b:resolved:9', True)
    """
    previous_state: State = "keep_running" if previous is None else previous.state
    previous_variant = None if previous is None else previous.variant
    if (previous_state, previous_variant) == (current.state, current.variant):
        return DecisionChange(changed=False, previous_state=previous_state)
    period = window_end.strftime("%Y-%m-%dT%H:%M")
    series = f"{current.experiment}|{current.state}|{current.variant or '-'}"
    incident = incident_id(readout.initiative, DECISION_KIND, series, period)
    evidence = _evidence(current, readout, previous_state, window_start, window_end)
    event = IncidentEvent(
        event_id=transition_event_id(incident, "opened", current.look),
        incident_id=incident,
        transition="opened",
        kind=DECISION_KIND,
        severity="critical" if current.state in ("investigate", "roll_back") else "warning",
        initiative=readout.initiative,
        series=[series],
        period=period,
        owner=DECISION_OWNER,
        rung=0,
        playbook=DECISION_PLAYBOOK,
        evidence=evidence,
        occurred_at=window_end,
    )
    superseded = None
    if previous_event is not None and previous_event.transition != "resolved":
        superseded = resolution(previous_event, current.look, window_end, superseded_by=incident)
    logger.info(
        "experiment %s: recommendation %s -> %s (%s)",
        current.experiment,
        previous_state,
        current.state,
        current.variant,
    )
    return DecisionChange(changed=True, previous_state=previous_state, event=event, superseded=superseded)


def _evidence(
    current: Recommendation, readout: ExperimentReadout, previous_state: str, start: datetime, end: datetime
) -> Evidence:
    variant = current.variant or next((v.variant for v in readout.variants if v.variant != readout.control), None)
    primary = next((c for c in readout.comparisons if c.variant == variant and c.role == "success"), None)
    detail: dict[str, Any] = {
        "experiment": current.experiment,
        "state": current.state,
        "previous_state": previous_state,
        "variant": current.variant,
        "reasons": list(current.reasons),
        "rollout": list(current.rollout),
        "method": readout.method,
        "correction": readout.correction,
        "alpha": readout.alpha,
        "look": readout.look,
        "users": {v.variant: v.users for v in readout.variants},
        "flags": [flag.model_dump(mode="json") for flag in current.flags],
    }
    if primary is None:
        return Evidence(observed=0.0, expected=0.0, score=0.0, bucket_start=start, bucket_end=end, detail=detail)
    detail.update(
        metric=primary.metric,
        p_value=primary.p_value,
        adjusted_p_value=primary.adjusted_p_value,
        lift_interval=[primary.lift_low, primary.lift_high],
        probability_to_beat_control=primary.probability_to_beat_control,
    )
    return Evidence(
        observed=primary.variant_mean,
        expected=primary.control_mean,
        score=primary.relative_lift or 0.0,
        bucket_start=start,
        bucket_end=end,
        detail=detail,
    )
