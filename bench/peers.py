"""Peers side by side: the accuracy corpus against loopwatch and each peer tool, and each
tool's cost per task switch counted in instructions.

Each tool is set up as its README shows, in its production mode, with a 100 ms threshold
where it has one, and runs the corpus of :mod:`bench.stalls` (one ~300 ms stall of each
kind, plus a ``threading.Lock`` another thread holds) in a fresh interpreter per tool and
loop (``python -m bench.peers corpus TOOL LOOP``, JSON on stdout). After each stall the
tool's reports are collected and judged: detected; the stall's function named anywhere in
what the tool reports (its name, trace or stack); reported while the stall lasted or only
after; the duration error; the cause it gives.

Overhead: ``python -m bench.peers switches TOOL N`` runs 100 tasks that each switch ``N``
times (``await asyncio.sleep(0)``) with the tool on, under ``valgrind --tool=cachegrind``;
two run lengths cancel start-up and shutdown out, as in :mod:`bench.instructions`. The
tools that are ASGI middleware are also counted per request, as :mod:`bench.guard`
counts loopwatch's.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import instructions
from .accuracy import AFTER, SETTLE, THRESHOLD, _dispose
from .common import ROOT
from .stalls import PATTERNS, Calibration, Fixtures, Pattern, Prepared, _after, calibrate

NOMINAL = 0.3
"""Every stall of the side-by-side run lasts about this long (3x the threshold)."""

LIVE_MARGIN = 0.05
"""A report counts as made while the stall lasted if it came this long before its end (a
profiler's report on the stalled function's return lands a hair before the clock stops)."""

TIME_SCALE = float(os.environ.get("BENCH_PEERS_TIME_SCALE", "1"))
"""Factor on the periods of the tools that work per unit of time (loopwatch, pyleak,
fastapi-loopguard): under valgrind, which slows Python ~50 times, their clocks are slowed
as much, so a switch is charged the same share of their periodic work as in a real run."""
VALGRIND_SLOWDOWN = 50.0

TASKS = 100
SHORT, LONG = 50, 250
"""Switches per task in the two valgrind runs."""


def stall_lock_wait(lock: threading.Lock) -> None:
    """Waiting on a ``threading.Lock`` another thread holds."""
    with lock:
        pass


def _prep_lock(fx: Fixtures, seconds: float, cal: Calibration) -> Prepared:
    lock = threading.Lock()
    lock.acquire()
    go = threading.Event()
    _after(go, seconds, lock.release)
    return stall_lock_wait, (lock,), go.set


CORPUS: tuple[Pattern, ...] = (
    *PATTERNS,
    Pattern("lock", "threading.Lock held by another thread", "blocking",
            "bench.peers.stall_lock_wait", None, _prep_lock),
)  # fmt: skip


@dataclass
class Report:
    """One thing a tool said about a stall."""

    at: float
    """Epoch seconds when the tool said it."""
    duration: float | None = None
    text: str = ""
    """Everything it names: function, handle, trace or stack."""
    cause: str | None = None
    stopped: bool = False
    """The tool stopped the call before it blocked (blockbuster)."""


@dataclass
class Tool:
    """A peer switched on for the running loop; ``reports`` fills as it reports."""

    reports: list[Report] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    idle_waits: int = 0
    """Reports of the loop waiting idle in its selector (asyncio-event-loop-monitor times
    ``select.epoll.poll`` like any call): counted, not taken as detections."""

    def add(self, report: Report) -> None:
        with self.lock:
            self.reports.append(report)

    def drain(self) -> list[Report]:
        with self.lock:
            out, self.reports = self.reports, []
        return out


class _LogCapture(logging.Handler):
    """Turns a logger's records into reports (``parse`` returns None to skip one)."""

    def __init__(self, tool: Tool, parse: Callable[[logging.LogRecord], Report | None]) -> None:
        super().__init__(logging.WARNING)
        self.tool, self.parse = tool, parse

    def emit(self, record: logging.LogRecord) -> None:
        report = self.parse(record)
        if report is not None:
            self.tool.add(report)


def _capture(name: str, tool: Tool, parse: Callable[[logging.LogRecord], Report | None]) -> None:
    logger = logging.getLogger(name)
    logger.addHandler(_LogCapture(tool, parse))
    logger.setLevel(logging.WARNING)
    logger.propagate = False


# --- each tool, set up as its README shows ------------------------------------------------


@contextlib.asynccontextmanager
async def _none(tool: Tool) -> AsyncIterator[None]:
    yield


