"""Per-user state of stage 1: bytes per user, scaled to 1M users.

    .venv/bin/python bench/state_size.py [--days 7] [--users 1000000]

Runs the embedded driver over a simulated program (the default program,
`--days` days) and takes the per-user store it leaves: one encoded
`monitor.user_stage.UserState` per pseudonym (consent ledger with remembered
exposures, experiment records), compressed with the zstd dictionary the
stage trained on its first values (`monitor.state_codec`). It prints the distribution of the encoded
sizes, then builds a store of `--users` entries whose values are drawn from
those real ones (keys are pseudonyms of the same form) and measures what it
takes in memory with tracemalloc: key, value and the dict's own slots. That
figure, per user, is the one the target (<= 300 bytes per user at 1M users)
is about; the changelog holds the same values.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import statistics
import sys
import tempfile
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if sys.path[0] != str(ROOT):  # the repository first: bench/experiments.py would shadow `experiments`
    sys.path.insert(0, str(ROOT))

from bench import pages  # noqa: E402
from monitor.events import encode  # noqa: E402
from monitor.settings import Settings  # noqa: E402
from monitor.state_codec import DICTIONARY_KEY, StateCodec  # noqa: E402
from simulation.simulator import SimulationSpec, simulate  # noqa: E402

TARGET_BYTES_PER_USER = 300


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--out", type=Path, default=pages.page_path("state_size"),
                        help="where to write the page (default docs/benchmarks/state_size.md)")
    args = parser.parse_args(argv)
    with pages.recording("state_size", "Stage 1's state per user", args.out, argv):
        return _measure(args)


def _measure(args: argparse.Namespace) -> int:
    from streams.embedded import EmbeddedDriver

    records = [(r.topic, r.key.encode(), encode(r.event)) for r in simulate(SimulationSpec(seed=args.seed,
                                                                                         days=args.days))]
    with tempfile.TemporaryDirectory() as tmp:
        driver = EmbeddedDriver(Settings(plan_dir=Path(tmp), log_level="WARNING"), replay=True)
        asyncio.run(driver.run(records))
    values = [value for key, value in driver.users.items() if not key.startswith("#")]
    sizes = sorted(len(v) for v in values)
    unpack = StateCodec(driver.users, samples=0).unpack
    plain = statistics.fmean(len(unpack(v)) for v in values)
    dictionaries = sum(len(v) for k, v in driver.users.items() if k.startswith(DICTIONARY_KEY.format("")))
    print(f"{len(records):,} records over {args.days} days; {len(values):,} users in the store")
    print(f"encoded state per user: mean {statistics.fmean(sizes):.0f} B, median {sizes[len(sizes) // 2]} B, "
          f"p99 {sizes[int(len(sizes) * 0.99)]} B, max {sizes[-1]} B; as plain JSON {plain:.0f} B on average; "
          f"the zstd dictionary {dictionaries:,} B, once per partition")
    key_length = len(next(iter(k for k in driver.users if not k.startswith("#"))))
    del driver, records
    gc.collect()
    rng = random.Random(args.seed)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    store = {f"p{n:0{key_length - 1}x}": bytes(bytearray(rng.choice(values))) for n in range(args.users)}  # copies
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    per_user = used / len(store)
    verdict = "meets" if per_user <= TARGET_BYTES_PER_USER else "misses"
    print(f"{len(store):,} users in memory: {used / 2**20:,.0f} MiB, {per_user:.0f} bytes per user "
          f"({verdict} the target of {TARGET_BYTES_PER_USER} B); of that the encoded value is "
          f"{statistics.fmean(len(v) for v in store.values()):.0f} B on average")
    return 0


if __name__ == "__main__":
    sys.exit(main())
