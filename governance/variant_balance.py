"""Do an experiment's variants differ in consent or fallback rates beyond chance?

A readout compares variants; if one variant reaches unconsented users or falls
back to the default experience more often, it compares different populations
or experiences, and no experimentation tool checks it. Like a sample-ratio
check, it is a test of independence between variant and outcome:

- unit: the user-hour (a user's first exposure in the experiment within a
  bucket), so that within one bucket every unit is a different user and the
  units are independent; exposures are not (one user's exposures share their
  consent, and often their fallback);
- outcome: personalization consent at that first exposure; a fallback exposure
  of the user in that hour;
- test: Pearson's chi-square test of independence on the variants x (yes, no)
  table without continuity correction (the statistic of
  `scipy.stats.chi2_contingency(table, correction=False)`, computed here, and
  its survival function `scipy.special.chdtrc`: the scipy.stats call costs
  about 30 times its arithmetic, once per experiment, measure and bucket), or
  Fisher's exact test when a 2 x 2 table has an expected count below 5;
  no test when an outcome never or always happens;
- a bucket breaches when p < `significance` (0.001, as a sample-ratio check);
  the breach policy opens `variant_imbalance` on the second breach.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

MEASURES = ("consent", "fallback")


@dataclass(frozen=True, slots=True)
class BalanceVerdict:
    measure: str
    tested: bool
    p_value: float
    rates: dict[str, float]  # per variant
    units: dict[str, int]
    test: str


def balance_test(measure: str, counts: Mapping[str, tuple[int, int]]) -> BalanceVerdict:
    """`counts[variant] = (units, units with the outcome)`; the test of independence between variant and outcome.

    >>> v = balance_test("fallback", {"control": (1000, 30), "treatment": (1000, 90)})
    >>> v.test, v.p_value < 1e-6, v.rates
    ('chi-square', True, {'control': 0.03, 'treatment': 0.09})
    >>> balance_test("consent", {"control": (500, 500), "treatment": (480, 480)}).tested
    False
    """
    variants = sorted(v for v, (units, _) in counts.items() if units > 0)
    rates = {v: counts[v][1] / counts[v][0] for v in variants}
    units = {v: counts[v][0] for v in variants}
    table = np.array([[counts[v][1], counts[v][0] - counts[v][1]] for v in variants], dtype=float)
    if len(variants) < 2 or (table.sum(axis=0) == 0).any():
        return BalanceVerdict(measure, False, 1.0, rates, units, "none: one variant, or the outcome never varies")
    from scipy.special import chdtrc  # here, not at import: see experiments.stats._lazy
    from scipy.stats import fisher_exact

    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
    if table.shape == (2, 2) and expected.min() < 5:
        return BalanceVerdict(measure, True, float(fisher_exact(table).pvalue), rates, units, "fisher-exact")
    statistic = float((((table - expected) ** 2) / expected).sum())
    p_value = float(chdtrc(len(variants) - 1, statistic))
    return BalanceVerdict(measure, True, p_value, rates, units, "chi-square")


_NEVER = (-math.inf, -math.inf)  # no hour counted yet (a constant: this runs once per exposure)


def first_in_hour(
    hours: dict[str, tuple[float, float]], experiment: str, hour: float, *, fallback: bool
) -> tuple[bool, bool]:
    """Is this the user's first exposure in `experiment` this hour, and their first fallback this hour?

    `hours` is the user's ledger field (experiment -> (last hour counted, last fallback hour counted)), updated
    in place.

    >>> hours = {}
    >>> first_in_hour(hours, "exp", 3600.0, fallback=False), first_in_hour(hours, "exp", 3600.0, fallback=True)
    ((True, False), (False, True))
    """
    counted, fallback_counted = hours.get(experiment, _NEVER)
    first = counted < hour
    first_fallback = fallback and fallback_counted < hour
    if first or first_fallback:
        hours[experiment] = (hour if first else counted, hour if first_fallback else fallback_counted)
    return first, first_fallback