@contextlib.asynccontextmanager
async def _loopwatch(tool: Tool) -> AsyncIterator[None]:
    from loopwatch import BlockEvent, LoopWatch

    def hook(event: BlockEvent) -> None:
        culprit = str(event.culprit) if event.culprit else ""
        tool.add(Report(time.time(), None if event.ongoing else event.duration,
                        f"{culprit}\n{event.stack}", event.cause))  # fmt: skip

    threshold = THRESHOLD * TIME_SCALE
    async with LoopWatch(threshold=threshold, interval=threshold / 20, on_block=hook):
        yield


@contextlib.asynccontextmanager
async def _aiocop(tool: Tool) -> AsyncIterator[None]:
    import aiocop

    def on_slow(event: aiocop.SlowTaskEvent) -> None:
        if event.exceeded_threshold:
            where = [e["trace"] for e in event.blocking_events]
            where += [s["trace"] for s in event.cpu_stack_samples]
            tool.add(Report(time.time(), event.elapsed_ms / 1000, "\n".join(where),
                            event.reason))  # fmt: skip

    aiocop.patch_audit_functions()
    aiocop.start_blocking_io_detection(trace_depth=20)
    aiocop.detect_slow_tasks(threshold_ms=int(THRESHOLD * 1000), on_slow_task=on_slow)
    aiocop.activate()
    try:
        yield
    finally:
        aiocop.deactivate()


class _PyleakBlocks:
    """pyleak logs a block as soon as it sees one and keeps its stack in the detector."""

    def __init__(self, tool: Tool) -> None:
        self.tool, self.seen = tool, 0
        self.first: list[float] = []

    def parse(self, record: logging.LogRecord) -> Report | None:
        if record.getMessage().startswith("Event loop blocked"):
            self.first.append(record.created)
        return None


@contextlib.asynccontextmanager
async def _pyleak(tool: Tool) -> AsyncIterator[None]:
    from pyleak import no_event_loop_blocking

    logger = logging.getLogger("bench.peers.pyleak")
    blocks = _PyleakBlocks(tool)
    _capture(logger.name, tool, blocks.parse)
    async with no_event_loop_blocking(
        action="log",
        logger=logger,
        threshold=THRESHOLD * TIME_SCALE,
        check_interval=0.01 * TIME_SCALE,
    ) as manager:
        original = tool.drain

        def drain() -> list[Report]:  # the detector's blocks since the last drain
            detected = manager.detector.detected_blocks
            out = [Report(blocks.first[i] if i < len(blocks.first) else b.timestamp,
                          b.duration, b.format_blocking_stack())
                   for i, b in enumerate(detected) if i >= blocks.seen]  # fmt: skip
            blocks.seen = len(detected)
            return original() + out

        tool.drain = drain  # type: ignore[method-assign]
        yield


@contextlib.asynccontextmanager
async def _loopguard(tool: Tool) -> AsyncIterator[None]:
    """The sentinel ``LoopGuardMiddleware`` starts in the app's lifespan, driven directly
    (no request in flight: it would name the requests, never code)."""
    from fastapi_loopguard import LoopGuardConfig, SentinelMonitor

    def on_blocking(lag_ms: float, path: str | None, method: str | None) -> None:
        tool.add(Report(time.time(), lag_ms / 1000, f"{method} {path}"))

    defaults = LoopGuardConfig()
    config = LoopGuardConfig(
        monitor_interval_ms=defaults.monitor_interval_ms * TIME_SCALE,
        fallback_threshold_ms=defaults.fallback_threshold_ms * TIME_SCALE,
    )
    monitor = SentinelMonitor(config, on_blocking=on_blocking)
    await monitor.start_with_background_calibration()
    try:
        yield
    finally:
        await monitor.stop()


def add_loopguard(app: Any) -> None:
    """``LoopGuardMiddleware`` on a FastAPI app, in its production mode (``"log"``: no
    headers, no 503), its sentinel's clock slowed by :data:`TIME_SCALE` (see
    :mod:`bench.guard`, which counts its instructions per request)."""
    from fastapi_loopguard import LoopGuardConfig, LoopGuardMiddleware

    defaults = LoopGuardConfig()
    config = LoopGuardConfig(
        enforcement_mode="log",
        monitor_interval_ms=defaults.monitor_interval_ms * TIME_SCALE,
        fallback_threshold_ms=defaults.fallback_threshold_ms * TIME_SCALE,
    )
    app.add_middleware(LoopGuardMiddleware, config=config)


@contextlib.asynccontextmanager
async def _aiodebug(tool: Tool) -> AsyncIterator[None]:
    from aiodebug import log_slow_callbacks

    def on_slow(name: str, seconds: float) -> None:
        tool.add(Report(time.time(), seconds, name))

    log_slow_callbacks.enable(THRESHOLD, on_slow_callback=on_slow)
    yield


