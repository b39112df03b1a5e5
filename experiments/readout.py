"""The readout of an experiment: every variant against the control on every metric, from the totals alone.

`read_experiment(spec, totals, previous=...)` computes, per (variant, metric):
the difference and relative lift with their intervals, the p-value of "no
difference" (always-valid by default, fixed-horizon on request), Holm's (or
Benjamini–Hochberg's) adjustment across the success comparisons, the Bayesian
probability to beat control and expected loss; and, per experiment, the
sample-ratio tests, the minimum-sample check and the sample still needed for
the planned effect. It decides nothing: `experiments.decision.recommend` does.

One procedure per readout: in fixed-horizon mode the Wald test of the relative
lift with its delta-method standard error; in sequential mode the normal-mixture
SPRT of the difference at this look and its confidence sequence, divided by the
control's mean. Each mode's p-value decides and its own interval is shown, on
the relative scale, centred on the estimate shown: a decision never sits beside
an interval that contradicts it, and an estimate never outside its interval.
The previous readout is passed back only to number the looks.

>>> from experiments.spec import ExperimentSpec
>>> from experiments.state import ExperimentTotals, MetricMoments, VariantTotals
>>> spec = ExperimentSpec(experiment="e", allocation={"control": 0.5, "treatment": 0.5})
>>> totals = ExperimentTotals({
...     "control": VariantTotals(users=5000, converting_users=500, conversions=500, conversions_sq=500),
...     "treatment": VariantTotals(users=5000, converting_users=650, conversions=650, conversions_sq=650)})
>>> readout = read_experiment(spec, totals)
>>> c = readout.comparison("treatment", "conversion")
>>> round(c.relative_lift, 3), c.p_value < 0.05, c.improved, readout.sample.sufficient
(0.3, True, True, True)
"""

from __future__ import annotations

import logging
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from experiments import stats
from experiments.exceptions import InvalidSpec
from experiments.spec import ExperimentSpec, Guardrail, Method, Prior, SuccessMetric
from experiments.state import ExperimentTotals, MetricMoments, VariantTotals

logger = logging.getLogger(__name__)


class _ReadoutModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class VariantSummary(_ReadoutModel):
    variant: str
    users: int
    planned_share: float
    observed_share: float | None
    converting_users: int
    conversion_rate: float | None
    revenue_per_user: float | None
    conversions_per_user: float | None
    crossover_events: int


class Comparison(_ReadoutModel):
    """One variant against the control on one metric ("variant minus control").

    `p_value` tests "no difference": always-valid for the sequential method (the mSPRT at this
    look), the relative lift's Wald test for the fixed-horizon one; `adjusted_p_value` is corrected across the
    experiment's success comparisons (None for a guardrail: guardrails are judged by their
    interval against the margin, all of them at once, which needs no correction).
    Intervals are at 1 - alpha; the lift's is by the delta method for the fixed-horizon
    method, the difference's confidence sequence over the control mean for the sequential one.
    """

    variant: str
    metric: str
    role: Literal["success", "guardrail"]
    higher_is_better: bool
    method: Method
    control_mean: float
    variant_mean: float
    difference: float
    difference_low: float
    difference_high: float
    relative_lift: float | None
    lift_low: float | None
    lift_high: float | None
    p_value: float = Field(ge=0, le=1)
    adjusted_p_value: float | None = None
    margin: float | None = None
    probability_to_beat_control: float
    expected_loss: float = Field(description="Expected loss of choosing the variant, in the metric's unit.")
    expected_loss_relative: float = Field(description="The same, relative to the control's mean.")
    variance_reduction: float | None = Field(
        None,
        description=(
            "CUPED's share of the difference's variance removed by the pre-exposure covariate (1 - V_cuped / V); "
            "None when not adjusted. Means, intervals and p-values are the adjusted ones."
        ),
    )
    improved: bool = False
    worsened: bool = False
    non_inferior: bool | None = None
    inferior_beyond_margin: bool | None = None
    bounds: tuple[float, float] | None = Field(
        None,
        description=(
            "A guardrail's one-sided bounds on the relative lift at level alpha each: (lower, upper). Non-inferior "
            "when the bound on the bad side is inside the margin; inferior beyond it when the good-side bound is "
            "beyond. Fixed horizon: lift -/+ z_(1-alpha) x its delta-method error; sequential: the two-sided "
            "confidence sequence's ends (each side always valid at alpha, conservatively)."
        ),
    )


