"""One frozen settings object, read once from `PMON_*` variables and passed down.

Nothing reads the environment anywhere else; tests build their own `Settings`.
The commands add the config file under the variables (`monitor.config_file`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from detectors.kpi_threshold import KpiThresholdConfig
from incidents.breach_policy import BreachPolicyConfig

if TYPE_CHECKING:
    from experiments.spec import ExperimentSpec
    from governance.consent_ledger import ConsentPolicy
    from governance.scan import GovernanceConfig

DEV_PSEUDONYM_KEY = "pmon-dev-key-change-me"


def _monitored() -> tuple[str, ...]:
    from detectors.registry import monitored

    return monitored()


class RosterRole(BaseModel):
    """The people of one role: the first is the lead, the others stand in, in this order."""

    model_config = ConfigDict(extra="forbid")

    people: list[str] = Field(min_length=1)
    unavailable: dict[str, list[tuple[date, date]]] = Field(
        default_factory=dict, description=("Person -> the date ranges (first and last day, inclusive) they are away.")
    )

    @model_validator(mode="after")
    def _known_people_and_ranges(self) -> RosterRole:
        strangers = sorted(set(self.unavailable) - set(self.people))
        if strangers:
            raise ValueError(f"unavailable names {strangers}, who are not among the people {self.people}")
        for person, ranges in self.unavailable.items():
            for start, end in ranges:
                if end < start:
                    raise ValueError(f"{person}'s range {start} .. {end} ends before it starts")
        return self


DEFAULT_ALERT_THRESHOLD = 0.2
STEP_SECONDS = 30.0  # what a transaction allows for one step's own work (a batch, a bucket close)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PMON_", frozen=True, extra="ignore")

    kafka_bootstrap: str = Field("localhost:9092", description="Kafka bootstrap servers, comma separated.")
    topic_prefix: str = Field("pmon", description="Prefix of every topic name (`<prefix>.engagement`, ...).")
    app_id: str = Field(
        "personalization-monitor", description="Faust app id: the consumer group and the prefix of internal topics."
    )
    topic_partitions: int = Field(4, ge=1, le=1024, description="Partitions of the topics the worker creates.")
    topic_replicas: int = Field(1, ge=1, le=16, description="Replication factor of the topics the worker creates.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Broker security protocol, passed through to Kafka."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field("PLAIN", description="SASL mechanism.")
    sasl_username: str | None = Field(None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(None, description="SASL password.")
    ssl_cafile: Path | None = Field(None, description="CA bundle for SSL / SASL_SSL.")

    web_host: str = Field("127.0.0.1", description="Address of the worker's web server (report view, /metrics).")
    web_port: int = Field(6066, ge=1, le=65535, description="Port of the worker's web server.")
    batch_size: int = Field(
        5000, ge=1, le=100_000, description="Records stage 1 takes at once: one batch, one transaction."
    )
    state_dictionary_samples: int = Field(
        2000,
        ge=0,
        description="User states a partition's stage 1 writes before it trains the zstd dictionary it then compresses "
        "them with (0: store them uncompressed).",
    )
    user_cache_size: int = Field(
        200_000, ge=1_000, description="Users whose state stage 1 keeps decoded in memory (the rest is kept encoded)."
    )
    session_timeout_seconds: float = Field(
        20,
        ge=6,
        le=300,
        description="How long the group waits for a silent worker before it hands the worker's partitions to the others.",
    )
    commit_interval_seconds: float = Field(
        0.5,
        gt=0,
        le=60,
        description="How long a stage keeps a partition's transaction open: users changed in it are written once per interval; stage 2 sees its partials at the commit. A batch that found a consent violation, and a stage-2 step that emitted an incident transition, commit at once.",
    )
    cuped_pre_period_days: int = Field(
        14,
        ge=0,
        le=90,
        description="Days before a user's first exposure to an experiment whose conversions and revenue CUPED adjusts the readout with (whole days, counted up to the exposure; 0 keeps no per-user history and turns CUPED off). Stage 1 keeps each converting user's conversions per day for this long.",
    )
    consent_skew_seconds: float = Field(
        0.5,
        ge=0,
        le=60,
        description="How much later than an exposure a consent record produced before it may reach its partition: stage 1 judges an exposure once the consent partition was read to its end this long after the exposure was produced (it adds this much to the latency of everything behind an exposure).",
    )
    batch_within_seconds: float = Field(0.5, gt=0, le=60, description="Longest wait to fill a batch.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    ready_fetch_seconds: float = Field(
        10,
        ge=1,
        le=600,
        description="`/ready` fails when the broker answered none of a stage's fetches for this long (with partitions held).",
    )
    ready_max_lag: int = Field(
        100_000,
        ge=0,
        description="`/ready` fails when a stage is more records than this behind the last stable offsets of the partitions it holds.",
    )
    broker_wait_seconds: float = Field(
        60,
        ge=0,
        le=86_400,
        description="How long `pmon worker` waits at its start for a broker that is not there yet (a line in the log every 10 s) before it gives up with a one-line error; 0 gives up at once. A broker that goes away later is waited for as long as it is away (`/ready` fails meanwhile).",
    )

    bucket_seconds: int = Field(3600, ge=60, le=86_400, description="Width of a tumbling window bucket.")
    allowed_lateness_seconds: int = Field(
        600, ge=0, le=86_400, description="How far behind the watermark an event is still counted."
    )
    retention_days: int = Field(30, ge=1, le=400, description="How long closed buckets are kept for reports.")
    max_future_seconds: int = Field(
        3600, ge=0, description="How far ahead of the wall clock an event time may be; later ones are dead-lettered."
    )
    idle_close_seconds: float = Field(
        900, gt=0, description="Wall-clock quiet time after which a feed's open buckets are closed."
    )
    check_interval_seconds: float = Field(
        60,
        gt=0,
        le=3600,
        description="How often every feed is checked for freshness and idle buckets (wall clock; replay time in a replay).",
    )
    freshness_objective_seconds: int = Field(
        900,
        ge=1,
        description="Least silence of a feed (engagement x initiative) that makes it stale; longer for a quiet feed, see docs/semantics.md.",
    )

    alert_threshold: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="The KPI threshold, optional: when set, a relative drop of PMON_ALERT_KPI against a series' baseline by this much or more, significant at PMON_SIGNIFICANCE, is a breach on every series (the kpi_threshold detector), and a second breach within PMON_BREACH_SPAN_BUCKETS opens a kpi_threshold incident. Also conversion_drop's threshold and the report's flag, 0.2 when unset.",
    )
    alert_kpi: Literal["cvr", "ctr"] = Field(
        "cvr",
        description="The KPI PMON_ALERT_THRESHOLD watches: cvr (conversions per exposure) or ctr (clicks per exposure).",
    )
    baseline_buckets: int = Field(
        72,
        ge=2,
        le=10_000,
        description="kpi_threshold and conversion_drop: trailing closed buckets that form a series' baseline.",
    )
    warmup_buckets: int = Field(
        24,
        ge=1,
        le=10_000,
        description="kpi_threshold and conversion_drop: closed buckets with traffic a series needs before it can alert.",
    )
    min_exposures: int = Field(
        200, ge=1, description="kpi_threshold and conversion_drop: exposures a bucket needs to be scored."
    )
    significance: float = Field(
        0.001,
        gt=0,
        lt=0.5,
        description="kpi_threshold and conversion_drop: one-sided binomial p-value a drop must reach to be a breach.",
    )
    detect_warmup_points: int = Field(
        12,
        ge=3,
        le=10_000,
        description="`pmon detect`'s default detector (robust_series): points of a series it learns before it may alert, and points of a lasting change (a level shift) after which, once its points have settled, that is the new normal (at most three times as many).",
    )
    breach_span_buckets: int = Field(3, ge=1, description="A second breach within this many buckets opens an incident.")
    recovery_span_buckets: int = Field(3, ge=1, description="Consecutive healthy buckets that resolve an incident.")
    escalate_every: int = Field(
        6, ge=1, description="Further breaches of a firing incident that climb one rung of the ladder."
    )
    series_detectors: tuple[str, ...] = Field(
        default_factory=lambda: _monitored(),
        description="Detectors run on every series (JSON list; names from detectors/registry.py). Default: the "
        "registry's choice per KPI, measured by bench/detection.py. kpi_threshold (the exact "
        "binomial test tuned by PMON_ALERT_THRESHOLD, PMON_ALERT_KPI, PMON_BASELINE_BUCKETS, "
        "PMON_WARMUP_BUCKETS, PMON_MIN_EXPOSURES and PMON_SIGNIFICANCE) runs besides, always.",
    )
    allocations: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description='Planned variant shares per initiative (JSON, e.g. {"PLG Onboarding": {"control": 0.5, '
        '"treatment": 0.5}}); an initiative without one has its shares learnt from healthy buckets.',
    )
    experiments: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Experiment plans (JSON, by experiment id): the fields of experiments.spec.ExperimentSpec, e.g. "
        '{"onboarding-checklist": {"allocation": {"control": 0.5, "treatment": 0.5}, "success_metrics": '
        '[{"metric": "conversions_per_user"}], "guardrails": [{"metric": "revenue_per_user", "margin": 0.05}], '
        '"mde": 0.05}}. An experiment not listed is read with its initiative\'s PMON_ALLOCATIONS and the '
        "defaults (success metric: conversion); without either, it is not read out.",
    )
    retry_limit: int = Field(2, ge=0, le=10, description="Retries of a failed sink write before it is dead-lettered.")

    consent_policies: dict[str, Literal["opt-in", "opt-out"]] = Field(
        default_factory=lambda: {"EU": "opt-in", "UK": "opt-in", "US": "opt-out"},  # type: ignore[arg-type]  # mypy reads str, not the Literal
        description="Consent policy per region (JSON): opt-in, a user without a record has not consented; opt-out, "
        "has. The region is the one of the user's latest consent record, else the exposure's.",
    )
    consent_default_policy: Literal["opt-in", "opt-out"] = Field(
        "opt-in", description="Consent policy of a region not in PMON_CONSENT_POLICIES (and of an unknown region)."
    )
    consent_grace_seconds: float = Field(
        60,
        ge=0,
        le=86_400,
        description="A revocation takes effect this long after its event time (propagation to decisioning).",
    )
    consent_lookback_seconds: float = Field(
        3600,
        ge=0,
        le=7 * 86_400,
        description="How far back (event time) a late-arriving revocation still convicts a user's remembered personalized exposures.",
    )
    fallback_threshold: float = Field(
        0.10,
        gt=0,
        lt=1,
        description="Fallback rate per rule (initiative x channel x rule) above which a bucket breaches, when significant.",
    )
    balance_significance: float = Field(
        0.001,
        gt=0,
        lt=0.5,
        description="p-value under which variants' consent or fallback rates differ beyond chance (chi-square).",
    )
    probable_cause_hours: float = Field(
        6,
        ge=0,
        le=720,
        description="Rule changes this many hours before a KPI incident are listed as its probable causes.",
    )

    roster: dict[str, RosterRole] = Field(
        default_factory=dict,
        description=(
            'People per role (JSON), e.g. {"Testing Lead": {"people": ["Ana", "Ben"], "unavailable": {"Ana": '
            '[["2026-11-10", "2026-11-12"]]}}}: the first is the lead, the others stand in, in order. An incident is '
            "assigned to its owner role's lead, or to the first substitute available on its day; the plan records who "
            "and why. A role without an entry is assigned to nobody by name."
        ),
    )

    plan_dir: Path = Field(Path("pmon-plans"), description="Directory of the plan documents.")
    pseudonym_key: SecretStr = Field(
        SecretStr(DEV_PSEUDONYM_KEY),
        description=(
            "Key of the keyed hash that pseudonymises user ids: a long random secret, kept stable (a new key gives "
            "every user a new pseudonym). `pmon worker` refuses the built-in development key unless "
            "PMON_DEVELOPMENT is true."
        ),
    )
    development: bool = Field(
        False,
        description=(
            "A development run: lets `pmon worker` start with the built-in development pseudonym key, whose "
            "pseudonyms anyone can map back to user ids by hashing candidate ids. Off, the worker refuses that key "
            "(set PMON_PSEUDONYM_KEY). pmon demo (simulated users) and pmon monitor --events do not need it: they "
            "replay in one process on your machine and publish nothing, and --events reads a file that holds the raw "
            "ids already, next to which its plan files and stored state stay. Set PMON_PSEUDONYM_KEY before you share "
            "those (a consent incident lists pseudonyms)."
        ),
    )
    alertmanager_url: str | None = Field(
        None,
        description=(
            "Alertmanager the worker pushes incidents to, e.g. `http://alertmanager:9093` (unset: off). Every incident "
            "transition is POSTed to `<url>/api/v2/alerts` with the labels alertname=PmonIncident, incident_id, kind, "
            "severity, initiative and owner_role, so your routes page as for any alert; a resolution sets endsAt. Open "
            "incidents are re-sent at every check (PMON_CHECK_INTERVAL_SECONDS) with endsAt four checks ahead, so an "
            "incident the worker stops vouching for ends on its own. A push still failing after PMON_RETRY_LIMIT "
            "retries is dead-lettered and raises monitoring_degraded. Replays in one process (pmon demo, pmon monitor "
            "--events) do not push."
        ),
    )
    alertmanager_timeout_seconds: float = Field(
        2,
        gt=0,
        le=5,
        description=(
            "Timeout of one push to Alertmanager. Stage 2 waits for the push inside its partition's transaction, "
            "up to PMON_RETRY_LIMIT + 1 times this per step while Alertmanager does not answer; the transaction's "
            "timeout allows for it (docs/operations.md, Broker faults)."
        ),
    )

    @field_validator("alertmanager_url")
    @classmethod
    def _alertmanager_is_http(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError(f"{url!r} is not an http:// or https:// URL, e.g. http://alertmanager:9093")
        return url.rstrip("/") if url is not None else None

    @field_validator("series_detectors")
    @classmethod
    def _known_series_detectors(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        from detectors.registry import DETECTORS, PER_INITIATIVE

        unknown = [n for n in names if n not in DETECTORS or n in PER_INITIATIVE]
        if unknown or not names:
            usable = sorted(set(DETECTORS) - PER_INITIATIVE)
            raise ValueError(f"unknown or per-initiative {unknown or 'empty list'}; use names from {usable}")
        return names

    @field_validator("allocations")
    @classmethod
    def _allocations_are_shares(cls, allocations: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        for initiative, shares in allocations.items():
            if not shares or any(not share > 0 for share in shares.values()):
                raise ValueError(f"{initiative!r} must give every variant a positive share, got {shares}")
        return allocations

    @field_validator("experiments")
    @classmethod
    def _experiments_are_specs(cls, experiments: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        from pydantic import ValidationError

        from experiments.spec import ExperimentSpec

        for experiment, fields in experiments.items():
            try:
                ExperimentSpec.model_validate({**fields, "experiment": experiment})
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                raise ValueError(f"{experiment!r}: {where}: {first['msg']}") from None
        return experiments

    def experiment_spec(
        self, experiment: str, initiative: str, variants_seen: Iterable[str] = ()
    ) -> ExperimentSpec | None:
        """The plan of an experiment: PMON_EXPERIMENTS, else its initiative's allocation with the defaults, else
        an equal split over the variants seen (one of them `control`), said so in the memo; else None."""
        from experiments.spec import ExperimentSpec

        fields = self.experiments.get(experiment)
        if fields is None:
            allocation = self.allocations.get(initiative)
            if allocation is not None:
                fields = {"allocation": allocation}
            else:
                seen = sorted(set(variants_seen))
                if len(seen) < 2 or "control" not in seen:
                    return None
                fields = {
                    "allocation": {variant: 1.0 / len(seen) for variant in seen},
                    "assumptions": (
                        f"no plan configured (PMON_EXPERIMENTS or PMON_ALLOCATIONS): an equal split over the variants "
                        f"seen ({', '.join(seen)}) and the default metrics are assumed",
                    ),
                }
        return ExperimentSpec.model_validate({"initiative": initiative, **fields, "experiment": experiment})

    @model_validator(mode="after")
    def _warmup_fits_baseline(self) -> Settings:
        if self.warmup_buckets > self.baseline_buckets:
            raise ValueError(
                f"warmup_buckets={self.warmup_buckets} exceeds baseline_buckets={self.baseline_buckets}: "
                "a series could never warm up; raise the baseline or lower the warm-up"
            )
        return self

    @property
    def transaction_timeout_seconds(self) -> float:
        """The Kafka transaction timeout of both stages' partitions: the commit interval, the longest Alertmanager
        push with its retries, and `STEP_SECONDS` for a step's own work. A broker aborts (and fences) a transaction
        open longer, so it follows the settings rather than a constant they could outgrow.

        >>> Settings(commit_interval_seconds=60, retry_limit=10, alertmanager_timeout_seconds=5).transaction_timeout_seconds
        145.0
        """
        push = (self.retry_limit + 1) * self.alertmanager_timeout_seconds
        return self.commit_interval_seconds + push + STEP_SECONDS

    def as_environment(self, base: dict[str, str]) -> dict[str, str]:
        """`base` with these settings as its only PMON_* variables: the environment of a child worker."""
        env = {k: v for k, v in base.items() if not k.startswith("PMON_")}
        as_json = self.model_dump(mode="json")
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, (list, tuple, dict)):
                value = json.dumps(as_json[name])  # pydantic-settings reads complex values as JSON
            env[f"PMON_{name.upper()}"] = str(value)
        return env

    def consent_policy(self) -> ConsentPolicy:
        from governance.consent_ledger import ConsentPolicy

        return ConsentPolicy(
            regions=dict(self.consent_policies),
            default_policy=self.consent_default_policy,
            grace_seconds=self.consent_grace_seconds,
            lookback_seconds=self.consent_lookback_seconds,
        )

    def governance_config(self) -> GovernanceConfig:
        from governance.scan import GovernanceConfig

        return GovernanceConfig(
            fallback_threshold=self.fallback_threshold,
            balance_significance=self.balance_significance,
            probable_cause_hours=self.probable_cause_hours,
            recovery_buckets=self.recovery_span_buckets,
        )

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}.{name}"

    @property
    def effective_alert_threshold(self) -> float:
        """The threshold in force: the one set, or the default of conversion_drop and the report's flag."""
        return self.alert_threshold if self.alert_threshold is not None else DEFAULT_ALERT_THRESHOLD

    def detector_config(self) -> KpiThresholdConfig:
        return KpiThresholdConfig(
            alert_threshold=self.effective_alert_threshold,
            kpi=self.alert_kpi,
            baseline_buckets=self.baseline_buckets,
            warmup_buckets=self.warmup_buckets,
            min_exposures=self.min_exposures,
            significance=self.significance,
        )

    def breach_config(self) -> BreachPolicyConfig:
        return BreachPolicyConfig(
            breach_span_buckets=self.breach_span_buckets,
            recovery_span_buckets=self.recovery_span_buckets,
            escalate_every=self.escalate_every,
        )

    def monitored_thresholds(self) -> dict[str, float | int | str]:
        """The thresholds and cadence the plan's change log watches."""
        return {
            "alert_threshold": self.effective_alert_threshold,
            "alert_kpi": self.alert_kpi if self.alert_threshold is not None else "off",
            "baseline_buckets": self.baseline_buckets,
            "warmup_buckets": self.warmup_buckets,
            "min_exposures": self.min_exposures,
            "significance": self.significance,
            "breach_span_buckets": self.breach_span_buckets,
            "recovery_span_buckets": self.recovery_span_buckets,
            "escalate_every": self.escalate_every,
            "bucket_seconds": self.bucket_seconds,
            "allowed_lateness_seconds": self.allowed_lateness_seconds,
            "freshness_objective_seconds": self.freshness_objective_seconds,
            "check_interval_seconds": self.check_interval_seconds,
            "consent_grace_seconds": self.consent_grace_seconds,
            "fallback_threshold": self.fallback_threshold,
            "balance_significance": self.balance_significance,
            "probable_cause_hours": self.probable_cause_hours,
        }


