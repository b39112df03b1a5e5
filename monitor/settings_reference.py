"""The configuration reference, generated from `Settings`: docs/configuration.md's table is this output.

`make docs` (`cli.docs`) rewrites the table between its markers; a test fails when it is
stale, so the reference cannot drift from the code.
"""

from __future__ import annotations

import json
import typing
from typing import Any

import annotated_types
from pydantic import SecretStr

from monitor.settings import SETTING_GROUPS, Settings


def _number(value: float) -> str:
    # 86 400 rather than 86400: thin groups read faster in a table.
    return f"{value:,}".replace(",", " ") if isinstance(value, int) else f"{value:g}"


def _allowed(field: Any) -> str:
    annotation = field.annotation
    if typing.get_origin(annotation) is typing.Literal:
        return ", ".join(f"`{choice}`" for choice in typing.get_args(annotation))
    if annotation is bool:
        return "`true`, `false`"
    bounds = []
    for item in field.metadata:
        for cls, attribute, sign in (
            (annotated_types.Gt, "gt", ">"),
            (annotated_types.Ge, "ge", "≥"),
            (annotated_types.Lt, "lt", "<"),
            (annotated_types.Le, "le", "≤"),
        ):
            if isinstance(item, cls):
                bounds.append(f"{sign} {_number(getattr(item, attribute))}")
    if bounds:
        return ", ".join(bounds)
    names = str(annotation)
    if "SecretStr" in names:
        return "text (secret)"
    if "Path" in names:
        return "path"
    if "dict" in names:
        return "JSON object"
    if "tuple" in names or "list" in names:
        return "JSON list"
    return "text"


def _default(field: Any) -> str:
    value = field.get_default(call_default_factory=True)
    if value is None or isinstance(value, SecretStr):
        return "unset" if value is None else "(development key)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"  # as PMON_* variables and TOML spell it
    if isinstance(value, (dict, tuple, list)):
        return f"`{json.dumps(value if not isinstance(value, tuple) else list(value))}`"
    return f"`{value}`"


def settings_table() -> str:
    """One table per concern (`SETTING_GROUPS`), one row per setting.

    >>> settings_table().splitlines()[4].startswith("| `PMON_KAFKA_BOOTSTRAP` | `localhost:9092` | text |")
    True
    """
    rows: list[str] = []
    for group, names in SETTING_GROUPS.items():
        rows += [f"### {group}", "", "| Variable | Default | Allowed | Description |", "|---|---|---|---|"]
        for name in names:
            field = Settings.model_fields[name]
            rows.append(
                f"| `PMON_{name.upper()}` | {_default(field)} | {_allowed(field)} | "
                f"{(field.description or '').replace('|', '/')} |"
            )
        rows.append("")
    return "\n".join(rows).rstrip()
