"""Stage 2, per initiative: partials in; windows, detectors, governance, readouts, incidents and the plan out.

Both drivers run it over the same state shapes (changelog-backed stores in the
worker, dicts embedded): `on_partial` applies one batch's partial aggregates
(`monitor.messages.Partial`) idempotently by source partition and offsets,
closes the buckets the watermark passed and judges them; `on_rule_change`
audits a rule change; `on_action` records a person's action on an incident;
`on_check` is the wall-clock timer's check. Every step's
writes go through one `StepTransaction`: the driver sends the step's
`Outputs`, then calls `commit`.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, replace
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from detectors.base import BucketDetector, BucketObservation, Verdict
from detectors.conversion_drop import ConversionDropDetector
from detectors.evaluation import evaluate_bucket, evidence_of
from detectors.freshness import check_freshness, objective_for_rate
from detectors.kpi_threshold import KpiThresholdDetector
from detectors.registry import DETECTORS
from detectors.variant_share import VariantShareDetector
from experiments.decision import InvestigationFlag, Recommendation, decision_change, recommend
from experiments.memo import ExperimentMemo, build_memo
from experiments.readout import ExperimentReadout, read_experiment
from experiments.state import ExperimentTotals
from governance.consent_ledger import Violation
from governance.rule_audit import RuleChange as AuditedChange
from governance.scan import GovernanceScan, GovernanceState, adherence_pct
from incidents.breach_policy import BreachPolicy, BreachState
from incidents.degraded import degraded_incident
from incidents.grouping import GroupState, fold_group
from incidents.model import IncidentAction, IncidentEvent, resolved_by_person
from incidents.playbooks import owner_at, playbook_steps
from incidents.roster import assignee_of
from incidents.series import detector_key, join_variant, split_variant
from incidents.timeutil import utc
from monitor.events import DeadLetter, RuleChangeEvent, decode
from monitor.exceptions import DecodeError, MonitorError
from monitor.messages import Action, Message, Partial, RuleChange
from monitor.settings import Settings
from monitor.topics import ENGAGEMENT, EVENT_TOPICS, RULE_CHANGES
from monitor.transaction import StepTransaction
from monitor.windows import BucketRow, InitiativeClock, WindowKeeper
from plans.document import (
    Approval,
    DataFeed,
    IncidentSummary,
    PlanDocument,
    new_plan,
    with_approval,
    with_checklist,
    with_experiment_memo,
    with_feed,
    with_incident,
    with_incident_action,
    with_metric,
    with_stage,
    with_thresholds,
)
from plans.exceptions import PlanError

log = logging.getLogger(__name__)


@dataclass
class InitiativeState:
    """The tables. Keys are strings; values are the picklable objects named here."""

    clocks: MutableMapping[str, InitiativeClock] = field(default_factory=dict)
    buckets: MutableMapping[str, BucketRow] = field(default_factory=dict)
    series: MutableMapping[str, SeriesState] = field(default_factory=dict)
    shares: MutableMapping[str, ShareState] = field(default_factory=dict)  # per variant group
    feeds: MutableMapping[str, FeedState] = field(default_factory=dict)  # per feed, for freshness
    groups: MutableMapping[str, GroupState] = field(default_factory=dict)
    incidents: MutableMapping[str, tuple[IncidentEvent, IncidentEvent]] = field(default_factory=dict)  # opened, latest
    plans: MutableMapping[str, PlanDocument] = field(default_factory=dict)
    governance: MutableMapping[str, GovernanceState] = field(default_factory=dict)  # per initiative
    experiments: MutableMapping[str, dict[str, ExperimentState]] = field(default_factory=dict)  # per initiative
    # Per initiative: minutes from each incident's opening to its first response (acknowledgement, else resolution).
    responses: MutableMapping[str, dict[str, float]] = field(default_factory=dict)


@dataclass(slots=True)
class SeriesState:
    """A series' detector and breach state, in ONE table value so they change together.

    `evaluated_until` is the end of the last bucket judged and `transitions`
    what it caused: a bucket judged again after a crash (its clock write was
    lost) is not learnt twice, and its transitions are folded again only if
    the group missed them.
    """

    detector: BucketDetector
    breach: BreachState
    evaluated_until: float = float("-inf")
    transitions: list[IncidentEvent] = field(default_factory=list)


@dataclass(slots=True)
class ShareState:
    """A variant group's (initiative x profile x channel) share detector, and each variant's breach state."""

    detector: VariantShareDetector
    breaches: dict[str, BreachState] = field(default_factory=dict)  # by variant series
    evaluated_until: float = float("-inf")
    transitions: list[IncidentEvent] = field(default_factory=list)


@dataclass(slots=True)
class FeedState:
    """A feed's (engagement x initiative) freshness: its recent rate, its breach state, its last check."""

    breach: BreachState = field(default_factory=BreachState)
    events_per_hour: float = 0.0  # of the last closed bucket with events: a quiet feed may be silent longer
    checked_until: float = float("-inf")


