"""Prometheus metrics of the pipeline. The registry is passed in; tests build their own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class PipelineMetrics:
    """Counters, and gauges of what a worker holds: rates and ratios are the Prometheus server's job.
    No user ids as labels."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.records = Counter("pmon_records", "Input records received, per topic.", ["topic"], registry=registry)
        self.dead_letters = Counter("pmon_dead_letters", "Records sent to the dead-letter topic, per source and stage.",
                                    ["topic", "stage"], registry=registry)
        self.incident_transitions = Counter("pmon_incident_transitions", "Incident transitions emitted.",
                                            ["kind", "transition"], registry=registry)
        self.sink_retries = Counter("pmon_sink_retries", "Failed sink writes that were retried.", ["sink"],
                                    registry=registry)
        self.plan_writes = Counter("pmon_plan_writes", "Plan documents written.", registry=registry)
        self.stage1_partitions = Gauge("pmon_stage1_partitions",
                                       "Source partitions (engagement and consent) this worker's stage 1 holds.",
                                       registry=registry)
        self.stage2_partitions = Gauge("pmon_stage2_partitions",
                                       "Partitions of the partials topic (initiatives) this worker's stage 2 holds.",
                                       registry=registry)
