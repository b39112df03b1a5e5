"""How fast the command line answers `--help` and a usage error: the target is under 0.5 s.

    .venv/bin/python bench/cli_start.py [--runs 7]

Each command runs `--runs` times in a fresh process, after one warm-up run
(it compiles the bytecode of modules changed since the last run); the median
wall time is judged. Two baselines run the same way: the interpreter alone
(`python -c pass`) and the interpreter importing click, the floor of any
click command; their ratios show how much of the time is ours.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if sys.path[0] != str(ROOT):  # the repository first: bench/experiments.py would shadow `experiments`
    sys.path.insert(0, str(ROOT))

from bench import pages  # noqa: E402

BIN = Path(sys.executable).parent  # the virtualenv running the bench (.venv/bin with `make bench`)
TARGET_SECONDS = 0.5


def _median_seconds(argv: list[str], runs: int) -> float:
    subprocess.run(argv, capture_output=True, check=False, cwd=ROOT)   # warm-up, not judged
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=False, cwd=ROOT)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--out", type=Path, default=pages.page_path("cli_start"),
                        help="where to write the page (default docs/benchmarks/cli_start.md)")
    args = parser.parse_args(argv)
    with pages.recording("cli_start", "Command-line start-up (`--help` and a usage error)", args.out, argv):
        return _measure(args)


def _measure(args: argparse.Namespace) -> int:
    python = str(BIN / "python")
    baselines = {"python": [python, "-c", "pass"], "python + import click": [python, "-c", "import click"]}
    commands = {
        "pmon --help": [str(BIN / "pmon"), "--help"],
        "monitor-personalization --help": [str(BIN / "monitor-personalization"), "--help"],
        "monitor-personalization --window 3d (usage error)": [
            str(BIN / "monitor-personalization"), "--initiative", "x", "--window", "3d"],
        "pmon incidents --help": [str(BIN / "pmon"), "incidents", "--help"],
    }
    floor = {name: _median_seconds(command, args.runs) for name, command in baselines.items()}
    print(f"median of {args.runs} runs each, target < {TARGET_SECONDS} s")
    for name, seconds in floor.items():
        print(f"  {name:<52} {seconds:6.3f} s")
    met = True
    for name, command in commands.items():
        seconds = _median_seconds(command, args.runs)
        met &= seconds < TARGET_SECONDS
        print(f"  {name:<52} {seconds:6.3f} s  {seconds / floor['python']:4.1f}x python, "
              f"{seconds / floor['python + import click']:4.1f}x click  "
              f"{'met' if seconds < TARGET_SECONDS else 'NOT MET'}")
    print("all met" if met else "NOT MET: see the lines above")
    return 0


if __name__ == "__main__":
    sys.exit(main())