@contextlib.asynccontextmanager
async def _blockbuster(tool: Tool) -> AsyncIterator[None]:
    from blockbuster import blockbuster_ctx

    with blockbuster_ctx():
        yield


@contextlib.asynccontextmanager
async def _event_loop_monitor(tool: Tool) -> AsyncIterator[None]:
    from asyncio_event_loop_monitor import BlockingCallInfo, EventLoopMonitor

    def on_call(info: BlockingCallInfo) -> None:
        if info.method_name.endswith(".poll"):
            tool.idle_waits += 1
            return
        tool.add(Report(time.time(), info.duration_ms / 1000, info.method_name))

    monitor = EventLoopMonitor(threshold_ms=THRESHOLD * 1000, on_blocking_call=on_call)
    monitor.activate()
    try:
        yield
    finally:
        monitor.deactivate()


_TOOK = re.compile(r"took ([\d.]+) seconds")


@contextlib.asynccontextmanager
async def _debug_mode(tool: Tool) -> AsyncIterator[None]:
    def parse(record: logging.LogRecord) -> Report | None:
        message = record.getMessage()
        took = _TOOK.search(message)
        return Report(record.created, float(took.group(1)), message) if took else None

    _capture("asyncio", tool, parse)
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    loop.slow_callback_duration = THRESHOLD
    try:
        yield
    finally:
        loop.set_debug(False)


TOOLS: dict[str, Callable[[Tool], contextlib.AbstractAsyncContextManager[None]]] = {
    "none": _none,
    "loopwatch": _loopwatch,
    "aiocop": _aiocop,
    "pyleak": _pyleak,
    "fastapi-loopguard": _loopguard,
    "aiodebug": _aiodebug,
    "blockbuster": _blockbuster,
    "asyncio-event-loop-monitor": _event_loop_monitor,
    "asyncio debug mode": _debug_mode,
}
VERSIONS = {
    "aiocop": "aiocop", "pyleak": "pyleak", "fastapi-loopguard": "fastapi-loopguard",
    "aiodebug": "aiodebug", "blockbuster": "blockbuster",
    "asyncio-event-loop-monitor": "asyncio-event-loop-monitor", "loopwatch": "loopwatch",
}  # fmt: skip


# --- the corpus ---------------------------------------------------------------------------


async def _case(pattern: Pattern, fx: Fixtures, cal: Calibration, tool: Tool) -> dict[str, Any]:
    """One stall (prepared off the loop), then the tool's verdict on it."""
    box: list[tuple[object, ...]] = []

    def prepare() -> tuple[object, ...]:
        function, args, go = pattern.prepare(fx, NOMINAL, cal)
        box.append(args)
        return function, go

    function, go = await asyncio.to_thread(prepare)
    await asyncio.sleep(SETTLE)
    tool.drain()
    idle_before = tool.idle_waits
    gc.disable()
    stopped = None
    try:
        go()
        wall = time.time()
        started = time.perf_counter()
        try:
            function(*box[0])
        except Exception as error:  # blockbuster's BlockingError: stopped before blocking
            stopped = Report(time.time(), None, "".join(traceback.format_exception(error)),
                             str(error), stopped=True)  # fmt: skip
        true = time.perf_counter() - started
        await asyncio.sleep(AFTER)
    finally:
        gc.enable()
    await asyncio.to_thread(_dispose, box)
    await asyncio.sleep(SETTLE)  # a stop gets the ``go`` helper's action done, too
    reports = tool.drain() + ([stopped] if stopped else [])
    name = pattern.culprit.rsplit(".", 1)[1]
    times = [r.at for r in reports if not r.stopped]
    lead = wall + true - min(times) if times else None
    durations = [r.duration for r in reports if r.duration is not None]
    return {
        "pattern": pattern.name,
        "true": true,
        "detected": bool(reports),
        "stopped": any(r.stopped for r in reports),
        "named": any(name in r.text for r in reports),
        "lead": lead,
        "while_ongoing": lead is not None and lead >= LIVE_MARGIN,
        "duration": max(durations) if durations else None,
        "error": max(durations) - true if durations else None,
        "cause": next((r.cause for r in reversed(reports) if r.cause), None),
        "reports": len(reports),
        "idle_waits": tool.idle_waits - idle_before,
    }


async def corpus(tool_name: str) -> list[dict[str, Any]]:
    fx = Fixtures()
    cal = await asyncio.to_thread(calibrate)
    tool = Tool()
    try:
        async with TOOLS[tool_name](tool):
            await asyncio.sleep(AFTER)
            return [await _case(p, fx, cal, tool) for p in CORPUS]
    finally:
        fx.close()


