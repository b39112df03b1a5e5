"""Stage 1, per user: a batch of one source partition in, one `Partial` per initiative out.

Engagement and consent are keyed and partitioned alike (by user), so a
user's consent ledger and experiment records live with the partition that
reads their events. Per batch the stage

1. applies the consent records (the ledger is kept by event time; a late
   revocation convicts remembered exposures, a late grant acquits them);
2. decodes, validates and pseudonymises each engagement record, in offset
   order; judges each exposure against the ledger at its event time, keeps
   the user's experiment record and adds the event to the batch's partial
   aggregates (`monitor.messages.Partial`) of its initiative and bucket;
3. stops before the first exposure the consent partition may not have been
   read past: that exposure and the records after it wait for the next
   batch, so a verdict does not depend on which topic happened to arrive
   first (see `process`).

State is a mapping of bytes (`users`): each user's `UserState` and each
partition's `Progress`, encoded compactly (JSON over tuples; a user's is
then compressed with a dictionary the partition learns from its own values,
`monitor.state_codec`). The stage
keeps the states it works on decoded (at most `user_cache_size`), and
`pending_writes()` encodes those changed since the last commit, once however
many batches changed them; the driver delivers what the batches caused, then
writes them (`commit`). Nothing reaches `users` before that; after a failed
delivery `reset()` returns the stage to what was written.
"""

from __future__ import annotations

import math
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from experiments.state import DeltaSum, UserRecord, fold_event
from governance.consent_ledger import ConsentPolicy, Exposure, UserConsent, Violation
from governance.variant_balance import first_in_hour
from incidents.series import build_key
from incidents.timeutil import iso_seconds
from monitor.events import DeadLetter, reason_kind
from monitor.exceptions import DecodeError
from monitor.messages import BucketPartial, Counters, Partial, SourceRange
from monitor.pseudonym import Pseudonymiser
from monitor.records import Consent, Engagement, decode_consent, decode_engagement
from monitor.settings import Settings
from monitor.state_codec import StateCodec

DAY_SECONDS = 86_400  # the pre-period history is kept per UTC day (day number = epoch seconds // this)
PROGRESS_KEY = "#progress/{}"  # a partition's progress, beside the users (pseudonyms start with "p")


class SourceRecord(NamedTuple):
    """One record as read from a topic partition (a Kafka client's record with these fields will do)."""

    offset: int
    value: bytes | None
    key: bytes | None = None
    timestamp: int | None = None  # ms since the epoch: when it was produced (Kafka's CreateTime)


@dataclass(slots=True)
class UserState:
    """One user's state: the consent ledger entry, the experiment records (experiment -> record), and the
    user's conversions per day of the last `cuped_pre_period_days` (day number -> [conversions, revenue]),
    from which an experiment's record takes the user's behaviour before their first exposure (CUPED)."""

    consent: UserConsent = field(default_factory=UserConsent)
    experiments: dict[str, UserRecord] = field(default_factory=dict)
    activity: dict[int, list[float]] = field(default_factory=dict)

    def record_conversion(self, day: int, revenue: float, keep_days: int) -> None:
        """Count a conversion on `day`, forgetting the days more than `keep_days` before it (bounded state)."""
        counts = self.activity.get(day)
        if counts is None:
            self.activity = {d: c for d, c in self.activity.items() if d >= day - keep_days}
            self.activity[day] = [1, revenue]
        else:
            counts[0] += 1
            counts[1] += revenue

    def before(self, day: int, days: int) -> tuple[int, float]:
        """Conversions and revenue on `day` so far and the `days` days before it."""
        conversions, revenue = 0, 0.0
        for d, (c, r) in self.activity.items():
            if day - days <= d <= day:
                conversions += int(c)
                revenue += r
        return conversions, revenue


@dataclass(slots=True)
class Progress:
    """What stage 1 sent for one source partition: the last offset covered, the event-time mark, and the
    initiatives it has seen there (each batch reports to all of them, so their ranges stay contiguous)."""

    last_offset: int | None = None
    mark: float | None = None
    initiatives: list[str] = field(default_factory=list)


@dataclass(slots=True)
class BatchResult:
    """What one batch produced, for the driver to deliver, and the state to write after it."""

    partials: list[Partial] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    consumed_until: int | None = None  # last engagement offset this batch covered
    deferred: list[Any] = field(default_factory=list)  # SourceRecords waiting for consent or `stop_at`
    stopped_at: float | None = None  # event time of the record that met `stop_at`