@dataclass(slots=True)
class ExperimentState:
    """One experiment's merged per-variant totals and its last readout, recommendation and memo.

    The readout is passed back to the next one: the sequential test's always-valid p-value is the running
    minimum over looks, its lift interval the running intersection.
    """

    totals: ExperimentTotals = field(default_factory=ExperimentTotals)
    started: float = float("inf")  # start of the first bucket with a user of it
    readout: ExperimentReadout | None = None
    recommendation: Recommendation | None = None
    memo: ExperimentMemo | None = None
    evaluated_until: float = float("-inf")
    history: tuple[LiftLook, ...] = ()  # the last LIFT_HISTORY looks, oldest first
    decision: str | None = None  # the incident id of the standing decision (the last experiment_decision)

    def __setstate__(self, state: tuple[None, dict[str, Any]]) -> None:
        # Pickle's state of a slotted object is (None, {slot: value}). A worker's snapshot pickled before a field
        # was added lacks it: the field's default fills in, so an upgrade keeps the state instead of failing.
        values = state[1]
        for spec in fields(ExperimentState):
            if spec.name in values:
                setattr(self, spec.name, values[spec.name])
            else:  # a field without a default has a factory (which mypy cannot tell)
                default = spec.default_factory() if spec.default is MISSING else spec.default  # type: ignore[operator]
                setattr(self, spec.name, default)


class LiftLook(NamedTuple):
    """One readout's primary lift and its interval, at the end of the bucket it read (for the dashboard)."""

    at: float
    lift: float | None
    low: float | None
    high: float | None


# Looks kept per experiment: an hourly look over the longest report window (30 days); oldest dropped.
LIFT_HISTORY = 720


@dataclass(frozen=True, slots=True)
class Judged:
    """One verdict the stage reached, and the breach-policy transitions it caused, for an observer.

    `detector` is a series detector's name, `variant_share` or `freshness`; `series` the series judged (a feed's
    for freshness); [start, end) the bucket, or for freshness the check interval that ended at the check. The
    transitions are the series' own, before they are folded into one incident per (initiative, kind).
    """

    detector: str
    initiative: str
    series: str
    start: float
    end: float
    verdict: Verdict
    transitions: tuple[IncidentEvent, ...]


Observer = Callable[[Judged], None]


FEED = ENGAGEMENT  # the feed checked for freshness, per initiative; consent and rule changes are sparse by nature


@dataclass
class Outputs:
    """What one step produced, for the driver to send."""

    incidents: list[IncidentEvent] = field(default_factory=list)
    plans: list[PlanDocument] = field(default_factory=list)

    def extend(self, other: Outputs) -> None:
        self.incidents.extend(other.incidents)
        self.plans.extend(other.plans)


def _admitted(
    settings: Settings, topic: str, raw: bytes | None, what: str, parse: Callable[[bytes], Any], **where: Any
) -> Any:
    """`parse(raw)`, or the dead letter of a record it refuses (DecodeError) or of a tombstone."""
    try:
        if raw is None:
            raise DecodeError(f"empty value (a tombstone): input records must carry {what}")
        return parse(raw)
    except DecodeError as exc:
        return DeadLetter.of(
            raw or b"", source_topic=settings.topic(topic), reason=exc.reason, error=exc.detail[:2000], **where
        )


def admit_rule_change(
    settings: Settings,
    raw: bytes | None,
    *,
    wall_now: float,
    key: bytes | None = None,
    partition: int | None = None,
    offset: int | None = None,
) -> RuleChangeEvent | DeadLetter:
    """Decode and validate one rule-change record; bad input becomes a dead letter."""

    def parse(value: bytes) -> RuleChangeEvent:
        event = decode(RuleChangeEvent, value)
        ahead = event.event_time.timestamp() - wall_now
        if ahead > settings.max_future_seconds:
            raise DecodeError(
                f"event_time {event.event_time.isoformat()} is {ahead:.0f} s ahead of the wall clock "
                f"(PMON_MAX_FUTURE_SECONDS={settings.max_future_seconds})"
            )
        return event

    return _admitted(settings, RULE_CHANGES, raw, "an event", parse, key=key, partition=partition, offset=offset)


def admit_incident_action(
    settings: Settings,
    raw: bytes | None,
    *,
    key: bytes | None = None,
    partition: int | None = None,
    offset: int | None = None,
) -> IncidentAction | DeadLetter:
    """Decode and validate one record of the incident-actions topic; bad input becomes a dead letter."""
    return _admitted(
        settings,
        "incident-actions",
        raw,
        "an action",
        lambda value: decode(IncidentAction, value),
        key=key,
        partition=partition,
        offset=offset,
    )


def _same_revision(stored: PlanDocument | None, candidate: PlanDocument) -> bool:
    """`candidate` holds what `stored` holds: only when each was written, and the watermark then (which moves
    with how the records were batched), may differ."""
    return (
        stored is not None
        and candidate.model_copy(update={"updated_at": stored.updated_at, "watermark": stored.watermark}) == stored
    )


