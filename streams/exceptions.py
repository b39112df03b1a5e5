"""Errors raised by the streams package (transport); all derive from StreamsError."""

from pmon_errors import PmonError


class StreamsError(PmonError):
    """Root of every error the streams package raises on purpose."""


class BrokerUnavailable(StreamsError):
    """No broker answers at the bootstrap servers (none there, or not yet)."""
