"""Errors raised by the plans package; all derive from PlanError."""

from pmon_errors import PmonError


class PlanError(PmonError):
    """Root of every error the plans package raises on purpose."""


class PlanWriteError(PlanError, OSError):
    """The plan document could not be written to the plan directory."""


class InvalidPlanError(PlanError, ValueError):
    """An update would produce a plan document that fails validation."""


class UnknownPlanItemError(PlanError, LookupError):
    """An update names a stage, feed or metric the plan does not have."""


class PlanReadError(PlanError, OSError):
    """A stored plan document could not be read back or failed validation."""
