"""`make docs`: the generated parts of docs/, each between `<!-- NAME:begin -->` and `<!-- NAME:end -->`.

`settings` is the configuration table (from `Settings`), `glossary` the report's metric
names (from `cli.render.GLOSSARY`), `metrics` the worker's Prometheus metrics and their
labels (from `monitor.metrics`), `alerts` the alert rules (from deploy/alert-rules.yml). A test fails when a
file is stale, so these parts cannot drift from the code.

>>> rewritten("a\\n<!-- glossary:begin -->\\nold\\n<!-- glossary:end -->\\nb").splitlines()[2]
"- **exposures**: personalized or fallback impressions counted in the window's closed buckets"
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _settings() -> str:
    from monitor.settings_reference import settings_table

    return settings_table()


def _glossary() -> str:
    from cli.render import GLOSSARY

    return "\n".join(f"- **{name}**: {meaning}" for name, meaning in GLOSSARY.items())


def _metrics() -> str:
    from monitor.metrics import labels_table, metrics_table

    return f"{metrics_table()}\n\n{labels_table()}"


def alert_rules() -> list[dict[str, Any]]:
    """The rules of deploy/alert-rules.yml, each with its group's name."""
    import yaml

    groups = yaml.safe_load((ROOT / "deploy" / "alert-rules.yml").read_text())["groups"]
    return [{**rule, "group": group["name"]} for group in groups for rule in group["rules"] if "alert" in rule]


def _alerts() -> str:
    lines = ["| alert | group | for | severity | what |", "|---|---|---|---|---|"]
    for rule in alert_rules():
        summary = rule.get("annotations", {}).get("summary", "").replace("|", "/")
        lines.append(
            f"| `{rule['alert']}` | {rule['group']} | {rule.get('for', '0s')} | "
            f"{rule.get('labels', {}).get('severity', '')} | {summary} |"
        )
    return "\n".join(lines)


GENERATED: dict[str, Callable[[], str]] = {
    "settings": _settings,
    "glossary": _glossary,
    "metrics": _metrics,
    "alerts": _alerts,
}
_BLOCK = re.compile(r"(<!-- (\w+):begin -->\n).*?(<!-- \2:end -->)", re.S)


def rewritten(text: str) -> str:
    """`text` with every known generated block replaced by its current content."""

    def fill(match: re.Match[str]) -> str:
        make = GENERATED.get(match.group(2))
        return match.group(0) if make is None else f"{match.group(1)}{make()}\n{match.group(3)}"

    return _BLOCK.sub(fill, text)


def main(paths: list[str]) -> int:
    for target in map(Path, paths):
        text = target.read_text()
        updated = rewritten(text)
        if updated != text:
            target.write_text(updated)
        sys.stdout.write(f"{target}: {'rewritten' if updated != text else 'up to date'}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
