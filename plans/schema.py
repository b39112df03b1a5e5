"""The plan document's JSON Schema, exported to ``schemas/plan.schema.json``.

Regenerate the checked-in copy with::

    python -m plans schema schemas/plan.schema.json

>>> schema = plan_json_schema()
>>> schema["$id"], "initiative" in schema["required"]
('urn:pmon:schema:plan-document:1', True)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson

from plans.document import SCHEMA_VERSION, PlanDocument

PLAN_SCHEMA_ID = f"urn:pmon:schema:plan-document:{SCHEMA_VERSION}"
PLAN_SCHEMA_TITLE = "Personalization Monitor plan document"
_JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def plan_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of `PlanDocument`, with its `$id` and title."""
    schema = PlanDocument.model_json_schema()
    # "$schema" and "$id" first, so the exported file reads top-down.
    return {"$schema": _JSON_SCHEMA_DIALECT, "$id": PLAN_SCHEMA_ID, **schema, "title": PLAN_SCHEMA_TITLE}


def plan_schema_bytes() -> bytes:
    """The schema as deterministic JSON (sorted keys, two-space indent, final newline)."""
    return orjson.dumps(
        plan_json_schema(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE
    )


def main(argv: list[str] | None = None) -> int:
    """Write the schema to the path given, or to standard output."""
    args = sys.argv[1:] if argv is None else argv
    if args:
        Path(args[0]).write_bytes(plan_schema_bytes())
    else:
        sys.stdout.buffer.write(plan_schema_bytes())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
