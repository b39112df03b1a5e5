"""Sends what the pipeline decided: incidents, plans, dead letters.

A failed write is retried `retry_limit` times; then the record goes to the
dead-letter topic and a `monitoring_degraded` incident is raised, so nothing is
dropped without a trace. Both drivers use it with their own `send`. The worker
also passes `alerts`, its Alertmanager push (`monitor.alertmanager`): the same
retries, dead letters and monitoring_degraded, under the sink name `alertmanager`.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from incidents.degraded import degraded_incident
from incidents.model import IncidentEvent
from monitor.alertmanager import LEASE_CHECKS, Known, alert_body, alerts_of, firing_alerts
from monitor.alertmanager import SINK as ALERTMANAGER
from monitor.events import DeadLetter, encode
from monitor.initiative_stage import Outputs
from monitor.metrics import PipelineMetrics, count_dead_letter
from monitor.settings import Settings
from plans.document import PlanDocument
from plans.plan_sink import PlanWriter, plan_bytes

log = logging.getLogger(__name__)

Send = Callable[[str, bytes, bytes], Awaitable[Any] | Any]
PushAlerts = Callable[[bytes], Awaitable[Any]]  # the body of POST /api/v2/alerts


class Emitter:
    def __init__(
        self,
        settings: Settings,
        metrics: PipelineMetrics,
        send: Send,
        plan_writer: PlanWriter | None = None,
        count_dead_letter: Callable[[DeadLetter], None] | None = None,
        alerts: PushAlerts | None = None,
        known: Callable[[str], Known | None] | None = None,
        count_transition: Callable[[IncidentEvent], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`count_dead_letter` counts a letter once sent, `count_transition` an incident transition; a driver
        whose sends commit later (a Kafka transaction) passes ones that count at the commit, so an aborted
        letter or transition, sent again on the replay, is counted once.

        `alerts` pushes alerts to Alertmanager; `known(incident_id)` is the incident's (opened, latest)
        transitions as committed before the step being emitted, so a transition ends the label set that fired.
        After a push failed its retries, pushes until the next check (`PMON_CHECK_INTERVAL_SECONDS`, by
        `clock`) are dead-lettered without a try: each try waits up to the timeout inside the stage's
        transaction, and the check re-sends every open alert anyway.
        """
        self.settings = settings
        self.metrics = metrics
        self._send = send
        self._count_dead_letter = count_dead_letter or self.count_dead_letter
        self._count_transition = count_transition or self.count_transition
        self._clock = clock
        self._alerts_down_until = -math.inf  # by `clock`: no push is tried before this
        self._alerts = alerts
        self._known = known or (lambda _incident: None)
        self.plan_writer = plan_writer or PlanWriter(settings.plan_dir)

    async def emit(self, outputs: Outputs) -> None:
        for incident in outputs.incidents:
            self._count_transition(incident)
            await self._deliver("incidents", incident.incident_id.encode(), encode(incident))
        await self._push(outputs.incidents)
        for plan in outputs.plans:
            await self._write_plan(plan)

    @property
    def pushes_alerts(self) -> bool:
        return self._alerts is not None

    async def refresh_alerts(self, open_incidents: list[Known]) -> None:
        """Re-send the open incidents as firing (the worker's timer): Alertmanager ends an alert not re-sent."""
        alerts = firing_alerts(open_incidents, now=datetime.now(timezone.utc), lease=self._lease())
        if self._alerts is not None and alerts:
            await self._deliver(ALERTMANAGER, b"", alert_body(alerts))

    async def _push(self, incidents: list[IncidentEvent]) -> None:
        """The step's transitions to Alertmanager, in one request (one wait at most, within the transaction)."""
        if self._alerts is None or not incidents:
            return
        now, lease = datetime.now(timezone.utc), self._lease()
        seen: dict[str, Known] = {}
        alerts = []
        for incident in incidents:
            known = seen.get(incident.incident_id) or self._known(incident.incident_id)
            alerts += alerts_of(incident, known=known, now=now, lease=lease)
            seen[incident.incident_id] = (known[0] if known is not None else incident, incident)
        await self._deliver(ALERTMANAGER, b"", alert_body(alerts))

    def _lease(self) -> timedelta:
        return timedelta(seconds=LEASE_CHECKS * self.settings.check_interval_seconds)

    async def dead_letter(self, letter: DeadLetter) -> None:
        """Send a dead letter; counted once it was sent. One that cannot be sent after its retries raises
        monitoring_degraded (the letter itself is logged without its bytes)."""
        error = await self._attempt("dead-letters", b"", encode(letter))
        if error is None:
            self._count_dead_letter(letter)
            return
        log.error(
            "dead letter of %s[%s]@%s (%s, %s bytes) not written: %r",
            letter.source_topic,
            letter.partition,
            letter.offset,
            letter.reason,
            letter.original_length,
            error,
        )
        await self._raise_degraded("dead-letters", error)

    def count_transition(self, incident: IncidentEvent) -> None:
        self.metrics.incident_transitions.labels(kind=incident.kind, transition=incident.transition).inc()

    def count_dead_letter(self, letter: DeadLetter) -> None:
        """`pmon_dead_letters_total` for a letter sent (or committed)."""
        count_dead_letter(self.metrics, letter)

    async def _write_plan(self, plan: PlanDocument) -> None:
        body = plan_bytes(plan)
        for attempt in range(self.settings.retry_limit + 1):
            try:
                self.plan_writer.write(plan)
                self.metrics.plan_writes.inc()
                break
            except OSError as exc:
                self.metrics.sink_retries.labels(sink="plan-file").inc()
                log.warning("plan write failed (attempt %d): %s", attempt + 1, exc)
                error = exc
        else:
            await self._degraded("plan-file", body, error)
        await self._deliver("plan-updates", plan.initiative.encode(), body)

    async def _deliver(self, topic: str, key: bytes, value: bytes) -> None:
        if topic == ALERTMANAGER and self._clock() < self._alerts_down_until:
            letter = DeadLetter.of(
                value,
                source_topic=self.settings.topic(ALERTMANAGER),
                reason="alertmanager unavailable: not tried again before the next check",
                error="the last push failed its retries",
                stage="sink",
            )
            await self.dead_letter(letter)
            return
        error = await self._attempt(topic, key, value)
        if error is not None:
            if topic == ALERTMANAGER:
                self._alerts_down_until = self._clock() + self.settings.check_interval_seconds
            await self._degraded(topic, value, error)

    async def _attempt(self, topic: str, key: bytes, value: bytes) -> Exception | None:
        error: Exception | None = None
        for attempt in range(self.settings.retry_limit + 1):
            try:
                if topic == ALERTMANAGER and self._alerts is not None:
                    result = self._alerts(value)
                else:
                    result = self._send(topic, key, value)
                if inspect.isawaitable(result):
                    await result
                return None
            except Exception as exc:  # noqa: BLE001 - any sink failure is retried, then dead-lettered
                error = exc
                self.metrics.sink_retries.labels(sink=topic).inc()
                log.warning("send to %s failed (attempt %d): %r", topic, attempt + 1, exc)
        return error

    async def processing_failed(self, value: bytes, source_topic: str, error: Exception) -> None:
        """A record the pipeline failed on (not bad input): dead-letter it and raise monitoring_degraded."""
        await self.dead_letter(
            DeadLetter.of(
                value,
                source_topic=source_topic,
                reason=f"processing failed: {error}",
                error=repr(error),
                stage="process",
            )
        )
        await self._raise_degraded("processing", error)

    async def _degraded(self, sink: str, value: bytes, error: Exception) -> None:
        """Dead-letter the unwritten record and raise a monitoring_degraded incident."""
        letter = DeadLetter.of(
            value,
            source_topic=self.settings.topic(sink),
            reason=f"{sink} write failed after {self.settings.retry_limit} retries",
            error=repr(error),
            stage="sink",
        )
        await self.dead_letter(letter)
        await self._raise_degraded(sink, error)

    async def _raise_degraded(self, sink: str, error: Exception) -> None:
        event = degraded_incident(sink, at=datetime.now(timezone.utc), detail={"sink": sink, "error": repr(error)})
        self._count_transition(event)
        if sink != "incidents":
            await self._attempt("incidents", event.incident_id.encode(), encode(event))
        if self._alerts is not None and sink != ALERTMANAGER:  # not through the sink that just failed
            body = alert_body(alerts_of(event, known=None, now=event.occurred_at, lease=self._lease()))
            await self._attempt(ALERTMANAGER, b"", body)
