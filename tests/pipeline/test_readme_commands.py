"""The README's own commands run as written: the specification's command over a simulated file, replayed once
and then read back from its state. Only the simulated length is cut (14 days to 3) to keep the suite fast."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from tests.conftest import ROOT
from tests.helpers import run_pmon


def readme_commands() -> list[list[str]]:
    """Every command of the README's `sh` blocks that runs an installed entry point (`.venv/bin/...`), with its
    continuation lines joined and its comment dropped."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"^```sh\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0].startswith(".venv/bin/"):
                commands.append(words)
    return commands


def test_the_specifications_command_runs_as_the_readme_writes_it(tmp_path: Path) -> None:
    commands = readme_commands()
    assert [words[0] for words in commands] == [".venv/bin/pmon", ".venv/bin/monitor-personalization"], commands
    simulate, report = commands
    assert simulate[1:3] == ["simulate", "--days"], simulate
    simulate[3] = "3"
    state = tmp_path / "state" / "state.pickle"
    outputs, stored = [], []
    for words in (simulate, report, report):   # the second report reads the state the first one stored
        done = run_pmon(*words[1:], cwd=tmp_path, program=ROOT / words[0], timeout=600)
        assert done.returncode == 0, f"{shlex.join(words)} exited {done.returncode}:\n{done.stderr[-2000:]}"
        outputs.append(done.stdout)
        stored.append(state.stat().st_mtime_ns if state.exists() else None)
    assert (tmp_path / "events.jsonl").stat().st_size > 0 and stored[0] is None
    assert outputs[1].startswith("PLG Onboarding · 14d window"), outputs[1][:300]
    assert stored[1] is not None and stored[2] == stored[1], "the second report replayed instead of reading the state"
    assert outputs[2] == outputs[1]
