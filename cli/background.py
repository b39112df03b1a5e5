"""A generator of records made in another process, so that making them and consuming them use two cores.

`pmon demo` simulates its records and replays them through the embedded
driver; each takes a core's worth of CPU. `in_background(make)` runs
`make()` (a generator of picklable items) in a child process and yields
its items in order, handed over in chunks through a bounded queue (memory
stays a few chunks however long the run). An exception in the child is
raised in the parent (a RuntimeError: a bug, not a misuse) with the child's traceback; a consumer that stops early
stops the child.
"""

from __future__ import annotations

import itertools
import multiprocessing
import queue
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import Any

CHUNK = 5000  # items per hand-over: pickling a chunk costs far less than the queue's per-put overhead on items
AHEAD = 8  # chunks the child may be ahead of the consumer
_DONE = "done"
_FAILED = "failed"


def _produce(make: Callable[[], Iterable[Any]], out: Any) -> None:
    try:
        items = iter(make())
        while chunk := list(itertools.islice(items, CHUNK)):
            out.put(("items", chunk))
        out.put((_DONE, None))
    except BaseException:  # noqa: BLE001 - whatever stops the child is the parent's to raise
        out.put((_FAILED, traceback.format_exc()))


def in_background(make: Callable[[], Iterable[Any]]) -> Iterator[Any]:
    """The items of `make()`, made in a child process (forked where the platform forks; else spawned, and
    `make` must then be picklable).

    >>> list(in_background(lambda: range(3)))
    [0, 1, 2]
    """
    if sys.platform.startswith("linux"):
        context = multiprocessing.get_context("fork")
    else:
        context = multiprocessing.get_context("spawn")
    out = context.Queue(maxsize=AHEAD)
    child = context.Process(target=_produce, args=(make, out), daemon=True, name="pmon-records")
    child.start()
    try:
        while True:
            try:
                kind, payload = out.get(timeout=5)
            except queue.Empty:
                if not child.is_alive():
                    raise RuntimeError(f"the record generator stopped without a word (exit {child.exitcode})") from None
                continue
            if kind == _DONE:
                break
            if kind == _FAILED:
                raise RuntimeError(f"generating the records failed in the child process:\n{payload}")
            yield from payload
    finally:
        if child.is_alive():
            child.terminate()
        child.join(timeout=5)
        out.close()
