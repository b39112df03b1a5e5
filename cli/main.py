"""`pmon`: demo, simulate, worker, monitor, detect, plan, schemas.

Misuse prints one line, `pmon <command>: error: <what> — <how to fix>`, and
exits with code 2.
"""

from __future__ import annotations

import gc
import itertools
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, get_args

import click
import orjson

from cli.exceptions import CliError
from monitor.report_request import WINDOWS, Detail, ReportRequest
from streams.exceptions import StreamsError

if TYPE_CHECKING:  # heavy: imported where used, so that --help and usage errors answer at once
    from datetime import datetime

    from rich.console import Console

    from monitor.settings import Settings

log = logging.getLogger("pmon")
USAGE_EXIT = 2
# The incident kinds that answer each kind the simulator injects. A feed gap or a suppressed
# variant is also a volume drop of the series it silences; a fallback surge on one variant is
# also a rule falling back and an imbalance between the experiment's variants.
ANSWERS: dict[str, set[str]] = {
    "conversion_drop": {"conversion_drop", "level_shift", "kpi_threshold"},
    "ctr_drop": {"ctr_drop", "level_shift", "kpi_threshold"},
    "spike": {"kpi_spike"},
    "volume_drop": {"volume_drop"},
    "fallback_surge": {"fallback_surge", "rule_fallback", "variant_imbalance"},
    "feed_gap": {"feed_stale", "volume_drop"},
    "variant_suppression": {"variant_suppression", "volume_drop"},
    "consent_violation": {"consent_violation"},
    "unapproved_rule_change": {"unapproved_rule_change"},
    "experiment_rule_change": {"experiment_integrity"},
}
# About a whole initiative (its feed, a rule, an experiment), not about series: matched by initiative.
INITIATIVE_KINDS = {
    "feed_stale",
    "unapproved_rule_change",
    "experiment_integrity",
    "rule_fallback",
    "variant_imbalance",
}


class UsageFailure(click.ClickException):
    """A one-line, actionable error with exit code 2, naming the command that failed."""

    exit_code = USAGE_EXIT

    def __init__(self, message: str, command_path: str | None = None) -> None:
        super().__init__(message)
        self.command_path = command_path


def _run_async(awaitable: Any) -> Any:
    import asyncio  # not at module level: --help does not need it

    return asyncio.run(awaitable)


def _fail(message: str) -> NoReturn:
    context = click.get_current_context(silent=True)
    raise UsageFailure(message, context.command_path if context else None)


def _settings(**overrides: Any) -> Settings:
    """Options over PMON_* variables over the config file over defaults; a bad value is one line, exit 2."""
    return _loaded(**overrides).settings


def _loaded(**overrides: Any) -> Any:
    from monitor.config_file import ConfigError, load_settings

    try:
        return load_settings(_config_option(), overrides=overrides)
    except ConfigError as exc:
        _fail(str(exc))


def _config_option() -> Path | None:
    """The --config of the command or of `pmon` before it."""
    context = click.get_current_context(silent=True)
    while context is not None:
        if context.params.get("config") is not None:
            return context.params["config"]
        context = context.parent
    return None


_config_file_option = click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Config file (TOML, keys as in docs/configuration.md); default PMON_CONFIG, else ./pmon.toml if present. "
    "PMON_* variables and options override it.",
)


def _configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


FORMATS = ("terminal", "markdown", "json", "html")
_format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="terminal",
    show_default=True,
    help="terminal: tables fitted to the terminal (plain text when piped); markdown: for a ticket or wiki; json: "
    "the report document (schemas/report.schema.json); html: a self-contained dashboard file.",
)
_out_option = click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the report to this file instead of standard output.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@_config_file_option
def pmon(config: Path | None) -> None:
    """Personalization Monitor: streaming monitor for personalization programs."""


# --------------------------------------------------------------------------- config
@pmon.group("config")
def config_group() -> None:
    """The effective settings and where each came from."""


@config_group.command("show")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: setting -> {value, source}.")
def config_show(as_json: bool) -> None:
    """Print every setting's value and its source: option, env (PMON_*), file, or default. Secrets are masked."""
    from monitor.config_file import stray_variables

    loaded = _loaded()
    for line in stray_variables(os.environ):
        click.echo(f"pmon config show: {line}", err=True)
    values = loaded.settings.model_dump(mode="json")  # secrets dump as asterisks
    where = {"file": str(loaded.file), "env": "env", "default": "default", "option": "option"}
    if as_json:
        click.echo(
            orjson.dumps(
                {name: {"value": value, "source": where[loaded.sources[name]]} for name, value in values.items()},
                option=orjson.OPT_INDENT_2,
            ).decode()
        )
        return
    click.echo(f"# config file: {loaded.file or 'none'}")
    width = max(map(len, values))
    for name, value in values.items():
        source = loaded.sources[name]
        label = f"PMON_{name.upper()}" if source == "env" else where[source]
        click.echo(f"{name:<{width}} = {orjson.dumps(value).decode()}  # {label}")