class SampleRatioCheck(_ReadoutModel):
    """Users per variant against the planned allocation, overall (`scope` "overall") or within one dimension value."""

    scope: str
    users: dict[str, int]
    expected: dict[str, float]
    statistic: float
    p_value: float
    mismatch: bool


class SampleCheck(_ReadoutModel):
    """Whether every variant has the minimum sample; `missing` says what is short, one line per shortfall."""

    sufficient: bool
    missing: tuple[str, ...] = ()


class PlannedSample(_ReadoutModel):
    """Users per variant the planned minimum detectable effect needs on the first success metric, and still missing."""

    metric: str
    mde: float
    power: float
    required_users_per_variant: dict[str, int]
    remaining_users_per_variant: dict[str, int]

    @property
    def reached(self) -> bool:
        return all(remaining == 0 for remaining in self.remaining_users_per_variant.values())


class ExperimentReadout(_ReadoutModel):
    experiment: str
    initiative: str
    control: str
    method: Method
    correction: str
    alpha: float
    prior: Prior = "uniform"
    look: int = Field(ge=1, description="1 for the first readout, +1 for each readout given its previous one.")
    variants: tuple[VariantSummary, ...]
    comparisons: tuple[Comparison, ...]
    sample_ratio: tuple[SampleRatioCheck, ...]
    unexpected_variants: tuple[str, ...] = ()
    sample: SampleCheck
    planned: PlannedSample | None = None

    def comparison(self, variant: str, metric: str) -> Comparison | None:
        """The comparison of `variant` on `metric`, or None while it cannot be computed."""
        return next((c for c in self.comparisons if c.variant == variant and c.metric == metric), None)

    @property
    def sample_ratio_mismatch(self) -> tuple[SampleRatioCheck, ...]:
        return tuple(check for check in self.sample_ratio if check.mismatch)


def per_variant(counts: dict[str, int]) -> str:
    """Counts per variant as people read them.

    >>> per_variant({"control": 6977, "treatment": 7001})
    'control 6,977 · treatment 7,001'
    """
    return " · ".join(f"{variant} {n:,}" for variant, n in counts.items())


def read_experiment(
    spec: ExperimentSpec, totals: ExperimentTotals, previous: ExperimentReadout | None = None
) -> ExperimentReadout:
    """Read out an experiment from its merged totals; `previous` is the last readout of the same experiment."""
    if previous is not None and (previous.experiment != spec.experiment or previous.method != spec.rules.method):
        raise InvalidSpec(
            f"previous readout is of {previous.experiment!r} by {previous.method}, not of "
            f"{spec.experiment!r} by {spec.rules.method}"
        )
    rules = spec.rules
    by_variant = {name: totals.variants.get(name, VariantTotals()) for name in spec.allocation}
    for name, variant_totals in by_variant.items():
        variant_totals.check_consistent(name)
    unexpected = tuple(sorted(set(totals.variants) - set(spec.allocation)))
    if unexpected:
        logger.warning("experiment %s has users in variants it does not plan: %s", spec.experiment, unexpected)
    all_users = sum(t.users for t in by_variant.values())

    comparisons = _comparisons(spec, by_variant)
    return ExperimentReadout(
        experiment=spec.experiment,
        initiative=spec.initiative,
        control=spec.control,
        method=rules.method,
        correction=rules.correction,
        alpha=rules.alpha,
        prior=rules.prior,
        look=1 if previous is None else previous.look + 1,
        variants=tuple(_summary(name, t, spec.share(name), all_users) for name, t in by_variant.items()),
        comparisons=comparisons,
        sample_ratio=_sample_ratio_checks(spec, by_variant),
        unexpected_variants=unexpected,
        sample=_sample_check(spec, by_variant),
        planned=_planned_sample(spec, by_variant),
    )


def _summary(name: str, totals: VariantTotals, share: float, all_users: int) -> VariantSummary:
    def mean(metric: str) -> float | None:
        value = totals.moments(metric).mean
        return None if math.isnan(value) else value

    return VariantSummary(
        variant=name,
        users=totals.users,
        planned_share=share,
        observed_share=totals.users / all_users if all_users else None,
        converting_users=totals.converting_users,
        conversion_rate=mean("conversion"),
        revenue_per_user=mean("revenue_per_user"),
        conversions_per_user=mean("conversions_per_user"),
        crossover_events=totals.crossover_events,
    )


