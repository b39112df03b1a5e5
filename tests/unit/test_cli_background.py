"""cli.background: records made in a child process arrive in order, a failure there is raised here."""

from __future__ import annotations

import itertools
import multiprocessing

import pytest

from cli.background import CHUNK, in_background


def test_every_item_arrives_in_order_across_chunks() -> None:
    n = 3 * CHUNK + 17
    assert list(in_background(lambda: ((i, str(i).encode()) for i in range(n)))) == [
        (i, str(i).encode()) for i in range(n)]


def failing():
    yield from range(CHUNK + 1)
    raise ValueError("the simulator broke at record 5001")


def test_a_failure_in_the_child_is_raised_with_its_traceback_after_the_items_before_it() -> None:
    seen = []
    with pytest.raises(RuntimeError, match=r"(?s)failed in the child process.*ValueError: the simulator broke"):
        for item in in_background(failing):
            seen.append(item)
    assert seen == list(range(CHUNK)), "the complete chunk before the failure is delivered"


def test_a_consumer_that_stops_early_stops_the_child() -> None:
    records = in_background(lambda: itertools.count())  # endless: only stopping the child ends it
    assert list(itertools.islice(records, 10)) == list(range(10))
    assert [c.name for c in multiprocessing.active_children()] == ["pmon-records"]
    records.close()  # what leaving a for loop early does to a generator
    assert multiprocessing.active_children() == [], "the child is stopped and joined"
