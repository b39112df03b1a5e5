"""The plan document: model, pure updates, JSON Schema and the atomic file sink.

Pure: no faust, no aiokafka, no event loop. Plain data in, a new plan out.
"""

from plans.document import (
    Approval,
    BacklogItem,
    Cadence,
    ChangeLogEntry,
    ChecklistItem,
    DataFeed,
    DependencyGraph,
    ErrorHandling,
    GraphEdge,
    GraphNode,
    IncidentSummary,
    MergeGate,
    PlanDocument,
    Stage,
    SuccessMetric,
    feed_status,
    new_plan,
    post_incident_review_id,
    with_approval,
    with_backlog_item,
    with_checklist,
    with_experiment_memo,
    with_feed,
    with_incident,
    with_metric,
    with_stage,
    with_thresholds,
)
from plans.exceptions import (
    InvalidPlanError,
    PlanError,
    PlanReadError,
    PlanWriteError,
    UnknownPlanItemError,
)
from plans.plan_sink import PlanWriter, latest, plan_bytes, plan_file_name, plan_files, slugify
from plans.schema import plan_json_schema, plan_schema_bytes

__all__ = [
    "Approval", "BacklogItem", "Cadence", "ChangeLogEntry", "ChecklistItem", "DataFeed", "DependencyGraph",
    "ErrorHandling", "GraphEdge", "GraphNode", "IncidentSummary", "MergeGate", "PlanDocument",
    "Stage", "SuccessMetric", "feed_status", "new_plan", "post_incident_review_id",
    "with_approval", "with_backlog_item", "with_checklist", "with_experiment_memo", "with_feed", "with_incident",
    "with_metric", "with_stage", "with_thresholds",
    "InvalidPlanError", "PlanError", "PlanReadError", "PlanWriteError", "UnknownPlanItemError",
    "PlanWriter", "latest", "plan_bytes", "plan_file_name", "plan_files", "slugify",
    "plan_json_schema", "plan_schema_bytes",
]
