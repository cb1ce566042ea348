"""The task-switch microbenchmark as a same-process A/B: what the micro goal is judged on.

Separate runs of 400k task switches differ by 10-30 % on a shared machine (its speed
drifts within seconds), far more than the 2 % goal. Here one loop switches tasks without
pause (``await asyncio.sleep(0)`` in 1 or 100 tasks) while something is switched on and
off every :data:`WINDOW` seconds: loopwatch, or one of the baselines. Each pair of windows
runs once with and once without it, in a random order, and gives one ratio of the process
CPU time per task switch (every thread: loopwatch's watchdog included). A drift slower than
a pair cancels out; an A/A row (nothing switched) shows what is left.

On trio (``await trio.sleep(0)``) only loopwatch and the A/A control are toggled: the
baselines are asyncio timers.

Each row runs in :data:`SEGMENTS` fresh interpreters (``python -m bench.switching ...``,
JSON on stdout), the rows' segments in a shuffled order; the estimate is the median ratio,
with a bootstrap 95 % interval that resamples segments, then pairs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

import trio
import uvloop

from loopwatch import LoopWatch

from .common import ROOT, median_interval
from .micro import idle_thread

WINDOW = 0.1
"""Seconds per window: ~25,000 switches of one task."""

SETTLE = 0.02
"""Seconds between a switch and its window: starting a watcher (its thread, first ticks)
is not part of its running cost."""

CHUNK = 100
"""Switches between two reads of the clock (one ``time.monotonic()`` per 100 switches)."""

SEGMENTS, SEGMENT_SECONDS = 4, 6.0
QUICK_SEGMENTS, QUICK_SEGMENT_SECONDS = 1, 2.0

NOTHING = "nothing (A/A)"
IDLE_THREAD = "one idle thread"
PENDING_TIMER = "one timer pending"
TIMER_AND_THREAD = "one timer and one idle thread"
LOOPWATCH = "loopwatch"

Undo = Callable[[], None]
Window = dict[str, Any]
"""One window: ``on`` (whether the toggle was on) and ``cpu_per_switch`` (seconds)."""


def _nothing() -> Undo:
    return lambda: None


def _idle_thread() -> Undo:
    """A thread blocked until undone (:func:`.micro.idle_thread`): on Linux, once a second
    thread shares the file table, each system call on a file descriptor (the
    ``epoll_wait`` of every loop iteration) takes and drops a reference on the file."""
    stack = contextlib.ExitStack()
    stack.enter_context(idle_thread(True))
    return stack.close


def _pending_timer() -> Undo:
    """One far-off timer: the stdlib loop then looks at its timer heap at every iteration."""
    handle = asyncio.get_running_loop().call_later(3600, lambda: None)
    return handle.cancel


def _timer_and_thread() -> Undo:
    undo_timer, undo_thread = _pending_timer(), _idle_thread()

    def undo() -> None:
        undo_timer()
        undo_thread()

    return undo


def _loopwatch() -> Undo:
    return LoopWatch().start().stop


TOGGLES: dict[str, Callable[[], Undo]] = {
    NOTHING: _nothing,
    IDLE_THREAD: _idle_thread,
    PENDING_TIMER: _pending_timer,
    TIMER_AND_THREAD: _timer_and_thread,
    LOOPWATCH: _loopwatch,
}


async def _switch_until(deadline: float) -> int:
    """Switch tasks until ``deadline``; how many times this task switched."""
    switches, sleep, clock = 0, asyncio.sleep, time.monotonic
    while clock() < deadline:
        for _ in range(CHUNK):
            await sleep(0)
        switches += CHUNK
    return switches


async def _switch_forever(stopped: asyncio.Event) -> None:
    sleep = asyncio.sleep
    while not stopped.is_set():
        await sleep(0)


async def _windows(
    toggle: str,
    seconds: float,
    rng: random.Random,
    switch_until: Callable[[float], Coroutine[Any, Any, int]],
) -> list[Window]:
    """Pairs of windows, ``toggle`` on in one and off in the other (in a random order), for
    ``seconds``; ``switch_until`` switches the library's tasks until a deadline."""
    windows: list[Window] = []
    ends = time.monotonic() + seconds
    order: list[bool] = []
    while time.monotonic() < ends or order:
        if not order:
            order = rng.sample([False, True], 2)
        on = order.pop(0)
        undo = TOGGLES[toggle]() if on else None
        await switch_until(time.monotonic() + SETTLE)
        cpu, began = time.process_time(), time.monotonic()
        switches = await switch_until(began + WINDOW)
        windows.append({"on": on, "cpu_per_switch": (time.process_time() - cpu) / switches})
        if undo is not None:
            undo()
    return windows


async def segment(
    tasks: int, toggle: str, held: str | None, seconds: float, seed: int
) -> list[Window]:
    """Windows of one segment: ``toggle`` on or off, ``held`` on throughout (if given).
    The running task is one of ``tasks``; the others switch as often as it does."""
    rng = random.Random(seed)
    undo_held = TOGGLES[held]() if held else None
    stopped = asyncio.Event()
    others = [asyncio.create_task(_switch_forever(stopped)) for _ in range(tasks - 1)]
    windows = await _windows(toggle, seconds, rng, _switch_until)
    stopped.set()
    await asyncio.gather(*others)
    if undo_held is not None:
        undo_held()
    return windows


