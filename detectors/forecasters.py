"""One-step forecasters of a seasonal KPI, for `detectors.seasonal`.

Three behind one small interface, ``forecast(index) -> float | None`` and
``learn(index, y)``, where ``index`` is the bucket's number since the epoch:

* ``profile`` — a level times an hour-of-day profile (multiplicative, or
  additive for values that may be negative), both exponentially weighted. The
  first season initialises the profile. 25 floats of state.
* ``holt_winters`` — River's `time_series.HoltWinters` (multiplicative, so
  counts get an offset of 1 to stay positive).
* ``snarimax`` — River's `time_series.SNARIMAX` with a seasonal difference.

River's models count the values they learn to know the season's phase, while a
detector does not learn every bucket (a breach is not learnt, so that an
ongoing dip never becomes the new normal). The wrapper fills such a hole with
the model's own forecasts before it learns the next bucket, so the phase stays
right. Which forecaster serves which KPI was decided by measurement: see
`detectors.registry`.
"""

from __future__ import annotations

from typing import Literal, Protocol

ForecasterName = Literal["profile", "holt_winters", "snarimax"]
FORECASTERS: tuple[str, ...] = ("profile", "holt_winters", "snarimax")


class Forecaster(Protocol):
    def forecast(self, index: int) -> float | None: ...

    def learn(self, index: int, y: float) -> None: ...


class SeasonalProfile:
    """Level x profile[phase] (or level + profile[phase]), exponentially weighted.

    The first `init_seasons` seasons initialise the profile with their mean per
    phase: one day of a series of 50 exposures an hour puts a phase's factor off
    by 15 % at one standard deviation, two days by 10 %. Afterwards each value
    moves the level by `level_weight` of its error (the error itself, not the
    error divided by the phase's factor, so a quiet night hour moves the level
    less than a busy evening one: it says less about it) and its phase's factor
    by `profile_weight`.

    >>> model = SeasonalProfile(season=4, level_weight=0.5, profile_weight=0.5, init_seasons=1)
    >>> for index, y in enumerate([10, 20, 30, 40]):
    ...     model.learn(index, y)
    >>> model.forecast(4), model.forecast(7)
    (10.0, 40.0)
    >>> model.learn(4, 0.0)          # nothing where 10 were expected: the level drops by half of 10
    >>> model.forecast(5)            # 20 x 0.8
    16.0
    """

    def __init__(
        self,
        season: int = 24,
        level_weight: float = 0.2,
        profile_weight: float = 0.2,
        multiplicative: bool = True,
        init_seasons: int = 2,
    ) -> None:
        self.season = season
        self.level_weight = level_weight
        self.profile_weight = profile_weight
        self.multiplicative = multiplicative
        self.init_seasons = init_seasons
        self._profile: list[float] = [0.0] * season  # sums per phase until initialised, then the factors
        self._seen: list[int] = [0] * season  # values per phase until initialised, then []
        self._level: float | None = None

    def forecast(self, index: int) -> float | None:
        if self._level is None:
            return None
        factor = self._profile[index % self.season]
        return self._level * factor if self.multiplicative else self._level + factor

    def learn(self, index: int, y: float) -> None:
        phase = index % self.season
        if self._level is None:
            self._profile[phase] += y
            self._seen[phase] += 1
            if min(self._seen) >= self.init_seasons:
                means = [total / seen for total, seen in zip(self._profile, self._seen, strict=True)]
                level = sum(means) / self.season
                if self.multiplicative:
                    self._profile = [m / level if level > 0 else 1.0 for m in means]
                else:
                    self._profile = [m - level for m in means]
                self._level, self._seen = level, []
            return
        factor = self._profile[phase]
        if self.multiplicative:
            self._level = max(0.0, self._level + self.level_weight * (y - self._level * factor))
            if self._level > 0:
                self._profile[phase] = factor + self.profile_weight * (y / self._level - factor)
        else:
            self._level += self.level_weight * (y - factor - self._level)
            self._profile[phase] = factor + self.profile_weight * (y - self._level - factor)


class RiverForecaster:
    """A River time-series model that keeps its phase when buckets are not learnt.

    >>> model = RiverForecaster("holt_winters", season=4)
    >>> for index in range(40):
    ...     if index not in (21, 22):   # two buckets not learnt: the gap is filled with forecasts
    ...         model.learn(index, [30, 20, 40, 30][index % 4])
    >>> round(model.forecast(40)), round(model.forecast(42))
    (30, 40)
    """

    def __init__(self, name: ForecasterName, season: int = 24, offset: float = 1.0) -> None:
        # Here, not at import: River's time_series loads scipy.stats (about a second), which the default
        # detectors never need.
        from river import time_series

        if name == "holt_winters":
            # Multiplicative: traffic scales its daily curve. Weights measured on the simulator's series.
            # River's HoltWinters reads its initial trend from the first season's steps, which for a daily
            # curve is no trend at all: a tiny beta keeps that misreading from lingering.
            self._model: time_series.HoltWinters | time_series.SNARIMAX = time_series.HoltWinters(
                alpha=0.2, beta=0.001, gamma=0.2, seasonality=season, multiplicative=True
            )
        elif name == "snarimax":
            self._model = time_series.SNARIMAX(p=1, d=0, q=0, m=season, sp=1, sd=1, sq=0)
        else:
            raise ValueError(f"unknown River forecaster {name!r}")
        self.name = name
        self.season = season
        self.offset = offset  # HoltWinters' multiplicative form needs values above zero
        self._last: int | None = None
        self._learnt = 0

    def forecast(self, index: int) -> float | None:
        # Both models need two seasons before their forecasts mean anything.
        if self._last is None or self._learnt < 2 * self.season or index <= self._last:
            return None
        return self._model.forecast(horizon=index - self._last)[-1] - self.offset

    def learn(self, index: int, y: float) -> None:
        if self._last is not None and index <= self._last:
            return  # a bucket learnt twice (a redelivery) or out of order
        if self._last is not None and index - self._last > 1:
            gap = index - self._last - 1
            if gap > 2 * self.season:  # skip whole seasons: the phase is what matters
                gap = self.season + gap % self.season
            filled = self._model.forecast(horizon=gap) if self._learnt >= 2 * self.season else [y + self.offset] * gap
            for value in filled:
                self._model.learn_one(value)
        self._model.learn_one(y + self.offset)
        self._last = index
        self._learnt += 1


def make_forecaster(name: str, season: int = 24, multiplicative: bool = True) -> Forecaster:
    if name == "profile":
        return SeasonalProfile(season=season, multiplicative=multiplicative)
    if name in ("holt_winters", "snarimax"):
        return RiverForecaster(name, season=season)  # type: ignore[arg-type]
    raise ValueError(f"unknown forecaster {name!r}; known: {FORECASTERS}")
