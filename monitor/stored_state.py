"""The embedded driver's per-initiative state in a directory: replay an events file once, report from it after.

`pmon monitor --events FILE --state DIR` replays FILE and stores what the
per-initiative stage holds (`InitiativeState`: windows, detectors, incidents,
plans, governance, experiments) with a fingerprint of FILE and of the
settings that decide the outcome. A later report with the same FILE and
settings, or with `--state DIR` alone, reads the state instead of replaying.
The dead letters of the replay are written beside it, one JSON line each.

The fingerprint of FILE is its resolved path, size and modification time (as
`make` decides staleness), not its content: hashing a 14-day file would cost
most of the second a stored report may take. The state is pickled: only load
a directory this tool wrote.

>>> import tempfile
>>> from monitor.initiative_stage import InitiativeState
>>> folder = Path(tempfile.mkdtemp())
>>> save(folder, "abc", InitiativeState(plans={"I": "plan"}), [])
>>> stored = load(folder)
>>> stored.fingerprint, stored.state.plans
('abc', {'I': 'plan'})
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path

import orjson

from monitor.events import DeadLetter
from monitor.exceptions import MonitorError
from monitor.initiative_stage import InitiativeState
from monitor.settings import Settings

STATE_FILE = "state.pickle"
DEAD_LETTERS_FILE = "dead-letters.jsonl"
FORMAT_VERSION = 2  # 2: experiments keep a history of looks (an older state lacks it: replay)
# Settings that do not change what a replay decides.
_NOT_DECIDING = {
    "plan_dir",
    "log_level",
    "web_host",
    "web_port",
    "kafka_bootstrap",
    "security_protocol",
    "sasl_mechanism",
    "sasl_username",
    "sasl_password",
    "ssl_cafile",
    "topic_partitions",
    "topic_replicas",
    "app_id",
    "session_timeout_seconds",
    "development",
}


class StoredStateError(MonitorError):
    """The state directory cannot be read or written."""


@dataclass(frozen=True)
class StoredRun:
    fingerprint: str
    state: InitiativeState


def fingerprint(events: Path, settings: Settings) -> str:
    """What a stored state must have been built from to answer for `events` under `settings`."""
    stat = events.stat()
    deciding = settings.model_dump(mode="json", exclude=_NOT_DECIDING)
    deciding["pseudonym_key"] = hashlib.sha256(settings.pseudonym_key.get_secret_value().encode()).hexdigest()
    identity = {
        "events": [str(events.resolve()), stat.st_size, stat.st_mtime_ns],
        "settings": deciding,
        "format": FORMAT_VERSION,
    }
    return hashlib.sha256(orjson.dumps(identity, option=orjson.OPT_SORT_KEYS)).hexdigest()


def save(directory: Path, built_from: str, state: InitiativeState, dead_letters: list[DeadLetter] | None) -> None:
    """Write the state and the dead letters atomically (temporary file, fsync, rename); `None` keeps the dead
    letters already there (the state changed after its replay: an incident action)."""
    tables = {f.name: dict(getattr(state, f.name)) for f in fields(InitiativeState)}
    body = pickle.dumps(
        {"version": FORMAT_VERSION, "fingerprint": built_from, "tables": tables}, protocol=pickle.HIGHEST_PROTOCOL
    )
    files = [(STATE_FILE, body)]
    if dead_letters is not None:  # the state last: it vouches for the dead letters
        files.insert(
            0,
            (
                DEAD_LETTERS_FILE,
                b"".join(orjson.dumps(letter.model_dump(mode="json")) + b"\n" for letter in dead_letters),
            ),
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for name, content in files:
            descriptor, temp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(content)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, directory / name)
    except OSError as exc:
        raise StoredStateError(f"cannot write the state directory {directory}: {exc.strerror or exc}") from exc


def load(directory: Path) -> StoredRun | None:
    """The stored run in `directory`, or None when there is none."""
    path = directory / STATE_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoredStateError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        stored = pickle.loads(raw)
        if stored.get("version") != FORMAT_VERSION:
            raise StoredStateError(
                f"{path} has format {stored.get('version')!r}, this version reads "
                f"{FORMAT_VERSION}: replay the events again"
            )
        return StoredRun(stored["fingerprint"], InitiativeState(**stored["tables"]))
    except StoredStateError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file: say which, whatever unpickling raised
        raise StoredStateError(
            f"{path} is not a state this tool wrote ({type(exc).__name__}): replay the events again"
        ) from None