async def trio_segment(
    tasks: int, toggle: str, held: str | None, seconds: float, seed: int
) -> list[Window]:
    """:func:`segment` on trio: the tasks switch with ``trio.sleep(0)``."""
    rng = random.Random(seed)

    async def switch_until(deadline: float) -> int:
        switches, sleep, clock = 0, trio.sleep, time.monotonic
        while clock() < deadline:
            for _ in range(CHUNK):
                await sleep(0)
            switches += CHUNK
        return switches

    async def switch_forever(stopped: trio.Event) -> None:
        sleep = trio.sleep
        while not stopped.is_set():
            await sleep(0)

    undo_held = TOGGLES[held]() if held else None
    stopped = trio.Event()
    async with trio.open_nursery() as nursery:
        for _ in range(tasks - 1):
            nursery.start_soon(switch_forever, stopped)
        windows = await _windows(toggle, seconds, rng, switch_until)
        stopped.set()
    if undo_held is not None:
        undo_held()
    return windows


def pair_ratios(windows: list[Window]) -> list[float]:
    """CPU per switch with against without, one ratio per pair of windows."""
    ratios = []
    for first, second in zip(windows[::2], windows[1::2], strict=False):
        on, off = (first, second) if first["on"] else (second, first)
        ratios.append(on["cpu_per_switch"] / off["cpu_per_switch"])
    return ratios


def rows(quick: bool) -> list[dict[str, Any]]:
    """What to measure: per loop and task count, the A/A control, the baselines, loopwatch
    against no monitor, and loopwatch beside a timer and a thread that stay on."""
    toggles = [NOTHING, LOOPWATCH, TIMER_AND_THREAD]
    if not quick:
        toggles += [IDLE_THREAD, PENDING_TIMER]
    found = []
    for loop in ("asyncio", "uvloop"):
        for tasks in (100, 1):
            found += [{"loop": loop, "tasks": tasks, "toggle": t, "held": None} for t in toggles]
            found.append({"loop": loop, "tasks": tasks, "toggle": LOOPWATCH,
                          "held": TIMER_AND_THREAD})  # fmt: skip
    for tasks in (100, 1):
        found += [{"loop": "trio", "tasks": tasks, "toggle": t, "held": None}
                  for t in (NOTHING, LOOPWATCH)]  # fmt: skip
    return found


def _row_key(row: dict[str, Any]) -> str:
    return f"{row['loop']}|{row['tasks']}|{row['toggle']}|{row['held'] or ''}"


def run(quick: bool) -> dict[str, Any]:
    """Every row's segments in fresh interpreters, in a shuffled order; per row the median
    pair ratio with its 95 % interval."""
    segments, seconds = (
        (QUICK_SEGMENTS, QUICK_SEGMENT_SECONDS) if quick else (SEGMENTS, SEGMENT_SECONDS)
    )
    planned = rows(quick)
    jobs = [(row, number) for row in planned for number in range(segments)]
    random.Random(3).shuffle(jobs)
    found: dict[str, list[list[Window]]] = {_row_key(row): [] for row in planned}
    for row, number in jobs:
        argv = [sys.executable, "-m", "bench.switching", row["loop"], str(row["tasks"]),
                row["toggle"], row["held"] or "", str(seconds), str(number)]  # fmt: skip
        out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=True,
                             timeout=120)  # fmt: skip
        found[_row_key(row)].append(json.loads(out.stdout))
    summary = []
    for row in planned:
        segments_windows = found[_row_key(row)]
        ratios = [pair_ratios(windows) for windows in segments_windows]
        low, high = median_interval(ratios)
        pooled = [r for segment_ratios in ratios for r in segment_ratios]
        off = [w["cpu_per_switch"] for ws in segments_windows for w in ws if not w["on"]]
        summary.append({
            **row,
            "change": statistics.median(pooled) - 1,
            "interval": [low - 1, high - 1],
            "by_segment": [statistics.median(r) - 1 for r in ratios],
            "pairs": len(pooled),
            "cpu_per_switch_off_us": statistics.median(off) * 1e6,
        })  # fmt: skip
        print(f"switching {row['loop']} {row['tasks']} tasks, {row['toggle']} "
              f"(kept on: {row['held'] or '-'}): {summary[-1]['change']:+.2%} "
              f"({low - 1:+.2%} to {high - 1:+.2%})", flush=True)  # fmt: skip
    return {"window": WINDOW, "settle": SETTLE, "segments": segments,
            "segment_seconds": seconds, "rows": summary}  # fmt: skip


def _main(argv: list[str]) -> None:
    loop, tasks, toggle, held, seconds, seed = argv
    if loop == "trio":
        args = (int(tasks), toggle, held or None, float(seconds), int(seed))
        print(json.dumps(trio.run(trio_segment, *args)))
        return
    run_on: Callable[[Coroutine[Any, Any, list[Window]]], list[Window]] = (
        uvloop.run if loop == "uvloop" else asyncio.run
    )
    print(json.dumps(run_on(segment(int(tasks), toggle, held or None, float(seconds), int(seed)))))


if __name__ == "__main__":
    _main(sys.argv[1:])
