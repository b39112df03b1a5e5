"""Errors raised by the streams package; all derive from StreamsError."""


class StreamsError(Exception):
    """Root of every error the streams package raises on purpose."""


class DecodeError(StreamsError):
    """A record is not valid input; `reason` is one line for the dead-letter topic."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail or reason


class SinkError(StreamsError):
    """A write to an output (topic or plan file) failed after its retries."""


class WorkerUnreachable(StreamsError):
    """No worker answered at the configured web address."""
