"""Detection on real series: the default univariate detector, two baselines and the registry's in-stream choices.

    .venv/bin/python bench/real_series.py [--copies 4] [--seed 15] [--out docs/benchmarks/real_series.md]

No broker, no download: every series ships inside an installed package
(`statsmodels.datasets`, `river.datasets`; see `SERIES`). For each series:

* the series itself is a **clean stretch**: its alerts, outside the few known
  real events listed with it (the Nile's 1899 dam, the water flow's
  documented low segments and pumping peak, the 2008 crash of electrical
  equipment orders), are false alarms, counted per 1,000 scored points;
* `--copies` copies per kind get one **labelled anomaly** each, at a seeded
  random point after the first fifth of the series, of a size in units of
  the series' noise scale sigma (`noise_scale`: the naive forecast's 95 % error / 1.96):

  - ``spike``: one point up by 5 to 8 sigma;
  - ``dip``: three points down by 5 to 8 sigma;
  - ``level_shift``: every point from the start on by +-(4 to 6) sigma (lasting);
  - ``variance``: 30 points (or to the end) with Gaussian noise of 3 sigma added;
  - ``trend_change``: from the start on, a ramp of +-(0.3 to 0.5) sigma per point (lasting);
  - ``missing``: 6 to 20 points removed; the label is the first point after the hole.

An alert hits a label when it falls in [start, start + window + 3) points, the
window being the anomaly's length (20 for a lasting shift or ramp); the first
such alert is the hit (its delay is counted from the start), later ones are
neither hits nor false alarms. Any other alert after the warm-up (the first
fifth: no label is placed in it) is a false alarm. Per kind: precision = hits /
(hits + false alarms on that kind's copies), recall = labels hit / labels, F1,
median delay in points; false alarms per 1,000 points on the clean stretches.

Detectors (all online, point by point): `robust_series` (the default of
`pmon detect`), the **static threshold** baseline (alert outside median +- 4
x 1.4826 MAD of the first fifth), the **rolling z-score** baseline (|x - mean|
> 3 std of the previous 30 points), the old default `seasonal_profile`, and
each in-stream detector of the registry that reads one number
(`detectors.backtest.univariate_detectors()` among `detectors.registry.monitored()`);
a count detector only on the series of whole non-negative numbers. A
baseline's or an in-stream detector's breaches become alerts the way
`robust_series` makes them: the first breach after 3 quiet points.

Prints the table and the targets (issue 15), writes the same as Markdown to
`--out`. Deterministic for a seed.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import statistics
import sys
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/real_series.py` puts bench/ first on the path, not the repo
    sys.path.insert(0, str(ROOT))

from bench import pages  # noqa: E402
from detectors.backtest import run_series, univariate_detectors  # noqa: E402
from detectors.registry import monitored  # noqa: E402

KINDS = ("spike", "dip", "level_shift", "variance", "trend_change", "missing")
GRACE = 3
LASTING_WINDOW = 20
SPACING = 100         # points between two labels of a copy, give or take a fifth
COOLDOWN = 3
WARMUP_FRACTION = 0.2
DEFAULT = "robust_series"
TARGET_F1, TARGET_FALSE_PER_1000 = 0.8, 2.0


# ---------------------------------------------------------------------------------------------- the series
@dataclass
class Series:
    name: str
    source: str
    sampling: str
    times: list[datetime]
    values: list[float]
    known: list[tuple[int, int]] = field(default_factory=list)   # index ranges of real events: not scored

    @property
    def counts(self) -> bool:
        return all(v >= 0 and v == int(v) for v in self.values)


def _utc(year: int, month: int = 1, day: int = 1) -> datetime:
    return datetime(year, month, day, tzinfo=timezone.utc)


def load_series() -> list[Series]:
    """Every real series the installed packages ship (nothing is downloaded)."""
    import csv
    import gzip
    from importlib.resources import files

    import statsmodels.datasets as sm

    out: list[Series] = []
    co2 = sm.co2.load_pandas().data["co2"]
    # 59 of the 2,284 weeks are NaN; linear interpolation keeps the clean stretch clean (their holes are no label).
    co2 = co2.interpolate()
    out.append(Series("co2", "statsmodels co2 (Mauna Loa, ppm)", "weekly",
                      [t.to_pydatetime().replace(tzinfo=timezone.utc) for t in co2.index], [float(v) for v in co2]))
    sun = sm.sunspots.load_pandas().data
    out.append(Series("sunspots", "statsmodels sunspots (yearly mean)", "yearly",
                      [_utc(int(y)) for y in sun.YEAR], [float(v) for v in sun.SUNACTIVITY]))
    nile = sm.nile.load_pandas().data
    out.append(Series("nile", "statsmodels nile (flow at Aswan)", "yearly",
                      [_utc(int(y)) for y in nile.year], [float(v) for v in nile.volume], known=[(27, 40)]))
    nino = sm.elnino.load_pandas().data
    months = [(int(r[0]), m + 1, float(r[m + 1])) for r in nino.values for m in range(12)]
    out.append(Series("elnino", "statsmodels elnino (sea surface temperature, C)", "monthly",
                      [_utc(y, m) for y, m, _ in months], [v for *_, v in months]))
    from statsmodels.datasets import elec_equip

    elec = elec_equip.load().data.iloc[:, 0]
    times = [t.to_pydatetime().replace(tzinfo=timezone.utc) for t in elec.index]
    crash = [i for i, t in enumerate(times) if _utc(2008, 9) <= t < _utc(2009, 10)]
    out.append(Series("elec_equip", "statsmodels elec_equip (euro area orders index)", "monthly",
                      times, [float(v) for v in elec], known=[(crash[0], crash[-1] + 1)]))
    macro = sm.macrodata.load_pandas().data
    quarters = [_utc(int(y), 3 * int(q) - 2) for y, q in zip(macro.year, macro.quarter, strict=True)]
    out.append(Series("inflation", "statsmodels macrodata infl (US, % a year)", "quarterly",
                      quarters, [float(v) for v in macro.infl]))
    out.append(Series("unemployment", "statsmodels macrodata unemp (US, %)", "quarterly",
                      quarters, [float(v) for v in macro.unemp]))

    river = files("river.datasets")
    with (river / "airline-passengers.csv").open() as f:
        rows = list(csv.DictReader(f))
    out.append(Series("airline", "river AirlinePassengers (thousands)", "monthly",
                      [datetime.strptime(r["month"], "%Y-%m").replace(tzinfo=timezone.utc) for r in rows],
                      [float(r["passengers"]) for r in rows]))
    with (river / "water-flow.csv").open() as f:
        rows = list(csv.DictReader(f))
    times = [datetime.fromisoformat(r["Time"]).astimezone(timezone.utc) for r in rows]
    values = [float(r["Water flow [l/s]"]) for r in rows]
    # The dataset's documented events: three low segments and a pumping peak; and its own holes (7 to 32 h).
    known = [(88, 116), (206, 228), (326, 334), (866, 890)]
    known += [(i, i + 4) for i in range(1, len(times)) if times[i] - times[i - 1] > timedelta(hours=3)]
    out.append(Series("water_flow", "river WaterFlow (l/s; real holes)", "hourly", times, values, known))
    with gzip.open(str(river / "trump_approval.csv.gz"), "rt") as f:
        rows = list(csv.DictReader(f))
    out.append(Series("approval", "river TrumpApproval (FiveThirtyEight, %)", "daily",
                      [datetime.fromordinal(int(r["ordinal_date"])).replace(tzinfo=timezone.utc) for r in rows],
                      [float(r["five_thirty_eight"]) for r in rows]))
    with gzip.open(str(river / "sp500.csv.gz"), "rt") as f:
        rows = list(csv.DictReader(f))
    out.append(Series("ko_returns", "river SP500Stocks KO (daily return, %; trading days)", "business daily",
                      [datetime.fromisoformat(r["date"]).replace(tzinfo=timezone.utc) for r in rows],
                      [float(r["KO"]) for r in rows]))
    return out


def noise_scale(values: list[float]) -> float:
    """sigma = the 95th percentile of |first difference - its median| / 1.96: the naive forecast's error in
    standard deviations of a normal of the same 95 % range, so a planted anomaly is larger than the series'
    own everyday big moves (a MAD would call a heavy-tailed series' ordinary jumps 5-sigma events)."""
    diffs = [b - a for a, b in itertools.pairwise(values)]
    centre = statistics.median(diffs)
    spread = sorted(abs(d - centre) for d in diffs)
    return spread[int(0.95 * (len(spread) - 1))] / 1.96 or statistics.pstdev(values) or 1.0


# ---------------------------------------------------------------------------------------------- labels
@dataclass
class Case:
    series: Series
    kind: str                          # "clean" or one of KINDS
    times: list[datetime]
    values: list[float]
    labels: list[tuple[int, int]]      # [start, end) of each label window, in points of this copy
    known: list[tuple[int, int]]
    warmup: int


def _starts(n: int, warmup: int, room: int, known: list[tuple[int, int]], rng: random.Random) -> list[int]:
    """Label starts after the warm-up, SPACING apart (give or take a fifth), clear of the known events."""
    starts, start = [], warmup + rng.randint(5, SPACING // 2)
    while start + room + GRACE < n:
        span = (start - 2, start + room + GRACE + 2)
        if not any(a < span[1] and span[0] < b for a, b in known):
            starts.append(start)
        start += rng.randint(4 * SPACING // 5, 6 * SPACING // 5)
    return starts


def make_case(series: Series, kind: str, rng: random.Random) -> Case:
    n = len(series.values)
    warmup = max(12, int(WARMUP_FRACTION * n))
    values, times = list(series.values), list(series.times)
    if kind == "clean":
        return Case(series, kind, times, values, [], series.known, warmup)
    sigma = noise_scale(series.values)
    length = {"spike": 1, "dip": 3, "level_shift": LASTING_WINDOW, "variance": 30, "trend_change": LASTING_WINDOW,
              "missing": 20}[kind]
    starts = _starts(n, warmup, length, series.known, rng)
    labels = []
    for start in starts:
        sign = rng.choice((-1.0, 1.0))
        if kind == "spike":
            values[start] += rng.uniform(5, 8) * sigma
        elif kind == "dip":
            size = rng.uniform(5, 8) * sigma
            for i in range(start, start + 3):
                values[i] -= size
        elif kind == "level_shift":
            size = sign * rng.uniform(4, 6) * sigma
            for i in range(start, n):
                values[i] += size
        elif kind == "variance":
            for i in range(start, start + length):
                values[i] += rng.gauss(0, 3 * sigma)
        elif kind == "trend_change":
            slope = sign * rng.uniform(0.3, 0.5) * sigma
            for i in range(start, n):
                values[i] += slope * (i - start + 1)
        labels.append((start, start + length))
    known = series.known
    if kind == "missing":
        holes = [(start, rng.randint(6, 20)) for start in starts]
        removed, labels, keep = 0, [], [True] * n
        for start, size in holes:
            for i in range(start, start + size):
                keep[i] = False
            labels.append((start - removed, start - removed + 1))   # the first point after the hole
            removed += size
        shift = [0] * (n + 1)
        for i in range(n):
            shift[i + 1] = shift[i] + (not keep[i])
        known = [(a - shift[min(a, n)], b - shift[min(b, n)]) for a, b in series.known]
        times = [t for t, k in zip(times, keep, strict=True) if k]
        values = [v for v, k in zip(values, keep, strict=True) if k]
    return Case(series, kind, times, values, labels, known, warmup)


def cases(series: list[Series], copies: int, seed: int) -> list[Case]:
    out = []
    for s in series:
        out.append(make_case(s, "clean", random.Random(0)))
        for kind in KINDS:
            for copy in range(copies):
                out.append(make_case(s, kind, random.Random(f"{seed}:{s.name}:{kind}:{copy}")))
    return out


# ---------------------------------------------------------------------------------------------- detectors
def _suppress(breaches: Iterable[bool]) -> list[bool]:
    """The first breach after COOLDOWN quiet points is an alert (as robust_series raises them)."""
    alerts, quiet = [], COOLDOWN
    for breached in breaches:
        alerts.append(breached and quiet >= COOLDOWN)
        quiet = 0 if breached else quiet + 1
    return alerts


def static_threshold(case: Case) -> list[bool]:
    train = case.values[:case.warmup]
    centre = statistics.median(train)
    mad = 1.4826 * statistics.median(abs(v - centre) for v in train) or statistics.pstdev(train) or 1.0
    return _suppress(i >= case.warmup and abs(v - centre) > 4 * mad for i, v in enumerate(case.values))


def rolling_z(case: Case, window: int = 30, k: float = 3.0) -> list[bool]:
    past: deque[float] = deque(maxlen=window)
    breaches = []
    for v in case.values:
        if len(past) >= 5:
            mean, std = statistics.fmean(past), statistics.pstdev(past)
            breaches.append(abs(v - mean) > k * std if std > 0 else v != mean)
        else:
            breaches.append(False)
        past.append(v)
    return _suppress(breaches)


def registered(name: str, own_alerts: bool = False) -> Callable[[Case], list[bool] | None]:
    counts = name in ("volume_cusum", "volume_profile", "volume_holt_winters", "volume_snarimax")

    def run(case: Case) -> list[bool] | None:
        if counts and not case.series.counts:
            return None
        rows = list(zip(case.times, case.values, strict=True))
        if counts:
            rows = [(t, float(round(v))) for t, v in rows]
            if any(v < 0 for _, v in rows):
                return None
        out = [alert for *_, alert in run_series(rows, name)]
        return out if own_alerts else _suppress(out)
    return run


def detectors() -> dict[str, Callable[[Case], list[bool] | None]]:
    in_stream = [name for name in monitored() if name in univariate_detectors()]
    return {DEFAULT: registered(DEFAULT, own_alerts=True), "static_threshold": static_threshold,
            "rolling_zscore": rolling_z, "seasonal_profile": registered("seasonal_profile"),
            **{f"in-stream {name}": registered(name) for name in in_stream}}


# ---------------------------------------------------------------------------------------------- scoring
@dataclass
class Tally:
    hits: int = 0
    labels: int = 0
    false: int = 0
    delays: list[int] = field(default_factory=list)
    clean_false: int = 0
    clean_points: int = 0
    cases: int = 0

    def add(self, other: Tally) -> None:
        for name in ("hits", "labels", "false", "clean_false", "clean_points", "cases"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.delays += other.delays

    @property
    def precision(self) -> float:
        return self.hits / (self.hits + self.false) if self.hits + self.false else 0.0

    @property
    def recall(self) -> float:
        return self.hits / self.labels if self.labels else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def score(case: Case, alerts: list[bool]) -> Tally:
    tally = Tally(cases=1, labels=len(case.labels))
    hit = [False] * len(case.labels)
    for i, alert in enumerate(alerts):
        if i < case.warmup:
            continue
        known = any(a <= i < b for a, b in case.known)
        if case.kind == "clean" and not known:
            tally.clean_points += 1
        if not alert or known:
            continue
        label = next((j for j, (start, end) in enumerate(case.labels) if start <= i < end + GRACE), None)
        if label is not None:
            if not hit[label]:
                hit[label] = True
                tally.hits += 1
                tally.delays.append(i - case.labels[label][0])
        elif case.kind == "clean":
            tally.clean_false += 1
        else:
            tally.false += 1
    return tally


def run(copies: int, seed: int) -> tuple[dict[str, dict[str, Tally]], list[Series], dict[str, float], int]:
    series = load_series()
    all_cases = cases(series, copies, seed)
    results: dict[str, dict[str, Tally]] = {}
    seconds: dict[str, float] = {}
    for name, detector in detectors().items():
        began = time.process_time()
        per_kind: dict[str, Tally] = defaultdict(Tally)
        for case in all_cases:
            alerts = detector(case)
            if alerts is None:
                continue
            per_kind[case.kind].add(score(case, alerts))
        results[name] = per_kind
        seconds[name] = time.process_time() - began
    return results, series, seconds, len(all_cases)


def _fmt(t: Tally) -> str:
    delay = f"{statistics.median(t.delays):.0f}" if t.delays else "-"
    return f"{t.precision:.2f} {t.recall:.2f} {t.f1:.2f} {delay:>3}"


def report(results: dict[str, dict[str, Tally]], series: list[Series], seconds: dict[str, float], copies: int,
           seed: int, wall: float, n_cases: int) -> tuple[str, bool]:
    lines = [f"{len(series)} real series shipped by installed packages, {n_cases} copies "
             f"({copies} per kind and series, one clean each); wall time {wall:.0f} s.", "",
             "| series | source | sampling | points | noise scale sigma |", "|---|---|---|---|---|"]
    for s in series:
        lines.append(f"| {s.name} | {s.source} | {s.sampling} | {len(s.values)} | {noise_scale(s.values):.4g} |")
    lines += ["", "Per kind: precision recall F1 median-delay (points); overall pools every kind's counts; "
              "false alarms per 1,000 points of the clean stretches.", ""]
    header = "| detector | " + " | ".join(KINDS) + " | overall | false / 1,000 clean | labels | CPU s |"
    lines += [header, "|" + "---|" * (len(KINDS) + 5)]
    overall: dict[str, Tally] = {}
    for name, per_kind in results.items():
        total = Tally()
        for kind in KINDS:
            total.add(per_kind[kind])
        total.add(per_kind["clean"])
        overall[name] = total
        false_rate = 1000 * total.clean_false / total.clean_points if total.clean_points else float("nan")
        cells = [_fmt(per_kind[kind]) for kind in KINDS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_fmt(total)} | {false_rate:.2f} | {total.labels} "
                     f"| {seconds[name]:.1f} |")
    default = results[DEFAULT]
    total = overall[DEFAULT]
    false_rate = 1000 * total.clean_false / total.clean_points
    beaten = {kind: all(default[kind].f1 > results[b][kind].f1 for b in ("static_threshold", "rolling_zscore"))
              for kind in KINDS}
    checks = [(f"{DEFAULT} F1 overall >= {TARGET_F1}", total.f1 >= TARGET_F1, f"{total.f1:.3f}"),
              (f"{DEFAULT} beats both baselines' F1 on every kind", all(beaten.values()),
               ", ".join(k for k, ok in beaten.items() if not ok) or "all kinds"),
              (f"false alarms <= {TARGET_FALSE_PER_1000} per 1,000 clean points", false_rate <= TARGET_FALSE_PER_1000,
               f"{false_rate:.2f} ({total.clean_false} in {total.clean_points})"),
              ("wall time < 600 s", wall < 600, f"{wall:.0f} s")]
    lines += ["", "Targets (issue 15):", ""]
    lines += [f"* {'PASS' if ok else 'FAIL'}: {text} ({value})" for text, ok, value in checks]
    return "\n".join(lines) + "\n", all(ok for _, ok, _ in checks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--copies", type=int, default=4, help="labelled copies per kind and series (default 4)")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--out", type=Path, default=pages.page_path("real_series"),
                        help="where to write the Markdown page (default docs/benchmarks/real_series.md)")
    args = parser.parse_args(argv)
    load_before, commit = os.getloadavg(), pages.checkout_commit()
    began = time.perf_counter()
    results, series, seconds, n_cases = run(args.copies, args.seed)
    text, ok = report(results, series, seconds, args.copies, args.seed, time.perf_counter() - began, n_cases)
    print(text)
    pages.write_page("real_series", f"Detection on real series (seed {args.seed})", text,
                     argv=sys.argv[1:] if argv is None else argv, load_before=load_before, out=args.out,
                     commit=commit)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
