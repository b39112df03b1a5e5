"""Prometheus metrics of the pipeline. The registry is passed in; tests build their own.

Label cardinality is bounded by design: never a user; `initiative` and `channel` are the
program's own (tens), `partition` is bounded by PMON_TOPIC_PARTITIONS, `kind`, `severity`,
`owner`, `reason`, `stage`, `step`, `table` and `kpi` by the code. docs/operations.md lists
every metric with its labels; a test checks the list against this module.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from incidents.series import field_of

if TYPE_CHECKING:
    from monitor.initiative_stage import InitiativeStage

# Seconds: from a fraction of the commit interval to the minutes a lagging worker takes.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)


class PipelineMetrics:
    """Counters, and gauges of what a worker holds: rates and ratios are the Prometheus server's job.
    No user ids as labels."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.records = Counter("pmon_records", "Input records received, per topic.", ["topic"], registry=registry)
        self.dead_letters = Counter(
            "pmon_dead_letters",
            "Records sent to the dead-letter topic, per source topic, "
            "stage and reason kind (the reason without its particulars).",
            ["topic", "stage", "reason"],
            registry=registry,
        )
        self.incident_transitions = Counter(
            "pmon_incident_transitions",
            "Incident transitions sent (by the worker: counted when the transaction that sends them commits).",
            ["kind", "transition"],
            registry=registry,
        )
        self.sink_retries = Counter(
            "pmon_sink_retries", "Failed sink writes that were retried.", ["sink"], registry=registry
        )
        self.plan_writes = Counter("pmon_plan_writes", "Plan documents written.", registry=registry)
        self.stage1_partitions = Gauge(
            "pmon_stage1_partitions",
            "Source partitions (engagement and consent) this worker's stage 1 holds.",
            registry=registry,
        )
        self.stage2_partitions = Gauge(
            "pmon_stage2_partitions",
            "Partitions of the partials topic (initiatives) this worker's stage 2 holds.",
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "pmon_consumer_lag",
            "Records behind the last stable offset, per consumer group, topic and partition this worker holds.",
            ["group", "topic", "partition"],
            registry=registry,
        )
        self.latency = Histogram(
            "pmon_processing_latency_seconds",
            "counted: from the engagement record's append to the broker to its bucket counted by stage 2 (the "
            "commit that makes it visible); incident: from the step that closed a bucket to its incident sent.",
            ["step"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.ready = Gauge(
            "pmon_ready",
            "1 while /ready answers 200 (both stages joined, recovered, fetching, "
            "not lagging beyond PMON_READY_MAX_LAG), else 0.",
            registry=registry,
        )
        self.build = Info("pmon_build", "The worker's version and Python.", registry=registry)
        self.build.info({"version": _version(), "python": platform.python_version()})


def count_dead_letter(metrics: PipelineMetrics, letter: Any) -> None:
    """`pmon_dead_letters_total` for one letter written (sent, or committed with its transaction)."""
    from monitor.events import reason_kind

    metrics.dead_letters.labels(topic=letter.source_topic, stage=letter.stage, reason=reason_kind(letter.reason)).inc()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("personalization-monitor")
    except PackageNotFoundError:
        return "unknown"


class StageCollector(Collector):
    """Gauges read from stage 2's state at scrape time (so they are never stale and cost nothing between
    scrapes): open incidents, the last closed bucket's KPIs, event-time lag, last event time per feed, and
    the size of each state table. `stages()` returns the stages this worker holds; `users()` the number of
    users stage 1 holds.

    >>> registry = CollectorRegistry()
    >>> registry.register(StageCollector(lambda: [], lambda: 3))
    >>> registry.get_sample_value("pmon_state_entries", {"table": "users"})
    3
    """

    def __init__(
        self,
        stages: Callable[[], Iterable[InitiativeStage]],
        users: Callable[[], int],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._stages, self._users, self._clock = stages, users, clock

    def describe(self) -> list[Any]:
        return []  # collected at scrape time only: the registry need not call collect() to learn the names

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from governance.scan import adherence_pct

        open_incidents = GaugeMetricFamily(
            "pmon_open_incidents",
            "Incidents not resolved, by kind, severity and owner role.",
            labels=["kind", "severity", "owner"],
        )
        kpis = GaugeMetricFamily(
            "pmon_kpi",
            "The last closed bucket's KPI per initiative and channel (ctr, cvr, "
            "fallback_rate; consent_adherence over the monitored period, in %).",
            labels=["initiative", "channel", "kpi"],
        )
        lag = GaugeMetricFamily(
            "pmon_event_time_lag_seconds",
            "Wall clock minus the initiative's event-time watermark.",
            labels=["initiative"],
        )
        last_event = GaugeMetricFamily(
            "pmon_feed_last_event_timestamp_seconds",
            "Greatest event time read per initiative and feed.",
            labels=["initiative", "feed"],
        )
        entries = GaugeMetricFamily(
            "pmon_state_entries", "Entries of each state table this worker holds.", labels=["table"]
        )
        counts: dict[tuple[str, str, str], int] = {}
        sizes: dict[str, int] = {}
        now = self._clock()
        for stage in self._stages():
            state = stage.state
            for name, table in vars(state).items():
                sizes[name] = sizes.get(name, 0) + len(table)
            for pair in state.incidents.values():
                if pair is not None and pair[1].transition != "resolved":
                    key = (pair[1].kind, pair[1].severity, pair[1].owner)
                    counts[key] = counts.get(key, 0) + 1
            for initiative in stage.initiatives():
                clock = stage.windows.clock(initiative)
                if clock is None:
                    continue
                if clock.watermark is not None:
                    lag.add_metric([initiative], max(0.0, now - clock.watermark))
                if clock.partition_marks:
                    last_event.add_metric([initiative, "engagement"], max(clock.partition_marks.values()))
                if clock.closed_until is not None:
                    rows = stage.windows.closed_rows(initiative, clock.closed_until - stage.settings.bucket_seconds)
                    for channel, rates in _channel_rates(rows[-1:]).items():
                        for kpi, value in rates.items():
                            kpis.add_metric([initiative, channel, kpi], value)
                governance = state.governance.get(initiative)
                for channel, (personalized, violations) in governance.adherence.items() if governance else ():
                    pct = adherence_pct(personalized, violations)
                    if pct is not None:
                        kpis.add_metric([initiative, channel, "consent_adherence"], pct)
        for (kind, severity, owner), n in sorted(counts.items()):
            open_incidents.add_metric([kind, severity, owner], n)
        sizes["users"] = self._users()
        for table, n in sorted(sizes.items()):
            entries.add_metric([table], n)
        yield from (open_incidents, kpis, lag, last_event, entries)


def _channel_rates(rows: Iterable[Any]) -> dict[str, dict[str, float]]:
    """Per channel of `rows` (series keyed initiative|profile|channel|variant): CTR, CVR and fallback rate."""
    totals: dict[str, list[int]] = {}
    for row in rows:
        for series, counters in row.series.items():
            channel = field_of(series, "channel")
            cell = totals.setdefault(channel, [0, 0, 0, 0])
            cell[0] += counters.exposures
            cell[1] += counters.clicks
            cell[2] += counters.conversions
            cell[3] += counters.fallbacks
    return {
        channel: {"ctr": c / e, "cvr": v / e, "fallback_rate": f / e} for channel, (e, c, v, f) in totals.items() if e
    }


def metric_reference() -> list[tuple[str, str, tuple[str, ...], str]]:
    """(name as exported, type, labels, help) of every metric a worker exports: docs/operations.md's table.

    >>> [row[:3] for row in metric_reference() if row[0] == "pmon_consumer_lag"]
    [('pmon_consumer_lag', 'gauge', ('group', 'topic', 'partition'))]
    """
    registry = CollectorRegistry()
    metrics = PipelineMetrics(registry)
    rows = []
    for metric in vars(metrics).values():
        kind = metric._type
        name = metric._name + ("_total" if kind == "counter" else "_info" if kind == "info" else "")
        rows.append((name, kind, tuple(metric._labelnames), metric._documentation))
    rows += [
        (family.name, family.type, tuple(family._labelnames), family.documentation)
        for family in StageCollector(lambda: [], lambda: 0).collect()
    ]
    return sorted(rows)


def metrics_table() -> str:
    """Markdown: one row per metric."""
    lines = ["| metric | type | labels | what |", "|---|---|---|---|"]
    lines += [
        f"| `{name}` | {kind} | {', '.join(f'`{label}`' for label in labels) or '–'} | {text} |"
        for name, kind, labels, text in metric_reference()
    ]
    return "\n".join(lines)


# What bounds each label's values (never a user, never a series key).
LABEL_BOUNDS = {
    "group": "2: the stages' consumer groups",
    "topic": "the input topics (records, lag also the partials topic); dead letters: the source topic",
    "partition": "PMON_TOPIC_PARTITIONS per topic, only those this worker holds",
    "stage": "decode, process, sink",
    "reason": "the reason kinds of the decoders and stages (`monitor.events.reason_kind`: no values, no times)",
    "kind": "the incident kinds of the code (incidents/playbooks.py)",
    "transition": "opened, escalated, resolved",
    "severity": "warning, critical",
    "owner": "the owner roles of the escalation ladder",
    "sink": "the output sinks and the two stages' transactions",
    "step": "counted, incident",
    "initiative": "the program's initiatives (tens)",
    "channel": "the program's channels (a handful)",
    "kpi": "ctr, cvr, fallback_rate, consent_adherence",
    "feed": "engagement",
    "table": "the state tables of the code, and users (a count, not a label per user)",
}


def labels_table() -> str:
    """Markdown: every label and what bounds its values."""
    used = sorted({label for _, _, labels, _ in metric_reference() for label in labels})
    return "\n".join(["| label | values |", "|---|---|"] + [f"| `{label}` | {LABEL_BOUNDS[label]} |" for label in used])
