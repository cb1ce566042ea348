"""Microbenchmarks: the cost of watching a loop that does nothing but switch tasks (run
by run, next to asyncio debug mode and an aiodebug-style logger; the precise comparison is
:mod:`bench.switching`), and the cost of one stack sample of a 50-frame stack.

Run in a fresh process (``python -m bench.micro ROUNDS``, JSON on stdout); the harness in
:func:`run` does that. Each round runs every configuration once, in a shuffled order.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvloop

from loopwatch import LoopWatch
from loopwatch.sampler import take_sample

from .apps import GET_SCOPE, discard, receive_empty_body
from .common import EmptyMiddleware, median_interval

SWITCHES = 400_000
SLOW_CALLBACK = 0.1
"""Threshold of the asyncio debug mode and of the aiodebug-style logger (as loopwatch's)."""


@dataclass(frozen=True)
class Case:
    """One configuration: loop, shape of the work, monitor."""

    loop: str  # "asyncio" | "uvloop"
    shape: str  # "100 tasks x 4000" | "1 task x 400000"
    monitor: str  # "none", PENDING_TIMER, "loopwatch", "asyncio debug", ... (see cases())

    @property
    def key(self) -> str:
        return f"{self.loop} | {self.shape} | {self.monitor}"


LOOPWATCH_NO_CLOCK = "loopwatch, measure_utilization=False"
"""loopwatch without its loop utilization measurement: shows what that part costs."""

PENDING_TIMER = "none, one timer pending"
"""No monitor, but one idle timer in the loop (a task in a long ``asyncio.sleep``), as
any server has (keep-alive timeouts, sleeps): the stdlib loop then checks its timer heap
at every iteration, as it does for loopwatch's heartbeat. The baseline a real app has."""

IDLE_THREAD = "none, one idle thread"
"""No monitor, but one more thread, blocked for the whole run (as a watchdog is while the
loop runs). On Linux a process with a second thread pays for it in every system call on
a file descriptor: ``epoll_wait`` then takes a reference on the epoll file, which a
process with one thread skips."""

TIMER_AND_THREAD = "none, one timer and one idle thread"
"""No monitor, with one idle timer and one idle thread: what a server has anyway (timeouts,
a thread pool, an exporter's thread). The baseline loopwatch's own cost is read against."""

BASELINES = (PENDING_TIMER, IDLE_THREAD, TIMER_AND_THREAD)

SHAPES = {"100 tasks x 4000": (100, 4000), "1 task x 400000": (1, 400_000)}


def cases() -> list[Case]:
    """asyncio with all four monitors; uvloop (no Python Handle, no debug hooks) with
    loopwatch only; both with the baselines."""
    found = []
    for shape in SHAPES:
        for monitor in ("none", *BASELINES, "loopwatch", LOOPWATCH_NO_CLOCK,
                        "asyncio debug", "aiodebug-style"):  # fmt: skip
            found.append(Case("asyncio", shape, monitor))
        for monitor in ("none", *BASELINES, "loopwatch"):
            found.append(Case("uvloop", shape, monitor))
    return found


@contextmanager
def aiodebug_style(threshold: float) -> Iterator[list[float]]:
    """Patch ``asyncio.events.Handle._run`` to time every callback, like aiodebug does."""
    slow: list[float] = []
    original = asyncio.events.Handle._run

    def instrumented(self: asyncio.Handle) -> None:
        started = time.monotonic()
        original(self)  # type: ignore[attr-defined]
        took = time.monotonic() - started
        if took >= threshold:
            slow.append(took)

    asyncio.events.Handle._run = instrumented  # type: ignore[attr-defined]
    try:
        yield slow
    finally:
        asyncio.events.Handle._run = original  # type: ignore[attr-defined]


async def _switcher(times: int) -> None:
    sleep = asyncio.sleep
    for _ in range(times):
        await sleep(0)


async def _switch(case: Case) -> tuple[float, float]:
    tasks, times = SHAPES[case.shape]
    watcher = None
    if case.monitor == "loopwatch":
        watcher = LoopWatch()
    elif case.monitor == LOOPWATCH_NO_CLOCK:
        watcher = LoopWatch(measure_utilization=False)
    if watcher is not None:
        watcher.start()
    if case.monitor == "asyncio debug":
        asyncio.get_running_loop().set_debug(True)
        asyncio.get_running_loop().slow_callback_duration = SLOW_CALLBACK
    timer = case.monitor in (PENDING_TIMER, TIMER_AND_THREAD)
    idle = asyncio.create_task(asyncio.sleep(3600)) if timer else None
    with idle_thread(case.monitor in (IDLE_THREAD, TIMER_AND_THREAD)):
        await asyncio.sleep(0.05)  # every monitor settled (heartbeat ticking)
        started, cpu_started = time.perf_counter(), time.process_time()
        await asyncio.gather(*(_switcher(times) for _ in range(tasks)))
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    if watcher is not None:
        watcher.stop()
    if idle is not None:
        idle.cancel()
    return elapsed, cpu


@contextmanager
def idle_thread(wanted: bool) -> Iterator[None]:
    """One more thread, blocked until the block ends (none if not ``wanted``)."""
    if not wanted:
        yield
        return
    release = threading.Event()
    thread = threading.Thread(target=release.wait, name="idle")
    thread.start()
    try:
        yield
    finally:
        release.set()
        thread.join()


def measure(case: Case) -> tuple[float, float]:
    """Wall and process CPU seconds for 400k task switches in ``case`` (a new loop)."""
    factory: Callable[[], asyncio.AbstractEventLoop] = (
        uvloop.new_event_loop if case.loop == "uvloop" else asyncio.new_event_loop
    )
    loop = factory()
    try:
        if case.monitor == "aiodebug-style":
            with aiodebug_style(SLOW_CALLBACK):
                return loop.run_until_complete(_switch(case))
        return loop.run_until_complete(_switch(case))
    finally:
        loop.close()


def _park(depth: int, ready: threading.Event, release: threading.Event) -> None:
    if depth > 1:
        _park(depth - 1, ready, release)
        return
    ready.set()
    release.wait()


def _stack_depth(thread_id: int) -> int:
    frame = sys._current_frames()[thread_id]
    depth = 0
    while frame is not None:
        depth += 1
        frame = frame.f_back
    return depth


def sample_cost(frames: int = 50, calls: int = 20_000, batches: int = 11) -> dict[str, float]:
    """Per-call cost of ``take_sample`` on a thread parked ``frames`` frames deep."""
    release = threading.Event()
    # Probe the fixed part of a parked thread's stack, then size the recursion to ``frames``.
    ready = threading.Event()
    probe = threading.Thread(target=_park, args=(1, ready, release), daemon=True)
    probe.start()
    ready.wait()
    base = _stack_depth(probe.ident or 0) - 1
    release.set()
    probe.join()
    release = threading.Event()
    ready = threading.Event()
    thread = threading.Thread(target=_park, args=(frames - base, ready, release), daemon=True)
    thread.start()
    ready.wait()
    thread_id = thread.ident or 0
    depth = _stack_depth(thread_id)
    per_call = []
    threads = threading.active_count()
    try:
        sample = take_sample(thread_id, 64)
        if sample is None or len(sample.frames) != depth:
            raise RuntimeError(f"expected a {depth}-frame sample, got {sample!r}")
        for _ in range(batches):
            started = time.perf_counter()
            for _ in range(calls):
                take_sample(thread_id, 64)
            per_call.append((time.perf_counter() - started) / calls)
    finally:
        release.set()
        thread.join()
    return {
        "stack_depth": depth,
        "threads": threads,
        "median_us": statistics.median(per_call) * 1e6,
        "min_us": min(per_call) * 1e6,
        "max_us": max(per_call) * 1e6,
        "calls": calls * batches,
    }


ROUNDS = 15
"""Rounds of a full run. Separate runs differ by 10-30 % on a shared machine: the micro
goal is judged in :mod:`bench.switching`; these runs give the wall times and the monitors
that cannot be switched on and off in a running loop (asyncio debug mode, the aiodebug-style
patch)."""

DEBUG_ROUNDS = 1
"""asyncio debug mode is ~20x slower (10+ s a run): it only runs this many rounds."""


async def _asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def _requests_cpu(app: Any, requests: int) -> float:
    """Process CPU µs per request for ``app`` called directly (no server, no socket)."""
    for _ in range(100):
        await app(dict(GET_SCOPE), receive_empty_body, discard)
    started = time.process_time()
    for index in range(requests):
        await app(dict(GET_SCOPE), receive_empty_body, discard)
        if index % 100 == 0:
            await asyncio.sleep(0)  # let the heartbeat run, as a server would
    return (time.process_time() - started) / requests * 1e6


def middleware_cost(rounds: int, requests: int = 50_000) -> dict[str, dict[str, float]]:
    """CPU per request of ``LoopWatchMiddleware`` around a trivial ASGI app, in-process."""
    from loopwatch import LoopWatchMiddleware

    variants: dict[str, Callable[[], Any]] = {
        "bare app": lambda: _asgi_app,
        "pass-through middleware": lambda: EmptyMiddleware(_asgi_app),
        "LoopWatchMiddleware(enabled=False)": lambda: LoopWatchMiddleware(_asgi_app, enabled=False),
        "LoopWatchMiddleware (default)": lambda: LoopWatchMiddleware(_asgi_app),
    }
    found: dict[str, list[float]] = {name: [] for name in variants}
    loop = asyncio.new_event_loop()
    try:
        apps = {name: make() for name, make in variants.items()}
        for _ in range(rounds):
            for name, app in apps.items():
                found[name].append(loop.run_until_complete(_requests_cpu(app, requests)))
    finally:
        loop.close()
    return {
        name: {"median_us": statistics.median(v), "min_us": min(v), "max_us": max(v)}
        for name, v in found.items()
    }


BESIDE_SECONDS = 2.0
"""How long a thread runs Python code beside an idle loop, per run."""


def _thread_rate_beside_idle_loop(watched: bool, seconds: float = BESIDE_SECONDS) -> float:
    """Calls per second of a small pure-Python function in a thread, while the loop of the
    calling thread is idle, watched by loopwatch (default configuration) or not."""
    stop = threading.Event()
    calls: list[int] = []

    def work() -> None:
        done = 0
        while not stop.is_set():
            sum(range(1000))
            done += 1
        calls.append(done)

    async def main() -> None:
        watcher = LoopWatch().start() if watched else None
        await asyncio.sleep(0.1)
        thread = threading.Thread(target=work)
        thread.start()
        await asyncio.sleep(seconds)
        stop.set()
        thread.join()
        if watcher is not None:
            watcher.stop()

    asyncio.run(main())
    return calls[0] / seconds


def thread_beside_idle_loop(rounds: int, seed: int = 11) -> dict[str, list[float]]:
    """The cost of the heartbeat to a thread running Python code beside an idle loop (CPU
    work handed to ``asyncio.to_thread``): every tick wakes the loop, which takes the GIL
    from that thread. Calls per second, without and with loopwatch, in shuffled pairs."""
    rng = random.Random(seed)
    rates: dict[str, list[float]] = {"none": [], "loopwatch": []}
    for _ in range(rounds):
        order = [False, True]
        rng.shuffle(order)
        for watched in order:
            rates["loopwatch" if watched else "none"].append(_thread_rate_beside_idle_loop(watched))
    return rates


def worker(rounds: int, seed: int = 7) -> dict[str, object]:
    """Every case once per round in a shuffled order, then the sample cost."""
    rng = random.Random(seed)
    timings: dict[str, list[float]] = {case.key: [] for case in cases()}
    cpu: dict[str, list[float]] = {case.key: [] for case in cases()}  # same keys as timings
    for case in cases():  # warm-up round, not recorded
        if case.monitor != "asyncio debug":
            measure(case)
    debug_rounds = 0 if rounds <= 3 else DEBUG_ROUNDS  # --quick: no debug mode (~25 s)
    timings = {k: v for k, v in timings.items() if debug_rounds or "asyncio debug" not in k}
    for index in range(rounds):
        order = cases()
        rng.shuffle(order)
        for case in order:
            if case.key not in timings or (
                case.monitor == "asyncio debug" and index >= debug_rounds
            ):
                continue
            wall, used = measure(case)
            timings[case.key].append(wall)
            cpu[case.key].append(used)
    return {
        "switches": SWITCHES,
        "rounds": rounds,
        "timings": timings,
        "cpu": cpu,
        "sample": sample_cost(),
        "middleware": middleware_cost(3 if rounds <= 3 else 5),
        "beside_idle_loop": thread_beside_idle_loop(2 if rounds <= 3 else 8),
    }


def summarize(raw: dict[str, object]) -> list[dict[str, object]]:
    """Per case: median seconds, spread, and the overhead against no monitor."""
    timings: dict[str, list[float]] = raw["timings"]  # type: ignore[assignment]
    cpu: dict[str, list[float]] = raw["cpu"]  # type: ignore[assignment]
    rows = []
    for case in cases():
        if case.key not in timings:
            continue
        values = timings[case.key]
        base_key = Case(case.loop, case.shape, "none").key
        base_values = timings[base_key]
        base = statistics.median(base_values)
        med = statistics.median(values)
        cpu_med = statistics.median(cpu[case.key])
        # Rounds run every case once, in shuffled order: a case and no monitor pair up.
        paired, interval = _paired_change(cpu[case.key], cpu[base_key])
        against = Case(case.loop, case.shape, TIMER_AND_THREAD).key
        row_extra: dict[str, object] = {}
        if case.monitor == "loopwatch" and against in cpu:
            change, change_interval = _paired_change(cpu[case.key], cpu[against])
            row_extra = {"cpu_vs_baseline": change, "cpu_vs_baseline_interval": change_interval}
        rows.append(
            {
                "loop": case.loop,
                "shape": case.shape,
                "monitor": case.monitor,
                "median_s": med,
                "min_s": min(values),
                "max_s": max(values),
                "per_switch_us": med / SWITCHES * 1e6,
                "overhead": med / base - 1,
                "overhead_best": min(values) / min(base_values) - 1,
                "runs": len(values),
                "cpu_median_s": cpu_med,
                "cpu_overhead": cpu_med / statistics.median(cpu[base_key]) - 1,
                "cpu_paired_overhead": paired,
                "cpu_paired_interval": interval,
                **row_extra,
            }
        )
    return rows


def _paired_change(values: list[float], base: list[float]) -> tuple[float, tuple[float, float]]:
    """The change of ``values`` against ``base``, run for run (every round runs each case
    once): the median of the per-round ratios minus one, and its 95 % interval."""
    ratios = [a / b for a, b in zip(values, base, strict=False)]
    low, high = median_interval(ratios)
    return statistics.median(ratios) - 1, (low - 1, high - 1)


def run(quick: bool) -> dict[str, object]:
    """Run :func:`worker` in a fresh interpreter and summarize."""
    import subprocess

    from .common import ROOT

    rounds = 3 if quick else ROUNDS
    out = subprocess.run(
        [sys.executable, "-m", "bench.micro", str(rounds)],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=900,
    )  # fmt: skip
    raw = json.loads(out.stdout)
    return {"raw": raw, "rows": summarize(raw)}


if __name__ == "__main__":
    print(json.dumps(worker(int(sys.argv[1]) if len(sys.argv) > 1 else 5)))