def _comparisons(spec: ExperimentSpec, by_variant: dict[str, VariantTotals]) -> tuple[Comparison, ...]:
    declared: list[SuccessMetric | Guardrail] = [*spec.success_metrics, *spec.guardrails]
    raw: list[dict] = []
    for variant in spec.treatments:
        for metric in declared:
            computed = _compare(spec, by_variant[spec.control], by_variant[variant], variant, metric)
            if computed is not None:
                raw.append(computed)
    success = [i for i, c in enumerate(raw) if c["role"] == "success"]
    p_values = [raw[i]["p_value"] for i in success]
    adjust = stats.holm_adjusted if spec.rules.correction == "holm" else stats.benjamini_hochberg_adjusted
    for i, adjusted in zip(success, adjust(p_values), strict=True):
        comparison = raw[i]
        good = comparison["difference"] > 0 if comparison["higher_is_better"] else comparison["difference"] < 0
        bad = comparison["difference"] < 0 if comparison["higher_is_better"] else comparison["difference"] > 0
        significant = float(adjusted) < spec.rules.alpha
        comparison.update(adjusted_p_value=float(adjusted), improved=significant and good, worsened=significant and bad)
    return tuple(Comparison(**c) for c in raw)


def _mixture_variance(spec: ExperimentSpec, mean: float) -> float:
    """tau^2 of the mSPRT for a metric whose mean (under H0, the same in both arms) is `mean`: tuned to the
    plan (`stats.tuned_mixture_variance` for the planned relative `mde`, `power` and the alpha of the
    planned sample), or (mixture_scale x mean)^2 when the rules set a scale."""
    rules = spec.rules
    if rules.mixture_scale is not None:
        return (rules.mixture_scale * mean) ** 2
    family = len(spec.treatments) * len(spec.success_metrics)
    effect = abs(spec.mde * mean)
    return stats.tuned_mixture_variance(effect, rules.power, rules.alpha / family) if effect > 0 else 0.0


def _adjusted(
    name: str, control: VariantTotals, treated: VariantTotals
) -> tuple[MetricMoments, MetricMoments, float | None]:
    """The two arms' moments of `name`, CUPED-adjusted with its pre-exposure covariate when that varies, and
    the share of the difference's variance the adjustment removed (None when not adjusted)."""
    a, b = control.moments(name), treated.moments(name)
    pooled = (control + treated).covariate_moments(name)
    if not pooled.variance > 0:
        return a, b, None
    theta = stats.cuped_theta(pooled.variance, pooled.covariance)
    adjusted = []
    for raw, totals in ((a, control), (b, treated)):
        x = totals.covariate_moments(name)
        mean, variance = stats.cuped_adjusted(
            raw.mean, raw.variance, x.mean, x.variance, x.covariance, theta, pooled.mean
        )
        adjusted.append(MetricMoments(raw.users, mean, variance))
    before = a.variance / a.users + b.variance / b.users
    after = adjusted[0].variance / a.users + adjusted[1].variance / b.users
    return adjusted[0], adjusted[1], 1 - after / before if before > 0 else None


