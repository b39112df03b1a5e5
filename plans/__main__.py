"""``python -m plans schema [PATH]``: export the plan document's JSON Schema (to stdout without PATH)."""

from __future__ import annotations

import sys

from plans.schema import main as export_schema

_USAGE = "usage: python -m plans schema [PATH]\n"


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "schema":
        sys.stderr.write(_USAGE)
        return 2
    return export_schema(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
