"""Errors raised by the governance package; all derive from GovernanceError."""

from pmon_errors import PmonError


class GovernanceError(PmonError):
    """Root of every error the governance package raises on purpose."""


class InvalidPolicy(GovernanceError, ValueError):
    """A consent or audit policy that cannot be applied (unknown policy name, negative grace...)."""