def _compare(
    spec: ExperimentSpec,
    control: VariantTotals,
    treated: VariantTotals,
    variant: str,
    metric: SuccessMetric | Guardrail,
) -> dict | None:
    """The numbers of one comparison (a dict, so the correction can be filled in), or None while not computable."""
    rules, name = spec.rules, metric.metric
    if control.users < 2 or treated.users < 2:
        return None
    if rules.cuped:
        a, b, reduction = _adjusted(name, control, treated)
    else:
        a, b, reduction = control.moments(name), treated.moments(name), None
    variance = a.variance / a.users + b.variance / b.users
    if not variance > 0:
        return None
    difference = b.mean - a.mean
    if a.mean == 0:
        return None  # no relative lift, the scale every readout is shown and decided on
    if rules.method == "fixed_horizon":
        # One test: its p-value decides and its interval is the one shown, so a decision never contradicts
        # the interval beside it.
        lift, lift_low, lift_high, p_value = stats.relative_lift_test(
            a.mean, a.variance, a.users, b.mean, b.variance, b.users, rules.alpha
        )
    else:
        # The mSPRT at this look and its confidence sequence (the same likelihood ratio): the interval excludes
        # 0 exactly when p <= alpha. Both are valid at any look (Ville's inequality), so the current look's are
        # shown, centred on the current estimate, rather than a running minimum and intersection that can sit
        # beside an estimate outside them.
        tau2 = _mixture_variance(spec, (a.users * a.mean + b.users * b.mean) / (a.users + b.users))
        if not tau2 > 0:
            return None
        p_value = stats.msprt_p_value(difference, variance, tau2)
        lift = difference / a.mean
        half_lift = stats.confidence_sequence_halfwidth(variance, tau2, rules.alpha) / abs(a.mean)
        lift_low, lift_high = lift - half_lift, lift + half_lift
    if not (lift_low <= lift <= lift_high and math.isfinite(p_value)):
        return None  # a degenerate variance: nothing to read yet
    low, high = sorted((lift_low * a.mean, lift_high * a.mean))
    beat, loss, loss_relative = _probability_to_beat(
        rules.prior, name, control, treated, a, b, variance, metric.higher_is_better
    )
    comparison: dict[str, Any] = dict(
        variant=variant,
        metric=name,
        role="success" if isinstance(metric, SuccessMetric) else "guardrail",
        higher_is_better=metric.higher_is_better,
        method=rules.method,
        control_mean=a.mean,
        variant_mean=b.mean,
        difference=difference,
        difference_low=low,
        difference_high=high,
        relative_lift=lift,
        lift_low=lift_low,
        lift_high=lift_high,
        p_value=min(1.0, max(0.0, p_value)),
        probability_to_beat_control=beat,
        expected_loss=loss,
        expected_loss_relative=loss_relative,
        variance_reduction=reduction,
    )
    if isinstance(metric, Guardrail):
        margin = metric.margin
        # Non-inferiority is one-sided: tested at the level alpha the memo names, not at the two-sided
        # interval's alpha / 2 per side.
        if rules.method == "fixed_horizon":
            lower, upper = stats.one_sided_lift_bounds(
                a.mean, a.variance, a.users, b.mean, b.variance, b.users, rules.alpha
            )
        else:
            lower, upper = lift_low, lift_high
        if metric.higher_is_better:
            non_inferior, beyond = lower > -margin, upper < -margin
        else:
            non_inferior, beyond = upper < margin, lower > margin
        comparison.update(
            margin=margin, non_inferior=bool(non_inferior), inferior_beyond_margin=bool(beyond), bounds=(lower, upper)
        )
    return comparison


def _probability_to_beat(
    prior: Prior,
    name: str,
    control: VariantTotals,
    treated: VariantTotals,
    a: MetricMoments,
    b: MetricMoments,
    variance: float,
    higher_is_better: bool,
) -> tuple[float, float, float]:
    """(P(the variant is better than the control), expected loss of choosing the variant in the metric's unit,
    the same relative to the control's mean), "better" in the metric's good direction.

    "uniform": a rate's Beta(1 + converting, 1 + not converting) posteriors, exact on the counts (CUPED
    does not enter); a mean's normal approximation N(difference, V) with a flat prior on the difference.
    "flat_relative": GrowthBook's default, the lift's delta-method normal with a flat prior on the relative
    lift (`stats.relative_chance_to_win`), on the moments shown (CUPED-adjusted when they are).
    """
    scale = abs(a.mean)
    if prior == "flat_relative":
        # GrowthBook takes a rate's variance as p (1 - p), without Bessel's correction: so does this prior.
        a_var, b_var = (
            (a.variance * (a.users - 1) / a.users, b.variance * (b.users - 1) / b.users)
            if name == "conversion"
            else (a.variance, b.variance)
        )
        chance, loss_relative = stats.relative_chance_to_win(
            a.mean, a_var, a.users, b.mean, b_var, b.users, inverse=not higher_is_better
        )
        return chance, loss_relative * scale, loss_relative
    if name == "conversion":
        posterior_a = (1 + control.converting_users, 1 + control.users - control.converting_users)
        posterior_b = (1 + treated.converting_users, 1 + treated.users - treated.converting_users)
        worse_p, better_p = (posterior_a, posterior_b) if higher_is_better else (posterior_b, posterior_a)
        chance, loss = (
            stats.beta_probability_to_beat(*worse_p, *better_p),
            stats.beta_expected_loss(*worse_p, *better_p),
        )
        return chance, loss, loss / scale
    difference = b.mean - a.mean
    improvement = difference if higher_is_better else -difference
    loss = float(stats.normal_expected_loss(improvement, variance))
    return float(stats.normal_probability_to_beat(improvement, variance)), loss, loss / scale


