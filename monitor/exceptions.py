"""Errors raised by the monitor core on purpose; all derive from MonitorError."""

from pmon_errors import PmonError


class MonitorError(PmonError):
    """Root of every error the monitor core raises on purpose."""


class DecodeError(MonitorError):
    """A record is not valid input; `reason` is one line for the dead-letter topic."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail or reason


class StageError(MonitorError):
    """A message between the stages is malformed: a bug or a foreign writer on an internal topic."""


class StateCodecError(MonitorError):
    """A stored value names a state dictionary the store does not hold: the store or its changelog is damaged."""
