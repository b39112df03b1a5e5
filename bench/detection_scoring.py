"""The detection benchmark's scoring: the incidents the product opened, matched against the labels.

Matching: an incident matches a label when it is on one of the label's series (an initiative-wide incident:
on its initiative) and opens in [start, end + 3 buckets). Unmatched incidents are false alerts. A kind's
precision is its matched incidents over those plus all of the detector's false alerts. Per incident kind:
precision, recall, F1 and median detection delay (in buckets after the incident's first bucket: 0 = opened
within its first hour), for each candidate, for the monitor's choice (`detectors.registry`) and for the static
baseline; false alerts per 100 series-days of clean data; state sizes; and the issue's targets, PASS or FAIL.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field

from bench.detection_candidates import CANDIDATES, STATIC_FOR_KPI
from bench.detection_labels import DETECTABLE, GRACE, ORACLE_ALPHA, WARMUP_DAYS, Label
from detectors.conversion_drop import ConversionDropDetector
from detectors.registry import detector_for_kpi

# The KPIs whose detectors answer each family: the monitor's detectors for a kind are their registry choice.
FAMILY_KPIS: dict[str, tuple[str, ...]] = {
    "ctr_drop": ("ctr",), "conversion_drop": ("cvr",), "spike": ("ctr", "cvr", "revenue_per_exposure"),
    "volume_drop": ("exposures",), "feed_gap": ("exposures",), "variant_suppression": ("exposures",),
    "fallback_surge": ("fallback_rate",), "latency_regression": ("latency_ms",), "level_shift": ("ctr", "cvr"),
}
FAMILY_EXTRA = {"feed_gap": ("freshness",), "variant_suppression": ("variant_share",)}
# The families each KPI's detectors answer, for the evidence behind `detectors.registry`'s choice.
KPI_FAMILIES: dict[str, tuple[str, ...]] = {
    "ctr": ("ctr_drop", "spike", "level_shift"), "cvr": ("conversion_drop", "spike", "level_shift"),
    "revenue_per_exposure": ("spike", "conversion_drop"), "fallback_rate": ("fallback_surge",),
    "latency_ms": ("latency_regression",), "exposures": ("volume_drop", "feed_gap", "variant_suppression"),
}
DIP_FAMILIES = ("ctr_drop", "conversion_drop", "volume_drop")
HIGH_VOLUME = 1000      # exposures per series-hour from which a 20 % rate dip can be told from noise in 2 hours
KPIS = ("ctr", "cvr", "revenue_per_exposure", "fallback_rate", "latency_ms", "exposures")


@dataclass
class SeedResult:
    seed: int
    labels: list[Label]
    incidents: dict[str, list[tuple[str, str, int]]]   # detector -> (scope "series"/"initiative", key, hour)
    clean_hours: dict[str, int]                         # series -> clean hours after the warm-up
    sizes: dict[str, list[int]]                         # detector -> pickled bytes per instance
    warming: dict[str, list[str]]                       # detector -> series still warming up at the end
    series_initiative: dict[str, str]
    series_volume: dict[str, float]                     # series -> mean expected exposures per hour
    power: list[float] = field(default_factory=list)    # the oracle's chance to find each label
    seconds: dict[str, float] = field(default_factory=dict)
    emitted: dict[str, int] = field(default_factory=dict)   # incident kind -> incidents the pipeline opened
    records: int = 0                                    # records the pipeline read
    verdicts: dict[str, int] = field(default_factory=dict)  # detector -> verdicts the stage reached


@dataclass
class Score:
    labels: int
    detected: int
    true_alerts: int
    false_alerts: int
    delays: list[int]

    @property
    def recall(self) -> float:
        return self.detected / self.labels if self.labels else 0.0

    @property
    def precision(self) -> float:
        alerts = self.true_alerts + self.false_alerts
        return self.true_alerts / alerts if alerts else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def delay(self) -> float:
        return statistics.median(self.delays) if self.delays else math.nan


class Matcher:
    """Incidents against labels: which label each incident matches, and the first incident of each label.

    `keep` restricts both to a set of series (an initiative-wide label or incident
    is kept when all its initiative's series are).
    """

    def __init__(self, results: list[SeedResult], keep: set[str] | None = None, detectable: bool = False) -> None:
        def kept(scope: str, result: SeedResult) -> bool:
            keys = [k for k, i in result.series_initiative.items() if scope in (k, i)]
            return keep is None or all(k in keep for k in keys)

        chosen = [(label, power) for result in results for label, power in zip(result.labels, result.power, strict=True)
                  if all(kept(key, result) for key in label.series)]
        self.labels = [label for label, _ in chosen]
        self.power = [power for _, power in chosen]
        # The labels scored: all, or (`detectable`) those the oracle finds with probability >= DETECTABLE.
        # An alert matching only a label out of scope is then neither a hit nor a false alert.
        self.scope = {i for i, power in enumerate(self.power) if not detectable or power >= DETECTABLE}
        self.clean_days = sum(hours for result in results for key, hours in result.clean_hours.items()
                              if keep is None or key in keep) / 24
        by_scope: dict[tuple[int, str], list[int]] = defaultdict(list)
        for index, label in enumerate(self.labels):
            for scope in dict.fromkeys((label.initiative, *label.series)):
                by_scope[(label.seed, scope)].append(index)
        # detector -> (hour opened, indices of the labels it matches) per incident
        self.alerts: dict[str, list[tuple[int, tuple[int, ...]]]] = defaultdict(list)
        for result in results:
            for name, found in result.incidents.items():
                for _, scope, hour in found:
                    if not kept(scope, result):
                        continue
                    matched = tuple(i for i in by_scope[(result.seed, scope)]
                                    if self.labels[i].start <= hour < self.labels[i].end + GRACE)
                    self.alerts[name].append((hour, matched))

    def false_alerts(self, detectors: tuple[str, ...]) -> int:
        return sum(1 for name in detectors for _, matched in self.alerts.get(name, []) if not matched)

    def false_rate(self, detectors: tuple[str, ...]) -> float:
        """False alerts per 100 clean series-days."""
        return 100 * self.false_alerts(detectors) / self.clean_days if self.clean_days else math.nan

    def delays(self, detectors: tuple[str, ...]) -> dict[int, int]:
        """Label index -> buckets from its start to the first incident matching it."""
        first: dict[int, int] = {}
        for name in detectors:
            for hour, matched in self.alerts.get(name, []):
                for i in matched:
                    first[i] = min(first.get(i, hour - self.labels[i].start), hour - self.labels[i].start)
        return first

    def score(self, detectors: tuple[str, ...], kinds: set[str] | None = None) -> Score:
        """Labels of `kinds` (None: all) against the union of `detectors`' incidents."""
        wanted = {i for i, label in enumerate(self.labels)
                  if i in self.scope and (kinds is None or label.kind in kinds)}
        true_alerts = sum(1 for name in detectors for _, matched in self.alerts.get(name, [])
                          if any(i in wanted for i in matched))
        first = {i: delay for i, delay in self.delays(detectors).items() if i in wanted}
        return Score(len(wanted), len(first), true_alerts, self.false_alerts(detectors), sorted(first.values()))

    def kinds(self) -> list[str]:
        return sorted({self.labels[i].kind for i in self.scope}, key=lambda k: (k.split("@")[0], len(k), k))

    def dips(self) -> tuple[list[int], dict[int, int]]:
        """The dips of 20 % and more, and the monitor's delay for each one it found."""
        dips = [i for i, label in enumerate(self.labels)
                if i in self.scope and label.family in DIP_FAMILIES and label.magnitude >= 0.2]
        delays: dict[int, int] = {}
        for family in DIP_FAMILIES:
            delays.update(self.delays(monitor_for(family)))
        return dips, {i: delays[i] for i in dips if i in delays}

    def targets(self, per_series_bytes: float) -> list[tuple[str, bool, str]]:
        overall = self.score(monitor_for(None))
        dips, found = self.dips()
        recall = len(found) / len(dips) if dips else math.nan
        delay = statistics.median(found.values()) if found else math.nan
        false_rate = self.false_rate(monitor_for(None))
        losing = []
        for kind in self.kinds():
            family = kind.split("@")[0]
            mine, static = self.score(monitor_for(family), {kind}).f1, self.score(static_for(family), {kind}).f1
            if mine <= static:
                losing.append(f"{kind} {mine:.2f} vs {static:.2f}")
        return [
            ("F1 >= 0.9 overall", overall.f1 >= 0.9, f"F1 {overall.f1:.3f}"),
            ("dips >= 20 %: recall >= 0.95, median delay <= 2", recall >= 0.95 and delay <= 2,
             f"recall {recall:.3f} ({len(found)}/{len(dips)}), median delay {delay:.1f}"),
            ("<= 1 false alert per 100 series-days", false_rate <= 1, f"{false_rate:.2f}"),
            ("state <= 16 KB per series", per_series_bytes <= 16 * 1024, f"{per_series_bytes / 1024:.1f} KB"),
            ("beats the static baseline's F1 on every kind", not losing, "; ".join(losing) or "all kinds"),
        ]


def monitor_for(family: str | None) -> tuple[str, ...]:
    """The monitor's detectors for a family (None: all of them)."""
    families = [family] if family else list(FAMILY_KPIS)
    names: list[str] = []
    for fam in families:
        for kpi in FAMILY_KPIS[fam]:
            names += detector_for_kpi(kpi)
        names += FAMILY_EXTRA.get(fam, ())
    return tuple(dict.fromkeys(names))


def _chosen_everywhere() -> set[str]:
    return {name for kpi in KPIS for name in detector_for_kpi(kpi)}


def static_for(family: str | None) -> tuple[str, ...]:
    families = [family] if family else list(FAMILY_KPIS)
    return tuple(dict.fromkeys(name for fam in families for kpi in FAMILY_KPIS[fam] for name in STATIC_FOR_KPI[kpi]))


def _kpi_of(name: str) -> str | None:
    """The KPI a candidate answers for; a series' share of its initiative's exposures answers for volume."""
    detector = CANDIDATES[name]()
    kpi = "cvr" if isinstance(detector, ConversionDropDetector) else getattr(detector, "kpi", None)
    return "exposures" if kpi == "exposure_share" else kpi


def candidates_for(family: str) -> tuple[str, ...]:
    kpis = FAMILY_KPIS[family]
    names = [name for name in CANDIDATES if _kpi_of(name) in kpis]
    return tuple(names) + FAMILY_EXTRA.get(family, ())


def _fmt(score: Score) -> str:
    delay = "-" if math.isnan(score.delay) else f"{score.delay:.0f}"
    return (f"{score.precision:6.2f} {score.recall:6.2f} {score.f1:6.2f} {delay:>6} "
            f"{score.detected:>4}/{score.labels:<4} {score.false_alerts:>5}")


def _short(score: Score) -> str:
    delay = "-" if math.isnan(score.delay) else f"{score.delay:.0f}"
    return f"{score.precision:5.2f} {score.recall:5.2f} {score.f1:5.2f} {delay:>3}"


def report(results: list[SeedResult], elapsed: float, days: int) -> None:
    matcher = Matcher(results)
    high = {key for key, volume in results[0].series_volume.items() if volume >= HIGH_VOLUME}
    scoped = Matcher(results, detectable=True)
    print(f"\n{len(results)} seeds x {days} days, {len(results[0].series_volume)} series "
          f"({len(high)} with >= {HIGH_VOLUME} exposures/hour), {len(matcher.labels)} labelled incidents, "
          f"{len(scoped.scope)} of them in reach (the oracle finds them with probability >= {DETECTABLE}), "
          f"{matcher.clean_days:.0f} clean series-days after a {WARMUP_DAYS}-day warm-up\n")
    print("In reach: an oracle that knows the true baseline, start and length of an incident and tests it "
          f"whole (exact one-sided test, level {ORACLE_ALPHA}) finds it with probability >= {DETECTABLE}. "
          "Per kind: labels in reach / all, the oracle's expected recall over all labels, and the monitor's "
          "recall over all labels:")
    for kind in matcher.kinds():
        family = kind.split("@")[0]
        indices = [i for i, label in enumerate(matcher.labels) if label.kind == kind]
        reach = sum(1 for i in indices if i in scoped.scope)
        oracle = statistics.fmean(matcher.power[i] for i in indices)
        print(f"  {kind:<22}{reach:>4}/{len(indices):<4} oracle {oracle:5.2f}  monitor "
              f"{matcher.score(monitor_for(family), {kind}).recall:5.2f}")
    print()
    header = f"{'kind':<22}{'detector':<24}{'prec':>6} {'recall':>6} {'F1':>6} {'delay':>6} {'found':>9} {'false':>5}"
    print(header)
    print("-" * len(header))
    for kind in matcher.kinds():
        family = kind.split("@")[0]
        rows = [(name, (name,)) for name in candidates_for(family)]
        rows += [("MONITOR", monitor_for(family)), ("STATIC", static_for(family))]
        for position, (name, detectors) in enumerate(rows):
            print(f"{kind if position == 0 else '':<22}{name:<24}{_fmt(matcher.score(detectors, {kind}))}")
        reach_score = scoped.score(monitor_for(family), {kind})
        if reach_score.labels:
            print(f"{'':<22}{'MONITOR in reach':<24}{_fmt(reach_score)}")
        print()
    for name, m in (("all labels", matcher), ("in reach", scoped)):
        print(f"{'ALL (' + name + ')':<22}{'MONITOR':<24}{_fmt(m.score(monitor_for(None)))}")
        print(f"{'':<22}{'STATIC':<24}{_fmt(m.score(static_for(None)))}")

    print("\nEvidence per KPI: each candidate over the kinds its KPI answers (all labels | in reach), "
          "precision recall F1 median-delay; * = the registry's choice. An initiative-wide "
          "detector's incident matches any label of its initiative, so its precision is flattering:")
    for kpi, families in KPI_FAMILIES.items():
        kinds = {k for k in matcher.kinds() if k.split("@")[0] in families}
        print(f"  {kpi} ({', '.join(sorted(kinds))}):")
        names = [n for n in CANDIDATES if _kpi_of(n) == kpi]
        for name in (*names, *STATIC_FOR_KPI[kpi]):
            a, b = matcher.score((name,), kinds), scoped.score((name,), kinds)
            chosen = "*" if name in detector_for_kpi(kpi) else " "
            print(f"   {chosen}{name:<24}{_short(a)} | {_short(b)}")

    dips, found = matcher.dips()
    print("\nDips >= 20 % (ctr, conversion, volume) by expected exposures per series-hour at the dip's start "
          "(monitor):")
    for low, top in ((0, 100), (100, 300), (300, 1000), (1000, math.inf)):
        band = [i for i in dips if low <= matcher.labels[i].volume < top]
        if band:
            hits = sorted(found[i] for i in band if i in found)
            median = f"{statistics.median(hits):.1f}" if hits else "-"
            print(f"  {low:>5} to {top:<5} recall {len(hits) / len(band):.2f} ({len(hits)}/{len(band)}), "
                  f"median delay {median}")

    high_matcher = Matcher(results, keep=high)
    print(f"\nFalse alerts per 100 clean series-days ({matcher.clean_days:.0f} all, "
          f"{high_matcher.clean_days:.0f} >= {HIGH_VOLUME}/h):")
    for name in sorted(set(matcher.alerts) | set(monitor_for(None))):
        print(f"  {name:<24}{matcher.false_rate((name,)):7.2f}{high_matcher.false_rate((name,)):7.2f}")
    for name, detectors in (("MONITOR", monitor_for(None)), ("STATIC", static_for(None))):
        print(f"  {name:<24}{matcher.false_rate(detectors):7.2f}{high_matcher.false_rate(detectors):7.2f}")

    print("\nPickled state, mean bytes per instance (per series unless noted):")
    sizes: dict[str, list[int]] = defaultdict(list)
    for result in results:
        for name, values in result.sizes.items():
            sizes[name] += values
    for name in sorted(sizes):
        print(f"  {name:<24}{statistics.fmean(sizes[name]):9.0f}")
    per_series = sum(statistics.fmean(sizes[name]) for name in _chosen_everywhere())
    print(f"  {'MONITOR per series':<24}{per_series:9.0f}  (its per-series detectors together)")

    warming: dict[str, set[str]] = defaultdict(set)
    for result in results:
        for name, keys in result.warming.items():
            warming[name].update(keys)
    still = sorted({key for name in _chosen_everywhere() for key in warming.get(name, ())})
    print(f"\nStill warming up at the end of the run (monitor's detectors): {len(still)} series")
    for name in sorted(_chosen_everywhere()):
        if warming.get(name):
            print(f"  {name:<24}{len(warming[name]):3} series, the busiest "
                  f"{max(results[0].series_volume[k] for k in warming[name]):.0f} exposures/hour on average")

    emitted: dict[str, int] = defaultdict(int)
    for result in results:
        for kind, count in result.emitted.items():
            emitted[kind] += count
    print(f"\nWhat the pipeline emitted ({sum(r.records for r in results):,} records through "
          "`streams.embedded.EmbeddedDriver`): incidents opened, one per initiative and kind while open, "
          "all seeds, warm-up included:")
    print("  " + ", ".join(f"{kind} {count}" for kind, count in sorted(emitted.items())))

    for name, m in (("all labels", matcher), (f"labels in reach (oracle >= {DETECTABLE})", scoped)):
        print(f"\nTargets (issue 3), {name}:")
        for what, ok, figure in m.targets(per_series):
            print(f"  {'PASS' if ok else 'FAIL'}  {what:<50}{figure}")
    seconds: dict[str, float] = defaultdict(float)
    for result in results:
        for part, value in result.seconds.items():
            seconds[part] += value
    print(f"\nWall time {elapsed:.0f} s; summed over seeds: "
          + ", ".join(f"{part} {value:.0f} s" for part, value in seconds.items()))