# --------------------------------------------------------------------------- demo
@pmon.command()
@click.option("--days", type=click.IntRange(4, 60), default=14, show_default=True, help="Days of simulated history.")
@click.option("--seed", type=int, default=7, show_default=True)
@click.option(
    "--plan-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the plan is written (default PMON_PLAN_DIR).",
)
@click.option("--detail", type=click.Choice(get_args(Detail)), default="full", show_default=True)
@click.option(
    "--alert-threshold",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.2,
    show_default=True,
    help="KPI threshold: a relative drop breached twice opens a kpi_threshold incident.",
)
@_format_option
@_out_option
def demo(
    days: int, seed: int, plan_dir: Path | None, detail: str, alert_threshold: float, fmt: str, out: Path | None
) -> None:
    """Run a simulated 'PLG Onboarding' program through the pipeline in one process."""
    from simulation.simulator import SimulationSpec, demo_program, labels, simulate

    spec = SimulationSpec(seed=seed, days=days, initiatives=demo_program(days), propensity_sigma=0.8)
    # The simulated experiments' plans, as a user would configure theirs: the planned allocation, conversions per
    # user as the success metric, revenue per user as a guardrail (no worse than 5 %).
    planned = {
        i.name: dict(zip(i.variants, i.planned_allocation, strict=True)) for i in spec.initiatives if i.experiment
    }
    experiments = {
        i.experiment: {
            "allocation": planned[i.name],
            "mde": 0.05,
            "success_metrics": [{"metric": "conversions_per_user"}],
            "guardrails": [{"metric": "revenue_per_user", "margin": 0.05}],
        }
        for i in spec.initiatives
        if i.experiment
    }
    settings = _settings(
        plan_dir=plan_dir,
        log_level="WARNING",
        allocations=planned,
        experiments=experiments,
        alert_threshold=alert_threshold,
    )
    _configure_logging(settings)
    console = _console()
    from cli.background import in_background

    # Simulating takes about a third of the demo's CPU: in a second process, on the second core.
    driver, elapsed = _run_embedded(settings, in_background(lambda: _encoded(simulate(spec))), console, total=None)
    truth = labels(spec)
    _print_report(driver.initiative_stage, "PLG Onboarding", "14d", detail, None, alert_threshold, console, (fmt, out))
    if fmt != "terminal" and out is None:
        return  # stdout holds the report document alone
    monitored = [label for label in truth if label["kind"] in ANSWERS]
    found, unexplained = _match_labels(driver.run_result.incidents, monitored)
    _print_found(found, console)
    _print_checklists(driver, console)
    _print_experiments(driver, spec, console)
    # An injected sample ratio mismatch also shows as a variant getting less than its planned share.
    srm = {i.name for i in spec.initiatives if i.planned_allocation != i.allocation}
    unexplained = [
        i
        for i in unexplained
        if not (i.kind == "variant_suppression" and i.initiative in srm) and i.kind != "experiment_decision"
    ]  # decisions are in the readouts table above
    later = sorted({label["kind"] for label in truth} - set(ANSWERS))
    if later:
        console.print(f"Also injected, not monitored yet: {', '.join(later)}")
    console.print(f"Incidents with no injected cause (false alarms): {len(unexplained)}")
    for incident in unexplained:
        console.print(
            f"  {incident.kind} on {', '.join(incident.series)} at {incident.evidence.bucket_start:%m-%d %H:%M}"
        )
    console.print(
        f"{driver.run_result.records:,} records in {elapsed:.1f} s "
        f"({driver.run_result.records / elapsed:,.0f} records/s); "
        f"plan files in {settings.plan_dir.resolve()}"
    )


def _expected_decision(initiative: Any, spec: Any) -> str:
    """What a trustworthy readout should say of a simulated experiment at the end of the run."""
    if initiative.planned_allocation != initiative.allocation or any(
        i.kind == "experiment_rule_change" and i.initiative == initiative.name for i in spec.injections
    ):
        return "investigate"  # a sample ratio mismatch; a rule serving the experiment changed mid-way
    lift = initiative.variant_cvr_lifts[1] / initiative.variant_cvr_lifts[0]
    return "ship" if lift > 1.0 else "roll_back" if lift < 1.0 else "keep_running"


def _print_experiments(driver: Any, spec: Any, console: Console) -> None:
    """Each experiment's recommendation next to what was injected, with the memo's headline."""
    console.print("[bold]Experiment readouts[/] (memos in each initiative's report and plan)")
    for initiative in spec.initiatives:
        if not initiative.experiment:
            continue
        state = (driver.initiative_stage.state.experiments.get(initiative.name) or {}).get(initiative.experiment)
        memo = state.memo if state is not None else None
        lift = initiative.variant_cvr_lifts[1] / initiative.variant_cvr_lifts[0] - 1
        injected = (
            "sample ratio mismatch"
            if initiative.planned_allocation != initiative.allocation
            else f"{lift:+.0%} conversions"
        )
        if any(i.kind == "experiment_rule_change" and i.initiative == initiative.name for i in spec.injections):
            injected += ", then a rule serving it changed"
        got = memo.summary.state if memo else "no readout"
        expected = _expected_decision(initiative, spec)
        verdict = "[green]as expected[/]" if got == expected else f"[bold red]expected {expected}[/]"
        console.print(
            f"  {initiative.experiment} (injected: {injected}): "
            f"{got}{f' {memo.summary.variant}' if memo and memo.summary.variant else ''}, {verdict}"
        )
        if memo:
            console.print(f"    {memo.summary.headline}")
            if memo.summary.primary_variance_reduction is not None:
                console.print(
                    f"    CUPED: behaviour before exposure removed "
                    f"{memo.summary.primary_variance_reduction:.1%} of the variance"
                )


def _print_checklists(driver: Any, console: Console) -> None:
    """Every initiative's governance checklist, as its plan document carries it: one line each."""
    from cli.render import status_word

    plans = driver.initiative_stage.state.plans
    console.print("[bold]Governance checklists[/] (in each initiative's plan)")
    for initiative in sorted(plans):
        console.print(
            f"  {initiative}: "
            + " · ".join(f"{item.item} {status_word(item.status)}" for item in plans[initiative].governance_checklist)
        )


def _console() -> Console:
    """The terminal as it is; when piped, plain text COLUMNS wide (default: wide enough for every column)."""
    import os

    from rich.console import Console

    from cli.render import WIDE

    console = Console()
    if console.is_terminal:
        return console
    columns = os.environ.get("COLUMNS", "")
    return Console(width=int(columns) if columns.isdigit() and int(columns) >= 40 else WIDE, color_system=None)


def _encoded(records: Any) -> Any:
    from monitor.events import encode

    for record in records:
        yield record.topic, record.key.encode(), encode(record.event)


def _run_embedded(settings: Settings, records: Any, console: Console, total: int | None) -> tuple[Any, float]:
    from streams.embedded import EmbeddedDriver

    context = click.get_current_context(silent=True)
    actor = f"`{context.command_path}` options, PMON_* variables and config file" if context else "pmon embedded run"
    # History: the stage's clock is the replay's.
    driver = EmbeddedDriver(settings, replay=True, settings_actor=actor)
    started = time.perf_counter()
    if not console.is_terminal:  # piped: a line on stderr every 10 s instead of a progress bar
        seen, last = [0], [started]

        def report_progress(n: int) -> None:
            seen[0] += n
            now = time.perf_counter()
            if now - last[0] >= 10:
                last[0] = now
                click.echo(f"replaying events: {seen[0]:,} records in {now - started:.0f} s", err=True)

        _run_async(driver.run(records, progress=report_progress))
        return driver, time.perf_counter() - started
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("replaying events", total=total)
        _run_async(driver.run(records, progress=lambda n: progress.advance(task, n)))
    return driver, time.perf_counter() - started


