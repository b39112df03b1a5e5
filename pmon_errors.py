"""The root of every error the project raises on purpose.

Each package keeps its own root in its `exceptions.py` (`MonitorError`, `DetectorError`, ...), and every one of
them derives from `PmonError`, so a caller (the CLI, a driver) can tell the project's own errors, which carry a
message meant for people, from a bug.

>>> from experiments.exceptions import InvalidTotals
>>> issubclass(InvalidTotals, PmonError)
True
"""


class PmonError(Exception):
    """Root of every error the project raises on purpose."""