class InitiativeStage:
    def __init__(
        self,
        settings: Settings,
        state: InitiativeState,
        *,
        source_partitions: int = 1,
        plan_history: Callable[[str], list[PlanDocument]] | None = None,
        settings_actor: str = "pmon worker settings",
        wall_clock: Callable[[], float] = time.time,
        observer: Observer | None = None,
        shadow_detectors: Mapping[str, Callable[[], BucketDetector]] | None = None,
    ) -> None:
        """`source_partitions`: partitions of the engagement topic feeding this stage (the watermark's inputs).

        `plan_history(initiative)` returns the revisions written, oldest first, so a new run
        continues them (see `_resume_plan`) and logs what changed since (thresholds, cadence), by `settings_actor`
        (who set the settings: the worker's environment, a command's options). `wall_clock` stamps each
        revision's `updated_at` (when it was written; its `watermark` is the event time it reflects).

        `observer`, when given, is called with every verdict judged (`Judged`; a replay skips the timer checks
        that could change nothing, so those are not reported). `shadow_detectors` (name ->
        factory) run on every series beside the settings' detectors, through the same breach policy, but are
        reported only to the observer and raise no incident: how `bench/detection.py` measures candidates on
        the buckets the product closes, without changing what it emits.
        """
        self.settings = settings
        self._wall_clock = wall_clock
        self.state = state
        # Written in this order at commit: rows, then the states judged from them, and the clocks last — a
        # replay from an older clock re-closes buckets, which the rows' offsets and the states'
        # `evaluated_until` make harmless. (The worker commits a partition's writes in one Kafka
        # transaction: `streams.initiatives`.)
        self.step = StepTransaction()
        buckets = self.step.table(state.buckets)
        self._series = self.step.table(state.series)
        self._shares = self.step.table(state.shares)
        self._feeds = self.step.table(state.feeds)
        self._governance = self.step.table(state.governance)
        self._experiments = self.step.table(state.experiments)
        self._groups = self.step.table(state.groups)
        self._incidents = self.step.table(state.incidents)
        self._plans = self.step.table(state.plans)
        self._responses = self.step.table(state.responses)
        clocks = self.step.table(state.clocks)
        self.windows = WindowKeeper(
            clocks,
            buckets,
            bucket_seconds=settings.bucket_seconds,
            allowed_lateness_seconds=settings.allowed_lateness_seconds,
            retention_days=settings.retention_days,
            source_partitions=source_partitions,
            idle_seconds=settings.idle_close_seconds,
        )
        self.breach_policy = BreachPolicy(settings.breach_config())
        # Feeds are checked every `check_interval_seconds`, not every bucket: the same spans in time.
        per_bucket = max(1, round(settings.bucket_seconds / settings.check_interval_seconds))
        self.feed_policy = BreachPolicy(
            settings.breach_config().model_copy(update={"escalate_every": settings.escalate_every * per_bucket})
        )
        self._detector_config = settings.detector_config()
        # The user's alert threshold, when set, runs on every series, whatever else is chosen.
        threshold = (KpiThresholdDetector.kind,) if settings.alert_threshold is not None else ()
        self._detector_names = tuple(dict.fromkeys((*settings.series_detectors, *threshold)))
        self._observer = observer
        self._shadow = dict(shadow_detectors or {})
        both = sorted(set(self._shadow) & set(self._detector_names))
        if both:
            raise MonitorError(
                f"shadow detectors {both} already run as series detectors (PMON_SERIES_DETECTORS): "
                "their state would collide; measure them as one or the other"
            )
        self._judged_names = (*self._detector_names, *self._shadow)
        self._thresholds = settings.monitored_thresholds()
        self._thresholds_checked: set[str] = set()
        self._plan_history = plan_history
        # Per initiative, while a run re-derives revisions an earlier run wrote: those still ahead, by number, and
        # the last number written. A run over the same input writes nothing new; one that differs continues after.
        self._history_ahead: dict[str, dict[int, PlanDocument]] = {}
        self._history_latest: dict[str, PlanDocument] = {}
        self._settings_actor = settings_actor
        self.governance = GovernanceScan(settings.governance_config(), self.breach_policy)

    def commit(self) -> None:
        """Write the state of the steps since the last commit; call it after their outputs were sent."""
        self.step.commit()

    def initiatives(self) -> list[str]:
        """The initiatives this stage keeps state for."""
        return self.windows.clocks.keys()

    def checks_quiet_until(self) -> float:
        """Until when a timer check (`on_check`) of any initiative would change nothing, as state stands.

        A check closes idle buckets only after `idle_close_seconds` without events and judges a feed stale
        only after `freshness_objective_seconds` or more; while every feed is healthy (its breach state `ok`)
        neither can happen before the earliest last event plus the shorter of the two. Events applied
        meanwhile only move it later, so a replay may skip the checks before it: they would be no-ops.
        """
        silence = min(self.settings.idle_close_seconds, self.settings.freshness_objective_seconds)
        until = float("inf")
        for initiative in self.initiatives():
            feed = self._feeds.get(f"{initiative}|{FEED}")
            if feed is not None and feed.breach.status != "ok":
                return float("-inf")
            clock = self.windows.clock(initiative)
            assert clock is not None  # the initiatives are those with a clock
            until = min(until, clock.last_event_wall + silence)
        return until

    def on_message(self, message: Message, *, wall_now: float) -> Outputs:
        """One message of the internal topic, whatever its type."""
        if isinstance(message, Partial):
            return self.on_partial(message, wall_now=wall_now)
        if isinstance(message, RuleChange):
            return self.on_rule_change(message.event)
        if isinstance(message, Action):
            return self.on_action(message.action)
        return self.on_check(message.initiative, wall_now=wall_now)

    def on_partial(self, partial: Partial, *, wall_now: float) -> Outputs:
        """Apply one batch's partial; judge every bucket it closes. Violations open their incident at once."""
        initiative = partial.initiative
        outputs = Outputs()
        if partial.violations:
            outputs.extend(self.on_violations(initiative, partial.violations))
        if partial.mark is not None:
            outputs.extend(self._check_thresholds(initiative, utc(partial.mark)))
        applied = self.windows.apply(partial, wall_now=wall_now)
        if applied.duplicate:
            return outputs
        if applied.gap:
            source = partial.source
            assert source is not None  # a gap is measured against the partial's source range
            log.error(
                "source offsets lost before %s: partition %d, %d offsets before %d",
                initiative,
                source.partition,
                applied.gap,
                source.first,
            )
            outputs.incidents.append(
                degraded_incident(
                    f"source-gap:{self.settings.topic('engagement')}[{source.partition}]",
                    at=utc(partial.mark if partial.mark is not None else wall_now),
                    initiative=initiative,
                    observed=applied.gap,
                    detail={
                        "partition": source.partition,
                        "missing_offsets": applied.gap,
                        "before_offset": source.first,
                    },
                )
            )
        for experiment, delta in applied.late_experiments.items():
            self._count_late_in_experiment(initiative, experiment, delta)  # a late conversion is a conversion
        for row in applied.closed:
            outputs.extend(self._on_bucket_closed(row))
        return outputs

    def on_check(self, initiative: str, *, wall_now: float) -> Outputs:
        """The timer's check of one initiative, even when no event arrives: idle buckets, then feed freshness."""
        outputs = Outputs()
        for row in self.windows.close_idle(
            initiative, wall_now=wall_now, idle_seconds=self.settings.idle_close_seconds
        ):
            outputs.extend(self._on_bucket_closed(row))
        outputs.extend(self._check_freshness(initiative, wall_now))
        return outputs

    def _check_freshness(self, initiative: str, now: float) -> Outputs:
        """Is the initiative's engagement feed stale? Age = wall time since it last delivered an event.

        The objective is `freshness_objective_seconds`, or longer for a quiet
        feed: the silence its last hour's rate shows by chance once in 10^4
        (`objective_for_rate`). Two stale checks in a row open `feed_stale`;
        it escalates after `escalate_every` buckets' worth of stale checks.
        """
        clock = self.windows.clock(initiative)
        key = f"{initiative}|{FEED}"
        feed = self._feeds.get(key) or FeedState()
        if clock is None or now <= feed.checked_until:
            return Outputs()
        objective = timedelta(seconds=self.settings.freshness_objective_seconds)
        if feed.events_per_hour > 0:
            objective = max(objective, objective_for_rate(feed.events_per_hour))
        name = f"{FEED}|{initiative}"
        verdict = check_freshness({name: utc(clock.last_event_wall)}, utc(now), objective)[name]
        interval = self.settings.check_interval_seconds
        evidence = evidence_of(verdict, utc(now - interval), utc(now))
        breach, transitions = self.feed_policy.observe(
            feed.breach,
            initiative=initiative,
            kind="feed_stale",
            series=f"{initiative}|{FEED}",
            breached=verdict.breached,
            evidence=evidence,
        )
        self._feeds[key] = replace(feed, breach=breach, checked_until=now)
        if self._observer is not None:
            self._observer(Judged("freshness", initiative, key, now - interval, now, verdict, tuple(transitions)))
        outputs = self._fold(initiative, {"feed_stale": transitions} if transitions else {}, until=now)
        outputs.extend(
            self._note_feed_in_plan(
                initiative, clock, "stale" if verdict.breached else "fresh", objective.total_seconds(), now
            )
        )
        return outputs

    def _note_feed_in_plan(
        self, initiative: str, clock: InitiativeClock, status: str, objective: float, now: float
    ) -> Outputs:
        """The plan's engagement feed with its status and last event, when its status changed (not at every
        check: the plan is rewritten for what changed, not for time passing)."""
        plan = self._plans.get(initiative)
        topic = self.settings.topic(FEED)
        if plan is None or all(f.name != topic for f in plan.feeds) or plan.feed(topic).status == status:
            return Outputs()
        feed = DataFeed(
            name=topic,
            status=status,
            freshness_objective_seconds=objective,
            last_event_time=utc(max(clock.partition_marks.values())) if clock.partition_marks else None,
            last_seen_at=utc(clock.last_event_wall) if clock.last_event_wall else None,
        )
        return self._publish(initiative, with_feed(plan, feed, at=utc(now)))

    def _note_feed_rate(self, row: BucketRow) -> None:
        events = row.events()
        if events:
            key = f"{row.initiative}|{FEED}"
            feed = self._feeds.get(key) or FeedState()
            self._feeds[key] = replace(feed, events_per_hour=events * 3600 / (row.end - row.start))

    def _count_late_in_experiment(self, initiative: str, experiment: str, delta: ExperimentTotals) -> None:
        experiments = dict(self._experiments.get(initiative) or {})
        state = experiments.get(experiment) or ExperimentState()
        experiments[experiment] = replace(state, totals=state.totals + delta)
        self._experiments[initiative] = experiments

    def on_violations(self, initiative: str, violations: Sequence[Violation]) -> Outputs:
        """Consent violations of one initiative: the incident opens (or is updated) at once, for the privacy lead."""
        state = self._governance.get(initiative) or GovernanceState()
        events = self.governance.on_violations(state, violations, initiative=initiative)
        self._governance[initiative] = state
        at = max((v.at for v in violations), default=0.0)
        outputs = self._check_thresholds(initiative, utc(at))
        outputs.extend(self._fold(initiative, {}, until=float("-inf"), direct=events))
        return outputs

    def on_rule_change(self, event: RuleChangeEvent) -> Outputs:
        """Log a rule change for the audit and probable causes; an unapproved change or one to a rule serving a
        live experiment opens its incident at once."""
        initiative = event.initiative
        outputs = self._check_thresholds(initiative, event.event_time)
        state = self._governance.get(initiative) or GovernanceState()
        change = AuditedChange(
            event.event_id,
            event.event_time.timestamp(),
            event.rule_id,
            event.action,
            event.author,
            event.approver,
            event.ticket,
            event.experiment,
        )
        events = self.governance.on_rule_change(state, change, initiative=initiative)
        self._governance[initiative] = state
        outputs.extend(self._fold(initiative, {}, until=float("-inf"), direct=events, governance_changed=True))
        return outputs

    def _check_thresholds(self, initiative: str, at: datetime) -> Outputs:
        """Create the plan on first sight; log a change of thresholds once per process."""
        if initiative in self._thresholds_checked:
            return Outputs()
        self._thresholds_checked.add(initiative)
        plan = self._plans.get(initiative)
        if plan is None and self._plan_history is not None:
            plan = self._resume_plan(initiative, at)
        if plan is None:
            created = new_plan(
                initiative, thresholds=self._thresholds, at=at, feeds=[self.settings.topic(t) for t in EVENT_TOPICS]
            )
            ahead = self._history_ahead.get(initiative)
            if not ahead:
                created = self._stamped(created)
                self._plans[initiative] = created
                return Outputs(plans=[created])
            if _same_revision(ahead.pop(created.revision, None), self._stamped(created)):
                self._plans[initiative] = created  # as the stored history began: re-derive it
                return Outputs()
            ahead.clear()  # other settings than the stored history's: continue its latest revision
            plan = self._history_latest[initiative]
        self._plans[initiative] = plan
        return self._publish(
            initiative,
            with_thresholds(
                plan,
                self._thresholds,
                at=at,
                actor=self._settings_actor,
                reason="thresholds or cadence differ from the previous run's",
            ),
        )

    def _resume_plan(self, initiative: str, at: datetime) -> PlanDocument | None:
        """The stored revision this run continues from, so a run over input an earlier run saw re-derives that
        run's revisions instead of appending copies of them: the last one written before event time `at`; None
        when the history starts at `at` or later (the run re-derives it from its first revision, see
        `_check_thresholds`)."""
        assert self._plan_history is not None  # the caller checks
        try:
            history = self._plan_history(initiative)
        except PlanError as exc:
            log.warning("starting a new plan for %s: the stored one is unusable: %s", initiative, exc)
            return None
        if not history:
            return None
        before = [plan for plan in history if (plan.watermark or plan.updated_at) < at]
        start = before[-1] if before else None
        self._history_ahead[initiative] = {
            p.revision: p for p in history if start is None or p.revision > start.revision
        }
        self._history_latest[initiative] = history[-1]
        return start

    def _publish(self, initiative: str, plan: PlanDocument) -> Outputs:
        """Keep `plan` as the initiative's and write it, if it changed: ONE revision after the last one written,
        however many changes the step made (each `with_*` counts one)."""
        previous = self._plans.get(initiative)
        if previous is not None:
            # Unchanged keeps its revision (`with_*` returns the plan itself); compared by number, not identity,
            # because the worker's tables hand out a fresh copy at every read.
            if plan.revision == previous.revision:
                return Outputs()
            number = previous.revision + 1
            ahead = self._history_ahead.get(initiative)
            if ahead:
                stored, candidate = ahead.pop(number, None), self._stamped(plan.model_copy(update={"revision": number}))
                if _same_revision(stored, candidate):
                    self._plans[initiative] = stored
                    return Outputs()  # written by an earlier run of the same input
                ahead.clear()  # this run differs from there on: number after all that is stored
                number = max(number, self._history_latest[initiative].revision + 1)
            plan = plan.model_copy(update={"revision": number})
        plan = self._stamped(plan)
        self._plans[initiative] = plan
        return Outputs(plans=[plan])

    def _stamped(self, plan: PlanDocument) -> PlanDocument:
        """`plan` stamped with when it is written (never before the revision it follows) and the initiative's
        event-time watermark it reflects."""
        clock = self.windows.clocks.get(plan.initiative)
        watermark = utc(clock.watermark) if clock is not None and clock.watermark is not None else plan.watermark
        return plan.model_copy(
            update={"updated_at": max(utc(self._wall_clock()), plan.updated_at), "watermark": watermark}
        )

    def _new_detector(self, name: str) -> BucketDetector:
        if name in self._shadow:
            return self._shadow[name]()
        # Only through the registry, so the class that runs is the one the contract suite checks; the
        # threshold tests are the ones tuned by PMON_* settings.
        if name in (KpiThresholdDetector.kind, ConversionDropDetector.kind):
            return DETECTORS[name](**self._detector_config.model_dump())
        return DETECTORS[name]()

    def _on_bucket_closed(self, row: BucketRow) -> Outputs:
        """Score every series of a closed bucket (zeros for silent ones) and its variant groups;
        fold their transitions into one incident per kind."""
        by_kind: dict[str, list[IncidentEvent]] = {}
        observations = list(row.observations(self.windows.roster(row.initiative)))
        for observation in observations:
            for name in self._judged_names:
                key = detector_key(observation.series, name)
                series = self._series.get(key) or SeriesState(self._new_detector(name), BreachState())
                if series.evaluated_until < row.end:
                    evaluation = evaluate_bucket(
                        series.detector, series.breach, self.breach_policy, observation, initiative=row.initiative
                    )
                    series = SeriesState(series.detector, evaluation.breach_state, row.end, evaluation.incidents)
                    self._series[key] = series
                    if self._observer is not None:
                        self._observer(
                            Judged(
                                name,
                                row.initiative,
                                observation.series,
                                row.start,
                                row.end,
                                evaluation.verdict,
                                tuple(evaluation.incidents),
                            )
                        )
                if name in self._shadow:
                    continue  # measured, not monitored: nothing is folded into the initiative's incidents
                for transition in series.transitions if series.evaluated_until == row.end else ():
                    by_kind.setdefault(transition.kind, []).append(transition)
        for transition in self._judge_variant_shares(row, observations):
            by_kind.setdefault(transition.kind, []).append(transition)
        governance = self._governance.get(row.initiative) or GovernanceState()
        direct = []
        for transition in self.governance.on_bucket(
            governance, row.governance, initiative=row.initiative, start=row.start, end=row.end
        ):
            if transition.kind == "consent_violation":
                direct.append(transition)  # already one incident per initiative
            else:
                by_kind.setdefault(transition.kind, []).append(transition)
        self._governance[row.initiative] = governance
        self._note_feed_rate(row)
        self._drop_expired(row.initiative)
        outputs = self._fold(row.initiative, by_kind, until=row.end, direct=direct, governance_changed=True)
        outputs.extend(self._read_experiments(row))
        outputs.extend(self._note_stages(row))
        return outputs

    def _note_stages(self, row: BucketRow) -> Outputs:
        """The plan's stages as far as the pipeline got: a closed bucket was ingested, windowed, scored and
        scanned; experiments once one has a readout; reporting once there is something to report."""
        plan = self._plans.get(row.initiative)
        if plan is None:
            return Outputs()
        at = utc(row.end)
        reached = ["ingest", "windowing", "detection", "governance", "reporting"]
        if any(state.readout is not None for state in (self._experiments.get(row.initiative) or {}).values()):
            reached.append("experiments")
        for name in reached:
            if any(stage.name == name for stage in plan.stages):
                plan = with_stage(plan, name, "active", at=at)
        outputs = self._publish(row.initiative, plan)
        feed = self._feeds.get(f"{row.initiative}|{FEED}")
        clock = self.windows.clock(row.initiative)
        if row.events() and clock is not None and (feed is None or feed.breach.status == "ok"):
            # A bucket closed with events and no freshness breach: the feed is known to be delivering.
            outputs.extend(
                self._note_feed_in_plan(
                    row.initiative, clock, "fresh", self.settings.freshness_objective_seconds, row.end
                )
            )
        return outputs

    def _read_experiments(self, row: BucketRow) -> Outputs:
        """Read out every experiment of the initiative; a changed recommendation is an `experiment_decision`
        event, and its memo goes into the plan."""
        experiments = dict(self._experiments.get(row.initiative) or {})
        for experiment in row.experiments:
            experiments.setdefault(experiment, ExperimentState())
        outputs = Outputs()
        plan = self._plans.get(row.initiative)
        for experiment, state in sorted(experiments.items()):
            if state.evaluated_until >= row.end:
                continue  # read before a crash: its bucket's events are in the totals already
            added = row.experiments.get(experiment)
            totals = state.totals if added is None else state.totals + added
            state = replace(state, totals=totals, started=min(state.started, row.start), evaluated_until=row.end)
            experiments[experiment] = state
            spec = self.settings.experiment_spec(experiment, row.initiative, variants_seen=totals.variants)
            if spec is None:
                continue  # no plan to read it against: totals kept, no readout
            readout = read_experiment(spec, state.totals, previous=state.readout)
            recommendation = recommend(spec, readout, self._investigation_flags(row.initiative, experiment))
            standing = self._incidents.get(state.decision) if state.decision is not None else None
            change = decision_change(
                state.recommendation,
                recommendation,
                readout,
                window_start=utc(state.started),
                window_end=utc(row.end),
                previous_event=standing[1] if standing is not None else None,
            )
            memo = build_memo(spec, readout, recommendation)
            look = LiftLook(
                row.end, memo.summary.primary_lift, memo.summary.primary_lift_low, memo.summary.primary_lift_high
            )
            experiments[experiment] = replace(
                state,
                readout=readout,
                recommendation=recommendation,
                memo=memo,
                history=(*state.history, look)[-LIFT_HISTORY:],
                decision=state.decision if change.event is None else change.event.incident_id,
            )
            if change.superseded is not None and standing is not None:
                self._incidents[change.superseded.incident_id] = (standing[0], change.superseded)
                outputs.incidents.append(change.superseded)
            if change.event is not None:
                event = change.event
                self._incidents[event.incident_id] = (event, event)
                outputs.incidents.append(event)
                if plan is not None:
                    plan = with_experiment_memo(plan, memo.summary, at=utc(row.end))
                    if memo.summary.primary_lift is not None:
                        plan = with_metric(
                            plan,
                            "lift_pct",
                            at=utc(row.end),
                            actor="pmon experiments",
                            reason=f"{experiment}: {memo.summary.primary_metric} lift of "
                            f"{memo.summary.variant or 'the treatment'} at the readout",
                            current=round(100.0 * memo.summary.primary_lift, 2),
                        )
        if experiments:
            self._experiments[row.initiative] = experiments
        if plan is not None:
            outputs.extend(self._publish(row.initiative, plan))
        return outputs

    def _investigation_flags(self, initiative: str, experiment: str) -> list[InvestigationFlag]:
        """What the monitor knows that makes a readout untrustworthy: suppressed variants, integrity breaches
        from rule changes, variants unbalanced in consent or fallbacks."""
        flags = []
        suppressed = self._groups.get(f"{initiative}|variant_suppression")
        if suppressed is not None and suppressed.incident is not None:
            flags.append(
                InvestigationFlag(
                    kind="variant_suppression",
                    incident_id=suppressed.incident,
                    summary=f"variant suppressed on {', '.join(suppressed.members)}",
                )
            )
        governance = self._governance.get(initiative) or GovernanceState()
        for key, finding in sorted(governance.audit.open.items()):
            kind, rule = key.split("|", 1)
            if kind == "experiment_integrity" and experiment in governance.live.get(rule, {}):
                flags.append(
                    InvestigationFlag(
                        kind="integrity_breach",
                        incident_id=finding.incident,
                        summary=f"rule {rule}, which serves the experiment, changed",
                    )
                )
        for measure in ("consent", "fallback"):
            breach = governance.balance.get(f"{experiment}|{measure}")
            if breach is not None and breach.status == "firing":
                flags.append(
                    InvestigationFlag(
                        kind="variant_imbalance",
                        incident_id=breach.incident,
                        summary=f"variants differ in {measure} rate beyond chance",
                    )
                )
        return flags

    def _drop_expired(self, initiative: str) -> None:
        """Series without an event for the retention leave the tables, and a variant group with them."""
        roster = self.windows.roster(initiative)
        for series in self.windows.take_expired():
            for name in self._judged_names:
                self._series[detector_key(series, name)] = None
            group = split_variant(series)[0]
            prefix = join_variant(group, "")  # the keys of the group's variants begin so
            if not any(known.startswith(prefix) for known in roster):
                self._shares[group] = None

    def _judge_variant_shares(self, row: BucketRow, observations: list[BucketObservation]) -> list[IncidentEvent]:
        """Each variant's share of its group's exposures against the plan's allocation (or the learnt shares)."""
        groups: dict[str, dict[str, BucketObservation]] = {}
        for observation in observations:
            group, variant = split_variant(observation.series)
            if variant != "none":
                groups.setdefault(group, {})[variant] = observation
        allocation = self.settings.allocations.get(row.initiative)
        transitions: list[IncidentEvent] = []
        for group, variants in sorted(groups.items()):
            if len(variants) < 2 and allocation is None:
                continue  # one variant alone always has all the exposures
            state = self._shares.get(group) or ShareState(VariantShareDetector(allocation))
            if state.evaluated_until < row.end:
                exposures = {variant: o.exposures for variant, o in variants.items()}
                verdicts = state.detector.score_one(exposures)
                if not any(v.breached for v in verdicts.values()):
                    state.detector.learn_one(exposures)
                breaches, caused = dict(state.breaches), []
                for variant, verdict in verdicts.items():
                    if not verdict.scored:
                        continue
                    series = join_variant(group, variant)
                    evidence = evidence_of(verdict, utc(row.start), utc(row.end), kpi="exposure_share")
                    breaches[series], new = self.breach_policy.observe(
                        breaches.get(series, BreachState()),
                        initiative=row.initiative,
                        kind=state.detector.kind,
                        series=series,
                        breached=verdict.breached,
                        evidence=evidence,
                    )
                    caused += new
                    if self._observer is not None:
                        self._observer(
                            Judged("variant_share", row.initiative, series, row.start, row.end, verdict, tuple(new))
                        )
                state = ShareState(state.detector, breaches, row.end, caused)
                self._shares[group] = state
            if state.evaluated_until == row.end:
                transitions += state.transitions
        return transitions

    def _fold(
        self,
        initiative: str,
        by_kind: dict[str, list[IncidentEvent]],
        *,
        until: float,
        direct: Sequence[IncidentEvent] = (),
        governance_changed: bool = False,
    ) -> Outputs:
        """One incident per (initiative, kind): fold the step's transitions into the groups; update the plan.

        `direct` transitions are incidents already (consent violations, audit findings): no grouping. An opened
        KPI incident lists the preceding rule changes as probable causes and starts a rung higher when one of
        them was unapproved.
        """
        outputs = Outputs()
        plan = self._plans.get(initiative)
        governance = self._governance.get(initiative) or GovernanceState()
        incidents: list[IncidentEvent] = list(direct)
        for kind, transitions in sorted(by_kind.items()):
            group_key = f"{initiative}|{kind}"
            group = self._groups.get(group_key) or GroupState()
            if group.evaluated_until >= until:
                continue  # folded before a crash; its transitions were sent then
            group, folded = fold_group(group, transitions)
            for incident in folded:
                incident = self.governance.probable_causes(governance, incident)
                if incident.rung > group.rung and incident.incident_id == group.incident:
                    group = replace(group, rung=incident.rung)
                incidents.append(incident)
            self._groups[group_key] = replace(group, evaluated_until=until)
        for incident in incidents:
            log.info(
                "incident %s %s %s owner=%s", incident.incident_id, incident.transition, incident.series, incident.owner
            )
            known = self._incidents.get(incident.incident_id)
            if incident.transition == "resolved" and known is not None and known[1].transition == "resolved":
                continue  # a person resolved it first (`on_action`): the recovery adds nothing
            governance.note_opened(incident)
            self._incidents[incident.incident_id] = (known[0] if known else incident, incident)
            outputs.incidents.append(incident)
            if incident.transition == "resolved" and known is not None:
                self._note_response(initiative, incident.incident_id, known[0].occurred_at, incident.occurred_at)
            if plan is not None:
                plan = with_incident(
                    plan,
                    _summary(plan, incident, self.settings.roster),
                    at=incident.occurred_at,
                    steps=playbook_steps(incident.kind),
                )
        if incidents:
            self._governance[initiative] = governance
        if plan is not None and any(i.transition == "resolved" for i in incidents):
            plan = self._with_response_time(plan, initiative)
        if plan is not None and (incidents or governance_changed):
            stamps = [i.occurred_at for i in incidents] + ([utc(until)] if until > float("-inf") else [])
            at = max(stamps, default=plan.watermark or plan.updated_at)
            plan = self._govern_plan(plan, governance, at)
        if plan is not None:
            outputs.extend(self._publish(initiative, plan))
        return outputs

    def on_action(self, action: IncidentAction) -> Outputs:
        """A person acknowledged or resolved an incident, or noted a remediation step: into the plan's change log,
        the acknowledgement also into the response time. An action on an unknown incident is logged and dropped."""
        plan = self._plans.get(action.initiative)
        if plan is None:
            log.warning("incident action %s names initiative %r, which has no plan", action.event_id, action.initiative)
            return Outputs()
        try:
            known = plan.incident(action.incident_id)
            updated = with_incident_action(
                plan,
                action.incident_id,
                action.action,
                by=action.by,
                text=action.text,
                at=action.at,
                action_id=action.event_id,
            )
        except PlanError as exc:
            log.warning("incident action %s dropped: %s", action.event_id, exc)
            return Outputs()
        if action.action == "acknowledged" and known is not None:
            self._note_response(action.initiative, action.incident_id, known.opened_at, action.at)
            updated = self._with_response_time(updated, action.initiative)
        outputs = Outputs()
        transitions = self._incidents.get(action.incident_id)
        if action.action == "resolved" and transitions is not None and transitions[1].transition != "resolved":
            # The incidents topic is the source of truth: a resolution by hand is a transition there too.
            resolved = resolved_by_person(transitions[1], action)
            self._incidents[action.incident_id] = (transitions[0], resolved)
            outputs.incidents.append(resolved)
        outputs.extend(self._publish(action.initiative, updated))
        return outputs

    def _note_response(self, initiative: str, incident_id: str, opened: datetime, responded: datetime) -> None:
        """The first response counts: an acknowledgement, or the resolution of an incident nobody acknowledged."""
        responses = dict(self._responses.get(initiative) or {})
        if incident_id not in responses:
            responses[incident_id] = max(0.0, (responded - opened).total_seconds() / 60)
            self._responses[initiative] = responses

    def _with_response_time(self, plan: PlanDocument, initiative: str) -> PlanDocument:
        responses = self._responses.get(initiative) or {}
        if not responses:
            return plan
        return with_metric(
            plan,
            "incident_response_minutes",
            at=plan.watermark or plan.updated_at,
            actor="pmon incidents",
            reason=f"median over {len(responses)} incident(s)",
            current=round(statistics.median(responses.values()), 1),
        )

    def _govern_plan(self, plan: PlanDocument, governance: GovernanceState, at: datetime) -> PlanDocument:
        """The plan with the governance checklist, the approvals rule changes wait for, and consent adherence."""
        plan = with_checklist(plan, self.governance.checklist(governance), at=at)
        pending = {c.event_id: c for c in governance.audit.pending_approvals()}
        for change in governance.audit.log:
            item = f"rule-change {change.event_id}"
            known = next((a for a in plan.approvals if a.item == item), None)
            if change.event_id in pending:
                role = owner_at(0) if change.rule_id in governance.live else owner_at(1)
                approval = Approval(
                    item=f"rule-change {change.event_id}",
                    requested_by=change.author,
                    approver_role=role,
                    requested_at=utc(change.at),
                )
            elif known is not None and known.status == "pending":
                approval = known.model_copy(update={"status": "approved", "decided_at": max(at, known.requested_at)})
            else:
                continue
            plan = with_approval(plan, approval, at=at)
        adherence = adherence_pct(
            sum(c[0] for c in governance.adherence.values()), sum(c[1] for c in governance.adherence.values())
        )
        if adherence is not None:
            plan = with_metric(
                plan,
                "consent_adherence_pct",
                at=at,
                actor="pmon governance",
                reason="consent adherence of personalized exposures",
                current=adherence,
            )
        return plan


_STATUS = {"opened": "open", "updated": "open", "escalated": "escalated", "resolved": "resolved"}


def _summary(plan: PlanDocument, incident: IncidentEvent, roster: Mapping[str, Any]) -> IncidentSummary:
    known = plan.incident(incident.incident_id)
    # Who is on duty the day the incident took its current owner (event time).
    assignee, reason = assignee_of(roster, incident.owner, incident.occurred_at.date())
    return IncidentSummary(
        incident_id=incident.incident_id,
        kind=incident.kind,
        severity=incident.severity,
        series=tuple(incident.series),
        owner=incident.owner,
        opened_at=known.opened_at if known is not None else incident.occurred_at,
        last_transition=incident.occurred_at,
        status=_STATUS[incident.transition],
        escalation_level=incident.rung,
        playbook=incident.playbook,
        acknowledged_at=known.acknowledged_at if known is not None else None,
        acknowledged_by=known.acknowledged_by if known is not None else None,
        assignee=assignee,
        assignee_reason=reason,
    )