async def switches(tool_name: str, count: int) -> None:
    """``TASKS`` tasks, each switching ``count`` times, with the tool on."""

    async def task() -> None:
        for _ in range(count):
            await asyncio.sleep(0)

    async with TOOLS[tool_name](Tool()):
        await asyncio.gather(*(task() for _ in range(TASKS)))


def _run_on(loop_name: str, coroutine: Any) -> Any:
    if loop_name == "uvloop":
        import uvloop

        return uvloop.run(coroutine)
    return asyncio.run(coroutine)


def _worker(argv: list[str]) -> None:
    kind, tool_name, arg = argv
    if kind == "corpus":
        print(json.dumps(_run_on(arg, corpus(tool_name))))
    else:
        _run_on("asyncio", switches(tool_name, int(arg)))


# --- the driver ---------------------------------------------------------------------------


def _corpus_run(tool_name: str, loop_name: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.peers", "corpus", tool_name, loop_name],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
        preexec_fn=_memory_cap,
    )  # fmt: skip
    if out.returncode != 0:
        return {"tool": tool_name, "loop": loop_name, "failed": out.stderr[-1500:]}
    return {"tool": tool_name, "loop": loop_name, "cases": json.loads(out.stdout.splitlines()[-1])}


def _memory_cap() -> None:
    """4 GiB per worker: a tool that balloons fails its run, not the shared machine."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


def _instructions(tool_name: str, count: int) -> tuple[int, float]:
    """Instructions of a whole run (and its seconds under valgrind)."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="loopwatch-peers-") as tmp:
        out = subprocess.run(
            ["valgrind", "--tool=cachegrind", "--cache-sim=no",
             f"--cachegrind-out-file={Path(tmp) / 'out'}",
             sys.executable, "-m", "bench.peers", "switches", tool_name, str(count)],
            cwd=ROOT, capture_output=True, text=True, timeout=1200, check=False,
            env={**_env(), "PYTHONHASHSEED": "0",
                 "BENCH_PEERS_TIME_SCALE": str(VALGRIND_SLOWDOWN)},
        )  # fmt: skip
    found = re.search(r"I\s+refs:\s+([\d,]+)", out.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count for {tool_name}:\n{out.stderr[-1500:]}")
    return int(found.group(1).replace(",", "")), time.monotonic() - started


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def per_switch(tool_name: str) -> dict[str, Any]:
    (short, short_s), (long, long_s) = (_instructions(tool_name, n) for n in (SHORT, LONG))
    return {"tool": tool_name, "short": short, "long": long, "seconds": [short_s, long_s],
            "per_switch": (long - short) / (TASKS * (LONG - SHORT))}  # fmt: skip


ASGI_MIDDLEWARES = ("loopwatch", "fastapi-loopguard")
"""The tools that come as ASGI middleware: their cost per request is counted too."""


def per_request() -> dict[str, Any]:
    """Instructions per in-process request of the FastAPI hello app, bare and with each
    of :data:`ASGI_MIDDLEWARES`, counted as the performance guard counts loopwatch's
    (:mod:`bench.guard`: medians of its runs, clocks stretched by the measured slowdown)."""
    from . import guard

    workload = guard.Workload("request", ["requests"], guard.REQUESTS, guard.RUNS)
    [row] = guard.measure([workload], ASGI_MIDDLEWARES)
    return {**row, "requests": guard.REQUESTS}


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for tool_name, dist in VERSIONS.items():
        try:
            out[tool_name] = version(dist)
        except PackageNotFoundError:
            out[tool_name] = "not installable"
    out["asyncio debug mode"] = f"Python {sys.version.split()[0]}"
    return out


def run(quick: bool) -> dict[str, Any]:
    """Every tool on both loops (asyncio only with ``quick``), then the valgrind counts."""
    from concurrent.futures import ThreadPoolExecutor

    loops = ("asyncio",) if quick else ("asyncio", "uvloop")
    runs = []
    for tool_name in TOOLS:
        if tool_name == "none":
            continue
        for loop_name in loops:
            print(f"  peers: {tool_name} on {loop_name}", flush=True)
            runs.append(_corpus_run(tool_name, loop_name))
    overhead: list[dict[str, Any]] = []
    requests: dict[str, Any] = {}
    if not quick and instructions.available():
        with ThreadPoolExecutor(2) as pool:  # instruction counts do not depend on load
            overhead = list(pool.map(per_switch, TOOLS))
        requests = per_request()
    return {
        "threshold": THRESHOLD, "nominal": NOMINAL, "versions": _versions(),
        "patterns": {p.name: p.description for p in CORPUS},
        "runs": runs, "switches": {"tasks": TASKS, "short": SHORT, "long": LONG},
        "overhead": overhead, "requests": requests,
    }  # fmt: skip


if __name__ == "__main__":
    _worker(sys.argv[1:])