def _print_found(found: dict[str, list[Any]], console: Console) -> None:
    """The injected incidents of every initiative, each with the incidents that found it and their owners."""
    from cli.render import measured
    from incidents.model import measure_of

    console.print(
        f"[bold]Injected incidents, all initiatives[/]: {sum(1 for hits in found.values() if hits)} of "
        f"{len(found)} found"
    )
    for label, hits in found.items():
        what, start = label.split(" from ")
        console.print(f"  {what} from {start[5:16].replace('T', ' ')}", overflow="ignore", crop=False, soft_wrap=True)
        if not hits:
            console.print("    [bold red]MISSED[/]")
        for hit in hits:
            measure = measure_of(hit)
            console.print(
                f"    found as {hit.kind} ({len(hit.series)} series) at {hit.evidence.bucket_end:%m-%d %H:%M}"
                f" · {measured(hit.evidence.observed, measure)} vs "
                f"{measured(hit.evidence.expected, measure)} → {hit.owner}"
            )


def _match_labels(incidents: list[Any], truth: list[dict[str, Any]]) -> tuple[dict[str, list[Any]], list[Any]]:
    """The incidents of an answering kind that overlap each injection (same series, within the window plus 3 h);
    and the opened incidents that overlap no injection."""
    from datetime import datetime, timedelta

    opened = [e for e in incidents if e.transition == "opened"]
    explained: set[str] = set()
    result = {}
    for label in truth:
        start = datetime.fromisoformat(label["start"])
        end = datetime.fromisoformat(label["end"]) + timedelta(hours=3)
        series = set(label["series"])
        hits = [
            e
            for e in opened
            if e.kind in ANSWERS[label["kind"]]
            and (series & set(e.series) or (e.kind in INITIATIVE_KINDS and e.initiative == label["initiative"]))
            and start <= e.evidence.bucket_start < end
        ]
        explained.update(e.incident_id for e in hits)
        result[f"{label['kind']} on {_where(label)} from {label['start']}"] = hits
    return result, [e for e in opened if e.incident_id not in explained]


def _where(label: dict[str, Any]) -> str:
    """The series of an injection, shortened to what they share: 'Win-back Emails (all 8 series)'."""
    from incidents.series import SEPARATOR

    series = sorted(label["series"])
    if len(series) == 1:
        return series[0]
    parts = [s.split(SEPARATOR) for s in series]
    # Series of different depths share at most the levels they all have.
    shared = [p[0] if all(q[i] == p[0] for q in parts) else "*" for i, p in enumerate(zip(*parts, strict=False))]
    return f"{SEPARATOR.join(shared)} ({len(series)} series)"


def _embedded_stage(
    settings: Settings, initiative: str, events: Path | None, state_dir: Path | None, console: Console
) -> tuple[Any, str]:
    """The per-initiative stage to report from: the stored state when it was built from `events` under these
    settings (or `--state` alone), else a replay of `events`, stored when `state_dir` is given."""
    from monitor.initiative_stage import InitiativeStage
    from monitor.stored_state import StoredStateError, fingerprint, save
    from plans.plan_sink import PlanWriter
    from streams.embedded import initiatives_in, read_records

    if events is not None and not events.is_file():
        _fail(f"events file {events} does not exist — write one with `pmon simulate --to-file {events}`")
    stored = _stored_run(state_dir) if state_dir is not None else None

    def from_stored(run: Any) -> tuple[Any, str]:
        name = _resolve_initiative(initiative, set(run.state.clocks), f"the state in {state_dir}")
        return InitiativeStage(settings, run.state, plan_history=PlanWriter(settings.plan_dir).history), name

    if events is None:
        if stored is None:
            _fail(f"no stored state in {state_dir} — build it once with --events FILE --state {state_dir}")
        return from_stored(stored)
    built_from = fingerprint(events, settings)
    if stored is not None and stored.fingerprint == built_from:
        return from_stored(stored)
    initiative = _resolve_initiative(initiative, initiatives_in(events), f"the events file {events}")
    driver, _ = _run_embedded(settings, read_records(events), console, total=None)
    if state_dir is not None:
        try:
            save(state_dir, built_from, driver.initiative_stage.state, driver.run_result.dead_letters)
        except StoredStateError as exc:
            _fail(f"{exc} — pass a writable --state directory")
    return driver.initiative_stage, initiative


def _stored_run(state_dir: Path) -> Any:
    """The stored run in `state_dir`, None if there is none; a one-line error if it cannot be read."""
    from monitor.stored_state import StoredStateError, load

    try:
        return load(state_dir)
    except StoredStateError as exc:
        _fail(f"{exc} — or pass another --state directory")


def _resolve_initiative(name: str, known: set[str], where: str) -> str:
    """`name` as `known` spells it (case and surrounding spaces do not matter); else a one-line error."""
    import difflib

    by_folded = {k.strip().casefold(): k for k in known}
    match = by_folded.get(name.strip().casefold())
    if match is not None:
        return match
    if not known:
        _fail(
            f"{where} names no initiative (no valid engagement or rule-change record) — "
            f"check the file, e.g. with `pmon simulate --to-file`"
        )
    close = difflib.get_close_matches(name.casefold(), list(by_folded), n=1, cutoff=0.6)
    hint = f"did you mean {by_folded[close[0]]!r}? " if close else ""
    _fail(
        f"unknown initiative {name!r} — {hint}{where} names: {', '.join(sorted(known))}; "
        f"pass one of them with --initiative"
    )


