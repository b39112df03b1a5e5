"""A report from a stored state against a replay of the same events: the target is under 1 s.

    .venv/bin/python bench/stored_report.py [--days 14] [--reports 5]

Writes a simulated program (`pmon simulate --days D --to-file`), then runs the
specification's command over it with `--state DIR` once (the replay that
builds the state), then again `--reports` times over the stored state with
other windows and details, after one warm-up command whose time is printed
but not judged (it compiles the bytecode of modules changed since the last
run, once per install). It prints, for each, the whole command's wall time
(a fresh process: Python start-up and imports included) and the time the
command spends reading the state and building and rendering the report
(in process, the same code), with the ratio to the replay.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if sys.path[0] != str(ROOT):  # the repository first: bench/experiments.py would shadow `experiments`
    sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402

from bench import pages  # noqa: E402
from cli.render import render_report  # noqa: E402
from monitor.initiative_stage import InitiativeStage  # noqa: E402
from monitor.report import ReportRequest, build_report  # noqa: E402
from monitor.settings import Settings  # noqa: E402
from monitor.stored_state import load  # noqa: E402

TARGET_SECONDS = 1.0
PMON = Path(sys.executable).parent / "pmon"  # the virtualenv running the bench
REQUESTS = [("14d", "full"), ("7d", "summary"), ("30d", "full"), ("14d", "summary"), ("7d", "full")]


def _command(*args: str, cwd: Path) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PMON_")}
    env["PMON_PLAN_DIR"] = str(cwd / "plans")
    started = time.perf_counter()
    subprocess.run([str(PMON), *args], cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def _in_process(state_dir: Path, plan_dir: Path, window: str, detail: str) -> float:
    started = time.perf_counter()
    stored = load(state_dir)
    settings = Settings(plan_dir=plan_dir)
    stage = InitiativeStage(settings, stored.state)
    report = build_report(stage, ReportRequest(initiative="PLG Onboarding", window=window, detail=detail))
    render_report(report, Console(file=io.StringIO(), width=160))
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--reports", type=int, default=5)
    parser.add_argument("--out", type=Path, default=pages.page_path("stored_report"),
                        help="where to write the page (default docs/benchmarks/stored_report.md)")
    args = parser.parse_args(argv)
    with pages.recording("stored_report", "A report from a stored state against a replay", args.out, argv):
        return _measure(args)


def _measure(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="pmon-stored-") as folder:
        work = Path(folder)
        events, state = work / "events.jsonl", work / "state"
        subprocess.run([str(PMON), "simulate", "--days", str(args.days), "--to-file", str(events)], check=True,
                       capture_output=True)
        replay = _command("monitor", "--initiative", "PLG Onboarding", "--window", "14d", "--detail", "full",
                          "--events", str(events), "--state", str(state), cwd=work)
        size = (state / "state.pickle").stat().st_size
        print(f"replay of {args.days} days with --state: {replay:.1f} s; state {size / 1e6:.1f} MB")
        warm_up = _command("monitor", "--initiative", "PLG Onboarding", "--state", str(state), cwd=work)
        print(f"warm-up report (bytecode compiled once): {warm_up:.2f} s")
        worst = 0.0
        for n in range(args.reports):
            window, detail = REQUESTS[n % len(REQUESTS)]
            whole = _command("monitor", "--initiative", "PLG Onboarding", "--window", window, "--detail", detail,
                             "--state", str(state), cwd=work)
            inner = _in_process(state, work / "plans", window, detail)
            worst = max(worst, whole)
            print(f"report {window:>3} {detail:<7} from the state: command {whole:.2f} s "
                  f"(read + build + render {inner:.2f} s), {whole / replay:.3f}x the replay")
        print(f"slowest stored report: {worst:.2f} s (target < {TARGET_SECONDS:.0f} s: "
              f"{'met' if worst < TARGET_SECONDS else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
