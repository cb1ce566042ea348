"""The work behind the endpoints: a slow dependency, CPU work and a background job.

Kept free of heavy imports: process-pool workers import this module to run
:func:`cpu_heavy_blocking_work`.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor

from opentelemetry.metrics import Histogram
from opentelemetry.trace import Tracer

from example.modes import Mode

CPU_ITERATIONS = 7_000_000
"""The article's CPU work per request (about 0.17 s on the 2-core machine of the docs)."""

ITERATIONS_VARIABLE = "DEMO_CPU_ITERATIONS"


def resolve_cpu_iterations(environ: Mapping[str, str] | None = None) -> int:
    """``$DEMO_CPU_ITERATIONS``, else the article's :data:`CPU_ITERATIONS`.

    Raises :class:`ValueError` naming the variable and its value unless it is a positive
    whole number. A machine much faster than the article's needs more iterations for the
    slow mode's stall to stay well above loopwatch's 100 ms threshold.
    """
    raw = (os.environ if environ is None else environ).get(ITERATIONS_VARIABLE, "").strip()
    if not raw:
        return CPU_ITERATIONS
    try:
        iterations = int(raw)
    except ValueError:
        iterations = 0
    if iterations < 1:
        raise ValueError(
            f"{ITERATIONS_VARIABLE}={raw!r} is not a positive whole number "
            f"(the article's work is {CPU_ITERATIONS})"
        )
    return iterations


def cpu_heavy_blocking_work(iterations: int = CPU_ITERATIONS) -> int:
    """The article's CPU-bound loop; it holds the GIL and the thread running it."""
    total = 0
    for i in range(iterations):
        total += i
    return total


def _traced_cpu_work(tracer: Tracer, iterations: int) -> int:
    """:func:`cpu_heavy_blocking_work` in a ``cpu.work`` span, for a worker thread."""
    with tracer.start_as_current_span("cpu.work"):
        return cpu_heavy_blocking_work(iterations)


class Workload:
    """The handlers' work, shaped by a :class:`~example.modes.Mode`.

    In ``process`` mode, :meth:`start` and :meth:`close` own a process pool; call them
    from the app's lifespan.
    """

    def __init__(
        self,
        mode: Mode,
        tracer: Tracer,
        job_duration_ms: Histogram,
        cpu_iterations: int = CPU_ITERATIONS,
    ) -> None:
        self._mode = mode
        self._cpu_iterations = cpu_iterations
        self._tracer = tracer
        self._job_duration_ms = job_duration_ms
        self._pool: ProcessPoolExecutor | None = None

    async def start(self) -> None:
        """Start and warm up the process pool (``process`` mode only)."""
        if self._mode.cpu != "process":
            return
        workers = min(4, os.cpu_count() or 1)
        # spawn, not fork: forking a process that runs threads (exporters, watchdog) is unsafe.
        self._pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        loop = asyncio.get_running_loop()
        await asyncio.gather(
            *(loop.run_in_executor(self._pool, cpu_heavy_blocking_work, 0) for _ in range(workers))
        )

    def close(self) -> None:
        """Stop the process pool, if any."""
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    async def db_query(self) -> None:
        """A slow dependency (the article's simulated database)."""
        with self._tracer.start_as_current_span("db.query"):
            await asyncio.sleep(self._mode.db_seconds)

    async def cpu_work(self) -> int:
        """The CPU work: on the loop, in a thread or in a worker process, by mode."""
        if self._mode.cpu == "thread":
            with self._tracer.start_as_current_span("cpu.work.offloaded"):
                return await asyncio.to_thread(_traced_cpu_work, self._tracer, self._cpu_iterations)
        if self._mode.cpu == "process":
            if self._pool is None:
                raise RuntimeError("the process pool is not started; serve the app with lifespan")
            with self._tracer.start_as_current_span("cpu.work.process"):
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(
                    self._pool, cpu_heavy_blocking_work, self._cpu_iterations
                )
        with self._tracer.start_as_current_span("cpu.work.blocking"):
            # Deliberately bad: the event loop stalls until the computation is done.
            return cpu_heavy_blocking_work(self._cpu_iterations)

    async def post_processing(self) -> None:
        """A little extra async wait, for mixed timing in the trace."""
        with self._tracer.start_as_current_span("post.processing"):
            await asyncio.sleep(self._mode.post_processing_seconds)

    def background_job(self, task_id: str) -> None:
        """The slow background job; a sync function, so it runs in the thread pool."""
        start = time.perf_counter()
        with self._tracer.start_as_current_span("background.job") as span:
            span.set_attribute("task.id", task_id)
            time.sleep(self._mode.background_job_seconds)
        duration_ms = (time.perf_counter() - start) * 1000.0
        self._job_duration_ms.record(
            duration_ms, attributes={"task.type": self._mode.background_job_type}
        )
