"""Tests of the traffic simulator: determinism, order, validity, realism and the injected incidents.

One two-day run with a handful of injections is generated once per module and
shared; each test reads what it needs from it. No broker, no event loop.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import orjson
import pytest

from incidents.series import build_key
from monitor.events import INPUT_MODELS, EngagementEvent
from simulation.simulator import (
    DEFAULT_START,
    Injection,
    JsonlFormatError,
    SimulatedRecord,
    SimulationSpec,
    default_injections,
    default_program,
    labels,
    read_jsonl,
    simulate,
    traffic_factor,
    write_jsonl,
)

PLG = "PLG Onboarding"
BIG_CONTROL = build_key(PLG, "new_user", "web", "control")
BIG_TREATMENT = build_key(PLG, "new_user", "web", "treatment")


def at(hour: int):
    return DEFAULT_START + timedelta(hours=hour)


DROP = Injection("conversion_drop", PLG, at(34), 6, 0.5, profile="new_user", channel="web", variant="control")
GAP = Injection("feed_gap", "Win-back Emails", at(20), 3, 1.0)
SUPPRESSION = Injection("variant_suppression", PLG, at(9), 2, 1.0, variant="treatment")
SURGE = Injection("fallback_surge", "Pricing Page Recs", at(14), 3, 0.4)
VIOLATION = Injection("consent_violation", PLG, at(40), 2, 0.05, profile="returning", channel="web")
UNAPPROVED = Injection("unapproved_rule_change", "Pricing Page Recs", at(30), 1, 1.0)
INJECTIONS = (DROP, GAP, SUPPRESSION, SURGE, VIOLATION, UNAPPROVED)
SPEC = SimulationSpec(seed=11, days=2, users=5_000, injections=INJECTIONS)


def light_program():
    """The default program with PLG at an eighth of its traffic: same code paths, faster runs."""
    plg, *others = default_program()
    return (replace(plg, exposures_per_hour=200.0), *others)


def hour_of(event_time) -> int:
    return int((event_time - SPEC.start) // timedelta(hours=1))


def key_of(event: EngagementEvent) -> str:
    return build_key(event.initiative, event.profile, event.channel, event.variant)


def in_window(injection: Injection, event_time) -> bool:
    return injection.start <= event_time < injection.end


@pytest.fixture(scope="module")
def records() -> list[SimulatedRecord]:
    return list(simulate(SPEC))


@pytest.fixture(scope="module")
def counts(records) -> Counter:
    """Engagement events per (series, hour of the run, event type)."""
    counted: Counter = Counter()
    for record in records:
        if record.topic == "engagement":
            counted[(key_of(record.event), hour_of(record.event.event_time), record.event.event_type)] += 1
    return counted


def total(counts: Counter, series: str, hours, event_type: str) -> int:
    return sum(counts[(series, hour, event_type)] for hour in hours)


def window_hours(injection: Injection) -> range:
    first = hour_of(injection.start)
    return range(first, first + injection.hours)


# ---------------------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_bytes_and_another_seed_does_not(tmp_path: Path) -> None:
    spec = SimulationSpec(seed=3, days=1, users=2_000, initiatives=light_program(),
                          injections=(Injection("spike", PLG, at(12), 3, 0.5),))
    first, second, other = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    count = write_jsonl(simulate(spec), first)
    assert write_jsonl(simulate(spec), second) == count > 5_000
    write_jsonl(simulate(replace(spec, seed=4)), other)
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes() != other.read_bytes()


def test_an_injection_changes_only_the_series_and_hours_it_labels() -> None:
    # Every series draws from its own generator per hour, so removing the conversion drop must
    # leave every other series untouched, and the dropped series untouched outside the window
    # (give or take an hour each side: follow-ups cross the window's edges).
    spec = SimulationSpec(seed=5, days=2, users=2_000, initiatives=light_program(), injections=(DROP,))
    with_drop, without_drop = list(simulate(spec)), list(simulate(replace(spec, injections=())))
    touched = range(hour_of(DROP.start) - 1, hour_of(DROP.end) + 1)

    def untouched(items: list[SimulatedRecord]) -> list[SimulatedRecord]:
        return [r for r in items if not (r.topic == "engagement" and key_of(r.event) == BIG_CONTROL
                                         and hour_of(r.event.event_time) in touched)]

    assert untouched(with_drop) == untouched(without_drop)
    assert len(untouched(with_drop)) < len(with_drop)   # the filter did remove the window
    assert with_drop != without_drop                     # and the window did change


# ---------------------------------------------------------------------------------------- shape of the output


def test_records_are_in_non_decreasing_event_time_order(records) -> None:
    times = [record.event.event_time for record in records]
    assert all(earlier <= later for earlier, later in itertools.pairwise(times))
    assert times[0] >= SPEC.start and times[-1] < SPEC.end
    # The rules in force come first: created and rolled out at the very start.
    assert records[0].topic == "rule-changes" and records[0].event.event_time == SPEC.start


def test_every_record_validates_under_its_model(records) -> None:
    # Engagement events are built without validation; validate a third of them (and every
    # consent and rule change) and compare with the original, so a field that validation
    # would change fails too.
    sample = [r for index, r in enumerate(records) if r.topic != "engagement" or index % 3 == 0]
    assert len(sample) > 30_000
    for record in sample:
        model = INPUT_MODELS[record.topic]
        assert type(record.event) is model
        assert model.model_validate(record.event.model_dump(mode="json")) == record.event
    assert len({record.event.event_id for record in records}) == len(records)


def test_keys_and_user_ids_are_as_documented(records) -> None:
    topics = Counter(record.topic for record in records)
    assert set(topics) == {"engagement", "consent", "rule-changes"}
    for record in records:
        if record.topic == "rule-changes":
            assert record.key == record.event.initiative
        else:
            assert record.key == record.event.user_id
            assert re.fullmatch(r"u\d{6}", record.key) and int(record.key[1:]) < SPEC.users


def test_user_attributes_are_stable(records) -> None:
    cohort, region, variant, profile = {}, {}, {}, {}
    for record in records:
        event = record.event
        if record.topic == "engagement":
            assert cohort.setdefault(event.user_id, event.cohort) == event.cohort
            assert re.fullmatch(r"20\d\d-W\d\d", event.cohort)
            assert profile.setdefault((event.user_id, event.initiative), event.profile) == event.profile
            if event.experiment:
                assert variant.setdefault((event.user_id, event.experiment), event.variant) == event.variant
            else:
                assert event.variant == "none"
        elif record.topic == "consent":
            assert region.setdefault(event.user_id, event.region) == event.region
    assert set(region.values()) == {"EU", "US"}
    plg_variants = Counter(v for (user, experiment), v in variant.items() if experiment == "onboarding-checklist")
    assert abs(plg_variants["control"] / sum(plg_variants.values()) - 0.5) < 0.05   # 50/50 allocation


def test_follow_ups_come_after_their_exposure_within_the_hour(records) -> None:
    exposures = {r.event.event_id: r.event for r in records
                 if r.topic == "engagement" and r.event.event_type == "exposure"}
    follow_ups = [r.event for r in records if r.topic == "engagement" and r.event.event_type != "exposure"]
    assert follow_ups
    for event in follow_ups:
        exposure = exposures[event.event_id.rsplit("-", 1)[0]]
        assert exposure.user_id == event.user_id and key_of(exposure) == key_of(event)
        assert timedelta(0) < event.event_time - exposure.event_time < timedelta(hours=1)
        assert (event.revenue > 0) == (event.event_type == "conversion")


# ---------------------------------------------------------------------------------------- realism


def test_night_hours_have_far_fewer_exposures_than_evening_hours(counts) -> None:
    plg_series = default_program()[0].series_keys()
    night = [h for h in range(SPEC.hours) if (h % 24) in (3, 4, 5, 6)]
    evening = [h for h in range(SPEC.hours) if (h % 24) in (17, 18, 19, 20)]
    night_mean = sum(total(counts, s, night, "exposure") for s in plg_series) / len(night)
    evening_mean = sum(total(counts, s, evening, "exposure") for s in plg_series) / len(evening)
    # The curve says ~0.32 / ~1.8 of the daily mean: a ratio near 0.18, far from flat (1.0).
    assert 0.1 < night_mean / evening_mean < 0.3


def test_volumes_follow_the_spec_and_one_series_dominates(counts) -> None:
    plg = default_program()[0]
    seasonal = [traffic_factor(at(h)) for h in range(SPEC.hours)]
    unsuppressed = [h for h in range(SPEC.hours) if h not in window_hours(SUPPRESSION)]
    expected = plg.exposures_per_hour * plg.exposure_share("new_user", "web", "control") * sum(
        seasonal[h] for h in unsuppressed)
    observed = total(counts, BIG_CONTROL, unsuppressed, "exposure")
    # Poisson: sd = sqrt(expected) ~ 130 on ~16 000; 4 % is more than 4 sd.
    assert abs(observed - expected) / expected < 0.04
    plg_total = sum(total(counts, s, unsuppressed, "exposure") for s in plg.series_keys())
    assert abs(plg_total / sum(seasonal[h] for h in unsuppressed) - 1600) < 1600 * 0.04
    assert observed / plg_total > 0.2 and all(
        total(counts, s, unsuppressed, "exposure") <= observed * 1.05 for s in plg.series_keys())


def test_clean_rates_are_stable_and_near_the_spec(counts) -> None:
    clean = [h for h in range(SPEC.hours) if h not in window_hours(DROP)]
    exposures = total(counts, BIG_CONTROL, clean, "exposure")
    conversions = total(counts, BIG_CONTROL, clean, "conversion")
    clicks = total(counts, BIG_CONTROL, clean, "click")
    # ~15 000 exposures: binomial sd of a 0.10 rate is 0.0025, of 0.12 is 0.0027; allow ~4 sd.
    assert abs(conversions / exposures - 0.10) < 0.01
    assert abs(clicks / exposures - 0.12) < 0.011


def test_clean_traffic_respects_consent_and_the_violation_is_where_labelled(records) -> None:
    consent: dict[str, str] = {}
    violations = []
    for record in records:
        event = record.event
        if record.topic == "consent":
            consent[event.user_id] = event.status
        elif (record.topic == "engagement" and event.event_type == "exposure" and not event.fallback
              and consent.get(event.user_id) != "granted"):
            violations.append(event)
    assert violations, "the consent_violation injection produced no violation"
    assert all(in_window(VIOLATION, e.event_time) and key_of(e) in VIOLATION.series(SPEC.initiatives)
               for e in violations)


def test_rule_changes_are_approved_except_the_labelled_one(records) -> None:
    changes = [record.event for record in records if record.topic == "rule-changes"]
    unapproved = [e for e in changes if e.approver is None]
    assert [e.action for e in unapproved] == ["updated", "rolled_out"]
    assert all(in_window(UNAPPROVED, e.event_time) and e.initiative == UNAPPROVED.initiative
               and e.ticket is None for e in unapproved)
    approved = [e for e in changes if e.approver is not None]
    assert all(e.ticket for e in approved) and len(approved) >= 2 * len(default_program())
    used_rules = {r.event.rule_id for r in records if r.topic == "engagement" and r.event.rule_id}
    assert used_rules <= {e.rule_id for e in changes if e.action == "rolled_out"}


# ---------------------------------------------------------------------------------------- injections


def test_conversion_drop_halves_the_rate_in_its_window_only(counts) -> None:
    inside = window_hours(DROP)
    outside = [h for h in range(SPEC.hours) if h not in inside]

    def rate(series: str, hours) -> tuple[float, int]:
        exposures = total(counts, series, hours, "exposure")
        return total(counts, series, hours, "conversion") / exposures, exposures

    base, _ = rate(BIG_CONTROL, outside)
    dropped, exposures = rate(BIG_CONTROL, inside)
    # Conversions in the window ~ Binomial(n ~ 2 700, p ~ 0.05): sd of the rate ~ sqrt(p (1-p) / n)
    # ~ 0.0042, i.e. ~8 % of the halved rate; the baseline's own error is ~2.5 %. A band of
    # 4 sd (~0.017 in rate, as a ratio [0.33, 0.67]) cannot be met by an undropped rate (ratio 1).
    sd = math.sqrt(base * 0.5 * (1 - base * 0.5) / exposures)
    assert abs(dropped - base * 0.5) < 4 * sd
    # The twin series (same profile and channel, other variant) keeps its rate in the same hours.
    twin_base, _ = rate(BIG_TREATMENT, outside)
    twin_inside, twin_exposures = rate(BIG_TREATMENT, inside)
    assert abs(twin_inside - twin_base) < 4 * math.sqrt(twin_base * (1 - twin_base) / twin_exposures)


def test_feed_gap_emits_no_engagement_for_the_initiative(records) -> None:
    winback = [r.event for r in records if r.topic == "engagement" and r.event.initiative == GAP.initiative]
    assert not [e for e in winback if in_window(GAP, e.event_time)]
    # ...and only there: the feed runs in the hour before and the hour after.
    assert any(GAP.start - timedelta(hours=1) <= e.event_time < GAP.start for e in winback)
    assert any(GAP.end <= e.event_time < GAP.end + timedelta(hours=1) for e in winback)


def test_variant_suppression_emits_no_exposure_of_the_variant(counts) -> None:
    hours = window_hours(SUPPRESSION)
    for series in SUPPRESSION.series(SPEC.initiatives):
        assert series.endswith("|treatment")
        assert total(counts, series, hours, "exposure") == 0
        assert total(counts, series, [hours.start - 1, hours.stop], "exposure") > 0
    assert total(counts, BIG_CONTROL, hours, "exposure") > 0   # the other variant runs on


def test_fallback_surge_sets_the_share_of_fallback_exposures(records) -> None:
    inside = Counter()
    outside = Counter()
    for record in records:
        event = record.event
        if record.topic == "engagement" and event.event_type == "exposure" and event.initiative == SURGE.initiative:
            bucket = inside if in_window(SURGE, event.event_time) else outside
            bucket[event.fallback] += 1
            assert event.rule_id is not None  # on a fallback, the rule that fell back
    share_inside = inside[True] / sum(inside.values())
    share_outside = outside[True] / sum(outside.values())
    # ~600 exposures in the window: sd of a 0.4 share ~0.02; clean share 0.02 over ~9 000: sd ~0.0015.
    assert abs(share_inside - 0.4) < 0.08 and abs(share_outside - 0.02) < 0.008


# ---------------------------------------------------------------------------------------- labels and specs


def test_labels_match_the_injections() -> None:
    found = labels(SPEC)
    assert len(found) == len(INJECTIONS)
    assert found[0] == {
        "kind": "conversion_drop", "initiative": PLG, "series": [BIG_CONTROL],
        "start": "2026-11-02T10:00:00Z", "end": "2026-11-02T16:00:00Z", "hours": 6, "magnitude": 0.5,
    }
    for label, injection in zip(found, INJECTIONS, strict=True):
        assert (label["kind"], label["initiative"], label["magnitude"]) == (
            injection.kind, injection.initiative, injection.magnitude)
        assert label["series"] == injection.series(SPEC.initiatives)
    assert found[2]["series"] == [build_key(PLG, p, c, "treatment")
                                  for p in ("new_user", "returning") for c in ("web", "email")]
    assert orjson.loads(orjson.dumps(found)) == found   # JSON-ready


def test_default_injections_have_the_headline_drop_after_a_clean_warm_up() -> None:
    spec = SimulationSpec()
    assert spec.injections == default_injections()
    assert {i.kind for i in spec.injections} >= {"conversion_drop", "ctr_drop", "spike", "volume_drop",
                                                 "fallback_surge", "variant_suppression", "feed_gap"}
    assert min(i.start for i in spec.injections) >= spec.start + timedelta(days=3)
    assert all(i.end <= spec.end for i in spec.injections)
    drops = [i for i in spec.injections if i.kind == "conversion_drop"]
    assert any(d.magnitude >= 0.4 and d.hours >= 6 and d.series() == [BIG_TREATMENT] for d in drops)
    # A shorter run gets the schedule squeezed into it, a tiny one gets none.
    assert all(i.end <= DEFAULT_START + timedelta(days=7) for i in default_injections(days=7))
    assert default_injections(days=2) == ()


@pytest.mark.parametrize("bad, message", [
    (dict(injections=(Injection("feed_gap", PLG, at(47), 2, 1.0),)), "outside the run"),
    (dict(injections=(Injection("ctr_drop", PLG, at(5), 2, 0.5, profile="vip"),)), "no profile 'vip'"),
    (dict(injections=(Injection("ctr_drop", "Nope", at(5), 2, 0.5),)), "unknown initiative"),
    (dict(start=DEFAULT_START + timedelta(minutes=30)), "aligned to the hour"),
    (dict(start=DEFAULT_START.replace(tzinfo=None)), "timezone-aware"),
    (dict(propensity_sigma=-0.1), "propensity_sigma"),
    (dict(initiatives=(replace(default_program()[0], launch_day=2),)), "would serve nothing"),
    (dict(initiatives=(replace(default_program()[0], launch_day=1),),
          injections=(Injection("ctr_drop", PLG, at(5), 2, 0.5),)), "before the initiative launches"),
])
def test_bad_specs_are_refused_with_a_reason(bad, message) -> None:
    fields = dict(days=2, users=1_000, injections=()) | bad
    with pytest.raises(ValueError, match=message):
        SimulationSpec(**fields)


@pytest.mark.parametrize("kind, magnitude, extra, message", [
    ("nonsense", 0.5, {}, "unknown injection kind"),
    ("conversion_drop", 1.5, {}, "magnitude"),
    ("feed_gap", 0.5, {}, "magnitude must be 1.0"),
    ("variant_suppression", 1.0, {}, "needs the variant"),
])
def test_bad_injections_are_refused(kind, magnitude, extra, message) -> None:
    with pytest.raises(ValueError, match=message):
        Injection(kind, PLG, at(5), 2, magnitude, **extra)


def test_an_initiative_serves_nothing_before_its_launch_day() -> None:
    late = replace(light_program()[1], launch_day=1)
    spec = SimulationSpec(seed=5, days=2, users=2_000, initiatives=(light_program()[0], late), injections=())
    first_hour: dict[str, float] = {}
    for record in simulate(spec):
        if record.topic == "engagement":
            first_hour.setdefault(record.event.initiative, (record.event.event_time - spec.start) / timedelta(hours=1))
    assert first_hour[PLG] < 1
    assert 24 <= first_hour[late.name] < 25


def test_a_launch_day_must_be_a_whole_day() -> None:
    with pytest.raises(ValueError, match="launch_day must be a whole day"):
        replace(default_program()[0], launch_day=1.5)


# ---------------------------------------------------------------------------------------- JSONL


def test_jsonl_round_trip(records, tmp_path: Path) -> None:
    sample = records[:3_000] + [r for r in records if r.topic == "rule-changes"]
    path = tmp_path / "run.jsonl"
    assert write_jsonl(sample, path) == len(sample)
    first_line = orjson.loads(path.read_bytes().split(b"\n", 1)[0])
    assert set(first_line) == {"topic", "key", "value"} and first_line["value"]["event_id"]
    assert list(read_jsonl(path)) == sample


@pytest.mark.parametrize("bad_line, reason", [
    (b"{not json", "not JSON"),
    (b'{"topic": "engagement", "key": "u000001"}', "optionally \"key\", nothing else"),
    (b'{"topic": "clicks", "key": "u000001", "value": {}}', "unknown topic"),
    (b'{"topic": "consent", "key": "u000001", "value": {"event_id": "x"}}', "invalid ConsentEvent"),
])
def test_read_jsonl_names_the_bad_line(records, tmp_path: Path, bad_line: bytes, reason: str) -> None:
    path = tmp_path / "bad.jsonl"
    write_jsonl(records[:3], path)
    path.write_bytes(path.read_bytes() + b"\n" + bad_line + b"\n")   # a blank line 4, the bad one is 5
    with pytest.raises(JsonlFormatError, match=reason) as caught:
        list(read_jsonl(path))
    assert caught.value.line_number == 5
    assert f"{path}:5:" in str(caught.value)


def test_read_jsonl_rejects_an_absurd_value_with_its_field(records, tmp_path: Path) -> None:
    exposure = next(r for r in records if r.topic == "engagement")
    value = exposure.event.model_dump(mode="json") | {"revenue": 12.5}   # revenue on an exposure
    path = tmp_path / "absurd.jsonl"
    path.write_bytes(orjson.dumps({"topic": "engagement", "key": exposure.key, "value": value}) + b"\n")
    with pytest.raises(JsonlFormatError, match=r":1: invalid EngagementEvent") as caught:
        list(read_jsonl(path))
    assert caught.value.line_number == 1
