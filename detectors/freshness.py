"""Data freshness per feed: given when each feed last carried an event, and now, is it stale?

Pure: the caller (a wall-clock timer in the pipeline, the event-time clock in
a replay or the benchmark) says what "now" is, so the check runs even when no
event arrives at all. A feed (topic x initiative) is stale when its last event
is older than its objective; one never seen is unknown (warming up), not stale.
The verdicts go through the breach policy like any other: two stale checks in
a row open a `feed_stale` incident.

An objective should match the feed's traffic: at 60 events an hour, ten quiet
minutes happen once in ten thousand checks by chance alone (Poisson:
P(no event in t) = exp(-rate t)); at 6 an hour, every few hours.
`objective_for_rate` gives the silence whose chance is `significance`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime, timedelta

from detectors.base import Verdict
from detectors.exceptions import InvalidObservation

KIND = "feed_stale"


def check_freshness(
    last_event: Mapping[str, datetime | None], now: datetime, objective: timedelta | Mapping[str, timedelta]
) -> dict[str, Verdict]:
    """One verdict per feed: breached when stale; observed/expected are the age and the objective in seconds.

    >>> from datetime import timezone
    >>> now = datetime(2026, 11, 7, 2, 30, tzinfo=timezone.utc)
    >>> verdicts = check_freshness({"engagement|Win-back Emails": now - timedelta(minutes=40),
    ...                             "engagement|PLG Onboarding": now - timedelta(seconds=3),
    ...                             "engagement|New": None}, now, timedelta(minutes=15))
    >>> [(feed, v.breached, v.observed) for feed, v in verdicts.items()]
    [('engagement|Win-back Emails', True, 2400.0), ('engagement|PLG Onboarding', False, 3.0), ('engagement|New', False, 0.0)]
    >>> verdicts["engagement|New"].warming_up
    True
    """  # noqa: E501 - doctest output, on one line as Python prints it
    verdicts = {}
    for feed, last in last_event.items():
        limit = objective if isinstance(objective, timedelta) else objective.get(feed)
        if limit is None or limit <= timedelta(0):
            raise InvalidObservation(f"feed {feed!r} has no positive freshness objective")
        limit_s = limit.total_seconds()
        if last is None:
            verdicts[feed] = Verdict(
                False, False, 0.0, limit_s, 0.0, warming_up=True, detail={"feed": feed, "reason": "never seen"}
            )
            continue
        if (last.tzinfo is None) != (now.tzinfo is None):
            raise InvalidObservation(f"feed {feed!r}: last event and now must both be timezone-aware (or both naive)")
        age = max(0.0, (now - last).total_seconds())  # an event stamped after `now` is fresh, not negative
        verdicts[feed] = Verdict(
            True,
            age > limit_s,
            age,
            limit_s,
            age / limit_s,
            detail={"feed": feed, "last_event": last.isoformat(), "age_seconds": age, "objective_seconds": limit_s},
        )
    return verdicts


def objective_for_rate(
    events_per_hour: float, significance: float = 1e-4, floor: timedelta = timedelta(minutes=5)
) -> timedelta:
    """The silence that a feed of this rate shows by chance with probability `significance`, at least `floor`.

    >>> objective_for_rate(60)                 # -ln(1e-4) / 60 per hour = 9.2 minutes
    datetime.timedelta(seconds=553)
    >>> objective_for_rate(6000)               # busy feed: the floor
    datetime.timedelta(seconds=300)
    """
    if not events_per_hour > 0 or not 0 < significance < 1:
        raise ValueError("events_per_hour must be positive and significance in (0, 1)")
    seconds = -math.log(significance) / events_per_hour * 3600
    return max(floor, timedelta(seconds=math.ceil(seconds)))
