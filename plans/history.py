"""A plan's history: its stored revisions, and what changed between two of them.

The plan directory holds one file per revision (`plans.plan_sink`); these
helpers read them back for `pmon plan show|log|diff`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from plans.document import PlanDocument
from plans.exceptions import PlanReadError
from plans.plan_sink import plan_files

# A list item is matched across revisions by the first of these it has, so an insertion is one change.
_ITEM_KEYS = ("id", "incident_id", "item", "name", "metric", "at")


def revisions(directory: Path, initiative: str) -> list[PlanDocument]:
    """Every stored revision of `initiative`, oldest first; PlanReadError names a file that cannot be read."""
    documents = []
    for path in plan_files(directory, initiative):
        try:
            documents.append(PlanDocument.model_validate_json(path.read_bytes()))
        except OSError as exc:
            raise PlanReadError(f"cannot read plan document {path}: {exc.strerror or exc}") from exc
        except ValueError as exc:
            raise PlanReadError(f"plan document {path} is invalid: {exc}") from exc
    return documents


def _flatten(value: Any, path: str, into: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(item, f"{path}.{key}" if path else key, into)
    elif isinstance(value, list):
        for n, item in enumerate(value):
            key = next((item[k] for k in _ITEM_KEYS if isinstance(item, dict) and k in item), n)
            _flatten(item, f"{path}[{key}]", into)
    else:
        into[path] = value


def diff(old: PlanDocument, new: PlanDocument) -> list[tuple[str, Any, Any]]:
    """(path, old value, new value) for every leaf that differs; None stands for absent.

    >>> from datetime import datetime, timezone
    >>> from plans.document import new_plan, with_thresholds
    >>> t0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
    >>> first = new_plan("Demo", thresholds={"alert_threshold": 0.2}, at=t0)
    >>> second = with_thresholds(first, {"alert_threshold": 0.1}, at=t0, actor="ana", reason="tighter")
    >>> [change for change in diff(first, second) if not change[0].startswith("change_log")]
    [('revision', 1, 2), ('thresholds.alert_threshold', 0.2, 0.1)]
    """
    before: dict[str, Any] = {}
    after: dict[str, Any] = {}
    _flatten(old.model_dump(mode="json"), "", before)
    _flatten(new.model_dump(mode="json"), "", after)
    return [
        (path, before.get(path), after.get(path))
        for path in sorted(before.keys() | after.keys())
        if before.get(path) != after.get(path)
    ]
