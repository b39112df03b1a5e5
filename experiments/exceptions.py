"""Errors raised by the experiments package; all derive from ExperimentError."""

from pmon_errors import PmonError


class ExperimentError(PmonError):
    """Root of every error the experiments package raises on purpose."""


class InvalidEvent(ExperimentError, ValueError):
    """An engagement event the per-user state cannot fold in (unknown type, negative revenue...)."""


class InvalidSpec(ExperimentError, ValueError):
    """An experiment specification that cannot be read out (no control, allocation not covering the variants...)."""


class InvalidTotals(ExperimentError, ValueError):
    """Variant totals that cannot come from real users (more converting users than users, negative sums...)."""


class InvalidStatisticInput(ExperimentError, ValueError):
    """A statistic asked of inputs outside its domain (a probability above 1, a non-positive variance...)."""