# The settings by concern, for the reference (docs/configuration.md); every field is in exactly one (tested).
SETTING_GROUPS: dict[str, tuple[str, ...]] = {
    "Broker": (
        "kafka_bootstrap",
        "topic_prefix",
        "app_id",
        "topic_partitions",
        "topic_replicas",
        "security_protocol",
        "sasl_mechanism",
        "sasl_username",
        "sasl_password",
        "ssl_cafile",
        "broker_wait_seconds",
    ),
    "Worker": (
        "web_host",
        "web_port",
        "batch_size",
        "user_cache_size",
        "state_dictionary_samples",
        "session_timeout_seconds",
        "commit_interval_seconds",
        "consent_skew_seconds",
        "batch_within_seconds",
        "log_level",
        "ready_fetch_seconds",
        "ready_max_lag",
    ),
    "Windows and event time": (
        "bucket_seconds",
        "allowed_lateness_seconds",
        "retention_days",
        "max_future_seconds",
        "idle_close_seconds",
        "check_interval_seconds",
        "freshness_objective_seconds",
    ),
    "Detection and breach policy": (
        "alert_threshold",
        "alert_kpi",
        "baseline_buckets",
        "warmup_buckets",
        "min_exposures",
        "significance",
        "detect_warmup_points",
        "breach_span_buckets",
        "recovery_span_buckets",
        "escalate_every",
        "series_detectors",
    ),
    "Governance": (
        "consent_policies",
        "consent_default_policy",
        "consent_grace_seconds",
        "consent_lookback_seconds",
        "fallback_threshold",
        "balance_significance",
        "probable_cause_hours",
        "roster",
    ),
    "Experiments": ("allocations", "experiments", "cuped_pre_period_days"),
    "Outputs, sinks and privacy": (
        "plan_dir",
        "retry_limit",
        "alertmanager_url",
        "alertmanager_timeout_seconds",
        "pseudonym_key",
        "development",
    ),
}
