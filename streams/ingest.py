"""Stage 1 on the worker: engagement and consent in batches from aiokafka, in Kafka transactions.

Why not a Faust agent: Faust's per-message stream costs more CPU per record
than the whole of stage 1 (the count-only Faust agent against the worker in
docs/benchmarks/throughput.md); stage 1 sees every record. So the worker
reads engagement and consent as a `streams.partitions.PartitionedService`
(group `<app id>-users`: partition p of both topics goes to the same worker,
so the consent join stays local), runs the pure `monitor.user_stage.UserStage`
on each partition's batches, and commits per partition and commit interval
(`PMON_COMMIT_INTERVAL_SECONDS`; at once after a batch that found a consent
violation) one transaction holding:

- the interval's partials, merged per initiative, to the internal topic that
  stage 2 reads (one message per initiative and interval keeps stage 2's
  input small), and the batches' dead letters,
- the per-user state changed in the interval, once, to its changelog
  (`<app id>-users-changelog`, compacted, partition p),
- the consumed offsets.

Consent verdicts do not depend on which topic arrived first: an exposure is
combined only once a fetch that began `PMON_CONSENT_SKEW_SECONDS` after the
exposure was produced found the consent partition at its end (or consent
with a later event time was read; see `UserStage.process`); until then it
and the records after it wait, and the engagement partition is paused while
too many wait.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition

from monitor import messages
from monitor.events import DeadLetter, encode
from monitor.messages import Partial
from monitor.metrics import PipelineMetrics, count_dead_letter
from monitor.settings import Settings
from monitor.user_stage import UserStage
from streams.partitions import FETCH_MAX_WAIT_MS, Owned, PartitionedService

log = logging.getLogger(__name__)

USERS_CHANGELOG = "{app_id}-users-changelog"
PARTIALS_TOPIC = "{app_id}-partials"
# A partial's record is stamped when it is sent: the topic's time retention then counts from then, not from its
# source records' timestamps, which a backfill may set to event times long past (their segments would be deleted
# before stage 2 reads them). The broker time of its earliest source record rides in this header (ms, decimal).
SOURCE_TIME_HEADER = "pmon-source-appended-ms"


@dataclass
class _Users:
    """Stage 1's work for one source partition number."""

    stage: UserStage
    deferred: list[Any] = field(default_factory=list)  # records waiting for consent to be read
    paused: bool = False
    partials: dict[str, Partial] = field(default_factory=dict)  # the interval's, merged, by initiative
    dead_letters: list[DeadLetter] = field(default_factory=list)  # the interval's, counted once committed
    appended: int | None = None  # ms: broker time of the interval's earliest engagement record (latency metric)


class UserIngest(PartitionedService[_Users, bytes]):
    """The stage-1 loop of one worker (see the module docstring)."""

    def __init__(self, settings: Settings, metrics: PipelineMetrics) -> None:
        self.engagement_topic = settings.topic("engagement")
        self.consent_topic = settings.topic("consent")
        self.partials_topic = PARTIALS_TOPIC.format(app_id=settings.app_id)
        self.dead_letter_topic = settings.topic("dead-letters")
        super().__init__(
            settings,
            metrics,
            group_id=f"{settings.app_id}-users",
            topics=[self.engagement_topic, self.consent_topic],
            changelog_topic=USERS_CHANGELOG.format(app_id=settings.app_id),
            owned_gauge=metrics.stage1_partitions,
            counted={self.engagement_topic: "engagement", self.consent_topic: "consent"},
        )

    def open(self, p: int, store: dict[str, bytes], producer: AIOKafkaProducer) -> _Users:
        return _Users(UserStage(self.settings, store, partitioned=self.settings.topic_partitions > 1))

    def due(self, owned: Owned[_Users]) -> bool:
        return bool(owned.work.deferred)

    def urgent(self, owned: Owned[_Users]) -> bool:
        # A consent violation is a critical incident in the making: stage 2 sees it at this commit.
        return any(partial.violations for partial in owned.work.partials.values())

    async def step(self, p: int, owned: Owned[_Users], records: dict[str, list[Any]]) -> None:
        work = owned.work
        fetched = records.get(self.engagement_topic, [])
        consent = records.get(self.consent_topic, [])
        # aiokafka's records have the fields of a SourceRecord: no copy per record.
        engagement = work.deferred + fetched if work.deferred else fetched
        if fetched:
            first = min(record.timestamp for record in fetched)
            work.appended = first if work.appended is None else min(work.appended, first)
        result = work.stage.process(
            p, engagement, consent, wall_now=time.time(), consent_read_until=await self._consent_caught_up(p)
        )
        work.deferred = result.deferred
        if result.consumed_until is not None:
            owned.offsets[TopicPartition(self.engagement_topic, p)] = result.consumed_until + 1
        if consent:
            owned.offsets[TopicPartition(self.consent_topic, p)] = consent[-1].offset + 1
        if result.partials or result.dead_letters or owned.offsets:
            await self.begin(owned)
        for partial in result.partials:
            known = work.partials.get(partial.initiative)
            if known is None:
                work.partials[partial.initiative] = partial
            else:
                known.merge(partial)
        for letter in result.dead_letters:
            await owned.producer.send(self.dead_letter_topic, key=letter.source_topic.encode(), value=encode(letter))
        work.dead_letters.extend(result.dead_letters)
        self._flow_control(p, work)

    async def flush(self, p: int, owned: Owned[_Users]) -> dict[str, bytes]:
        # With its earliest source record's time, so stage 2 measures latency from the source.
        appended = owned.work.appended
        headers = [] if appended is None else [(SOURCE_TIME_HEADER, str(appended).encode())]
        for initiative, partial in owned.work.partials.items():
            await owned.producer.send(
                self.partials_topic, key=initiative.encode(), value=messages.encode(partial), headers=headers
            )
        return owned.work.stage.pending_writes()

    def committed(self, owned: Owned[_Users], writes: dict[str, bytes]) -> None:
        owned.work.stage.commit(writes)
        # Counted once committed: an aborted transaction's letters are sent and counted again on the replay.
        for letter in owned.work.dead_letters:
            count_dead_letter(self.metrics, letter)
        owned.work.dead_letters = []
        owned.work.partials, owned.work.appended = {}, None

    def forget(self, p: int, owned: Owned[_Users]) -> None:
        owned.work.stage.reset()
        owned.work.dead_letters = []
        owned.work.deferred, owned.work.partials, owned.work.appended = [], {}, None

    async def _consent_caught_up(self, p: int) -> float:
        """When the last fetch that found partition p of the consent topic read to its end began."""
        tp = TopicPartition(self.consent_topic, p)
        consumer = self.consumer
        end = consumer.last_stable_offset(tp)
        if end is None or await consumer.position(tp) < end:
            return -math.inf  # not fetched yet, or behind: only the consent event times read count
        polled = consumer.last_poll_timestamp(tp)
        # The broker holds a fetch at most FETCH_MAX_WAIT_MS: it began no later than that before its answer.
        return (polled - FETCH_MAX_WAIT_MS) / 1000.0 if polled else -math.inf

    def _flow_control(self, p: int, work: _Users) -> None:
        tp = TopicPartition(self.engagement_topic, p)
        waiting = len(work.deferred)
        if not work.paused and waiting > 4 * self.settings.batch_size:
            self.consumer.pause(tp)
            work.paused = True
            log.info("engagement partition %d paused: %d records wait for consent to be read", p, waiting)
        elif work.paused and waiting <= self.settings.batch_size:
            self.consumer.resume(tp)
            work.paused = False
