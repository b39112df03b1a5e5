"""Governance (issue 4): the consent ledger, its incidents, the rule-change audit, fallback rates, variant balance
and the per-initiative scan with its checklist. Pure units: no broker, no event loop."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timezone

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binom, chi2, chi2_contingency, fisher_exact

from governance.consent_incidents import ViolationState, observe_quiet_bucket, observe_violations
from governance.consent_ledger import ConsentPolicy, Exposure, UserConsent, Violation
from governance.exceptions import GovernanceError, InvalidPolicy
from governance.rule_audit import INTEGRITY, UNAPPROVED, RuleAudit, RuleChange
from governance.rule_fallback import FallbackRatePolicy, RuleFallbackState
from governance.scan import (
    LIVE_SECONDS,
    GovernanceConfig,
    GovernanceScan,
    GovernanceState,
    GovernanceTally,
    adherence_pct,
)
from governance.variant_balance import balance_test, first_in_hour
from incidents.breach_policy import BreachPolicy, BreachPolicyConfig, BreachState, period_of
from incidents.model import Evidence, IncidentEvent, incident_id, transition_event_id
from incidents.playbooks import ESCALATION_LADDER, owner_at, playbook_for
from incidents.series import build_key
from plans.document import ChecklistItem

H = 3600.0
T0 = 1_794_477_600.0                      # an hour boundary (2026-11-12T14:00Z)
GRACE = 60.0
INITIATIVE = "PLG Onboarding"
PRIVACY_LEAD, ARCHITECT, TESTING_LEAD = "Data Privacy Lead", "Personalization Architect", "Testing Lead"


def utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=timezone.utc)


# -- factories ---------------------------------------------------------------------------------------------------
def consent_policy(**overrides: object) -> ConsentPolicy:
    settings: dict[str, object] = {"regions": {"EU": "opt-in", "US": "opt-out"}, "grace_seconds": GRACE}
    return ConsentPolicy(**{**settings, **overrides})


def exposure(event_id: str = "x1", at: float = T0, *, fallback: bool = False, region: str | None = None,
             channel: str = "web", variant: str = "control") -> Exposure:
    return Exposure(event_id, at, INITIATIVE, build_key(INITIATIVE, "new_user", channel, variant), fallback, region)


def user_with(policy: ConsentPolicy, *changes: tuple[float, bool], region: str | None = "EU",
              purpose: str = "personalization") -> UserConsent:
    """A ledger entry with personalization changes (event time, granted) recorded in the given order."""
    user = UserConsent()
    for at, granted in changes:
        policy.record(user, "p1", at=at, purpose=purpose, granted=granted, region=region)
    return user


def violation(event_id: str, at: float, *, channel: str = "web", user: str = "p1", late: bool = False) -> Violation:
    return Violation(event_id, at, INITIATIVE, f"{INITIATIVE}|new_user|{channel}|control", user, "no record", late)


def change(event_id: str, at: float, *, rule: str = "plg-web", action: str = "updated", approver: str | None = None,
           ticket: str | None = None, experiment: str | None = None) -> RuleChange:
    return RuleChange(event_id, at, rule, action, "a.kim", approver, ticket, experiment)


def approved(event_id: str, at: float, **kwargs: object) -> RuleChange:
    return change(event_id, at, approver="j.ortiz", ticket="PERS-1", **kwargs)


def scanner(**config: object) -> GovernanceScan:
    return GovernanceScan(GovernanceConfig(**config),
                          BreachPolicy(BreachPolicyConfig(breach_span_buckets=3, recovery_span_buckets=2)))


def rule_tally(rules: Mapping[str, tuple[int, int]]) -> GovernanceTally:
    """`rules["channel|rule|experiment"] = (exposures, fallbacks)`."""
    return GovernanceTally(rules={key: list(counts) for key, counts in rules.items()})


def variant_tally(experiment: str, variants: Mapping[str, tuple[int, int, int]]) -> GovernanceTally:
    """`variants[variant] = (user-hours, consented, with a fallback)`."""
    return GovernanceTally(variants={f"{experiment}|{v}": list(units) for v, units in variants.items()})


def run_buckets(scan: GovernanceScan, state: GovernanceState, tallies: Iterable[GovernanceTally], *,
                first_hour: int = 0) -> list[list[IncidentEvent]]:
    """Close hourly buckets one after the other; the events of each."""
    return [scan.on_bucket(state, tally, initiative=INITIATIVE, start=T0 + hour * H, end=T0 + (hour + 1) * H)
            for hour, tally in enumerate(tallies, start=first_hour)]


def kpi_incident(*, kind: str = "conversion_drop", transition: str = "opened", rung: int | None = None,
                 bucket_end: float = T0 + 6 * H) -> IncidentEvent:
    """An incident as the breach policy emits it (its own first rung unless told)."""
    playbook = playbook_for(kind)
    rung = playbook.first_rung if rung is None else rung
    series = f"{INITIATIVE}|new_user|web|control"
    period = period_of(utc(bucket_end - 2 * H))
    incident = incident_id(INITIATIVE, kind, series, period)
    evidence = Evidence(observed=0.05, expected=0.10, score=0.5, bucket_start=utc(bucket_end - H),
                        bucket_end=utc(bucket_end), detail={"kpi": "conversion_rate"})
    return IncidentEvent(event_id=transition_event_id(incident, transition, 1), incident_id=incident,
                         transition=transition, kind=kind, severity="warning", initiative=INITIATIVE, series=[series],
                         period=period, owner=owner_at(rung), rung=rung, playbook=playbook.text, evidence=evidence,
                         occurred_at=utc(bucket_end))


def pearson_p(table: np.ndarray) -> float:
    """Pearson's chi-square test of independence, by its closed form."""
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
    statistic = ((table - expected) ** 2 / expected).sum()
    dof = (table.shape[0] - 1) * (table.shape[1] - 1)
    return float(chi2.sf(statistic, dof))


# -- consent ledger ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arrival", [[(T0, True), (T0 + 600, False)], [(T0 + 600, False), (T0, True)]],
                         ids=["in-order", "revocation-first"])
def test_latest_consent_by_event_time_whatever_the_arrival_order(arrival: list[tuple[float, bool]]) -> None:
    policy = consent_policy()
    user = user_with(policy, *arrival)
    assert user.changes["personalization"] == [(T0, True), (T0 + 600, False)]
    between = policy.consent_at(user, at=T0 + 300)
    after = policy.consent_at(user, at=T0 + 600 + GRACE + 1)
    assert (between.consented, between.basis, between.at) == (True, "granted", T0)
    assert (after.consented, after.basis, after.at) == (False, "revoked", T0 + 600)


