"""Size the example's CPU work by time on this machine.

The article's 7,000,000 iterations last about 0.17 s on the docs' machine; on one twice as
fast they would last less than loopwatch's 100 ms threshold and the slow mode would show
no stall. The work is never made smaller than the article's, only larger where it would
be too short.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

SHORTEST_DEMO_STALL = 0.15
"""The demo's CPU work lasts at least this long (1.5 x the default threshold)."""

SAMPLE_ITERATIONS = 1_000_000


def cpu_seconds(work: Callable[[], object]) -> float:
    """This thread's CPU time in ``work``, the fastest of three runs: other threads and
    processes do not count."""
    fastest = float("inf")
    for _ in range(3):
        started = time.thread_time()
        work()
        fastest = min(fastest, time.thread_time() - started)
    return fastest


def iterations_lasting(seconds: float, work: Callable[[int], object]) -> int:
    """How many iterations of ``work`` take about ``seconds`` of this thread's CPU time
    (from :func:`cpu_seconds` of :data:`SAMPLE_ITERATIONS`): other threads and processes
    then make the work last longer, never shorter."""
    return round(SAMPLE_ITERATIONS * seconds / cpu_seconds(lambda: work(SAMPLE_ITERATIONS)))


def demo_iterations(environ: Mapping[str, str]) -> int:
    """``$DEMO_CPU_ITERATIONS`` if set (a :class:`ValueError` says what is wrong with it),
    else the article's work, made longer where it would last under
    :data:`SHORTEST_DEMO_STALL`."""
    from example.work import (
        CPU_ITERATIONS,
        ITERATIONS_VARIABLE,
        cpu_heavy_blocking_work,
        resolve_cpu_iterations,
    )

    if environ.get(ITERATIONS_VARIABLE, "").strip():
        return resolve_cpu_iterations(environ)
    return max(CPU_ITERATIONS, iterations_lasting(SHORTEST_DEMO_STALL, cpu_heavy_blocking_work))
