"""What the heartbeat costs on trio, in instructions (valgrind's cachegrind), beside asyncio.

Instruction counts do not move with the load of a shared machine, so they show what a
change to the trio heartbeat saves where CPU-time A/Bs cannot (see :mod:`.switching`).

- **Per tick**: a loop with nothing else to do, watched at a 1 ms interval, runs for
  :data:`IDLE_SECONDS` and then, in a new process, longer; the difference in instructions
  divided by the difference in ticks is one tick with the loop iteration that runs it
  (every thread: the watchdog's share included), start-up and shutdown cancelled out.
- **Per task switch**: :mod:`bench.guard`'s workload on trio (100 tasks switching with
  ``await trio.sleep(0)``), bare and watched, the heartbeat stretched by valgrind's
  measured slowdown so that it ticks as often per switch as at full speed.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from . import guard
from .guard import ROOT

IDLE_SECONDS = (1.0, 4.0)
QUICK_IDLE_SECONDS = (0.5, 1.5)
TICK_INTERVAL = 0.001
LIBRARIES = ("asyncio", "trio")


def _idle(library: str, seconds: float) -> int:
    """Watch an idle loop of ``library`` for ``seconds``; the heartbeat's ticks."""
    from loopwatch import LoopWatch

    ticks = 0

    async def watch(sleep: Callable[[float], Coroutine[Any, Any, None]]) -> None:
        nonlocal ticks
        watcher = LoopWatch(threshold=60.0, interval=TICK_INTERVAL, dump_after=0)
        watcher.start()
        await sleep(seconds)
        parts = watcher._parts
        ticks = parts.heartbeat._number if parts is not None else 0
        watcher.stop()

    if library == "trio":
        import trio

        trio.run(watch, trio.sleep)
    else:
        asyncio.run(watch(asyncio.sleep))
    return ticks


def _count_idle(library: str, seconds: float) -> tuple[int, int]:
    """Instructions and ticks of one idle run under cachegrind."""
    with tempfile.TemporaryDirectory(prefix="loopwatch-trio-cost-") as tmp:
        done = subprocess.run(
            ["valgrind", "--tool=cachegrind", "--cache-sim=no",
             f"--cachegrind-out-file={Path(tmp) / 'out'}",
             sys.executable, "-m", "bench.trio_cost", library, str(seconds)],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "0"},
            capture_output=True, text=True, check=True, timeout=600,
        )  # fmt: skip
    found = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count from valgrind:\n{done.stderr[-2000:]}")
    ticks: int = json.loads(done.stdout.strip().splitlines()[-1])["ticks"]
    return int(found.group(1).replace(",", "")), ticks


def per_tick(library: str, seconds: tuple[float, float]) -> dict[str, Any]:
    """Instructions per tick of an idle watched loop (long run minus short run)."""
    (few, few_ticks), (many, many_ticks) = (_count_idle(library, s) for s in seconds)
    return {
        "library": library,
        "ticks": [few_ticks, many_ticks],
        "per_tick": (many - few) / (many_ticks - few_ticks),
    }


def run(quick: bool) -> dict[str, Any]:
    """Per tick on both loops; per trio task switch as the guard counts it, and as derived
    from the tick's count and the native speed of the switches (what the guard's figure
    estimates, without the error of its stretched interval)."""
    if shutil.which("valgrind") is None:
        raise RuntimeError("valgrind is not installed (Debian: apt-get install valgrind)")
    seconds = QUICK_IDLE_SECONDS if quick else IDLE_SECONDS
    ticks = [per_tick(library, seconds) for library in LIBRARIES]
    switches = guard.run_trio_switches()
    argv = ["trio-switches", "--units", str(guard.SWITCHES[1])]
    native, _ = guard._run(argv, guard._environment(), counted=False)
    ticks_per_switch = native["cpu"] / guard.NATIVE_INTERVAL
    return {
        "interval": TICK_INTERVAL,
        "seconds": list(seconds),
        "ticks": ticks,
        "switches": switches,
        "tasks": guard.TASKS,
        "units": list(guard.SWITCHES),
        "default_interval": guard.NATIVE_INTERVAL,
        "native_cpu_per_switch": native["cpu"],
        "derived_per_switch": ticks[-1]["per_tick"] * ticks_per_switch,
    }


if __name__ == "__main__":
    print(json.dumps({"ticks": _idle(sys.argv[1], float(sys.argv[2]))}))
