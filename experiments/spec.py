"""What an experiment tests and the rules its readout is decided by.

An `ExperimentSpec` is the experiment's configuration as the plan holds it: the
variants and their planned allocation, the success metrics, the guardrails
with their non-inferiority margins, the minimum detectable effect the sample
was planned for, and the `DecisionRules` (test, correction, alpha, minimum
sample, ramp). Defaults are the monitor's: the always-valid sequential test,
Holm's correction, alpha 0.05, 100 users and 25 converting users per variant.

>>> spec = ExperimentSpec(experiment="onboarding-checklist", initiative="PLG Onboarding",
...                       allocation={"control": 0.5, "treatment": 0.5},
...                       guardrails=(Guardrail(metric="revenue_per_user", margin=0.05),))
>>> spec.control, spec.treatments, spec.rules.method, spec.rules.correction
('control', ('treatment',), 'sequential', 'holm')
>>> spec.metric_names()
('conversion', 'revenue_per_user')
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from experiments.state import MetricName

Method = Literal["sequential", "fixed_horizon"]
Correction = Literal["holm", "benjamini_hochberg"]
Prior = Literal["uniform", "flat_relative"]
# How the memo names each prior of the Bayesian figures.
PRIOR_NAMES = {
    "uniform": "uniform Beta(1, 1) prior on each arm's rate (means: flat prior on the difference)",
    "flat_relative": "flat prior on the relative lift (GrowthBook's default)",
}


class _SpecModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class SuccessMetric(_SpecModel):
    """A metric the variant is meant to improve; `higher_is_better` False for a metric meant to fall."""

    metric: MetricName
    higher_is_better: bool = True


class Guardrail(_SpecModel):
    """A metric the variant must not make worse by more than `margin` (relative: 0.02 = 2 % of the control's value)."""

    metric: MetricName
    margin: float = Field(gt=0, lt=1)
    higher_is_better: bool = True


class DecisionRules(_SpecModel):
    """How a readout is tested and decided.

    `mixture_scale` sets the sequential test's mixing prior on the difference, N(0, tau^2) with
    tau = mixture_scale x the metric's mean. None (the default) tunes tau^2 to the plan instead: the
    confidence sequence is narrowest at the planned sample, where the planned `mde` is found with
    `power` (`experiments.stats.tuned_mixture_variance`).
    `stop_at_planned_sample`: with no significant improvement once the planned sample is
    reached, recommend rolling back (keep control) rather than running on.
    `cuped`: adjust every comparison with the users' behaviour before exposure (CUPED) when they have any.
    `prior`: the prior of the probability to beat control and the expected loss (`PRIOR_NAMES`).
    """

    method: Method = "sequential"
    correction: Correction = "holm"
    alpha: float = Field(0.05, gt=0, lt=0.5)
    power: float = Field(0.8, gt=0.5, lt=1)
    min_users_per_variant: int = Field(100, ge=2)
    min_converting_users_per_variant: int = Field(25, ge=0)
    srm_threshold: float = Field(0.001, gt=0, lt=1)
    srm_min_expected_users: float = Field(5.0, gt=0)
    mixture_scale: float | None = Field(None, gt=0)
    stop_at_planned_sample: bool = True
    cuped: bool = True
    prior: Prior = "uniform"
    ramp_steps: tuple[float, ...] = (0.05, 0.25, 0.5, 1.0)

    @model_validator(mode="after")
    def _ramp_rises_to_everyone(self) -> DecisionRules:
        steps = self.ramp_steps
        if not steps or steps[-1] != 1.0 or any(not 0 < s <= 1 for s in steps) or list(steps) != sorted(set(steps)):
            raise ValueError(f"ramp_steps must rise strictly within (0, 1] and end at 1.0, got {steps}")
        return self


class ExperimentSpec(_SpecModel):
    """One experiment: variants with their planned shares, metrics, guardrails, planned effect and rules."""

    experiment: str = Field(min_length=1)
    initiative: str = ""
    control: str = "control"
    allocation: dict[str, float] = Field(description="Variant -> planned share of users (normalised).")
    success_metrics: tuple[SuccessMetric, ...] = (SuccessMetric(metric="conversion"),)
    guardrails: tuple[Guardrail, ...] = ()
    mde: float = Field(0.05, gt=0, description="Relative minimum detectable effect on the first success metric.")
    srm_dimensions: tuple[str, ...] = ("channel", "profile")
    rules: DecisionRules = DecisionRules()
    assumptions: tuple[str, ...] = Field(
        (), description="What was assumed for want of a configured plan; the memo states it."
    )

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentSpec:
        if self.control not in self.allocation or len(self.allocation) < 2:
            raise ValueError(f"allocation {self.allocation} must name the control {self.control!r} and a variant")
        if any(not share > 0 for share in self.allocation.values()):
            raise ValueError(f"allocation shares must be positive: {self.allocation}")
        if not self.success_metrics:
            raise ValueError("an experiment needs at least one success metric")
        names = [m.metric for m in self.success_metrics] + [g.metric for g in self.guardrails]
        if len(names) != len(set(names)):
            raise ValueError(f"a metric is a success metric or a guardrail, once: {names}")
        return self

    @property
    def treatments(self) -> tuple[str, ...]:
        return tuple(name for name in self.allocation if name != self.control)

    def share(self, variant: str) -> float:
        return self.allocation[variant] / sum(self.allocation.values())

    def metric_names(self) -> tuple[str, ...]:
        return tuple(m.metric for m in self.success_metrics) + tuple(g.metric for g in self.guardrails)