@pytest.mark.parametrize("region, default_policy, consented, policy_name", [
    ("EU", "opt-in", False, "opt-in"),
    ("US", "opt-in", True, "opt-out"),
    ("APAC", "opt-in", False, "opt-in"),       # unknown region: the default policy
    (None, "opt-in", False, "opt-in"),
    ("APAC", "opt-out", True, "opt-out"),
])
def test_user_without_record_follows_the_policy_of_the_region(region: str | None, default_policy: str,
                                                              consented: bool, policy_name: str) -> None:
    policy = consent_policy(default_policy=default_policy)
    user = UserConsent()
    judged, found = policy.judge(user, "p1", exposure(region=region))
    judgement = policy.consent_at(user, at=T0, region=region)
    assert (judged, judgement.consented, judgement.basis, judgement.policy) == (consented, consented, "no record",
                                                                               policy_name)
    assert (found is None) is consented
    assert judgement.reason == f"no record; {region or 'unknown region'} is {policy_name}"


def test_region_comes_from_the_users_latest_consent_record_over_the_exposures() -> None:
    policy = consent_policy()
    user = UserConsent()
    # An analytics record from the US (opt-out), then an older one from the EU arriving late: the US one is latest.
    policy.record(user, "p1", at=T0, purpose="analytics", granted=True, region="US")
    policy.record(user, "p1", at=T0 - H, purpose="analytics", granted=True, region="EU")
    judged, found = policy.judge(user, "p1", exposure(at=T0 + 10, region="EU"))
    judgement = policy.consent_at(user, at=T0 + 10, region="EU")
    assert (judged, judgement.region, judgement.policy, found) == (True, "US", "opt-out", None)
    policy.record(user, "p1", at=T0 + 5, purpose="marketing", granted=False, region="EU")
    judged, found = policy.judge(user, "p1", exposure("x2", at=T0 + 10, region="US"))
    judgement = policy.consent_at(user, at=T0 + 10, region="US")
    assert (judged, judgement.region, judgement.policy) == (False, "EU", "opt-in")
    assert found is not None and found.reason == "no record; EU is opt-in"


@pytest.mark.parametrize("offset, violates", [(0, False), (GRACE / 2, False), (GRACE - 0.001, False),
                                              (GRACE, True), (GRACE + 1, True)])
def test_revocation_takes_effect_after_the_grace_period(offset: float, violates: bool) -> None:
    policy = consent_policy()
    user = user_with(policy, (T0 - H, True), (T0, False))
    judged, found = policy.judge(user, "p1", exposure(at=T0 + offset))
    assert (found is not None) is violates is not judged
    judgement = policy.consent_at(user, at=T0 + offset)
    assert (judgement.basis, judgement.at) == ("revoked" if violates else "grace", T0)
    if violates:
        assert found.reason == f"revoked at {utc(T0).strftime('%Y-%m-%dT%H:%M:%SZ')}" and not found.late


def test_revocation_without_earlier_grant_is_in_grace_then_revoked() -> None:
    policy = consent_policy()
    user = user_with(policy, (T0, False))
    assert policy.consent_at(user, at=T0 - 1).basis == "no record"
    within = policy.consent_at(user, at=T0 + GRACE / 2)
    assert (within.consented, within.basis) == (True, "grace")
    assert within.reason.endswith(f"within the {GRACE:g} s grace")
    assert policy.consent_at(user, at=T0 + GRACE).consented is False


def test_repeated_revocations_count_their_grace_from_the_first() -> None:
    policy = consent_policy()
    user = user_with(policy, (T0 - H, True), (T0 + 30, False), (T0, False))
    judgement = policy.consent_at(user, at=T0 + GRACE)
    assert (judgement.consented, judgement.basis, judgement.at) == (False, "revoked", T0)


def test_grant_takes_effect_at_once() -> None:
    policy = consent_policy()
    user = user_with(policy, (T0, True))
    assert policy.judge(user, "p1", exposure("before", at=T0 - 1))[1] is not None   # EU, no record yet: opt-in
    judged, found = policy.judge(user, "p1", exposure("at", at=T0))
    assert (judged, policy.consent_at(user, at=T0).basis, found) == (True, "granted", None)


def test_grant_within_the_grace_of_a_revocation_keeps_consent() -> None:
    policy = consent_policy()
    user = user_with(policy, (T0 - H, True), (T0, False), (T0 + 10, True))
    for at in (T0 + 5, T0 + 30, T0 + GRACE + 1, T0 + H):
        assert policy.consent_at(user, at=at).consented, at
    again = user_with(policy, (T0, False), (T0 + 40, True))     # opt-in region, revocation then re-grant
    assert policy.consent_at(again, at=T0 + 30).consented       # within the revocation's grace
    assert policy.consent_at(again, at=T0 + 40 + GRACE).consented


@settings(max_examples=300, deadline=None)
@given(changes=st.lists(st.tuples(st.sampled_from([0.0, 30.0, 59.0, 60.0, 61.0, 120.0, 500.0]), st.booleans()),
                        max_size=6),
       region=st.sampled_from([None, "EU", "US"]), exposure_region=st.sampled_from([None, "EU", "US", "APAC"]),
       at=st.sampled_from([-1.0, 0.0, 29.0, 30.0, 60.0, 89.0, 90.0, 119.0, 120.0, 180.0, 560.0, 561.0]))
def test_the_fast_consent_answer_is_the_judgements(changes: list[tuple[float, bool]], region: str | None,
                                                   exposure_region: str | None, at: float) -> None:
    """`consented` (once per exposure) answers as `consent_at(...).consented` does, on any ledger."""
    policy = ConsentPolicy(regions={"EU": "opt-in", "US": "opt-out"}, default_policy="opt-in", grace_seconds=60)
    user = UserConsent()
    for t, granted in changes:
        policy.record(user, "p1", at=T0 + t, purpose="personalization", granted=granted, region=region)
    expected = policy.consent_at(user, at=T0 + at, region=exposure_region).consented
    assert policy.consented(user, T0 + at, exposure_region) is expected
    assert policy.judge(user, "p1", exposure(at=T0 + at, region=exposure_region))[0] is expected


def test_fallback_exposures_never_violate_and_are_not_remembered() -> None:
    policy = consent_policy()
    user = UserConsent()
    judged, found = policy.judge(user, "p1", exposure(fallback=True, region="EU"))
    assert judged is False and found is None
    assert user.remembered == []


