"""Errors raised by the command line on purpose; all derive from CliError."""

from pmon_errors import PmonError


class CliError(PmonError):
    """Root of every error the command line raises on purpose: printed as one line, exit 2."""


class WorkerUnreachable(CliError):
    """No worker answered at the configured web address."""
