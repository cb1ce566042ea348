"""What loopwatch's gc callback adds to each garbage collection.

``python -m bench.gc_callback`` times ``gc.collect(0)`` (a young collection: the most
frequent kind, where a fixed cost weighs most) and ``gc.collect()`` (a full collection of a
heap of 200,000 live objects) in three variants: no callback; loopwatch's callback on a
thread no loop is watched on (the clock only); and on a watched loop's thread, where it also
notes the frame that triggered each collection. Rounds alternate the variants; medians.

``--instructions`` counts instructions under valgrind (cachegrind) instead, which other load
on the machine does not move: per young collection, from the difference between runs of
2,000 and 12,000 collections.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from loopwatch.gc_clock import GcClock

VARIANTS = ("none", "callback", "watched")
HEAP = 200_000
FEW, MANY = 2_000, 12_000


def install(variant: str) -> Callable[[], None]:
    """Set up ``variant``; returns what undoes it."""
    clock = GcClock()
    if variant == "none":
        return lambda: None
    clock.acquire()
    if variant == "watched":
        clock.watch(threading.get_ident(), 0.025)
    return clock.release


def per_collection(variant: str, generation: int, count: int) -> float:
    """Seconds per ``gc.collect(generation)``, ``count`` times, under ``variant``."""
    undo = install(variant)
    try:
        started = time.perf_counter()
        for _ in range(count):
            gc.collect(generation)
        return (time.perf_counter() - started) / count
    finally:
        undo()


def timing(rounds: int = 15) -> dict[str, dict[str, float]]:
    heap = [{"id": i, "tags": [i]} for i in range(HEAP)]
    times: dict[str, dict[str, list[float]]] = {v: {"young": [], "full": []} for v in VARIANTS}
    for _ in range(rounds):
        for variant in VARIANTS:
            times[variant]["young"].append(per_collection(variant, 0, 2000))
            times[variant]["full"].append(per_collection(variant, 2, 3))
    del heap
    return {
        v: {kind: statistics.median(values) for kind, values in kinds.items()}
        for v, kinds in times.items()
    }


def instructions(variant: str, count: int) -> int:
    """Instructions of a whole interpreter run that makes ``count`` young collections."""
    with tempfile.TemporaryDirectory(prefix="loopwatch-gc-cg-") as tmp:
        out = subprocess.run(
            ["valgrind", "--tool=cachegrind", "--cache-sim=no",
             f"--cachegrind-out-file={Path(tmp) / 'out'}", sys.executable, "-m",
             "bench.gc_callback", "--child", variant, str(count)],
            capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )  # fmt: skip
    found = re.search(r"I\s+refs:\s+([\d,]+)", out.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count from valgrind:\n{out.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gc_callback", description=__doc__)
    parser.add_argument("--instructions", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        per_collection(args.child[0], 0, int(args.child[1]))
        return
    if args.instructions:
        base = None
        for variant in VARIANTS:
            per = (instructions(variant, MANY) - instructions(variant, FEW)) / (MANY - FEW)
            base = per if base is None else base
            print(f"{variant:9} {per:8.0f} instructions per young collection (+{per - base:.0f})")
        return
    result = timing()
    none = result["none"]
    for variant, kinds in result.items():
        print(
            f"{variant:9} young {kinds['young'] * 1e6:7.2f} µs "
            f"(+{(kinds['young'] - none['young']) * 1e6:.2f})  "
            f"full ({HEAP:,} objects) {kinds['full'] * 1e3:7.2f} ms "
            f"(+{(kinds['full'] - none['full']) * 1e6:.1f} µs)"
        )


if __name__ == "__main__":
    main()