def test_late_revocation_convicts_the_remembered_exposure_exactly_once() -> None:
    policy = consent_policy()
    user = user_with(policy, (T0, True))
    assert policy.judge(user, "p1", exposure("x1", at=T0 + 600))[1] is None
    convicted = policy.record(user, "p1", at=T0 + 60, purpose="personalization", granted=False)
    assert [(v.event_id, v.late, v.user, v.at) for v in convicted] == [("x1", True, "p1", T0 + 600)]
    assert convicted[0].reason.startswith("revoked at ")
    assert policy.record(user, "p1", at=T0 + 60, purpose="personalization", granted=False) == []  # redelivered
    assert policy.record(user, "p1", at=T0 + 120, purpose="personalization", granted=False) == []  # already convicted


def test_later_timed_revocation_does_not_convict_an_earlier_exposure() -> None:
    policy = consent_policy()
    user = user_with(policy, (T0, True))
    policy.judge(user, "p1", exposure("x1", at=T0 + 600))
    assert policy.record(user, "p1", at=T0 + 601, purpose="personalization", granted=False) == []
    assert policy.record(user, "p1", at=T0 + 600 - GRACE / 2, purpose="personalization", granted=False) == []  # grace


def test_exposure_convicted_on_arrival_is_not_convicted_again_by_a_late_revocation() -> None:
    policy = consent_policy()
    user = UserConsent()
    assert policy.judge(user, "p1", exposure("x1", at=T0 + 600, region="EU"))[1] is not None
    assert policy.record(user, "p1", at=T0, purpose="personalization", granted=False) == []


@pytest.mark.parametrize("purpose", ["analytics", "marketing"])
def test_revocations_of_other_purposes_do_not_convict(purpose: str) -> None:
    policy = consent_policy()
    user = user_with(policy, (T0, True))
    policy.judge(user, "p1", exposure("x1", at=T0 + 600))
    assert policy.record(user, "p1", at=T0 + 60, purpose=purpose, granted=False) == []
    assert policy.consent_at(user, at=T0 + 600).consented
    assert policy.consent_at(user, at=T0 + 600, purpose=purpose).consented is False


def test_remembered_exposures_are_bounded_by_count() -> None:
    policy = consent_policy(max_remembered=3)
    user = user_with(policy, (T0, True))
    for n in range(5):
        policy.judge(user, "p1", exposure(f"x{n}", at=T0 + 100 + n))
    policy.judge(user, "p1", exposure("x4", at=T0 + 104))          # redelivered: remembered once
    assert [row[0] for row in user.remembered] == ["x2", "x3", "x4"]
    convicted = policy.record(user, "p1", at=T0 + 1, purpose="personalization", granted=False)
    assert [v.event_id for v in convicted] == ["x2", "x3", "x4"]   # the forgotten ones are no longer convicted


def test_remembered_exposures_are_bounded_by_lookback() -> None:
    policy = consent_policy(lookback_seconds=H)
    user = user_with(policy, (T0, True))
    for name, at in (("old", T0 + 10), ("edge", T0 + 2 * H), ("new", T0 + 3 * H)):
        policy.judge(user, "p1", exposure(name, at=at))
    assert [row[0] for row in user.remembered] == ["edge", "new"]


def test_nothing_remembered_when_max_remembered_is_zero() -> None:
    policy = consent_policy(max_remembered=0)
    user = user_with(policy, (T0, True))
    policy.judge(user, "p1", exposure("x1", at=T0 + 600))
    assert user.remembered == []
    assert policy.record(user, "p1", at=T0 + 60, purpose="personalization", granted=False) == []


def test_consent_changes_are_bounded_and_a_redelivered_change_is_ignored() -> None:
    policy = consent_policy(max_changes=2)
    user = user_with(policy, (T0, True), (T0 + 10, False), (T0 + 10, False), (T0 + 20, True))
    assert user.changes["personalization"] == [(T0 + 10, False), (T0 + 20, True)]


@pytest.mark.parametrize("overrides", [
    {"regions": {"EU": "opt-inn"}}, {"default_policy": "deny"}, {"grace_seconds": -1.0},
    {"lookback_seconds": -1.0}, {"max_changes": 0}, {"max_remembered": -1},
], ids=["bad-region-policy", "bad-default-policy", "negative-grace", "negative-lookback", "no-changes",
        "negative-remembered"])
def test_invalid_consent_policy_is_refused(overrides: dict[str, object]) -> None:
    with pytest.raises(InvalidPolicy) as error:
        consent_policy(**overrides)
    assert isinstance(error.value, GovernanceError) and isinstance(error.value, ValueError)


# -- consent incidents -------------------------------------------------------------------------------------------
def test_first_violations_open_an_incident_at_once_for_the_privacy_lead() -> None:
    first = [violation("e2", T0 + 1800, user="p2", late=True), violation("e1", T0 + 900, channel="email")]
    state, events = observe_violations(ViolationState(), first, initiative=INITIATIVE)
    assert len(events) == 1
    opened = events[0]
    expected_id = incident_id(INITIATIVE, "consent_violation", "group", period_of(utc(T0)))
    assert (opened.transition, opened.kind, opened.severity) == ("opened", "consent_violation", "critical")
    assert (opened.rung, opened.owner) == (2, PRIVACY_LEAD)
    assert opened.incident_id == state.incident == expected_id
    assert opened.event_id == transition_event_id(expected_id, "opened", 1)
    assert opened.evidence.observed == 2.0 and opened.evidence.detail["late_convictions"] == 1
    assert opened.evidence.bucket_start == utc(T0 + 900) and opened.occurred_at == utc(T0 + 1800)
    assert [x["event_id"] for x in opened.evidence.detail["examples"]] == ["e1", "e2"]
    assert opened.series == sorted({v.series for v in first})


def test_consent_incident_ids_are_deterministic() -> None:
    def replay() -> list[str]:
        state, events = observe_violations(ViolationState(), [violation("e1", T0 + 900)], initiative=INITIATIVE)
        state, more = observe_violations(state, [violation("e2", T0 + 2 * H)], initiative=INITIATIVE)
        return [e.event_id for e in events + more]

    assert replay() == replay()
    assert len(set(replay())) == 2


def test_later_violations_update_the_incident_with_cumulative_counts() -> None:
    state, opened = observe_violations(ViolationState(), [violation("e1", T0), violation("e2", T0 + 60)],
                                       initiative=INITIATIVE)
    later = [violation(f"e{n}", T0 + H + n, channel="app", user=f"p{n}", late=n == 4) for n in (3, 4, 5)]
    state, updated = observe_violations(state, later, initiative=INITIATIVE)
    assert [e.transition for e in updated] == ["updated"]
    event = updated[0]
    assert event.incident_id == opened[0].incident_id
    assert event.event_id == transition_event_id(event.incident_id, "updated", 2)
    assert event.evidence.observed == 5.0 and state.count == 5
    assert event.evidence.detail["late_convictions"] == 1
    assert [e["event_id"] for e in event.evidence.detail["examples"]] == ["e3", "e4", "e5"]
    assert event.series == [f"{INITIATIVE}|new_user|web|control", f"{INITIATIVE}|new_user|app|control"]
    assert (event.owner, event.severity) == (PRIVACY_LEAD, "critical")


