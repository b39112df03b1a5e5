"""monitor.emitter: a transition is counted when it is sent, or when the driver's transaction commits."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from prometheus_client import CollectorRegistry

from incidents.degraded import degraded_incident
from monitor.emitter import Emitter
from monitor.initiative_stage import Outputs
from monitor.metrics import PipelineMetrics
from monitor.settings import Settings

LABELS = {"kind": "monitoring_degraded", "transition": "opened"}


async def test_a_transition_is_counted_at_once_or_when_the_driver_counts_it(tmp_path: Path) -> None:
    event = degraded_incident("plan-file", at=datetime(2026, 11, 1, 10, tzinfo=timezone.utc))
    settings = Settings(plan_dir=tmp_path, topic_prefix="pmon")
    sent: list[str] = []

    registry = CollectorRegistry()
    await Emitter(settings, PipelineMetrics(registry), send=lambda topic, key, value: sent.append(topic)).emit(
        Outputs(incidents=[event]))
    assert sent == ["incidents"] and registry.get_sample_value("pmon_incident_transitions_total", LABELS) == 1.0

    registry, pending = CollectorRegistry(), []
    emitter = Emitter(settings, PipelineMetrics(registry), send=lambda topic, key, value: None,
                      count_transition=pending.append)
    await emitter.emit(Outputs(incidents=[event]))
    assert pending == [event], "handed to the driver, which counts it when its transaction commits"
    assert registry.get_sample_value("pmon_incident_transitions_total", LABELS) in (None, 0.0)
    emitter.count_transition(pending.pop())
    assert registry.get_sample_value("pmon_incident_transitions_total", LABELS) == 1.0


async def test_after_a_failed_push_alertmanager_is_not_waited_on_again_before_the_next_check(tmp_path: Path) -> None:
    event = degraded_incident("plan-file", at=datetime(2026, 11, 1, 10, tzinfo=timezone.utc))
    settings = Settings(plan_dir=tmp_path, topic_prefix="pmon", retry_limit=2, check_interval_seconds=60,
                        alertmanager_url="http://127.0.0.1:9")
    pushes: list[bytes] = []
    sent: list[str] = []
    now = [1000.0]

    async def unreachable(body: bytes) -> None:
        pushes.append(body)
        raise OSError("connection refused")

    registry = CollectorRegistry()
    emitter = Emitter(settings, PipelineMetrics(registry), send=lambda topic, key, value: sent.append(topic),
                      alerts=unreachable, clock=lambda: now[0])
    await emitter.emit(Outputs(incidents=[event]))
    assert len(pushes) == 3 and sent == ["incidents", "dead-letters", "incidents"], "tried, dead-lettered, degraded"
    sent.clear()
    now[0] += 59
    await emitter.emit(Outputs(incidents=[event]))
    assert len(pushes) == 3, "within the check interval: not tried"
    assert sent == ["incidents", "dead-letters"], "the alerts are kept in the dead-letter topic all the same"
    reason = {"topic": "pmon.alertmanager", "stage": "sink", "reason": "alertmanager unavailable"}
    assert registry.get_sample_value("pmon_dead_letters_total", reason) == 1.0
    now[0] += 2
    await emitter.emit(Outputs(incidents=[event]))
    assert len(pushes) == 6, "after the check interval: tried again"
