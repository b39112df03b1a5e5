"""The series key, ``initiative|profile|channel|variant``: the one place that builds and reads it.

It lives in `incidents`, the lowest pure package, because every layer names series by it: the per-user
stage builds it, governance reads a violation's channel from it, the per-initiative stage, the report,
the simulator, the CLI and the benchmarks read it too; `monitor` would have made governance import it.

The four parts are validated names, and a name may itself hold a ``|``: such a key has more than four
parts. `SeriesKey.parse` refuses it; the pipeline's own readers (`field_of`, `split_variant`) never fail on
it and read it by position, as the stages always have, so that no valid record stops a stage.

>>> key = SeriesKey("PLG Onboarding", "new_user", "web", "control")
>>> str(key)
'PLG Onboarding|new_user|web|control'
>>> SeriesKey.parse(str(key)) == key
True
"""

from __future__ import annotations

from typing import NamedTuple

from incidents.exceptions import InvalidSeriesKey

SEPARATOR = "|"
FIELDS = ("initiative", "profile", "channel", "variant")


def build_key(initiative: str, profile: str, channel: str, variant: str) -> str:
    """The key of one series; a plain function so the per-event path pays one f-string and one call.

    >>> build_key("PLG Onboarding", "new_user", "web", "control")
    'PLG Onboarding|new_user|web|control'
    """
    return f"{initiative}|{profile}|{channel}|{variant}"


def detector_key(series: str, detector: str) -> str:
    """The key of one detector's state on one series (the per-initiative stage's series table).

    >>> detector_key("PLG Onboarding|new_user|web|control", "cvr_cusum")
    'PLG Onboarding|new_user|web|control|cvr_cusum'
    >>> split_detector_key(detector_key("PLG Onboarding|new_user|web|control", "cvr_cusum"))
    ('PLG Onboarding|new_user|web|control', 'cvr_cusum')
    """
    return f"{series}{SEPARATOR}{detector}"


def split_detector_key(key: str) -> tuple[str, str]:
    """(series, detector) of a `detector_key`: the detector's name is the last part (it holds no ``|``)."""
    series, _, detector = key.rpartition(SEPARATOR)
    return series, detector


class SeriesKey(NamedTuple):
    """One series, by its four parts.

    >>> key = SeriesKey.parse("PLG Onboarding|new_user|web|control")
    >>> key.channel, key.group
    ('web', 'PLG Onboarding|new_user|web')
    >>> key._replace(variant="treatment").key
    'PLG Onboarding|new_user|web|treatment'
    """

    initiative: str
    profile: str
    channel: str
    variant: str

    @property
    def key(self) -> str:
        """The key, as the tables and topics store it."""
        return build_key(*self)

    @property
    def group(self) -> str:
        """The variant group: the key without its variant (the variants of a group share its traffic)."""
        return SEPARATOR.join(self[:3])

    def __str__(self) -> str:
        return self.key

    @classmethod
    def parse(cls, text: str) -> SeriesKey:
        """The key's four parts; `InvalidSeriesKey` unless there are exactly four, none empty.

        >>> SeriesKey.parse("PLG Onboarding|new_user|web|control").variant
        'control'
        >>> SeriesKey.parse("PLG|web")
        Traceback (most recent call last):
        ...
        incidents.exceptions.InvalidSeriesKey: series key 'PLG|web' has 2 parts; expected 4, initiative|profile|channel|variant
        >>> SeriesKey.parse("PLG||web|control")
        Traceback (most recent call last):
        ...
        incidents.exceptions.InvalidSeriesKey: series key 'PLG||web|control' has an empty part; expected initiative|profile|channel|variant
        """  # noqa: E501 - doctest output stays on one line
        parts = text.split(SEPARATOR)
        if len(parts) != len(FIELDS):
            raise InvalidSeriesKey(f"series key {text!r} has {len(parts)} parts; expected 4, {SEPARATOR.join(FIELDS)}")
        if not all(parts):
            raise InvalidSeriesKey(f"series key {text!r} has an empty part; expected {SEPARATOR.join(FIELDS)}")
        return cls(*parts)


def field_of(key: str, name: str) -> str:
    """One part of a key built by `build_key`, by position (`IndexError` only on a key of fewer parts).

    >>> field_of("PLG Onboarding|new_user|web|control", "channel")
    'web'
    """
    return key.split(SEPARATOR)[FIELDS.index(name)]


def split_variant(key: str) -> tuple[str, str]:
    """(variant group, variant) of a key built by `build_key`: the variant is its last part.

    >>> split_variant("PLG Onboarding|new_user|web|control")
    ('PLG Onboarding|new_user|web', 'control')
    """
    group, _, variant = key.rpartition(SEPARATOR)
    return group, variant


def join_variant(group: str, variant: str) -> str:
    """The key of one variant of a group (`split_variant`'s inverse).

    >>> join_variant("PLG Onboarding|new_user|web", "treatment")
    'PLG Onboarding|new_user|web|treatment'
    """
    return f"{group}{SEPARATOR}{variant}"