def test_no_violations_change_nothing() -> None:
    state = ViolationState()
    assert observe_violations(state, [], initiative=INITIATIVE) == (state, [])


def quiet(state: ViolationState, hour: int, recovery: int = 3) -> tuple[ViolationState, list[IncidentEvent]]:
    return observe_quiet_bucket(state, initiative=INITIATIVE, bucket_start=T0 + hour * H,
                                bucket_end=T0 + (hour + 1) * H, recovery_buckets=recovery)


def test_consent_incident_resolves_after_recovery_buckets_quiet_closed_buckets() -> None:
    state, opened = observe_violations(ViolationState(), [violation("e1", T0 + 900)], initiative=INITIATIVE)
    state, out = quiet(state, 0)                       # the bucket holding the violation does not count
    assert out == [] and state.quiet_buckets == 0
    transitions = []
    for hour in (1, 2, 3):
        state, out = quiet(state, hour)
        transitions.append([e.transition for e in out])
    assert transitions == [[], [], ["resolved"]]
    resolved = out[0]
    assert resolved.incident_id == opened[0].incident_id and resolved.owner == PRIVACY_LEAD
    assert resolved.evidence.detail["quiet_buckets"] == 3 and resolved.occurred_at == utc(T0 + 4 * H)
    assert state == ViolationState()


def test_a_new_violation_restarts_the_recovery_count() -> None:
    state, _ = observe_violations(ViolationState(), [violation("e1", T0 + 900)], initiative=INITIATIVE)
    state, _ = quiet(state, 1, recovery=2)
    state, _ = observe_violations(state, [violation("e2", T0 + 2 * H + 10)], initiative=INITIATIVE)
    assert state.quiet_buckets == 0
    state, out = quiet(state, 2, recovery=2)           # overlaps the latest violation
    assert out == []
    state, out = quiet(state, 3, recovery=2)
    assert out == [] and state.quiet_buckets == 1
    state, out = quiet(state, 4, recovery=2)
    assert [e.transition for e in out] == ["resolved"]


def test_quiet_bucket_without_an_open_incident_does_nothing() -> None:
    assert quiet(ViolationState(), 0, recovery=1) == (ViolationState(), [])


# -- rule audit --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("approver, ticket, missing", [(None, "PERS-1", "approver"), ("j.ortiz", None, "ticket"),
                                                       (None, None, "approver or ticket")])
def test_change_without_approver_or_ticket_opens_unapproved_rule_change(approver: str | None, ticket: str | None,
                                                                        missing: str) -> None:
    audit = RuleAudit()
    events = audit.observe(change("r1", T0 + 600, approver=approver, ticket=ticket), initiative=INITIATIVE,
                           live_experiments={})
    assert [(e.kind, e.transition, e.owner, e.rung, e.severity) for e in events] == [
        (UNAPPROVED, "opened", ARCHITECT, 1, "critical")]
    assert events[0].incident_id == incident_id(INITIATIVE, UNAPPROVED, "plg-web", period_of(utc(T0)))
    assert events[0].evidence.detail["reason"] == f"updated of plg-web by a.kim without {missing}"
    assert events[0].series == [f"{INITIATIVE}|rule|plg-web"]


def test_unapproved_changes_of_a_rule_update_it_and_an_approved_one_resolves_it() -> None:
    audit = RuleAudit()
    opened = audit.observe(change("r1", T0), initiative=INITIATIVE, live_experiments={})
    other = audit.observe(change("r2", T0 + 60, rule="plg-app"), initiative=INITIATIVE, live_experiments={})
    updated = audit.observe(change("r3", T0 + H), initiative=INITIATIVE, live_experiments={})
    resolved = audit.observe(approved("r4", T0 + 2 * H), initiative=INITIATIVE, live_experiments={})
    assert [e.transition for e in opened + other + updated + resolved] == ["opened", "opened", "updated", "resolved"]
    assert opened[0].incident_id == updated[0].incident_id == resolved[0].incident_id != other[0].incident_id
    assert updated[0].evidence.detail["changes"] == ["r1", "r3"]
    assert resolved[0].event_id == transition_event_id(opened[0].incident_id, "resolved", 3)
    assert list(audit.open) == [f"{UNAPPROVED}|plg-app"]


def test_approved_change_older_than_the_unapproved_one_does_not_resolve_it() -> None:
    audit = RuleAudit()
    opened = audit.observe(change("r2", T0 + H), initiative=INITIATIVE, live_experiments={})
    late = audit.observe(approved("r1", T0), initiative=INITIATIVE, live_experiments={})   # arrives late
    assert [e.transition for e in opened] == ["opened"] and late == []
    assert list(audit.open) == [f"{UNAPPROVED}|plg-web"]
    assert [c.event_id for c in audit.pending_approvals()] == ["r2"]


def test_approved_change_of_a_rule_without_an_open_incident_causes_nothing() -> None:
    audit = RuleAudit()
    assert audit.observe(approved("r1", T0), initiative=INITIATIVE, live_experiments={}) == []
    assert audit.open == {} and len(audit.log) == 1


def test_redelivered_change_is_ignored() -> None:
    audit = RuleAudit()
    assert audit.observe(change("r1", T0), initiative=INITIATIVE, live_experiments={}) != []
    assert audit.observe(change("r1", T0), initiative=INITIATIVE, live_experiments={}) == []
    assert [c.event_id for c in audit.log] == ["r1"]


def test_change_to_a_rule_serving_a_live_experiment_breaks_its_integrity() -> None:
    audit = RuleAudit()
    events = audit.observe(approved("r1", T0), initiative=INITIATIVE, live_experiments={"plg-web": ("exp-b", "exp-a")})
    assert [(e.kind, e.transition, e.owner, e.severity) for e in events] == [
        (INTEGRITY, "opened", TESTING_LEAD, "critical")]
    assert events[0].evidence.detail["experiments"] == ["exp-a", "exp-b"]
    again = audit.observe(approved("r2", T0 + H), initiative=INITIATIVE, live_experiments={"plg-web": ("exp-a",)})
    assert [(e.kind, e.transition, e.incident_id) for e in again] == [(INTEGRITY, "updated", events[0].incident_id)]


def test_change_naming_a_live_experiment_breaks_its_integrity() -> None:
    audit = RuleAudit()
    live = {"plg-app": ("exp-a",)}
    events = audit.observe(approved("r1", T0, experiment="exp-a"), initiative=INITIATIVE, live_experiments=live)
    assert [(e.kind, e.evidence.detail["experiments"]) for e in events] == [(INTEGRITY, ["exp-a"])]
    assert audit.observe(approved("r2", T0, experiment="exp-z"), initiative=INITIATIVE, live_experiments=live) == []