# -- compact encodings of the state (orjson over tuples: small and quick) ------------------
def encode_user(state: UserState) -> bytes:
    consent = state.consent
    experiments = {
        experiment: [r.variant, r.conversions, r.revenue, r.pre_conversions, r.pre_revenue]
        if r.pre_conversions or r.pre_revenue
        else [r.variant, r.conversions, r.revenue]
        for experiment, r in state.experiments.items()
    }
    # As they are: orjson writes -inf (no region time, no hour counted yet) as null, which decode_user reads
    # back as -inf; remembered exposures are rows already.
    value: list[Any] = [
        consent.changes,
        consent.region,
        consent.region_at,
        consent.remembered,
        consent.hours,
        experiments,
    ]
    if state.activity:
        value.append([[day, *counts] for day, counts in state.activity.items()])
    return orjson.dumps(value)


def decode_user(raw: bytes) -> UserState:
    changes, region, region_at, remembered, hours, experiments, *activity = orjson.loads(raw)
    consent = UserConsent(
        changes={purpose: [(at, granted) for at, granted in items] for purpose, items in changes.items()},
        region=region,
        region_at=-math.inf if region_at is None else region_at,
        remembered=list(map(tuple, remembered)),
        hours={
            experiment: (-math.inf if a is None else a, -math.inf if b is None else b)
            for experiment, (a, b) in hours.items()
        },
    )
    return UserState(
        consent,
        {experiment: UserRecord(*record) for experiment, record in experiments.items()},
        {day: [conversions, revenue] for day, conversions, revenue in activity[0]} if activity else {},
    )


def encode_progress(progress: Progress) -> bytes:
    return orjson.dumps([progress.last_offset, progress.mark, progress.initiatives])


def decode_progress(raw: bytes) -> Progress:
    last_offset, mark, initiatives = orjson.loads(raw)
    return Progress(last_offset, mark, list(initiatives))


