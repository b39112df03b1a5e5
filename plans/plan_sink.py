"""Plan documents on disk (and as bytes for the plan-updates topic).

Each revision is its own file, ``<dir>/<initiative-slug>/plan-<timestamp>-r<revision>.json``,
written atomically: a reader sees the previous revision or the new one, never a
half-written file, and a crash mid-write leaves no partial file behind.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import unicodedata
from contextlib import suppress
from pathlib import Path

import orjson
from pydantic import ValidationError

from plans.document import PlanDocument
from plans.exceptions import PlanReadError, PlanWriteError

_JSON_OPTIONS = orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE
_TIMESTAMP_FORMAT = "%Y%m%dT%H%M%S%fZ"
_PLAN_FILE = re.compile(r"^plan-(?P<stamp>\d{8}T\d{12}Z)-r(?P<revision>\d{6,})\.json$")
_MAX_SLUG_LENGTH = 80


def slugify(initiative: str) -> str:
    """A directory name for `initiative`: lower-case ASCII letters, digits and single hyphens.

    Accents are folded; a name with nothing left (all symbols or non-Latin
    script) gets a stable hash-based slug rather than an error, so an odd name
    never stops the worker.

    >>> slugify("PLG Onboarding")
    'plg-onboarding'
    >>> slugify("  Café / Checkout -- v2!  ")
    'cafe-checkout-v2'
    >>> slugify("日本語")
    'initiative-77710aed'
    """
    folded = unicodedata.normalize("NFKD", initiative).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", folded.lower()).strip("-")[:_MAX_SLUG_LENGTH].rstrip("-")
    if slug:
        return slug
    digest = hashlib.sha256(initiative.encode("utf-8")).hexdigest()[:8]
    return f"initiative-{digest}"


def plan_bytes(plan: PlanDocument) -> bytes:
    """The plan as deterministic JSON (sorted keys, two-space indent): the file content and the topic value."""
    return orjson.dumps(plan.model_dump(mode="json"), option=_JSON_OPTIONS)


def plan_file_name(plan: PlanDocument) -> str:
    """``plan-<updated_at UTC>-r<revision>.json``: sorts by time, then revision.

    >>> from datetime import datetime, timezone
    >>> from plans.document import new_plan
    >>> plan = new_plan("Demo", thresholds={}, at=datetime(2024, 5, 1, 9, 30, tzinfo=timezone.utc))
    >>> plan_file_name(plan)
    'plan-20240501T093000000000Z-r000001.json'
    """
    return f"plan-{plan.updated_at.strftime(_TIMESTAMP_FORMAT)}-r{plan.revision:06d}.json"


class PlanWriter:
    """Writes plan revisions under `directory`, one sub-directory per initiative."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def path_for(self, plan: PlanDocument) -> Path:
        """Where `write` puts this revision of the plan."""
        return self.directory / slugify(plan.initiative) / plan_file_name(plan)

    def write(self, plan: PlanDocument) -> Path:
        """Write `plan` atomically and return its path; PlanWriteError on failure.

        Writing the same revision again rewrites the same file with the same bytes.
        """
        target = self.path_for(plan)
        content = plan_bytes(plan)
        temp_name: str | None = None
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # The temporary file lives in the target's directory so os.replace is a
            # same-filesystem rename, which POSIX makes atomic.
            descriptor, temp_name = tempfile.mkstemp(dir=target.parent, prefix=".plan-", suffix=".tmp")
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(content)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp_name, target)
            temp_name = None
            _fsync_directory(target.parent)
        except OSError as exc:
            raise _write_error(target, exc) from exc
        finally:
            if temp_name is not None:
                with suppress(OSError):
                    os.unlink(temp_name)
        return target

    def history(self, initiative: str) -> list[PlanDocument]:
        """Every stored revision of `initiative`, oldest first; see `plans.history.revisions`."""
        from plans.history import revisions

        return revisions(self.directory, initiative)

    def latest(self, initiative: str) -> PlanDocument | None:
        """The newest stored plan of `initiative`, or None; see `latest`."""
        return latest(self.directory, initiative)


def _write_error(target: Path, cause: OSError) -> PlanWriteError:
    """PlanWriteError naming the plan file, the OS reason and, if different, the path that failed."""
    reason = cause.strerror or str(cause)
    if cause.filename is not None and str(cause.filename) != str(target):
        reason = f"{reason} (at {cause.filename})"
    if cause.errno is None:
        return PlanWriteError(f"cannot write plan document {target}: {reason}")
    # The errno/strerror/filename form keeps `errno` and `filename` usable by callers.
    return PlanWriteError(cause.errno, f"cannot write plan document: {reason}", str(target))


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; directories cannot be opened this way on Windows.
    if os.name != "posix":
        return
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def plan_files(directory: Path, initiative: str) -> list[Path]:
    """The stored plan files of `initiative`, oldest first (by time, then revision)."""
    folder = Path(directory) / slugify(initiative)
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise PlanReadError(f"cannot list plan directory {folder}: {exc.strerror or exc}") from exc
    matches = [(m["stamp"], int(m["revision"]), name) for name in names if (m := _PLAN_FILE.match(name))]
    return [folder / name for _, _, name in sorted(matches)]


def latest(directory: Path, initiative: str) -> PlanDocument | None:
    """The newest plan of `initiative` stored under `directory`, validated; None if there is none.

    PlanReadError if that file cannot be read, is not a valid plan, or belongs
    to another initiative whose name has the same slug.
    """
    files = plan_files(directory, initiative)
    if not files:
        return None
    newest = files[-1]
    try:
        plan = PlanDocument.model_validate_json(newest.read_bytes())
    except OSError as exc:
        raise PlanReadError(f"cannot read plan document {newest}: {exc.strerror or exc}") from exc
    except ValidationError as exc:
        raise PlanReadError(f"plan document {newest} is invalid: {exc}") from exc
    if plan.initiative != initiative:
        raise PlanReadError(
            f"plan document {newest} belongs to initiative {plan.initiative!r}, not {initiative!r} "
            "(their names share a slug)"
        )
    return plan