def test_created_rule_does_not_break_experiment_integrity() -> None:
    audit = RuleAudit()
    events = audit.observe(approved("r1", T0, action="created"), initiative=INITIATIVE,
                           live_experiments={"plg-web": ("exp-a",)})
    assert events == [] and audit.open == {}


def test_pending_approvals_lists_changes_without_approver_not_settled_later() -> None:
    audit = RuleAudit()
    for c in (change("r1", T0, rule="a"), approved("r2", T0 + 60, rule="a"), change("r3", T0 + 120, rule="b"),
              change("r4", T0 + 180, rule="c", approver="j.ortiz"),       # approver without ticket: not pending
              change("r5", T0 + 240, rule="a"), approved("r0", T0 - 60, rule="b")):
        audit.observe(c, initiative=INITIATIVE, live_experiments={})
    assert [c.event_id for c in audit.pending_approvals()] == ["r3", "r5"]


@pytest.mark.parametrize("hours", [1.0, 2.5, 6.0])
def test_probable_causes_are_exactly_the_changes_in_the_window(hours: float) -> None:
    audit = RuleAudit()
    before = T0 + 10 * H
    times = [before - hours * H - 1, before - hours * H, before - hours * H / 2, before, before + 1,
             before - 9 * H]
    for n, at in enumerate(times):
        audit.observe(change(f"r{n}", at, rule=f"rule-{n}"), initiative=INITIATIVE, live_experiments={})
    causes = audit.probable_causes(before=before, hours=hours)
    expected = sorted((at, f"r{n}") for n, at in enumerate(times) if before - hours * H <= at <= before)
    assert [(c.at, c.event_id) for c in causes] == expected
    assert [c.event_id for c in causes] == ["r1", "r2", "r3"]


# -- fallback rate per rule --------------------------------------------------------------------------------------
@pytest.mark.parametrize("fallbacks, exposures", [(40, 200), (14, 100), (25, 150), (3, 30), (0, 50), (50, 50)])
def test_fallback_threshold_p_value_is_the_binomial_upper_tail(fallbacks: int, exposures: int) -> None:
    policy = FallbackRatePolicy(threshold=0.10)
    verdict = policy.judge(RuleFallbackState(), fallbacks=fallbacks, exposures=exposures)
    p = float(binom.sf(fallbacks - 1, exposures, 0.10))
    assert verdict.p_value == pytest.approx(p, rel=1e-9, abs=1e-300)
    assert verdict.breached is (fallbacks / exposures > 0.10 and p < policy.significance)
    assert verdict.rate == fallbacks / exposures


def test_rule_with_too_few_exposures_is_not_judged() -> None:
    verdict = FallbackRatePolicy(min_exposures=30).judge(RuleFallbackState(), fallbacks=29, exposures=29)
    assert (verdict.breached, verdict.p_value) == (False, 1.0) and "not judged" in verdict.reason


def test_jump_above_the_usual_rate_breaches_only_after_warmup() -> None:
    policy = FallbackRatePolicy(threshold=0.20, warmup_buckets=3)
    state = RuleFallbackState()
    for _ in range(3):
        assert not policy.judge(state, fallbacks=60, exposures=1000).breached   # 6 %, under 20 %: no jump yet
        state = policy.learn(state, fallbacks=10, exposures=1000)
    usual = state.pooled_fallbacks / state.pooled_exposures
    assert usual == pytest.approx(0.01) and state.buckets == 3
    verdict = policy.judge(state, fallbacks=60, exposures=1000)
    assert verdict.breached and verdict.expected == pytest.approx(usual)
    assert verdict.p_value == pytest.approx(float(binom.sf(59, 1000, usual)), rel=1e-9)
    small_jump = policy.judge(state, fallbacks=25, exposures=1000)           # 2.5 x usual: under jump_factor 3
    assert not small_jump.breached


def test_learning_decays_the_pool_by_its_half_life() -> None:
    policy = FallbackRatePolicy(half_life_buckets=2.0)
    state = policy.learn(RuleFallbackState(), fallbacks=10, exposures=100)
    state = policy.learn(state, fallbacks=0, exposures=100)
    keep = 0.5 ** 0.5
    assert (state.pooled_fallbacks, state.pooled_exposures) == pytest.approx((10 * keep, 100 * keep + 100))
    assert policy.learn(state, fallbacks=0, exposures=0) is state


@pytest.mark.parametrize("overrides", [{"threshold": 0.0}, {"threshold": 1.0}, {"significance": 0.5},
                                       {"jump_factor": 1.0}, {"min_exposures": 0}, {"warmup_buckets": 0},
                                       {"half_life_buckets": 0.0}])
def test_invalid_fallback_policy_is_refused(overrides: dict[str, float]) -> None:
    with pytest.raises(InvalidPolicy):
        FallbackRatePolicy(**overrides)


# -- variant balance ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("counts", [
    {"control": (1000, 30), "treatment": (1000, 90)},
    {"control": (400, 120), "treatment": (380, 100)},
    {"a": (300, 40), "b": (310, 45), "c": (290, 80)},
])
def test_chi_square_balance_matches_scipy_and_the_closed_form(counts: dict[str, tuple[int, int]]) -> None:
    verdict = balance_test("fallback", counts)
    table = np.array([[counts[v][1], counts[v][0] - counts[v][1]] for v in sorted(counts)], dtype=float)
    assert verdict.tested and verdict.test == "chi-square"
    assert verdict.p_value == pytest.approx(chi2_contingency(table, correction=False).pvalue, rel=1e-9)
    assert verdict.p_value == pytest.approx(pearson_p(table), rel=1e-9)
    assert verdict.rates == {v: k / n for v, (n, k) in counts.items()}
    assert verdict.units == {v: n for v, (n, _) in counts.items()}


@pytest.mark.parametrize("counts", [{"control": (30, 1), "treatment": (30, 7)}, {"control": (12, 0),
                                                                                  "treatment": (15, 4)}])
def test_small_two_by_two_tables_use_fishers_exact_test(counts: dict[str, tuple[int, int]]) -> None:
    verdict = balance_test("consent", counts)
    table = [[counts[v][1], counts[v][0] - counts[v][1]] for v in sorted(counts)]
    expected = np.outer(np.sum(table, axis=1), np.sum(table, axis=0)) / np.sum(table)
    assert expected.min() < 5
    assert verdict.tested and verdict.test == "fisher-exact"
    assert verdict.p_value == pytest.approx(fisher_exact(table).pvalue, rel=1e-9)


