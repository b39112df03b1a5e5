"""Errors raised by the incidents package; all derive from IncidentError."""

from pmon_errors import PmonError


class IncidentError(PmonError):
    """Root of every error the incidents package raises on purpose."""


class UnknownIncidentKind(IncidentError, KeyError):
    """An incident kind has no playbook; every kind must have an owner and a playbook."""


class InvalidSeriesKey(IncidentError, ValueError):
    """A series key is not ``initiative|profile|channel|variant`` (`incidents.series.SeriesKey.parse`)."""
