"""CPU cost of decoding an engagement record: the pydantic model against the fast path.

    .venv/bin/python bench/decode.py [--records 100000] [--pseudonymise]

1. Simulates `SimulationSpec(seed=1, days=2)` (`simulation.simulator.simulate`), keeps the
   first N engagement events and encodes them (`monitor.events.encode`), as a producer
   would write them.
2. Checks, outside the timing, that both paths give equal records
   (`Engagement.from_model(decode(EngagementEvent, raw)) == decode_engagement(raw)`) and
   counts how many records the fast path handed to the model (0 for simulated traffic).
3. Times `monitor.events.decode(EngagementEvent, raw)` and
   `monitor.records.decode_engagement(raw)` over every record, in CPU time
   (`time.process_time`), best of 3 runs, and prints the CPU µs per record of each, their
   ratio, and what parsing alone costs each: `orjson.loads` on the model path, msgspec's
   decode into the checked wire struct on the fast path. `--pseudonymise`
   passes the monitor's `Pseudonymiser` to both (its cache is warmed first, as on a live
   stream of active users).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if sys.path[0] != str(ROOT):  # the repository first: bench/experiments.py would shadow `experiments`
    sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from bench import pages  # noqa: E402
from monitor import records  # noqa: E402
from monitor.events import EngagementEvent, decode, encode  # noqa: E402
from monitor.pseudonym import Pseudonymiser  # noqa: E402
from monitor.records import Engagement, decode_engagement  # noqa: E402
from simulation.simulator import SimulationSpec, simulate  # noqa: E402

RUNS = 3


def _encoded(count: int) -> list[bytes]:
    """The first `count` simulated engagement events, encoded."""
    events = (record.event for record in simulate(SimulationSpec(seed=1, days=2)) if record.topic == "engagement")
    raws = [encode(event) for event in itertools.islice(events, count)]
    if len(raws) < count:
        raise SystemExit(f"the simulation has only {len(raws)} engagement events, fewer than {count}")
    return raws


def _cpu_us_per_record(decode_one: Callable[[bytes], object], raws: list[bytes]) -> float:
    """Best of `RUNS` runs over every record, in CPU microseconds per record."""
    best = float("inf")
    for _ in range(RUNS):
        gc.collect()
        started = time.process_time()
        for raw in raws:
            decode_one(raw)
        best = min(best, time.process_time() - started)
    return best / len(raws) * 1e6


def main(argv: list[str] | None = None) -> int:
    """Run the bench; print one line per path and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000, help="engagement records to decode (default 100000)")
    parser.add_argument("--pseudonymise", action="store_true", help="pseudonymise user ids on both paths")
    parser.add_argument("--out", type=Path, default=pages.page_path("decode"),
                        help="where to write the page (default docs/benchmarks/decode.md)")
    args = parser.parse_args(argv)
    with pages.recording("decode", "Decoding an engagement record: the pydantic model against the fast path",
                         args.out, argv):
        return _measure(args)


def _measure(args: argparse.Namespace) -> int:

    raws = _encoded(args.records)
    pseudonymise = Pseudonymiser(b"bench-key").pseudonym if args.pseudonymise else None

    fallbacks = 0
    model_decode = records._decode

    def counting_decode(*call_args: object, **kwargs: object) -> object:
        nonlocal fallbacks
        fallbacks += 1
        return model_decode(*call_args, **kwargs)

    records._decode = counting_decode
    try:
        for raw in raws:   # equal results; also warms the pseudonym cache for both timed paths
            model = decode(EngagementEvent, raw, pseudonymise=pseudonymise)
            if decode_engagement(raw, pseudonymise) != Engagement.from_model(model):
                raise SystemExit(f"the paths disagree on {raw!r}")
    finally:
        records._decode = model_decode

    def with_model(raw: bytes) -> object:
        return decode(EngagementEvent, raw, pseudonymise=pseudonymise)

    def with_fast_path(raw: bytes) -> object:
        return decode_engagement(raw, pseudonymise)

    model_us = _cpu_us_per_record(with_model, raws)
    fast_us = _cpu_us_per_record(with_fast_path, raws)
    loads_us = _cpu_us_per_record(orjson.loads, raws)
    wire_us = _cpu_us_per_record(records._engagement_wire, raws)
    mean_bytes = sum(map(len, raws)) / len(raws)
    print(f"{len(raws):,} engagement records, {mean_bytes:.0f} bytes on average, "
          f"pseudonymise={'on' if pseudonymise else 'off'}; {fallbacks} took the model path; "
          f"CPU time, best of {RUNS}")
    print(f"monitor.events.decode     {model_us:6.2f} µs/record")
    print(f"records.decode_engagement {fast_us:6.2f} µs/record")
    print(f"ratio                     {model_us / fast_us:6.2f}x")
    print(f"(parsing: orjson.loads    {loads_us:6.2f} µs/record on the model path,")
    print(f"          msgspec, checked {wire_us:6.2f} µs/record on the fast path)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