def _print_report(
    stage: Any,
    initiative: str,
    window: str,
    detail: str,
    dimension: str | None,
    alert_threshold: float | None,
    console: Console,
    output: tuple[str, Path | None],
) -> None:
    from monitor.report import build_report

    fmt, _ = output
    request = ReportRequest(
        initiative=initiative,
        window=window,
        detail=detail,
        dimension=dimension,
        alert_threshold=alert_threshold,
        trends=fmt == "html",
    )
    report = build_report(stage, request)
    if report is None:
        known = ", ".join(sorted(stage.state.clocks)) or "none"
        _fail(f"unknown initiative {initiative!r} — the events name: {known}; pass one of them with --initiative")
    _emit(report, console, output)


def _emit(report: Any, console: Console, output: tuple[str, Path | None]) -> None:
    """The report in `fmt`, to `out` (written whole, then renamed: never half a file) or to stdout."""
    import io
    import os

    fmt, out = output
    if fmt == "terminal":
        from rich.console import Console

        from cli.render import render_report

        if out is None:
            render_report(report, console)
            return
        buffer = io.StringIO()
        render_report(report, Console(file=buffer, width=console.width, color_system=None, force_terminal=False))
        text = buffer.getvalue()
    elif fmt == "markdown":
        from cli.markdown import render_markdown

        text = render_markdown(report)
    elif fmt == "json":
        text = report.model_dump_json(indent=2) + "\n"
    else:
        from cli.dashboard import render_html

        text = render_html(report)
    if out is None:
        click.echo(text, nl=False)
        return
    temporary = out.with_name(f".{out.name}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, out)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        _fail(f"cannot write {out}: {exc.strerror} — pass a writable --out path")
    log.info("wrote the %s report to %s", fmt, out)
    click.echo(f"wrote the {fmt} report of {report.initiative} to {out}", err=True)


# --------------------------------------------------------------------------- simulate
@pmon.command()
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--days", type=click.IntRange(1, 60), default=14, show_default=True)
@click.option(
    "--to-file",
    "to_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write JSONL records ({topic, key, value}) to this file.",
)
@click.option(
    "--labels",
    "labels_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the ground-truth labels (JSON) to this file.",
)
@click.option("--to-kafka", is_flag=True, help="Produce to the broker at PMON_KAFKA_BOOTSTRAP.")
@click.option(
    "--rate",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Records per second with --to-kafka; 0 is as fast as possible.",
)
def simulate(seed: int, days: int, to_file: Path | None, labels_file: Path | None, to_kafka: bool, rate: float) -> None:
    """Generate a deterministic simulated program with injected incidents."""
    from simulation.simulator import SimulationSpec, labels, write_jsonl
    from simulation.simulator import simulate as generate

    if not to_file and not to_kafka:
        _fail("nothing to do — pass --to-file PATH and/or --to-kafka")
    spec = SimulationSpec(seed=seed, days=days)
    if labels_file:
        labels_file.write_bytes(orjson.dumps(labels(spec), option=orjson.OPT_INDENT_2))
    if to_file:
        count = write_jsonl(generate(spec), to_file)
        click.echo(f"wrote {count:,} records to {to_file}", err=True)
    if to_kafka:
        from streams.kafka_io import produce

        settings = _settings()
        try:
            count = _run_async(produce(settings, _encoded(generate(spec)), rate=rate))
        except (StreamsError, CliError) as exc:
            _fail(str(exc))
        click.echo(f"produced {count:,} records to {settings.kafka_bootstrap}", err=True)


# --------------------------------------------------------------------------- worker
def _refuse_development_key(settings: Settings) -> None:
    """The worker publishes pseudonyms to shared topics: with the public development key they are no
    pseudonyms (hashing candidate ids maps them back), so it takes that key only in a development run."""
    from monitor.settings import DEV_PSEUDONYM_KEY

    key = settings.pseudonym_key.get_secret_value()
    if not key:
        _fail("PMON_PSEUDONYM_KEY is empty — set it to a long random secret, e.g. `openssl rand -hex 32`")
    if key == DEV_PSEUDONYM_KEY and not settings.development:
        _fail(
            "the pseudonym key is the built-in development key, with which anyone can map the pseudonyms on "
            "the topics back to user ids — set PMON_PSEUDONYM_KEY to a long random secret (e.g. `openssl rand "
            "-hex 32`), or PMON_DEVELOPMENT=true for a local try"
        )


@pmon.command()
def worker() -> None:
    """Run the Faust worker against PMON_KAFKA_BOOTSTRAP (settings from PMON_* variables)."""
    import faust

    from streams.app import create_app, internal_topics
    from streams.kafka_io import prepare_worker_topics

    settings = _settings()
    _refuse_development_key(settings)
    _configure_logging(settings)
    try:
        cluster = _run_async(prepare_worker_topics(settings, internal_topics(settings)))
    except (StreamsError, CliError) as exc:
        _fail(str(exc))
    app = create_app(settings, cluster=cluster)

    def give_up() -> None:  # the stop is overdue (the broker does not answer): end now, with the reason if any
        if app.pmon_fatal:
            click.echo(f"pmon worker: error: {app.pmon_fatal}", err=True)
        os._exit(USAGE_EXIT if app.pmon_fatal else 1)

    app.pmon_give_up = give_up
    runner = faust.Worker(app, loglevel=settings.log_level.lower())
    runner.spinner = None  # Faust's terminal spinner would switch the root logger to DEBUG
    try:
        runner.execute_from_commandline()
    except SystemExit:
        if app.pmon_fatal:  # the broker lost the worker's topics: the reason in one line, exit 2
            _fail(app.pmon_fatal)
        raise


# --------------------------------------------------------------------------- monitor
def _initiative_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """No initiative has a blank name: refused at parse time, whichever source the command reads."""
    if value is not None and not value.strip():
        raise click.BadParameter('it is blank — pass an initiative\'s name, e.g. "PLG Onboarding"')
    return value


_initiative_option = click.option(
    "--initiative", required=True, callback=_initiative_name, help='Initiative name, e.g. "PLG Onboarding".'
)
_initiative_filter_option = click.option(
    "--initiative", default=None, callback=_initiative_name, help="Only this initiative's incidents (any case)."
)


@pmon.command(context_settings={"help_option_names": ["-h", "--help"]})
@_initiative_option
@click.option("--window", type=click.Choice(list(WINDOWS)), default="7d", show_default=True)
@click.option("--detail", type=click.Choice(get_args(Detail)), default="summary", show_default=True)
@click.option(
    "--dimension",
    type=click.Choice(["profile", "channel", "cohort"]),
    default=None,
    help="Break the dashboard down by one dimension (default: profile, channel and variant).",
)
@click.option(
    "--alert-threshold",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=None,
    help="KPI threshold: with --events, a relative drop of --alert-kpi breached twice opens a "
    "kpi_threshold incident (the worker uses PMON_ALERT_THRESHOLD); also flags dashboard rows.",
)
@click.option(
    "--alert-kpi",
    type=click.Choice(["cvr", "ctr"]),
    default=None,
    help="The KPI the threshold watches with --events (default PMON_ALERT_KPI, cvr).",
)
@click.option(
    "--events",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Run the embedded driver over this JSONL file instead of asking a worker.",
)
@click.option(
    "--state",
    "state_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Keep the replay's state in this directory: a later report with the same --events and "
    "settings, or with --state alone, reads it instead of replaying.",
)
@click.option("--worker-url", default=None, help="Worker web address (default http://PMON_WEB_HOST:PMON_WEB_PORT).")
@_format_option
@_out_option
@_config_file_option
def monitor(
    initiative: str,
    window: str,
    detail: str,
    dimension: str | None,
    alert_threshold: float | None,
    alert_kpi: str | None,
    events: Path | None,
    state_dir: Path | None,
    worker_url: str | None,
    fmt: str,
    out: Path | None,
    config: Path | None,
) -> None:
    """Print the report of one initiative, from a running worker, an events file or a stored state."""
    console = _console()
    if events is not None or state_dir is not None:
        settings = _settings(alert_threshold=alert_threshold, alert_kpi=alert_kpi, log_level="WARNING")
        _configure_logging(settings)
        stage, initiative = _embedded_stage(settings, initiative, events, state_dir, console)
        _print_report(stage, initiative, window, detail, dimension, alert_threshold, console, (fmt, out))
        return
    from cli.monitor_client import fetch_report

    settings = _settings()
    url = worker_url or f"http://{settings.web_host}:{settings.web_port}"
    request = ReportRequest(
        initiative=initiative,
        window=window,
        detail=detail,
        dimension=dimension,
        alert_threshold=alert_threshold,
        trends=fmt == "html",
    )
    try:
        report = fetch_report(url, request)
    except (StreamsError, CliError) as exc:
        _fail(str(exc))
    _emit(report, console, (fmt, out))


# --------------------------------------------------------------------------- detect
def _univariate_detectors() -> list[str]:
    from detectors.backtest import univariate_detectors

    return univariate_detectors()


@pmon.command()
@click.option(
    "--csv",
    "csv_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="A univariate series: a header with `timestamp` and `value`, then one row per point, in any "
    "order (repeated timestamps are averaged, blank values skipped).",
)
@click.option(
    "--detector",
    default="robust_series",
    show_default=True,
    help="A registered detector that reads one number per point (see the error for the list).",
)
@click.option(
    "--warmup",
    type=click.IntRange(3, 10_000),
    default=None,
    help="Points robust_series learns before it may alert (default PMON_DETECT_WARMUP_POINTS).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the result here instead of stdout.",
)
def detect(csv_path: Path, detector: str, warmup: int | None, out: Path | None) -> None:
    """Backtest a detector on your own KPI history, point by point.

    Writes `timestamp,value,anomaly_score,alert`. Timestamps are ISO 8601 (one
    without an offset is read as UTC) or Unix time (s, ms, µs or ns); the
    delimiter a comma, a semicolon or a tab. What was read (points, repeated and
    out-of-order timestamps, the sampling interval, irregular gaps, the
    warm-up) is reported on stderr. robust_series' score is calibrated in
    [0, 1] (the same threshold is about the same false alarm rate on any
    series); its alert is the first point of each anomaly.
    """
    import csv

    from detectors.backtest import prepare_series, run_series
    from detectors.exceptions import DetectorError

    if detector not in _univariate_detectors():
        _fail(f"unknown or non-univariate detector {detector!r} — use one of: {', '.join(_univariate_detectors())}")
    if not csv_path.is_file():
        _fail(f"CSV file {csv_path} does not exist — export your series as `timestamp,value` with a header")
    warmup_points = warmup if warmup is not None else _settings().detect_warmup_points
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as source:
            points, found = prepare_series(_read_series(csv_path, source))
    except UnicodeDecodeError as exc:
        _fail(f"{csv_path} is not UTF-8 text ({exc.reason}) — save the CSV as UTF-8 and run again")
    except (ValueError, DetectorError) as exc:
        _fail(f"{exc} — fix the CSV and run again")
    if not points:
        _fail(f"{csv_path} holds no point with a value — export your series as `timestamp,value` with a header")
    own_warmup = detector == "robust_series"
    click.echo(f"{csv_path}: {found.describe(warmup_points if own_warmup else None)}", err=True)
    sink = out.open("w", newline="") if out else sys.stdout
    try:
        writer = csv.writer(sink)
        writer.writerow(["timestamp", "value", "anomaly_score", "alert"])
        for when, value, score, alert in run_series(points, detector, warmup_points if own_warmup else None):
            writer.writerow([when.isoformat(), repr(value), f"{score:.6g}", "true" if alert else "false"])
    except (ValueError, DetectorError) as exc:
        if out:
            sink.close()
            out.unlink(missing_ok=True)  # no half-written result
        _fail(f"{exc} — fix the CSV and run again")
    finally:
        if out and not sink.closed:
            sink.close()


def _read_series(path: Path, source: Any) -> Any:
    """(timestamp, value) rows of a `timestamp,value` CSV, with the line number in every error.

    As spreadsheets and exporters write them: a UTF-8 byte-order mark is skipped (the caller opens the file as
    ``utf-8-sig``), the header's names are taken in any case and with spaces around them, the delimiter may be
    a comma, a semicolon (then a decimal comma is read too) or a tab, and a timestamp is ISO 8601 (UTC without
    an offset) or Unix time in seconds, milliseconds, microseconds or nanoseconds (told apart by size).
    """
    import csv
    import math
    from datetime import datetime, timezone

    header = source.readline()
    try:
        delimiter = csv.Sniffer().sniff(header, delimiters=",;\t").delimiter
    except csv.Error:
        delimiter = ","
    source.seek(0)
    reader = csv.DictReader(source, delimiter=delimiter)
    found = reader.fieldnames
    if found:  # "Timestamp, Value" as a spreadsheet writes it
        reader.fieldnames = [name.strip().lower() for name in found]
    if not found or not {"timestamp", "value"} <= set(reader.fieldnames or ()):
        raise ValueError(f"{path}: the header must name `timestamp` and `value`, got {found}")
    for row in reader:
        line = reader.line_num
        stamp = (row["timestamp"] or "").strip()
        try:
            when: datetime | None = datetime.fromisoformat(stamp)
        except ValueError:
            when = _unix_time(stamp)
        if when is None:
            raise ValueError(f"{path}:{line}: timestamp {row['timestamp']!r} is neither ISO 8601 nor Unix time")
        text = (row["value"] or "").strip()
        if delimiter == ";" and "." not in text:
            text = text.replace(",", ".")
        try:
            # A blank, NaN or null value is a missing point (skipped and counted), not a bad row.
            value = None if text.lower() in ("", "nan", "null", "na") else float(text)
        except ValueError:
            raise ValueError(f"{path}:{line}: value {row['value']!r} is not a number") from None
        if value is not None and not math.isfinite(value):
            raise ValueError(f"{path}:{line}: value {row['value']!r} is not a finite number")
        yield (when if when.tzinfo else when.replace(tzinfo=timezone.utc)), value


def _unix_time(text: str) -> datetime | None:
    """Unix time in s, ms, µs or ns as a UTC datetime (the unit told by size: seconds reach 1e11 only in the
    year 5138), or None when the text is not a number.

    >>> _unix_time("1700000000").isoformat(), _unix_time("1700000000500").isoformat()
    ('2023-11-14T22:13:20+00:00', '2023-11-14T22:13:20.500000+00:00')
    >>> _unix_time("2026-13-01") is None
    True
    """
    import math
    from datetime import datetime, timezone

    try:
        number = float(text)
    except ValueError:
        return None
    if not math.isfinite(number):
        return None
    for _ in range(3):  # ms, µs, ns to s
        if abs(number) < 1e11:
            break
        number /= 1000.0
    try:
        return datetime.fromtimestamp(number, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None


# --------------------------------------------------------------------------- incidents
@pmon.group()
def incidents() -> None:
    """On-call: follow incidents live, list where they stand, record what a person did.

    `tail` follows the incidents topic and prints a line per transition; `list`
    shows each incident's current state, from the topic or a stored state;
    `ack`, `resolve` and `note` record an action, which lands in the plan's
    change log.
    """


def _incident_action(
    action: str, incident_id: str, by: str, text: str, state_dir: Path | None, initiative: str | None
) -> None:
    from datetime import datetime, timezone

    if not by.strip():
        _fail("--by is empty — name the person who acts")
    at = datetime.now(timezone.utc)
    if state_dir is not None:
        _record_in_state(action, incident_id, by, text, state_dir, initiative, at)
        return
    if initiative is None:
        _fail(
            "--initiative is required for a worker (it routes the action to the initiative's stage) — or pass "
            "--state DIR for a stored state"
        )
    from streams.kafka_io import produce

    settings = _settings()
    record = _action_record(incident_id, initiative, action, by, text, at)
    try:
        _run_async(produce(settings, [("incident-actions", incident_id.encode(), record.model_dump_json().encode())]))
    except (StreamsError, CliError) as exc:
        _fail(str(exc))
    click.echo(f"{action} {incident_id} ({initiative}) by {by}: sent to {settings.topic('incident-actions')}")


def _record_in_state(
    action: str, incident_id: str, by: str, text: str, state_dir: Path, initiative: str | None, at: Any
) -> None:
    """An action on a stored state: applied to its plan (a new revision), kept with the state, logged beside it."""
    from monitor.initiative_stage import InitiativeStage
    from monitor.stored_state import StoredStateError, save
    from plans.plan_sink import PlanWriter

    settings = _settings()
    stored = _stored_run(state_dir)
    if stored is None:
        _fail(f"no stored state in {state_dir} — build it with `pmon monitor --events FILE --state {state_dir}`")
    known = stored.state.incidents.get(incident_id)
    if known is None:
        _fail(f"no incident {incident_id!r} in the state in {state_dir} — the report lists the incident ids")
    owner = known[0].initiative
    if initiative is not None and initiative.casefold() != owner.casefold():
        _fail(f"incident {incident_id} belongs to {owner!r}, not {initiative!r} — drop --initiative or fix it")
    stage = InitiativeStage(settings, stored.state)
    record = _action_record(incident_id, owner, action, by, text, at)
    outputs = stage.on_action(record)
    stage.commit()
    writer = PlanWriter(settings.plan_dir)
    for plan in outputs.plans:
        writer.write(plan)
    try:
        save(state_dir, stored.fingerprint, stage.state, None)
        with (state_dir / "incident-actions.jsonl").open("a") as log_file:
            log_file.write(record.model_dump_json() + "\n")
    except (StoredStateError, OSError) as exc:
        _fail(f"cannot record the action in {state_dir}: {exc} — pass a writable --state directory")
    revision = f"plan revision {outputs.plans[-1].revision}" if outputs.plans else "plan unchanged"
    click.echo(f"{action} {incident_id} ({owner}) by {by}; {revision} in {settings.plan_dir}")


def _action_record(incident_id: str, initiative: str, action: str, by: str, text: str, at: Any) -> Any:
    """A person's action, with a fresh id (a repeat of the same record changes nothing downstream)."""
    import uuid

    from incidents.model import IncidentAction

    return IncidentAction(
        event_id=f"act-{uuid.uuid4().hex[:16]}",
        incident_id=incident_id,
        initiative=initiative,
        action=action,
        by=by,
        text=text,
        at=at,
    )


def _action_command(action: str, doc: str) -> None:
    @incidents.command({"acknowledged": "ack", "resolved": "resolve"}.get(action, action), help=doc)
    @click.argument("incident_id")
    @click.option("--by", required=True, help="Who acts: a person's name.")
    @click.option("--text", default="", help="What was done or found.")
    @click.option(
        "--state",
        "state_dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="A stored state (pmon monitor --events FILE --state DIR) instead of a worker.",
    )
    @click.option(
        "--initiative",
        default=None,
        callback=_initiative_name,
        help="The incident's initiative (required for a worker).",
    )
    def command(incident_id: str, by: str, text: str, state_dir: Path | None, initiative: str | None) -> None:
        _incident_action(action, incident_id, by, text, state_dir, initiative)


_action_command("acknowledged", "Acknowledge an incident: its response time is measured from its opening.")
_action_command("resolved", "Resolve an incident by hand (the detectors may open it again if it persists).")
_action_command("note", "Note a remediation step taken for an incident.")


def _severities() -> list[str]:
    from cli.oncall import SEVERITIES

    return list(SEVERITIES)


def _say(line: str) -> None:
    """A line of command output; click.echo flushes, so a reader on a pipe gets each line as it is printed.
    A reader that went away (`| head`) ends the command quietly."""
    import os

    try:
        click.echo(line)
    except BrokenPipeError:
        # Python would complain again at exit while flushing: point stdout at nothing first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)


@incidents.command("tail")
@_initiative_filter_option
@click.option(
    "--severity", type=click.Choice(_severities()), default=None, help="Only incidents at or above this severity."
)
@click.option(
    "--since",
    default=None,
    metavar="DURATION",
    help="Start with what was written in the last DURATION (15m, 2h, 7d); default: what comes next.",
)
@click.option("--from-beginning", is_flag=True, help="Start with the first transition on the topic.")
@click.option("--json", "as_json", is_flag=True, help="One JSON incident event per line, as the topic carries it.")
@click.option(
    "--group",
    default=None,
    metavar="NAME",
    help="Commit the offsets read under this consumer group and resume from them next time "
    "(default: no group, nothing committed).",
)
@click.option("--state", "state_dir", type=click.Path(file_okay=False, path_type=Path), default=None, hidden=True)
def incidents_tail(
    initiative: str | None,
    severity: str | None,
    since: str | None,
    from_beginning: bool,
    as_json: bool,
    group: str | None,
    state_dir: Path | None,
) -> None:
    """Follow the incidents topic live, a line per transition, until Ctrl-C."""
    from datetime import datetime, timezone

    from cli import oncall

    if state_dir is not None:
        _fail(
            f"a stored state does not change, so there is nothing to follow — use "
            f"`pmon incidents list --state {state_dir}`"
        )
    if since is not None and from_beginning:
        _fail("--since and --from-beginning both say where to start — pass one of them")
    start = None
    if since is not None:
        try:
            start = datetime.now(timezone.utc) - oncall.parse_duration(since)
        except ValueError as exc:
            _fail(f"{exc} — {oncall.DURATION_HINT}")
    if group is not None and not group.strip():
        _fail("--group is empty — name the consumer group, or leave it out to commit nothing")
    # WARNING, as for the other commands that are not the worker: the client's INFO lines are noise here.
    settings = _settings(log_level="WARNING")
    _configure_logging(settings)  # a long run: the client's warnings (a lost broker) get a time and a source
    command = click.get_current_context().command_path
    from streams.kafka_io import follow_incidents

    async def follow() -> None:
        async for event in follow_incidents(
            settings,
            since=start,
            from_beginning=from_beginning,
            group=group,
            on_undecodable=lambda line: click.echo(f"{command}: {line}", err=True),
            on_start=lambda line: click.echo(f"{command}: {line}; Ctrl-C stops", err=True),
        ):
            if oncall.matches(event, initiative=initiative, severity=severity):
                _say(oncall.event_json(event) if as_json else oncall.transition_line(event, settings.roster))

    try:
        _run_async(follow())
    except KeyboardInterrupt:
        return  # Ctrl-C is how tail ends: exit 0, no traceback
    except (StreamsError, CliError) as exc:
        _fail(str(exc))


@incidents.command("list")
@click.option("--open", "only_open", is_flag=True, help="Only incidents not resolved.")
@_initiative_filter_option
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="One JSON object per incident: status, assignee, opening and latest transition.",
)
@click.option(
    "--state",
    "state_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="A stored state (pmon monitor --events FILE --state DIR) instead of the incidents topic.",
)
def incidents_list(only_open: bool, initiative: str | None, as_json: bool, state_dir: Path | None) -> None:
    """Where each incident stands now, from the incidents topic (read to its end) or a stored state."""
    from cli import oncall

    settings = _settings()
    if state_dir is not None:
        stored = _stored_run(state_dir)
        if stored is None:
            _fail(f"no stored state in {state_dir} — build it with `pmon monitor --events FILE --state {state_dir}`")
        found = oncall.from_pairs(stored.state.incidents.values(), settings.roster)
        where = f"the state in {state_dir}"
    else:
        from streams.kafka_io import read_incidents

        command = click.get_current_context().command_path
        try:
            events = _run_async(
                read_incidents(settings, on_undecodable=lambda line: click.echo(f"{command}: {line}", err=True))
            )
        except (StreamsError, CliError) as exc:
            _fail(str(exc))
        found = oncall.fold(events, settings.roster)
        where = settings.topic("incidents")
    shown = [c for c in found if (c.is_open or not only_open) and oncall.matches(c.latest, initiative=initiative)]
    for incident in shown:
        _say(oncall.state_json(incident) if as_json else oncall.state_line(incident))
    if not shown and not as_json:
        # Say why the list is empty, on stderr: stdout stays the list.
        which = " ".join(filter(None, ["open" if only_open else "", f"{initiative!r}" if initiative else ""]))
        click.echo(f"no {which + ' ' if which else ''}incidents in {where} ({len(found)} in all)", err=True)


# --------------------------------------------------------------------------- plan
@pmon.group()
def plan() -> None:
    """Read a plan's history: its latest revision, its revision log, and what changed between two."""


_plan_dir_option = click.option(
    "--plan-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the plans are (default PMON_PLAN_DIR).",
)


def _revisions(initiative: str, plan_dir: Path | None) -> list[Any]:
    from plans.exceptions import PlanError
    from plans.history import revisions

    directory = plan_dir or _settings().plan_dir
    try:
        documents = revisions(directory, initiative)
    except PlanError as exc:
        _fail(f"{exc} — fix or remove that file")
    if not documents:
        stored = sorted(p.name for p in directory.iterdir() if p.is_dir()) if directory.is_dir() else []
        _fail(
            f"no plan of {initiative!r} in {directory} — the plans there: {', '.join(stored) or 'none'}; "
            f"pass --plan-dir or run the monitor first"
        )
    return documents


def _revision(documents: list[Any], number: int | None) -> Any:
    if number is None:
        return documents[-1]
    found = next((d for d in documents if d.revision == number), None)
    if found is None:
        _fail(f"no revision {number} — the stored ones are {documents[0].revision} to {documents[-1].revision}")
    return found


@plan.command("show")
@_initiative_option
@_plan_dir_option
@click.option("--revision", type=click.IntRange(min=1), default=None, help="A stored revision (default the latest).")
@click.option("--json", "as_json", is_flag=True, help="Print the plan document itself.")
def plan_show(initiative: str, plan_dir: Path | None, revision: int | None, as_json: bool) -> None:
    """The plan as of a revision: stages, feeds, metrics, open incidents, backlog."""
    document = _revision(_revisions(initiative, plan_dir), revision)
    if as_json:
        click.echo(document.model_dump_json(indent=2))
        return
    from cli.render import render_plan

    render_plan(document, _console())


@plan.command("log")
@_initiative_option
@_plan_dir_option
def plan_log(initiative: str, plan_dir: Path | None) -> None:
    """Every stored revision, when it was written and what it changed; then the audited change log."""
    from plans.history import diff

    documents = _revisions(initiative, plan_dir)
    for previous, document in itertools.pairwise([None, *documents]):
        if previous is None:
            what = "created"
        else:
            fields = sorted(
                {path.split(".")[0].split("[")[0] for path, _, _ in diff(previous, document)}
                - {"revision", "updated_at", "watermark"}
            )
            what = ", ".join(fields) or "no field changed"
        events = f" (events to {document.watermark:%m-%d %H:%M})" if document.watermark else ""
        click.echo(f"r{document.revision:<5} {document.updated_at:%Y-%m-%d %H:%M} UTC{events}  {what}")
    entries = documents[-1].change_log
    click.echo(f"change log ({len(entries)} entries):")
    for entry in entries:
        click.echo(
            f"  {entry.at:%Y-%m-%d %H:%M} {entry.actor}: {entry.field} {entry.old!r} -> {entry.new!r}"
            + (f" ({entry.reason})" if entry.reason else "")
        )


@plan.command("diff")
@_initiative_option
@_plan_dir_option
@click.option("--from", "first", type=click.IntRange(min=1), default=None, help="Default: the one before --to.")
@click.option("--to", "last", type=click.IntRange(min=1), default=None, help="Default: the latest revision.")
def plan_diff(initiative: str, plan_dir: Path | None, first: int | None, last: int | None) -> None:
    """What changed between two revisions, one line per field."""
    from plans.history import diff

    documents = _revisions(initiative, plan_dir)
    new = _revision(documents, last)
    if first is None:
        older = [d for d in documents if d.revision < new.revision]
        if not older:
            _fail(f"revision {new.revision} is the first — pass --to a later one")
        old = older[-1]
    else:
        old = _revision(documents, first)
    click.echo(f"r{old.revision} -> r{new.revision}")
    for path, before, after in diff(old, new):
        click.echo(f"  {path}: {before!r} -> {after!r}")


# --------------------------------------------------------------------------- schemas
@pmon.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("schemas"), show_default=True)
def schemas(out: Path) -> None:
    """Export the JSON Schemas of every topic and of the plan document."""
    from monitor.schemas import write_schemas

    for path in write_schemas(out):
        click.echo(str(path))


