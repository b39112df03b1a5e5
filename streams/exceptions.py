"""Errors raised by the streams package (transport); all derive from StreamsError."""


class StreamsError(Exception):
    """Root of every error the streams package raises on purpose."""