class UserStage:
    """Stage 1 over one mapping of state; both drivers run it (see the module docstring)."""

    def __init__(self, settings: Settings, users: MutableMapping[str, bytes], *, partitioned: bool = False) -> None:
        """`partitioned`: the inputs are topics of several partitions (the worker's, when PMON_TOPIC_PARTITIONS
        > 1), where a record without a key may sit on another partition than its user's consent."""
        self.settings = settings
        self.users = users
        self._partitioned = partitioned
        self.consent_policy: ConsentPolicy = settings.consent_policy()
        self._pseudonym = Pseudonymiser(settings.pseudonym_key.get_secret_value().encode()).pseudonym
        self._bucket = settings.bucket_seconds
        self._max_future = settings.max_future_seconds
        self._topics = {name: settings.topic(name) for name in ("engagement", "consent")}
        self._consent_marks: dict[int, float] = {}  # greatest consent event time read, per partition
        self._cache_size = settings.user_cache_size
        self._consent_skew = settings.consent_skew_seconds
        self._pre_period_days = settings.cuped_pre_period_days
        self._live: dict[str, UserState] = {}  # decoded states, oldest first
        self._progress: dict[int, Progress] = {}
        self._dirty: set[str] = set()
        self._dirty_progress: set[int] = set()
        self._codec = StateCodec(users, settings.state_dictionary_samples)
        # Entries that are not users ("#..."), counted once here and then at each commit: a metrics scrape
        # must not walk a store of a million users.
        self._meta = sum(1 for key in users if key[0] == "#")

    def user_count(self) -> int:
        """Users held (the store also keeps one progress entry per source partition and the dictionaries)."""
        return len(self.users) - self._meta

    def user(self, pseudonym: str) -> UserState:
        """A user's state for a batch to change (it is written at the next commit)."""
        state = self._live.get(pseudonym)
        if state is None:
            raw = self.users.get(pseudonym)
            state = self._live[pseudonym] = UserState() if raw is None else decode_user(self._codec.unpack(raw))
        self._dirty.add(pseudonym)
        return state

    @property
    def dictionary(self) -> int:
        """The number of the dictionary user states are compressed with (0: none yet)."""
        return self._codec.dictionary

    def stored(self, pseudonym: str) -> UserState | None:
        """A user's state as committed to `users` (None: no state)."""
        raw = self.users.get(pseudonym)
        return None if raw is None else decode_user(self._codec.unpack(raw))

    def progress(self, partition: int) -> Progress:
        progress = self._progress.get(partition)
        if progress is None:
            raw = self.users.get(PROGRESS_KEY.format(partition))
            progress = self._progress[partition] = Progress() if raw is None else decode_progress(raw)
        return progress

    @property
    def uncommitted(self) -> int:
        """Users changed since the last commit."""
        return len(self._dirty)

    def pending_writes(self) -> dict[str, bytes]:
        """Every value changed since the last commit, encoded: what the driver writes (and changelogs).

        User states are compressed with the partition's dictionary (`monitor.state_codec`); the write
        that trains it also holds the dictionary and the store's values written before it.
        """
        writes = {pseudonym: encode_user(self._live[pseudonym]) for pseudonym in self._dirty}
        for partition in self._dirty_progress:
            writes[PROGRESS_KEY.format(partition)] = encode_progress(self._progress[partition])
        return self._codec.pack(writes)

    def commit(self, writes: dict[str, bytes]) -> None:
        """Write `pending_writes()`; call it once what the batches since the last commit caused was delivered."""
        users = self.users
        self._meta += sum(1 for key in writes if key[0] == "#" and key not in users)
        users.update(writes)
        self._dirty.clear()
        self._dirty_progress.clear()
        if len(self._live) > self._cache_size:  # all clean now: drop the oldest
            for pseudonym in list(self._live)[: len(self._live) - self._cache_size * 9 // 10]:
                del self._live[pseudonym]

    def reset(self) -> None:
        """Forget everything not committed (after a failed delivery): state is what `users` holds."""
        self._live.clear()
        self._progress.clear()
        self._dirty.clear()
        self._dirty_progress.clear()
        self._consent_marks.clear()

    def process(
        self,
        partition: int,
        engagement: Sequence[SourceRecord],
        consent: Sequence[SourceRecord] = (),
        *,
        wall_now: float,
        consent_read_until: float = math.inf,
        stop_at: float = math.inf,
    ) -> BatchResult:
        """One batch of one source partition (engagement and consent records of the same partition number).

        An exposure is judged once the consent produced before it was read: when its event time is at
        most the greatest consent event time read, or when `consent_read_until` — the wall time at which
        a fetch began that found the consent partition at its end (infinity where the input is one
        ordered stream) — is at least `consent_skew_seconds` after the exposure was produced (its
        record's timestamp; its event time when it has none). The skew is how much later than an
        exposure a consent record produced before it may reach its partition. `stop_at`: an event
        time at which the batch stops (the replay's next timer check); `BatchResult.stopped_at` says where.
        """
        batch = _Batch(self, partition, wall_now)
        for record in consent:
            batch.consent(record)
        consent_mark = self._consent_marks.get(partition, -math.inf)
        produced_by = consent_read_until - self._consent_skew  # produced before it: its consent was read
        covered = batch.progress.last_offset
        for n, record in enumerate(engagement):
            if covered is not None and record.offset <= covered:
                continue  # sent before: read again after a restart whose offset commit was lost
            if not batch.engagement(record, consent_mark, produced_by, stop_at):
                batch.result.deferred = list(engagement[n:])
                break
        return batch.finish()

    def _dead_letter(self, topic: str, record: SourceRecord, partition: int, exc: DecodeError) -> DeadLetter:
        return DeadLetter.of(
            record.value or b"",
            source_topic=self._topics[topic],
            reason=exc.reason,
            error=exc.detail[:2000],
            key=record.key,
            partition=partition,
            offset=record.offset,
        )

    def _check_key(self, key: bytes | None, user_id: str) -> None:
        """A record keyed by anything but its user id may sit on another partition than the user's consent, where
        its verdict would be wrong: it is refused. A missing key is taken where there is one partition (a file,
        a single-partition topic)."""
        if key is None:
            if not self._partitioned:
                return
            reason = "key is missing"
        else:
            try:
                if self._pseudonym(key.decode()) == user_id:
                    return
            except UnicodeDecodeError:
                pass
            reason = "key is not the user id"
        raise DecodeError(
            reason,
            f"{reason}: key engagement and consent records by their user_id in the producer (the consent join is "
            "local to a partition), then replay this letter",
        )

    def _admit_time(self, at: float, wall_now: float) -> None:
        # A time far ahead of the wall clock would move the watermark and make every on-time event late.
        ahead = at - wall_now
        if ahead > self._max_future:
            raise DecodeError(
                f"event_time {iso_seconds(at)} is {ahead:.0f} s ahead of the wall clock "
                f"(PMON_MAX_FUTURE_SECONDS={self._max_future})"
            )


class _Batch:
    """The working set of one batch: decoded user states, partials by initiative, progress."""

    __slots__ = (
        "stage",
        "partition",
        "wall_now",
        "result",
        "partials",
        "progress",
        "first",
        "last",
        "violations",
        "user",
        "deltas",
        "dead",
    )

    def __init__(self, stage: UserStage, partition: int, wall_now: float) -> None:
        self.stage = stage
        self.partition = partition
        self.wall_now = wall_now
        self.result = BatchResult()
        self.user = stage.user
        self.deltas: dict[tuple[str, float, str], DeltaSum] = {}
        self.partials: dict[str, dict[float, BucketPartial]] = {}
        self.violations: dict[str, list[Violation]] = {}
        self.dead: dict[str, int] = {}  # dead letters by reason kind, told to every initiative with the range
        self.progress = stage.progress(partition)
        self.first: int | None = None
        self.last: int | None = None

    def consent(self, record: SourceRecord) -> None:
        stage = self.stage
        try:
            event: Consent = decode_consent(_value(record), stage._pseudonym)
            stage._check_key(record.key, event.user_id)
            stage._admit_time(event.at, self.wall_now)
        except DecodeError as exc:
            self.dead_letter("consent", record, exc)
            return
        marks = stage._consent_marks
        if event.at > marks.get(self.partition, -math.inf):
            marks[self.partition] = event.at
        state = self.user(event.user_id)
        for violation in stage.consent_policy.record(
            state.consent,
            event.user_id,
            at=event.at,
            purpose=event.purpose,
            granted=event.status == "granted",
            region=event.region,
        ):
            self.violations.setdefault(violation.initiative, []).append(violation)

    def engagement(self, record: SourceRecord, consent_mark: float, produced_by: float, stop_at: float) -> bool:
        """Combine one record; False (and nothing done) when it must wait for the consent partition or is
        at or past `stop_at`."""
        stage = self.stage
        try:
            event: Engagement = decode_engagement(_value(record), stage._pseudonym)
            stage._check_key(record.key, event.user_id)
            at = event.at
            if at - self.wall_now > stage._max_future:
                stage._admit_time(at, self.wall_now)  # raises, with the reason
        except DecodeError as exc:
            self.dead_letter("engagement", record, exc)
            self.cover(record.offset)
            return True
        event_type = event.event_type
        exposure = event_type == "exposure"
        if at >= stop_at:
            self.result.stopped_at = at
            return False
        if (
            exposure
            and at > consent_mark
            and (at if record.timestamp is None else record.timestamp / 1000.0) > produced_by
        ):
            return False
        # `cover`, inline: once per record.
        if self.first is None:
            self.first = record.offset
        self.last = record.offset
        progress = self.progress
        mark = progress.mark
        if mark is None or at > mark:
            progress.mark = at
        start = at - at % stage._bucket
        initiative = event.initiative
        buckets = self.partials.get(initiative)
        if buckets is None:
            buckets = self.partials[initiative] = {}
        bucket = buckets.get(start)
        if bucket is None:
            bucket = buckets[start] = BucketPartial()
        series = build_key(initiative, event.profile, event.channel, event.variant)
        counters = bucket.series.get(series)
        if counters is None:
            counters = bucket.series[series] = Counters()
        cohort = bucket.cohorts.get(event.cohort)
        if cohort is None:
            cohort = bucket.cohorts[event.cohort] = Counters()
        if exposure:
            fallback, latency = event.fallback, event.decision_latency_ms
            counters.exposures += 1
            counters.fallbacks += fallback
            counters.latency_ms_sum += latency
            cohort.exposures += 1
            cohort.fallbacks += fallback
            cohort.latency_ms_sum += latency
        elif event_type == "click":
            counters.clicks += 1
            cohort.clicks += 1
        else:
            revenue = event.revenue
            counters.conversions += 1
            counters.revenue += revenue
            cohort.conversions += 1
            cohort.revenue += revenue
        conversion = event_type == "conversion"
        pre_period = stage._pre_period_days
        if exposure or event.experiment or (conversion and pre_period):
            state = self.user(event.user_id)
            if event.experiment:
                self.observe_experiment(state, event, start)
            if exposure:
                self.judge(state, event, series, bucket, start)
            if conversion and pre_period:
                # After the experiment's record took its pre-period: a conversion is not its own covariate.
                state.record_conversion(int(at // DAY_SECONDS), event.revenue, pre_period)
        return True

    def observe_experiment(self, state: UserState, event: Engagement, start: float) -> None:
        experiment = event.experiment
        assert experiment is not None  # the caller checks
        known = state.experiments.get(experiment)
        if known is not None and event.event_type != "conversion" and known.variant == event.variant:
            return  # a further exposure or click of a known user in their variant changes no total
        pre_conversions, pre_revenue = (
            state.before(int(event.at // DAY_SECONDS), self.stage._pre_period_days)
            if known is None and state.activity
            else (0, 0.0)
        )
        record, variant, sums, dimensions = fold_event(
            known,
            variant=event.variant,
            event_type=event.event_type,
            revenue=event.revenue,
            dimensions={"channel": event.channel, "profile": event.profile},
            pre_conversions=pre_conversions,
            pre_revenue=pre_revenue,
        )
        if any(sums):  # a new user, a conversion or a crossover: the totals change
            state.experiments[experiment] = record
            key = (event.initiative, start, experiment)
            acc = self.deltas.get(key)
            if acc is None:
                acc = self.deltas[key] = DeltaSum()
            acc.add(variant, sums, dimensions)

    def judge(self, state: UserState, event: Engagement, series: str, bucket: BucketPartial, start: float) -> None:
        consent, fallback = state.consent, event.fallback
        exposure = Exposure(event.event_id, event.at, event.initiative, series, fallback, event.region)
        consented, violation = self.stage.consent_policy.judge(consent, event.user_id, exposure)
        if violation is not None:
            self.violations.setdefault(event.initiative, []).append(violation)
        first = first_fallback = False
        experiment = event.experiment
        if experiment:
            first, first_fallback = first_in_hour(consent.hours, experiment, start, fallback=fallback)
        # Positional, in the signature's order: once per exposure.
        bucket.governance.add_exposure(
            event.channel, event.rule_id, experiment, event.variant, fallback, first, consented, first_fallback
        )

    def dead_letter(self, topic: str, record: SourceRecord, exc: DecodeError) -> None:
        self.result.dead_letters.append(self.stage._dead_letter(topic, record, self.partition, exc))
        kind = reason_kind(exc.reason)
        self.dead[kind] = self.dead.get(kind, 0) + 1

    def cover(self, offset: int) -> None:
        if self.first is None:
            self.first = offset
        self.last = offset

    def finish(self) -> BatchResult:
        result, progress = self.result, self.progress
        for (initiative, start, experiment), acc in self.deltas.items():
            self.partials[initiative][start].experiments[experiment] = acc.totals()
        source = None
        if self.last is not None:
            # Contiguous with what this partition sent before, whatever offsets Kafka skipped in between.
            assert self.first is not None  # set with self.last
            first = self.first if progress.last_offset is None else progress.last_offset + 1
            source = SourceRange(self.partition, first, self.last)
            progress.last_offset = self.last
            result.consumed_until = self.last
            for initiative in self.partials:
                if initiative not in progress.initiatives:
                    progress.initiatives.append(initiative)
        told = progress.initiatives if source is not None else []
        for initiative in dict.fromkeys([*told, *self.violations]):
            result.partials.append(
                Partial(
                    initiative=initiative,
                    partition=self.partition,
                    source=source if initiative in told else None,
                    mark=progress.mark,
                    buckets=self.partials.get(initiative, {}),
                    violations=self.violations.get(initiative, []),
                    dead_letters=dict(self.dead) if initiative in told else {},
                )
            )
        if source is not None:
            self.stage._dirty_progress.add(self.partition)
        return result


def _value(record: SourceRecord) -> bytes:
    if record.value is None:
        raise DecodeError("empty value (a tombstone): input records must carry an event", "the record's value is null")
    return record.value