@pytest.mark.parametrize("counts", [
    {"control": (100, 10)},                                   # one variant
    {"control": (100, 0), "treatment": (90, 0)},              # outcome never happens
    {"control": (100, 100), "treatment": (90, 90)},           # outcome always happens
    {"control": (100, 10), "treatment": (0, 0)},              # a variant without units is left out
])
def test_no_balance_test_when_there_is_nothing_to_compare(counts: dict[str, tuple[int, int]]) -> None:
    verdict = balance_test("fallback", counts)
    assert (verdict.tested, verdict.p_value) == (False, 1.0)
    assert set(verdict.units) == {v for v, (n, _) in counts.items() if n > 0}


def test_first_in_hour_counts_a_user_hour_and_a_fallback_hour_once() -> None:
    hours: dict[str, tuple[float, float]] = {}
    assert first_in_hour(hours, "exp", T0, fallback=False) == (True, False)
    assert first_in_hour(hours, "exp", T0, fallback=False) == (False, False)
    assert first_in_hour(hours, "exp", T0, fallback=True) == (False, True)
    assert first_in_hour(hours, "exp", T0, fallback=True) == (False, False)
    assert first_in_hour(hours, "other", T0, fallback=True) == (True, True)
    assert first_in_hour(hours, "exp", T0 + H, fallback=True) == (True, True)
    assert hours == {"exp": (T0 + H, T0 + H), "other": (T0, T0)}


def test_tally_counts_exposures_fallbacks_and_user_hours() -> None:
    tally = GovernanceTally()
    common = {"channel": "web", "rule_id": "plg-web", "experiment": "exp", "variant": "b"}
    tally.add_exposure(**common, fallback=False, first_in_hour=True, consented=True, first_fallback_in_hour=False)
    tally.add_exposure(**common, fallback=True, first_in_hour=False, consented=True, first_fallback_in_hour=True)
    tally.add_exposure(**common, fallback=False, first_in_hour=True, consented=False, first_fallback_in_hour=False)
    tally.add_exposure(**common, fallback=False, first_in_hour=False, consented=True, first_fallback_in_hour=False)
    tally.add_exposure(channel="email", rule_id=None, experiment=None, variant="control", fallback=True,
                       first_in_hour=True, consented=True, first_fallback_in_hour=True)
    assert tally.rules == {"web|plg-web|exp": [4, 1], "email|none|": [1, 1]}
    assert tally.variants == {"exp|b": [2, 1, 1]}                # no experiment: no user-hour
    assert tally.personalized == {"web": 3}


# -- the scan ----------------------------------------------------------------------------------------------------
def test_on_violations_deduplicates_by_event_id_and_counts_adherence_per_channel() -> None:
    scan, state = scanner(), GovernanceState()
    first = scan.on_violations(state, [violation("e1", T0), violation("e2", T0 + 1, channel="email"),
                                       violation("e1", T0)], initiative=INITIATIVE)
    again = scan.on_violations(state, [violation("e2", T0 + 1, channel="email")], initiative=INITIATIVE)
    assert [e.transition for e in first] == ["opened"] and first[0].evidence.observed == 2.0
    assert again == []
    assert state.adherence == {"web": [0, 1], "email": [0, 1]}
    assert set(state.convicted) == {"e1", "e2"} and state.violations.count == 2


def test_on_bucket_resolves_the_consent_incident_after_quiet_buckets() -> None:
    scan, state = scanner(recovery_buckets=2), GovernanceState()
    scan.on_violations(state, [violation("e1", T0 + 60)], initiative=INITIATIVE)
    personalized = GovernanceTally(personalized={"web": 10})
    events = run_buckets(scan, state, [personalized, personalized, personalized])
    assert [[e.transition for e in out] for out in events] == [[], [], ["resolved"]]
    assert state.adherence == {"web": [30, 1]}


def test_probable_causes_escalate_a_kpi_incident_one_rung_when_a_cause_was_unapproved() -> None:
    scan, state = scanner(probable_cause_hours=6.0), GovernanceState()
    scan.on_rule_change(state, approved("r1", T0 + H), initiative=INITIATIVE)
    scan.on_rule_change(state, change("r2", T0 + 2 * H), initiative=INITIATIVE)
    scan.on_rule_change(state, change("r3", T0 - H), initiative=INITIATIVE)         # before the window
    incident = kpi_incident(bucket_end=T0 + 6 * H)
    enriched = scan.probable_causes(state, incident)
    assert [c["event_id"] for c in enriched.evidence.detail["probable_causes"]] == ["r1", "r2"]
    assert enriched.evidence.detail["kpi"] == "conversion_rate"
    assert (enriched.rung, enriched.owner, enriched.severity) == (incident.rung + 1, ARCHITECT, "critical")
    assert (enriched.incident_id, enriched.event_id) == (incident.incident_id, incident.event_id)


def test_probable_causes_do_not_escalate_when_every_cause_was_approved() -> None:
    scan, state = scanner(), GovernanceState()
    scan.on_rule_change(state, approved("r1", T0 + H), initiative=INITIATIVE)
    incident = kpi_incident()
    enriched = scan.probable_causes(state, incident)
    assert [c["approved"] for c in enriched.evidence.detail["probable_causes"]] == [True]
    assert (enriched.rung, enriched.owner, enriched.severity) == (incident.rung, incident.owner, incident.severity)


def test_probable_causes_do_not_climb_past_the_top_rung() -> None:
    scan, state = scanner(), GovernanceState()
    scan.on_rule_change(state, change("r1", T0 + H), initiative=INITIATIVE)
    top = len(ESCALATION_LADDER) - 1
    enriched = scan.probable_causes(state, kpi_incident(rung=top))
    assert (enriched.rung, enriched.owner) == (top, PRIVACY_LEAD)
    assert "probable_causes" in enriched.evidence.detail


def test_probable_causes_of_an_opening_from_the_breach_policy() -> None:
    scan, state = scanner(), GovernanceState()
    scan.on_rule_change(state, change("r1", T0 + 30 * 60), initiative=INITIATIVE)
    policy, breach, opened = BreachPolicy(BreachPolicyConfig(breach_span_buckets=2)), BreachState(), []
    for hour in (1, 2):
        evidence = Evidence(observed=0.05, expected=0.1, score=0.5, bucket_start=utc(T0 + hour * H),
                            bucket_end=utc(T0 + (hour + 1) * H))
        breach, opened = policy.observe(breach, initiative=INITIATIVE, kind="ctr_drop", series="s",
                                        breached=True, evidence=evidence)
    [incident] = opened
    enriched = scan.probable_causes(state, incident)
    assert [c["event_id"] for c in enriched.evidence.detail["probable_causes"]] == ["r1"]
    assert (incident.rung, enriched.rung, enriched.owner, enriched.severity) == (0, 1, ARCHITECT, "critical")