def _sample_ratio_checks(spec: ExperimentSpec, by_variant: dict[str, VariantTotals]) -> tuple[SampleRatioCheck, ...]:
    """Overall, then per value of each SRM dimension; a scope is tested only when every variant expects
    at least `srm_min_expected_users` (below, the chi-square approximation is not to be trusted)."""
    rules = spec.rules
    scopes: list[tuple[str, dict[str, int]]] = [("overall", {name: t.users for name, t in by_variant.items()})]
    for dimension in spec.srm_dimensions:
        values = sorted({value for t in by_variant.values() for value in t.users_by_dimension.get(dimension, {})})
        for value in values:
            scopes.append(
                (
                    f"{dimension}={value}",
                    {name: t.users_by_dimension.get(dimension, {}).get(value, 0) for name, t in by_variant.items()},
                )
            )
    checks = []
    for scope, users in scopes:
        total = sum(users.values())
        if total * min(spec.share(name) for name in users) < rules.srm_min_expected_users:
            continue
        result = stats.sample_ratio_test(users, spec.allocation)
        expected = dict(zip(sorted(users), result.expected, strict=True))
        checks.append(
            SampleRatioCheck(
                scope=scope,
                users=users,
                expected=expected,
                statistic=result.statistic,
                p_value=result.p_value,
                mismatch=result.p_value < rules.srm_threshold,
            )
        )
    return tuple(checks)


def _sample_check(spec: ExperimentSpec, by_variant: dict[str, VariantTotals]) -> SampleCheck:
    rules, missing = spec.rules, []
    for name, totals in by_variant.items():
        if totals.users < rules.min_users_per_variant:
            missing.append(f"{name}: {totals.users} of {rules.min_users_per_variant} users")
        if totals.converting_users < rules.min_converting_users_per_variant:
            missing.append(
                f"{name}: {totals.converting_users} of {rules.min_converting_users_per_variant} converting users"
            )
    return SampleCheck(sufficient=not missing, missing=tuple(missing))


def _planned_sample(spec: ExperimentSpec, by_variant: dict[str, VariantTotals]) -> PlannedSample | None:
    """Users per variant for `power` at the planned relative `mde` on the first success metric.

    The control's observed mean (and variance) stand in for the truth; a rate's treatment variance
    is the one at the planned effect. Alpha is split over the success comparisons (Bonferroni,
    Holm's first step), so the estimate is on the safe side. None until the control has a mean.
    """
    rules, metric = spec.rules, spec.success_metrics[0].metric
    control = by_variant[spec.control].moments(metric)
    if control.users < 2 or not control.mean > 0 or not control.variance > 0:
        return None
    effect = spec.mde * control.mean
    alpha = rules.alpha / (len(spec.treatments) * len(spec.success_metrics))
    if rules.method == "sequential" and rules.mixture_scale is None:
        # The mixture is tuned to this very plan (`_mixture_variance`): its root is known in closed form.
        target = stats.planned_variance(effect, rules.power, alpha)
    else:
        target = stats.required_variance(
            effect,
            rules.power,
            alpha,
            sequential=rules.method == "sequential",
            mixture_variance=_mixture_variance(spec, control.mean),
        )
    required_total = 0.0
    for variant in spec.treatments:
        treated = by_variant[variant].moments(metric)
        if metric == "conversion":
            planned_rate = min(control.mean * (1 + spec.mde), 1 - 1e-9)
            var_a, var_b = control.mean * (1 - control.mean), planned_rate * (1 - planned_rate)
        else:
            var_a = control.variance
            var_b = treated.variance if treated.users >= 2 and treated.variance > 0 else control.variance
        needed = (var_a / spec.share(spec.control) + var_b / spec.share(variant)) / target
        required_total = max(required_total, needed)
    required = {name: math.ceil(required_total * spec.share(name)) for name in spec.allocation}
    remaining = {name: max(0, required[name] - by_variant[name].users) for name in spec.allocation}
    return PlannedSample(
        metric=metric,
        mde=spec.mde,
        power=rules.power,
        required_users_per_variant=required,
        remaining_users_per_variant=remaining,
    )