def _run(command: click.Command, prog_name: str, argv: list[str] | None) -> NoReturn:
    """Run a command; any usage or actionable error becomes one line on stderr and exit code 2."""
    try:
        command.main(args=argv, prog_name=prog_name, standalone_mode=False)
    except click.ClickException as exc:
        where = (
            exc.ctx.command_path
            if isinstance(exc, click.UsageError) and exc.ctx
            else getattr(exc, "command_path", None) or prog_name
        )
        message = exc.format_message()
        hint = "" if "—" in message else f" — see `{where} --help`"
        click.echo(f"{where}: error: {message}{hint}", err=True)
        sys.exit(USAGE_EXIT)
    except click.Abort:
        click.echo(f"{prog_name}: aborted", err=True)
        sys.exit(1)
    sys.exit(0)


def _quiet_clients() -> None:
    # Without a configured handler Python prints a library's warnings on stderr: the Kafka client's "Unable
    # connect" lines would precede the one-line error. Commands that configure logging (worker, tail) show them.
    logging.getLogger("aiokafka").addHandler(logging.NullHandler())


# Python's collector runs a young collection every 700 new container objects and, every 100 of those, a full
# one: a stage builds a few objects per record, so on the 200k-record replay it ran 1,000 collections, 2.0 s of
# 10.5 s of CPU, up to 0.25 s each (full ones walk every user state held). The stages make few reference cycles
# (refcounting frees their objects), so collections can be rarer: 7 collections, 0.2 s, at most 0.09 s, with
# the same peak memory.
GC_THRESHOLDS = (50_000, 50, 100)


def tune_garbage_collector() -> None:
    """Rarer collections for a process that runs the stages (every `pmon` command; the benchmarks' drivers)."""
    gc.set_threshold(*GC_THRESHOLDS)


def main(argv: list[str] | None = None) -> NoReturn:
    _quiet_clients()
    tune_garbage_collector()
    _run(pmon, "pmon", argv)


def monitor_main(argv: list[str] | None = None) -> NoReturn:
    _quiet_clients()
    tune_garbage_collector()
    _run(monitor, "monitor-personalization", argv)
