"""Sends what the pipeline decided: incidents, plans, dead letters.

A failed write is retried `retry_limit` times; then the record goes to the
dead-letter topic and a `monitoring_degraded` incident is raised, so nothing is
dropped without a trace. Both drivers use it with their own `send`.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any

from incidents.degraded import degraded_incident
from plans.document import PlanDocument
from plans.plan_sink import PlanWriter, plan_bytes
from monitor.events import DeadLetter, encode
from monitor.metrics import PipelineMetrics
from monitor.initiative_stage import Outputs
from monitor.settings import Settings

log = logging.getLogger(__name__)

Send = Callable[[str, bytes, bytes], Awaitable[Any] | Any]


class Emitter:
    def __init__(self, settings: Settings, metrics: PipelineMetrics, send: Send,
                 plan_writer: PlanWriter | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self._send = send
        self.plan_writer = plan_writer or PlanWriter(settings.plan_dir)

    async def emit(self, outputs: Outputs) -> None:
        for incident in outputs.incidents:
            self.metrics.incident_transitions.labels(kind=incident.kind, transition=incident.transition).inc()
            await self._deliver("incidents", incident.incident_id.encode(), encode(incident))
        for plan in outputs.plans:
            await self._write_plan(plan)

    async def dead_letter(self, letter: DeadLetter) -> None:
        self.metrics.dead_letters.labels(topic=letter.source_topic, stage=letter.stage).inc()
        await self._attempt("dead-letters", b"", encode(letter))

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
        error = await self._attempt(topic, key, value)
        if error is not None:
            await self._degraded(topic, value, error)

    async def _attempt(self, topic: str, key: bytes, value: bytes) -> Exception | None:
        error: Exception | None = None
        for attempt in range(self.settings.retry_limit + 1):
            try:
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
        await self.dead_letter(DeadLetter.of(value, source_topic=source_topic, reason=f"processing failed: {error}",
                                             error=repr(error), stage="process"))
        await self._raise_degraded("processing", error)

    async def _degraded(self, sink: str, value: bytes, error: Exception) -> None:
        """Dead-letter the unwritten record and raise a monitoring_degraded incident."""
        letter = DeadLetter.of(value, source_topic=self.settings.topic(sink),
                               reason=f"{sink} write failed after {self.settings.retry_limit} retries",
                               error=repr(error), stage="sink")
        await self.dead_letter(letter)
        await self._raise_degraded(sink, error)

    async def _raise_degraded(self, sink: str, error: Exception) -> None:
        event = degraded_incident(sink, at=datetime.now(timezone.utc), detail={"sink": sink, "error": repr(error)})
        self.metrics.incident_transitions.labels(kind=event.kind, transition=event.transition).inc()
        if sink != "incidents":
            await self._attempt("incidents", event.incident_id.encode(), encode(event))
