"""Errors raised by the detectors package; all derive from DetectorError."""

from pmon_errors import PmonError


class DetectorError(PmonError):
    """Root of every error the detectors package raises on purpose."""


class InvalidObservation(DetectorError, ValueError):
    """An observation a detector cannot score (negative counts, clicks above exposures...)."""
