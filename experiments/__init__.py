"""Experiment readouts: per-user state, statistics, the decision rule, change events and the memo.

Pure: plain data in, decisions out; no transport (the stream keeps the state in its tables).
What each test assumes, and which test in `tests/` checks it: `experiments/README.md`.

How a stream uses it, event by event, then at each evaluation:

>>> from datetime import datetime, timezone
>>> import random
>>> spec = ExperimentSpec(experiment="checkout-v2", initiative="Checkout",
...                       allocation={"control": 0.5, "treatment": 0.5},
...                       guardrails=(Guardrail(metric="revenue_per_user", margin=0.05),))
>>> rng, users, totals = random.Random(1), {}, ExperimentTotals()
>>> for i in range(40_000):                                   # engagement events, keyed by user
...     user_id, variant = f"u{i % 20_000}", ("control", "treatment")[i % 20_000 % 2]
...     converts = rng.random() < (0.10 if variant == "control" else 0.125)
...     kind, revenue = ("conversion", round(rng.uniform(20, 80), 2)) if converts else ("exposure", 0.0)
...     users[user_id], delta = observe_event(users.get(user_id), variant=variant, event_type=kind,
...                                           revenue=revenue, dimensions={"channel": "web"})
...     totals += delta                                       # or keep one per partition and add them up
>>> readout = read_experiment(spec, totals, previous=None)   # pass the last readout back in next time
>>> recommendation = recommend(spec, readout, flags=())      # flags: suppression, rule-change breaches
>>> change = decision_change(None, recommendation, readout, window_start=datetime(2026, 11, 1, tzinfo=timezone.utc),
...                          window_end=datetime(2026, 11, 8, tzinfo=timezone.utc))
>>> recommendation.state, recommendation.variant, change.changed, change.event.kind
('ship', 'treatment', True, 'experiment_decision')
>>> print(render_memo(build_memo(spec, readout, recommendation), detail="summary").splitlines()[2])
checkout-v2: ship treatment — users converting +21.4% [+11.4%, +31.3%] (sequential, Holm, alpha 0.05)
"""

from experiments.decision import (
    DECISION_KIND,
    DecisionChange,
    InvestigationFlag,
    Recommendation,
    decision_change,
    recommend,
)
from experiments.exceptions import ExperimentError, InvalidEvent, InvalidSpec, InvalidStatisticInput, InvalidTotals
from experiments.memo import ExperimentMemo, MemoSummary, build_memo, render_memo
from experiments.readout import (
    Comparison,
    ExperimentReadout,
    PlannedSample,
    SampleCheck,
    SampleRatioCheck,
    VariantSummary,
    read_experiment,
)
from experiments.spec import DecisionRules, ExperimentSpec, Guardrail, SuccessMetric
from experiments.state import ExperimentTotals, MetricMoments, UserRecord, VariantTotals, observe_event

__all__ = [
    "DECISION_KIND",
    "Comparison",
    "DecisionChange",
    "DecisionRules",
    "ExperimentError",
    "ExperimentMemo",
    "ExperimentReadout",
    "ExperimentSpec",
    "ExperimentTotals",
    "Guardrail",
    "InvalidEvent",
    "InvalidSpec",
    "InvalidStatisticInput",
    "InvalidTotals",
    "InvestigationFlag",
    "MemoSummary",
    "MetricMoments",
    "PlannedSample",
    "Recommendation",
    "SampleCheck",
    "SampleRatioCheck",
    "SuccessMetric",
    "UserRecord",
    "VariantSummary",
    "VariantTotals",
    "build_memo",
    "decision_change",
    "observe_event",
    "read_experiment",
    "recommend",
    "render_memo",
]