@pytest.mark.parametrize("kind, transition", [("feed_stale", "opened"), ("consent_violation", "opened"),
                                              ("unapproved_rule_change", "opened"), ("variant_imbalance", "opened"),
                                              ("conversion_drop", "escalated"), ("conversion_drop", "resolved")])
def test_probable_causes_leave_governance_kinds_and_later_transitions_alone(kind: str, transition: str) -> None:
    scan, state = scanner(), GovernanceState()
    scan.on_rule_change(state, change("r1", T0 + H), initiative=INITIATIVE)
    incident = kpi_incident(kind=kind, transition=transition)
    assert scan.probable_causes(state, incident) is incident


def test_probable_causes_without_a_change_in_the_window_leave_the_incident_alone() -> None:
    scan, state = scanner(probable_cause_hours=2.0), GovernanceState()
    scan.on_rule_change(state, change("r1", T0 + H), initiative=INITIATIVE)
    incident = kpi_incident(bucket_end=T0 + 6 * H)
    assert scan.probable_causes(state, incident) is incident


def test_rule_falling_back_over_the_threshold_twice_opens_rule_fallback() -> None:
    scan, state = scanner(fallback_threshold=0.10), GovernanceState()
    failing = rule_tally({"web|plg-web|": (200, 40), "web|plg-ok|": (200, 10)})
    events = run_buckets(scan, state, [failing, failing])
    assert events[0] == [] and state.rules["web|plg-web"].breach.status == "firing"
    [opened] = events[1]
    assert (opened.kind, opened.transition, opened.owner, opened.rung) == ("rule_fallback", "opened", ARCHITECT, 1)
    assert opened.series == [f"{INITIATIVE}|rule|web|plg-web"]
    assert opened.incident_id == incident_id(INITIATIVE, "rule_fallback", f"{INITIATIVE}|rule|web|plg-web",
                                             period_of(utc(T0)))
    assert opened.evidence.observed == 0.2 and opened.evidence.expected == 0.10
    assert opened.evidence.score == pytest.approx(float(binom.sf(39, 200, 0.10)), rel=1e-9)
    assert state.rules["web|plg-ok"].breach.status == "ok"
    assert state.rule_rates == {"web|plg-web": (40, 200), "web|plg-ok": (10, 200)}


def test_rule_with_fewer_than_min_exposures_is_not_judged() -> None:
    scan, state = scanner(), GovernanceState()
    thin = rule_tally({"web|plg-thin|": (scan.fallback_policy.min_exposures - 1, 20)})
    events = run_buckets(scan, state, [thin, thin, thin])
    assert events == [[], [], []]
    assert state.rules["web|plg-thin"].breach.status == "ok"


def test_rule_exposures_are_summed_over_experiments() -> None:
    scan, state = scanner(), GovernanceState()
    split = rule_tally({"web|plg-web|exp-a": (100, 20), "web|plg-web|exp-b": (100, 20)})
    events = run_buckets(scan, state, [split, split])
    assert [e.evidence.detail["exposures"] for e in events[1]] == [200]
    assert state.live == {"plg-web": {"exp-a": T0 + 2 * H, "exp-b": T0 + 2 * H}}


def fallback_imbalance(control: int, treatment: int) -> GovernanceTally:
    return variant_tally("exp", {"control": (1000, 1000, control), "treatment": (1000, 1000, treatment)})


def test_fallback_imbalance_between_variants_opens_variant_imbalance_after_two_breaches() -> None:
    scan, state = scanner(), GovernanceState()
    events = run_buckets(scan, state, [fallback_imbalance(30, 90), fallback_imbalance(30, 90)])
    assert events[0] == []
    [opened] = events[1]
    assert (opened.kind, opened.transition, opened.owner, opened.severity) == (
        "variant_imbalance", "opened", TESTING_LEAD, "critical")
    assert opened.series == [f"{INITIATIVE}|experiment|exp|fallback"]
    table = np.array([[30, 970], [90, 910]], dtype=float)
    assert opened.evidence.score == pytest.approx(pearson_p(table), rel=1e-9)
    assert opened.evidence.detail["rates"] == {"control": 0.03, "treatment": 0.09}
    assert not state.balance_verdicts["exp|consent"].tested       # everyone consented: nothing to compare
    assert "exp|consent" not in state.balance


def test_balanced_variants_open_nothing() -> None:
    scan, state = scanner(), GovernanceState()
    events = run_buckets(scan, state, [fallback_imbalance(30, 36)] * 3)
    assert events == [[], [], []]
    verdict = state.balance_verdicts["exp|fallback"]
    assert verdict.tested and verdict.p_value > scan.config.balance_significance
    assert state.balance["exp|fallback"].status == "ok"


def test_consent_imbalance_between_variants_is_judged_too() -> None:
    scan, state = scanner(), GovernanceState()
    skewed = variant_tally("exp", {"control": (1000, 950, 0), "treatment": (1000, 850, 0)})
    events = run_buckets(scan, state, [skewed, skewed])
    assert [e.series for e in events[1]] == [[f"{INITIATIVE}|experiment|exp|consent"]]


def test_live_experiments_learnt_from_tallies_feed_the_integrity_check() -> None:
    scan, state = scanner(), GovernanceState()
    run_buckets(scan, state, [rule_tally({"web|plg-web|exp-a": (10, 0), "web|none|exp-b": (10, 0)})])
    assert state.live == {"plg-web": {"exp-a": T0 + H}}
    events = scan.on_rule_change(state, approved("r1", T0 + 2 * H), initiative=INITIATIVE)
    assert [(e.kind, e.evidence.detail["experiments"]) for e in events] == [(INTEGRITY, ["exp-a"])]
    stale = scan.on_rule_change(state, approved("r2", T0 + H + LIVE_SECONDS + 1, rule="plg-web"),
                                initiative=INITIATIVE)
    assert stale == []                                             # experiment no longer live


def test_an_already_evaluated_bucket_is_ignored() -> None:
    scan, state = scanner(), GovernanceState()
    tally = GovernanceTally(personalized={"web": 5}, rules={"web|plg-web|": [200, 40]})
    assert run_buckets(scan, state, [tally]) == [[]]
    assert run_buckets(scan, state, [tally]) == [[]]               # the same bucket again
    assert state.adherence == {"web": [5, 0]}
    assert state.rules["web|plg-web"].breach.status == "pending"
    assert scan.on_bucket(state, tally, initiative=INITIATIVE, start=T0 - H, end=T0) == []


# -- checklist ---------------------------------------------------------------------------------------------------
OWNERS = {"consent_adherence": PRIVACY_LEAD, "fallback_rates": ARCHITECT, "rule_change_approval": ARCHITECT,
          "experiment_integrity": TESTING_LEAD, "variant_balance": TESTING_LEAD}


