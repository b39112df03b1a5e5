"""The experiment memo: what a report or plan embeds, and its markdown rendering.

`ExperimentMemo` holds a short `MemoSummary` (state, headline, the first success
metric's lift, users per variant) and the full readout and recommendation
behind it, so a report can show the summary and link the detail.
`render_memo(memo, detail="summary" | "full")` writes it as markdown.

>>> from experiments.decision import recommend
>>> from experiments.readout import read_experiment
>>> from experiments.spec import ExperimentSpec
>>> from experiments.state import ExperimentTotals, VariantTotals
>>> spec = ExperimentSpec(experiment="checkout-v2", allocation={"control": 0.5, "treatment": 0.5})
>>> totals = ExperimentTotals({
...     "control": VariantTotals(users=5000, converting_users=500, conversions=500, conversions_sq=500),
...     "treatment": VariantTotals(users=5000, converting_users=650, conversions=650, conversions_sq=650)})
>>> readout = read_experiment(spec, totals)
>>> memo = build_memo(spec, readout, recommend(spec, readout))
>>> memo.summary.headline
'checkout-v2: ship treatment — users converting +30.0% [+1.0%, +59.0%] (sequential, Holm, alpha 0.05)'
>>> print(render_memo(memo, detail="summary").splitlines()[0])
## Experiment checkout-v2: SHIP treatment
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from experiments.decision import Recommendation, State
from experiments.readout import Comparison, ExperimentReadout, per_variant
from experiments.spec import PRIOR_NAMES, ExperimentSpec
from experiments.state import COVARIATE_NAMES, metric_name

_CORRECTION_NAMES = {"holm": "Holm", "benjamini_hochberg": "Benjamini–Hochberg"}
_METHOD_TEXT = {
    "sequential": "always-valid normal-mixture SPRT (Johari et al.); p-values valid at every look",
    "fixed_horizon": "fixed-horizon Wald test of the relative lift (delta method); valid only at the planned sample",
}


class _MemoModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class MemoSummary(_MemoModel):
    experiment: str
    initiative: str
    state: State
    variant: str | None
    headline: str
    primary_metric: str
    primary_lift: float | None
    primary_lift_low: float | None
    primary_lift_high: float | None
    users: dict[str, int]
    reasons: tuple[str, ...]
    assumptions: tuple[str, ...] = ()
    primary_variance_reduction: float | None = None


class ExperimentMemo(_MemoModel):
    summary: MemoSummary
    readout: ExperimentReadout
    recommendation: Recommendation


def build_memo(spec: ExperimentSpec, readout: ExperimentReadout, recommendation: Recommendation) -> ExperimentMemo:
    """The memo of one readout and its recommendation."""
    primary_metric = spec.success_metrics[0].metric
    variant = recommendation.variant or (spec.treatments[0] if len(spec.treatments) == 1 else None)
    primary = readout.comparison(variant, primary_metric) if variant else None
    action = recommendation.state.replace("_", " ") + (f" {recommendation.variant}" if recommendation.variant else "")
    evidence = (
        f"{metric_name(primary_metric)} {_lift(primary)}"
        if primary is not None
        else recommendation.reasons[0]
        if recommendation.reasons
        else ""
    )
    method = f"{readout.method.replace('_', '-')}, {_CORRECTION_NAMES[readout.correction]}, alpha {readout.alpha:g}"
    summary = MemoSummary(
        experiment=readout.experiment,
        initiative=readout.initiative,
        state=recommendation.state,
        variant=recommendation.variant,
        headline=f"{readout.experiment}: {action} — {evidence} ({method})",
        primary_metric=primary_metric,
        primary_lift=primary.relative_lift if primary else None,
        primary_lift_low=primary.lift_low if primary else None,
        primary_lift_high=primary.lift_high if primary else None,
        users={v.variant: v.users for v in readout.variants},
        reasons=recommendation.reasons,
        assumptions=spec.assumptions,
        primary_variance_reduction=primary.variance_reduction if primary else None,
    )
    return ExperimentMemo(summary=summary, readout=readout, recommendation=recommendation)


def render_memo(memo: ExperimentMemo, detail: Literal["summary", "full"] = "full") -> str:
    """Markdown: the summary (state, headline, reasons, rollout), and with `full` the tables behind it."""
    s, r, rec = memo.summary, memo.readout, memo.recommendation
    title = s.state.replace("_", " ").upper() + (f" {s.variant}" if s.variant else "")
    lines = [f"## Experiment {s.experiment}: {title}", "", s.headline, ""]
    if s.primary_variance_reduction is not None:
        lines += [
            f"CUPED: {COVARIATE_NAMES[s.primary_metric]} removed {s.primary_variance_reduction:.1%} of the "
            f"variance of {metric_name(s.primary_metric)}'s difference (its interval is "
            f"{1 - (1 - s.primary_variance_reduction) ** 0.5:.1%} narrower).",
            "",
        ]
    lines += ["**Why**", ""]
    lines += [f"- {reason}" for reason in s.reasons] or ["- (no reason recorded)"]
    if s.assumptions:
        lines += ["", "**Assumed**", ""] + [f"- {assumption}" for assumption in s.assumptions]
    lines += ["", "**Next**", ""] + [f"{i}. {step}" for i, step in enumerate(rec.rollout, 1)]
    if detail == "summary":
        return "\n".join(lines) + "\n"
    lines += [
        "",
        f"Method: {_METHOD_TEXT[r.method]}; correction across the success comparisons: "
        f"{_CORRECTION_NAMES[r.correction]}; guardrails by a one-sided bound at alpha {r.alpha:g} against "
        f"the margin (all must pass, no correction needed). Bayesian figures: {PRIOR_NAMES[r.prior]}. "
        f"CUPED column: share of the difference's variance removed by the behaviour before exposure "
        f"(estimates, intervals and p-values are the adjusted ones). Look {r.look}.",
        "",
        "| variant | users | planned share | observed share | users converting | revenue / user | crossovers |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for v in r.variants:
        lines.append(
            f"| {v.variant} | {v.users} | {v.planned_share:.1%} | {_pct(v.observed_share)} | "
            f"{_pct(v.conversion_rate, 2)} | {_num(v.revenue_per_user)} | {v.crossover_events} |"
        )
    lines += [
        "",
        "| variant | metric | role | control | variant | lift [interval] | p | adjusted p | "
        "P(beat) | expected loss (relative) | CUPED | verdict |",
        "|---|---|---|---:|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for c in r.comparisons:
        lines.append(
            f"| {c.variant} | {metric_name(c.metric)} | {c.role} | {c.control_mean:.4g} | "
            f"{c.variant_mean:.4g} | "
            f"{_lift(c)} | {c.p_value:.3g} | {_num(c.adjusted_p_value, '.3g')} | "
            f"{c.probability_to_beat_control:.3f} | {c.expected_loss:.3g} ({c.expected_loss_relative:.2%}) | "
            f"{_pct(c.variance_reduction)} | {_verdict(c)} |"
        )
    if not r.comparisons:
        lines.append("| — | — | — | | | not computable yet | | | | | | |")
    lines += ["", "Sample ratio (chi-square against the planned allocation; mismatch below p = 0.001):", ""]
    lines += [
        f"- {check.scope}: {per_variant(check.users)} users, "
        f"p = {check.p_value:.3g}{' — MISMATCH' if check.mismatch else ''}"
        for check in r.sample_ratio
    ] or ["- not enough users to test yet"]
    if r.planned is not None:
        lines += [
            "",
            f"Planned sample for {r.planned.power:.0%} power at a {r.planned.mde:.1%} lift of "
            f"{metric_name(r.planned.metric)}: {per_variant(r.planned.required_users_per_variant)} users; "
            f"still needed: "
            f"{per_variant(r.planned.remaining_users_per_variant)}.",
        ]
    if not r.sample.sufficient:
        lines += ["", "Minimum sample not reached: " + "; ".join(r.sample.missing) + "."]
    return "\n".join(lines) + "\n"


def _lift(c: Comparison | None) -> str:
    if c is None or c.relative_lift is None:
        return "n/a"
    return f"{c.relative_lift:+.1%} [{c.lift_low:+.1%}, {c.lift_high:+.1%}]"


def _verdict(c: Comparison) -> str:
    if c.role == "guardrail":
        bound = ""
        if c.bounds is not None:
            side = c.bounds[0] if c.higher_is_better else c.bounds[1]
            bound = f"; one-sided bound {side:+.1%}"
        if c.inferior_beyond_margin:
            return f"inferior beyond {c.margin:.1%}{bound}"
        return (
            f"non-inferior (margin {c.margin:.1%}{bound})"
            if c.non_inferior
            else f"not yet non-inferior (margin {c.margin:.1%}{bound})"
        )
    return "improved" if c.improved else "worsened" if c.worsened else "not significant"


def _pct(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}%}"


def _num(value: float | None, fmt: str = ".2f") -> str:
    return "—" if value is None else format(value, fmt)
