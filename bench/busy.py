"""Busy-loop attribution: run known mixes of short synchronous work on a watched loop and
compare each ``loop.busy`` report (through ``on_busy``) with the truth.

Every workload repeats a 25 ms cycle: some functions run for a known time each (pure
Python, or ``time.sleep``), then the loop awaits the rest of the cycle. The truth is timed
with ``time.perf_counter`` around every call: the busy ratio of each reported window and
each function's share of the busy time in it. Each loop kind runs in its own interpreter
(``python -m bench.busy LOOP WINDOWS``, JSON on stdout); :func:`run` drives that.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loopwatch import BusyEvent, LoopWatch

THRESHOLD = 0.1
WINDOW = 2.0
CYCLE = 0.025


def compute(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def render_page(seconds: float) -> None:
    """Pure Python, as a second function of a mix (its own loop: a culprit is the
    innermost frame of application code)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def sync_client_call(seconds: float) -> None:
    """A blocking call that releases the GIL (a sync HTTP client, a file read)."""
    time.sleep(seconds)


@dataclass(frozen=True)
class Workload:
    name: str
    cuts: tuple[tuple[Callable[[float], None], float], ...]
    """The functions run every cycle and how long each runs."""

    @property
    def expected_ratio(self) -> float:
        return sum(seconds for _, seconds in self.cuts) / CYCLE


WORKLOADS = (
    Workload("python 20 ms / 25 ms", ((compute, 0.020),)),
    Workload("time.sleep 20 ms / 25 ms", ((sync_client_call, 0.020),)),
    Workload("python 12 ms + sleep 6 ms / 25 ms", ((compute, 0.012), (sync_client_call, 0.006))),
    Workload(
        "python 10 + 5 ms, sleep 5 ms / 25 ms",
        ((compute, 0.010), (render_page, 0.005), (sync_client_call, 0.005)),
    ),
    Workload("python 5 ms / 25 ms (20 %: not busy)", ((compute, 0.005),)),
    Workload("awaits only", ()),
)


def name_of(function: Callable[..., Any]) -> str:
    return f"{function.__module__}.{function.__qualname__}"


class Truth:
    """Every cut's epoch start, end and function, recorded on the loop thread."""

    def __init__(self) -> None:
        self.cuts: list[tuple[float, float, str]] = []

    def busy_in(self, start: float, end: float) -> tuple[float, dict[str, float]]:
        """Seconds of cuts inside [start, end], in all and by function."""
        by_function: dict[str, float] = {}
        for cut_start, cut_end, function in self.cuts:
            overlap = min(end, cut_end) - max(start, cut_start)
            if overlap > 0:
                by_function[function] = by_function.get(function, 0.0) + overlap
        return sum(by_function.values()), by_function


async def _drive(workload: Workload, truth: Truth, seconds: float) -> None:
    # perf_counter for the cuts' lengths, anchored to time.time() (the events' clock)
    offset = time.time() - time.perf_counter()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        cycle_start = time.perf_counter()
        for function, length in workload.cuts:
            started = time.perf_counter()
            function(length)
            truth.cuts.append((started + offset, time.perf_counter() + offset, name_of(function)))
        await asyncio.sleep(max(0.0, CYCLE - (time.perf_counter() - cycle_start)))


def measure(workload: Workload, loop_kind: str, windows: int) -> dict[str, Any]:
    """Run ``workload`` for ``windows`` busy windows (plus the start of sampling) and pair
    each reported window with the truth."""
    events: list[BusyEvent] = []
    lock = threading.Lock()

    def collect(event: BusyEvent) -> None:
        with lock:
            events.append(event)

    truth = Truth()

    async def main() -> None:
        async with LoopWatch(threshold=THRESHOLD, busy_window=WINDOW, on_busy=collect):
            await _drive(workload, truth, windows * WINDOW + 1.0)
            LoopWatch.flush()

    if loop_kind == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
    reports = []
    for event in events:
        busy, by_function = truth.busy_in(event.start, event.end)
        true_shares = {f: s / busy for f, s in by_function.items()} if busy else {}
        reported = dict(zip(event.functions, event.shares, strict=True))
        reports.append(
            {
                "ratio": event.ratio,
                "true_ratio": busy / event.duration,
                "shares": reported,
                "true_shares": true_shares,
                "share_error": max(
                    (abs(reported.get(f, 0.0) - s) for f, s in true_shares.items()), default=0.0
                ),
                "top_right": bool(true_shares)
                and event.functions[0] == max(true_shares, key=true_shares.__getitem__),
            }
        )
    return {
        "workload": workload.name,
        "loop": loop_kind,
        "expected_ratio": workload.expected_ratio,
        "windows": windows,
        "reports": reports,
    }


def run(quick: bool) -> dict[str, Any]:
    """Each loop kind in a fresh interpreter; ``quick``: one window per workload."""
    windows = 1 if quick else 3
    rows: list[dict[str, Any]] = []
    for loop_kind in ("asyncio", "uvloop"):
        out = subprocess.run(
            [sys.executable, "-m", "bench.busy", loop_kind, str(windows)],
            capture_output=True,
            text=True,
            check=True,
        )
        rows += json.loads(out.stdout)
    return {"threshold": THRESHOLD, "window": WINDOW, "rows": rows}


def _pct(value: float) -> str:
    return f"{100 * value:.0f} %"


def section(results: dict[str, Any]) -> list[str]:
    """The page's section (rendered by :mod:`bench.report`)."""
    busy = results["busy"]
    out = [
        "",
        "## Busy-loop attribution",
        "",
        f"Known mixes of synchronous work repeated every {CYCLE * 1000:.0f} ms (`bench/busy.py`; "
        f"threshold {busy['threshold'] * 1000:.0f} ms, `busy_window` {busy['window']:g} s, "
        "default `busy_threshold` 0.5), each loop in its own interpreter. *Truth*: "
        "`time.perf_counter` around every call, inside each reported window. *Share error*: "
        "the largest difference between a function's reported and true share of the busy "
        "time. No cut reaches the threshold: none of these is a stall.",
        "",
        "| workload | loop | windows run | reports | ratio reported (true) | top function right "
        "| largest share error |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in busy["rows"]:
        reports = row["reports"]
        ratios = ", ".join(f"{_pct(r['ratio'])} ({_pct(r['true_ratio'])})" for r in reports)
        right = sum(bool(r["top_right"]) for r in reports)
        error = max((r["share_error"] for r in reports), default=None)
        out.append(
            f"| {row['workload']} | {row['loop']} | {row['windows']} | {len(reports)} "
            f"| {ratios or '-'} | {f'{right}/{len(reports)}' if reports else '-'} "
            f"| {_pct(error) if error is not None else '-'} |"
        )
    return out


def _main() -> None:
    loop_kind, windows = sys.argv[1], int(sys.argv[2])
    print(json.dumps([measure(workload, loop_kind, windows) for workload in WORKLOADS]))


if __name__ == "__main__":
    _main()
