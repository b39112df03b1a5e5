"""JSON Schemas of every topic's value, of the plan document and of the report, exported under `schemas/`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel

from incidents.model import IncidentAction
from monitor.events import INPUT_MODELS, DeadLetter, IncidentEvent
from monitor.topics import DEAD_LETTERS, INCIDENT_ACTIONS, INCIDENTS
from plans.schema import plan_json_schema

TOPIC_MODELS: dict[str, type[BaseModel]] = {
    **INPUT_MODELS,
    INCIDENTS: IncidentEvent,
    INCIDENT_ACTIONS: IncidentAction,
    DEAD_LETTERS: DeadLetter,
}


def all_schemas() -> dict[str, dict[str, Any]]:
    """File name → schema. The plan-updates topic carries the plan document."""
    schemas = {f"{topic}.schema.json": model.model_json_schema() for topic, model in TOPIC_MODELS.items()}
    schemas["plan.schema.json"] = plan_json_schema()
    schemas["report.schema.json"] = report_json_schema()
    return schemas


def report_json_schema() -> dict[str, Any]:
    """The report document of `--format json` and the worker's `/pmon/report/` view."""
    from monitor.report import Report

    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **Report.model_json_schema(mode="serialization"),
        "title": "Personalization Monitor report",
    }


def schema_bytes(schema: dict[str, Any]) -> bytes:
    return orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def write_schemas(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in all_schemas().items():
        path = directory / name
        path.write_bytes(schema_bytes(schema))
        written.append(path)
    return written