def statuses(scan: GovernanceScan, state: GovernanceState) -> dict[str, str]:
    items = scan.checklist(state)
    assert all(isinstance(item, ChecklistItem) for item in items)
    assert {item.item: item.owner for item in items} == OWNERS
    return {item.item: item.status for item in items}


def test_checklist_of_a_fresh_initiative() -> None:
    scan = scanner()
    assert statuses(scan, GovernanceState()) == {
        "consent_adherence": "pending", "fallback_rates": "pending", "rule_change_approval": "pass",
        "experiment_integrity": "pass", "variant_balance": "pass"}


def test_checklist_passes_when_everything_is_healthy() -> None:
    scan, state = scanner(), GovernanceState()
    run_buckets(scan, state, [GovernanceTally(personalized={"web": 50}, rules={"web|plg-web|exp": [200, 5]},
                                              variants={"exp|a": [100, 100, 3], "exp|b": [100, 100, 4]})])
    scan.on_rule_change(state, approved("r1", T0 + H, action="created"), initiative=INITIATIVE)
    assert set(statuses(scan, state).values()) == {"pass"}
    assert scan.checklist(state)[4].evidence == {"checked": ["exp|consent", "exp|fallback"]}


def test_checklist_fails_each_item_on_its_finding() -> None:
    scan, state = scanner(), GovernanceState()
    failing = GovernanceTally(personalized={"web": 50}, rules={"web|plg-web|exp": [200, 40]},
                              variants={"exp|a": [1000, 1000, 30], "exp|b": [1000, 1000, 90]})
    run_buckets(scan, state, [failing, failing])
    scan.on_violations(state, [violation("e1", T0 + 60)], initiative=INITIATIVE)
    scan.on_rule_change(state, change("r1", T0 + 2 * H), initiative=INITIATIVE)
    assert set(statuses(scan, state).values()) == {"fail"}
    items = {item.item: item for item in scan.checklist(state)}
    assert items["consent_adherence"].evidence == {"violations_by_channel": {"web": 1},
                                                   "open_incident": state.violations.incident}
    assert items["fallback_rates"].evidence["firing"] == ["web|plg-web"]
    assert items["rule_change_approval"].evidence["rules"] == ["plg-web"]
    assert items["experiment_integrity"].evidence == {"rules": ["plg-web"]}
    assert items["variant_balance"].evidence["firing"] == ["exp|fallback"]


def test_checklist_rule_change_approval_fails_while_open_passes_when_approved_pending_when_only_logged() -> None:
    scan, state = scanner(), GovernanceState()
    scan.on_rule_change(state, change("r1", T0), initiative=INITIATIVE)
    scan.on_rule_change(state, approved("r2", T0 + 60, rule="other"), initiative=INITIATIVE)
    assert statuses(scan, state)["rule_change_approval"] == "fail"
    scan.on_rule_change(state, approved("r3", T0 + 120), initiative=INITIATIVE)
    assert statuses(scan, state)["rule_change_approval"] == "pass"
    # A change without approver in the log and no open incident (e.g. restored state): it awaits approval.
    waiting = GovernanceState(audit=RuleAudit(log=[change("r4", T0)]))
    item = scan.checklist(waiting)[2]
    assert (item.status, [c["event_id"] for c in item.evidence["pending"]]) == ("pending", ["r4"])


def test_a_passing_item_lists_the_incidents_of_its_kind_earlier_in_the_period() -> None:
    scan, state = scanner(), GovernanceState()
    audit_events = scan.on_rule_change(state, change("r1", T0), initiative=INITIATIVE)
    audit_events += scan.on_rule_change(state, approved("r2", T0 + 60), initiative=INITIATIVE)
    for event in audit_events:
        state.note_opened(event)
        state.note_opened(event)  # noted once, whatever the repetition
    [opened] = [e for e in audit_events if e.transition == "opened"]
    item = {i.item: i for i in scan.checklist(state)}["rule_change_approval"]
    assert item.status == "pass"
    assert item.evidence["incidents_in_period"] == [opened.incident_id]
    assert item.summary.endswith("now; 1 incident(s) earlier in the period, resolved")


def test_a_late_grant_acquits_a_conviction_once_and_the_incident_resolves_at_zero() -> None:
    policy, user = consent_policy(), UserConsent()
    consented, convicted = policy.judge(user, "p1", exposure("x1", T0 + 60, region="EU"))   # no record, EU opt-in
    assert not consented and convicted is not None
    [acquittal] = policy.record(user, "p1", at=T0, purpose="personalization", granted=True, region="EU")
    assert (acquittal.event_id, acquittal.acquitted) == ("x1", True)
    assert policy.record(user, "p1", at=T0 - 5, purpose="personalization", granted=True) == [], "acquitted once"

    scan, state = scanner(), GovernanceState()
    opened = scan.on_violations(state, [convicted], initiative=INITIATIVE)
    closed = scan.on_violations(state, [acquittal], initiative=INITIATIVE)
    assert [e.transition for e in opened + closed] == ["opened", "resolved"]
    assert closed[0].incident_id == opened[0].incident_id and closed[0].evidence.detail["acquitted"] == ["x1"]
    assert state.adherence["web"][1] == 0 and "x1" not in state.convicted
    assert scan.on_violations(state, [acquittal], initiative=INITIATIVE) == [], "an acquittal is applied once"


def test_a_flood_of_violations_is_reported_when_the_count_doubles_and_at_each_bucket_close() -> None:
    state, reported = ViolationState(), []
    for n in range(1, 41):  # forty steps of one violation each, as a replayed backlog would deliver them
        state, events = observe_violations(state, [violation(f"e{n}", T0 + n)], initiative=INITIATIVE)
        reported += [(e.transition, e.evidence.observed) for e in events]
    assert reported == [("opened", 1.0), ("updated", 2.0), ("updated", 4.0), ("updated", 8.0), ("updated", 16.0),
                        ("updated", 32.0)]
    state, events = observe_quiet_bucket(state, initiative=INITIATIVE, bucket_start=T0, bucket_end=T0 + H,
                                         recovery_buckets=3)
    assert [(e.transition, e.evidence.observed) for e in events] == [("updated", 40.0)], "the bucket's totals"
    assert all(e.occurred_at >= utc(T0) for e in events)


def test_adherence_never_rounds_a_violation_up_to_a_hundred_percent() -> None:
    import doctest

    import governance.scan

    assert doctest.testmod(governance.scan).failed == 0
    assert adherence_pct(10**9, 1) < 100.0
    assert adherence_pct(3, 1) == pytest.approx(200 / 3, abs=1e-4)
