"""Our sequential readout against GrowthBook's sequential engine on the same simulated experiments.

    .venv/bin/python bench/experiments.py [--runs 600] [--looks 20] [--seed 14]

No broker. Simulates conversion experiments (one 0/1 outcome per user, 50/50
allocation) whose users arrive in equal batches, and reads each one after every
batch, up to the planned sample, two ways on the same cumulative counts:

* ours: `experiments.readout.read_experiment` with the sequential rules (the
  product's readout, called once per look, the previous readout passed back);
  a look rejects when the comparison is `improved` or `worsened` (its
  Holm-adjusted p-value below alpha, here one comparison);
* GrowthBook: `gbstats.frequentist.tests.SequentialTwoSidedTTest` on
  `ProportionStatistic(n, sum)` per arm, relative lift (its default), p-value
  below alpha. Its `sequential_tuning_parameter` is the total sample N = n_a + n_b
  its boundary is tuned for (the code's N counts both arms), so it is run three
  ways: tuned to our planned sample in both arms, to our planned sample per
  variant, and at its default 5000.

The planned sample is the readout's own `planned.required_users_per_variant`,
read on totals at the true base rate (so every run has the same horizon); the
batch is that sample over `--looks`, rounded up. A/A runs give the
false-positive rate under continuous peeking (any look rejecting); A/B runs at
the planned MDE give the power (the first rejection by the planned sample, in
the right direction) and the users per variant at the first rejection.
Counts are drawn with numpy (binomial per batch, cumulated); the tests are the
real ones. Deterministic for a seed. Rates are printed with their Monte-Carlo
standard errors; differences between ours and GrowthBook's are paired (same
runs) and carry the standard error of the paired difference.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# `python bench/experiments.py` puts bench/ first on the path, where this file would shadow the `experiments`
# package: the repository goes first instead.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from bench import pages  # noqa: E402
from experiments.readout import read_experiment  # noqa: E402
from experiments.spec import DecisionRules, ExperimentSpec  # noqa: E402
from experiments.state import ExperimentTotals, VariantTotals  # noqa: E402

try:
    from gbstats.frequentist.tests import FrequentistConfig, SequentialConfig, SequentialTwoSidedTTest, TwoSidedTTest
    from gbstats.models.statistics import ProportionStatistic
except ImportError:
    GBSTATS_MISSING = True
else:
    GBSTATS_MISSING = False

GROWTHBOOK_DEFAULT_TUNING = 5000


@dataclass(frozen=True)
class Outcome:
    """Per run: the look (0-based) of the first rejection, -1 for none by the planned sample; and its sign."""

    first_look: np.ndarray
    sign: np.ndarray


def _totals(n: int, converting_a: int, converting_b: int) -> ExperimentTotals:
    # A conversion-only experiment: one conversion per converting user (as tests/unit/test_experiments.py's `rates`).
    def one(converting: int) -> VariantTotals:
        return VariantTotals(users=n, converting_users=converting, conversions=converting, conversions_sq=converting)
    return ExperimentTotals({"control": one(converting_a), "treatment": one(converting_b)})


def _ours(spec: ExperimentSpec, users: np.ndarray, conv_a: np.ndarray, conv_b: np.ndarray) -> Outcome:
    runs, looks = conv_a.shape
    first, sign = np.full(runs, -1), np.zeros(runs, dtype=int)
    for r in range(runs):
        previous = None
        for k in range(looks):
            readout = read_experiment(spec, _totals(int(users[k]), int(conv_a[r, k]), int(conv_b[r, k])), previous)
            c = readout.comparison("treatment", "conversion")
            # Stopping at the first rejection is what a reader of every batch does; later looks change nothing.
            if c is not None and (c.improved or c.worsened):
                first[r], sign[r] = k, 1 if c.improved else -1
                break
            previous = readout
    return Outcome(first, sign)


def _growthbook(test: type, config: object, users: np.ndarray, conv_a: np.ndarray, conv_b: np.ndarray,
                alpha: float) -> Outcome:
    runs, looks = conv_a.shape
    first, sign = np.full(runs, -1), np.zeros(runs, dtype=int)
    for r in range(runs):
        for k in range(looks):
            n = int(users[k])
            result = test(ProportionStatistic(n=n, sum=int(conv_a[r, k])),
                          ProportionStatistic(n=n, sum=int(conv_b[r, k])), config).compute_result()
            if result.p_value < alpha:
                first[r], sign[r] = k, 1 if result.expected > 0 else -1
                break
    return Outcome(first, sign)


def _rate(hits: np.ndarray) -> tuple[float, float]:
    p = float(hits.mean())
    return p, math.sqrt(p * (1 - p) / hits.size)


def _paired(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    d = x.astype(float) - y.astype(float)
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else math.nan


def _median_with_se(values: np.ndarray, rng: np.random.Generator, resamples: int = 400) -> tuple[float, float]:
    # The median's Monte-Carlo error by the bootstrap: no closed form worth trusting for a discrete look grid.
    if values.size == 0:
        return math.nan, math.nan
    boot = np.median(rng.choice(values, size=(resamples, values.size)), axis=1)
    return float(np.median(values)), float(boot.std(ddof=1))


def _fmt_rate(value: tuple[float, float]) -> str:
    return f"{value[0]:.3f} ± {value[1]:.3f}"


def _fmt_users(value: tuple[float, float]) -> str:
    return "—" if math.isnan(value[0]) else f"{value[0]:,.0f} ± {value[1]:,.0f}"


def _ratio(a: float, b: float) -> str:
    return "—" if not b or math.isnan(a) or math.isnan(b) else f"{a / b:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=600, help="simulated experiments per scenario (A/A and A/B)")
    parser.add_argument("--looks", type=int, default=20, help="batches (readouts) up to the planned sample")
    parser.add_argument("--base-rate", type=float, default=0.10)
    parser.add_argument("--mde", type=float, default=0.10, help="relative minimum detectable effect (the A/B lift)")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--power", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--out", type=Path, default=pages.page_path("experiments"),
                        help="where to write the page (default docs/benchmarks/experiments.md)")
    args = parser.parse_args(argv)
    if GBSTATS_MISSING:
        print("gbstats is not installed: `make bench` installs it, or "
              "`.venv/bin/pip install --no-deps 'gbstats>=0.8,<0.9'` (see bench/README.md)", file=sys.stderr)
        return 2
    with pages.recording("experiments", "Sequential readouts against GrowthBook's sequential engine", args.out,
                         argv):
        return _measure(args)


def _measure(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    spec = ExperimentSpec(experiment="bench", allocation={"control": 0.5, "treatment": 0.5}, mde=args.mde,
                          srm_dimensions=(), rules=DecisionRules(method="sequential", alpha=args.alpha,
                                                                 power=args.power))
    # The planned sample at the true base rate: a large experiment whose control mean is the base rate exactly.
    big = 10_000_000
    converting = round(big * args.base_rate)
    planned_readout = read_experiment(spec, _totals(big, converting, converting))
    planned = planned_readout.planned.required_users_per_variant["control"]
    batch = math.ceil(planned / args.looks)
    users = batch * np.arange(1, args.looks + 1)

    rng = np.random.default_rng(args.seed)
    rate_b = {"A/A": args.base_rate, "A/B": args.base_rate * (1 + args.mde)}
    counts = {}
    for scenario, p_b in rate_b.items():
        conv_a = rng.binomial(batch, args.base_rate, (args.runs, args.looks)).cumsum(axis=1)
        conv_b = rng.binomial(batch, p_b, (args.runs, args.looks)).cumsum(axis=1)
        counts[scenario] = (conv_a, conv_b)

    engines = {
        "ours": None,
        "GB N=2n*": (SequentialTwoSidedTTest, SequentialConfig(alpha=args.alpha,
                                                               sequential_tuning_parameter=2 * planned)),
        "GB N=n*": (SequentialTwoSidedTTest, SequentialConfig(alpha=args.alpha, sequential_tuning_parameter=planned)),
        "GB 5000": (SequentialTwoSidedTTest, SequentialConfig(alpha=args.alpha,
                                                              sequential_tuning_parameter=GROWTHBOOK_DEFAULT_TUNING)),
    }
    outcomes: dict[str, dict[str, Outcome]] = {name: {} for name in engines}
    seconds: dict[str, float] = {}
    for name, engine in engines.items():
        clock = time.perf_counter()
        for scenario, (conv_a, conv_b) in counts.items():
            if engine is None:
                outcomes[name][scenario] = _ours(spec, users, conv_a, conv_b)
            else:
                outcomes[name][scenario] = _growthbook(*engine, users, conv_a, conv_b, args.alpha)
        seconds[name] = time.perf_counter() - clock
        print(f"  {name}: {seconds[name]:.1f} s", file=sys.stderr, flush=True)
    # For scale: the fixed-horizon t-test read at every look, the peeking the sequential tests exist to allow.
    naive = _growthbook(TwoSidedTTest, FrequentistConfig(alpha=args.alpha), users, *counts["A/A"], args.alpha)

    boot = np.random.default_rng([args.seed, 1])
    rows: dict[str, dict[str, tuple[float, float]]] = {}
    hits: dict[str, dict[str, np.ndarray]] = {}
    for name, by_scenario in outcomes.items():
        aa, ab = by_scenario["A/A"], by_scenario["A/B"]
        rejected_aa = aa.first_look >= 0
        found = (ab.first_look >= 0) & (ab.sign > 0)
        hits[name] = {"fpr": rejected_aa, "power": found}
        at_rejection = users[ab.first_look[found]]
        to_decision = np.where(found, users[np.maximum(ab.first_look, 0)], users[-1])
        rows[name] = {"fpr": _rate(rejected_aa), "power": _rate(found),
                      "median_rejection": _median_with_se(at_rejection, boot),
                      "median_decision": _median_with_se(to_decision, boot)}

    names = list(engines)
    gb = names[1:]
    print(f"Sequential readouts vs GrowthBook (gbstats SequentialTwoSidedTTest, relative lift) · seed {args.seed}")
    print(f"conversion {args.base_rate:.1%} · A/B lift {args.mde:+.0%} relative · alpha {args.alpha} · power "
          f"{args.power} · 50/50 · {args.runs:,} A/A + {args.runs:,} A/B runs")
    print(f"planned sample n* = {planned:,} users per variant (our readout) · read after every batch of "
          f"{batch:,} per variant · {args.looks} looks to {int(users[-1]):,}")
    print("GB N=…: GrowthBook's sequential_tuning_parameter (N counts both arms); 5000 is its default")
    print()
    width = 19
    print(f"{'':<36}" + "".join(f"{name:>{width}}" for name in names))
    labels = {"fpr": "A/A false-positive rate (any look)", "power": "A/B power by n* (right direction)",
              "median_rejection": "A/B median n at first rejection", "median_decision": "A/B median n to decision¹"}
    for key, label in labels.items():
        fmt = _fmt_rate if key in ("fpr", "power") else _fmt_users
        print(f"{label:<36}" + "".join(f"{fmt(rows[name][key]):>{width}}" for name in names))
    print()
    print(f"{'ours / GrowthBook':<36}" + "".join(f"{name:>{width}}" for name in gb))
    for key, label in labels.items():
        print(f"{label:<36}" + "".join(f"{_ratio(rows['ours'][key][0], rows[name][key][0]):>{width}}"
                                       for name in gb))
    print(f"{'power: ours - GB (paired)':<36}" + "".join(
        f"{_fmt_rate(_paired(hits['ours']['power'], hits[name]['power'])):>{width}}" for name in gb))
    print()
    print("¹ first rejection in the right direction, else the planned sample (the readout's stop at n*)")
    naive_fpr = _rate(naive.first_look >= 0)
    print(f"for scale: GrowthBook's fixed-horizon t-test read at every look: A/A false-positive rate "
          f"{_fmt_rate(naive_fpr)}")
    print()
    fpr, fpr_se = rows["ours"]["fpr"]
    print(f"target FPR <= alpha ({args.alpha}): ours {fpr:.3f} ± {fpr_se:.3f}  "
          f"{'met' if fpr <= args.alpha else 'NOT MET'}")
    met = fpr <= args.alpha
    for name in gb:
        ours_power, theirs = rows["ours"]["power"][0], rows[name]["power"][0]
        difference, se = _paired(hits["ours"]["power"], hits[name]["power"])
        ok = ours_power >= theirs
        met &= ok
        print(f"target power >= {name}: {ours_power:.3f} vs {theirs:.3f} (difference {difference:+.3f} ± {se:.3f})  "
              f"{'met' if ok else 'NOT MET'}")
    print("all met" if met else "NOT MET: see the lines above")
    readouts = sum(int(np.where(o.first_look >= 0, o.first_look + 1, args.looks).sum())
                   for o in outcomes["ours"].values())
    print(f"wall {time.perf_counter() - started:.0f} s (ours {seconds['ours']:.0f} s for {readouts:,} readouts) · "
          f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
    return 0


if __name__ == "__main__":
    sys.exit(main())
