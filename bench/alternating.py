"""One server that alternates between configurations: the precise A/B of the overhead
benchmark.

Two server processes differ even when they run the same code (hash seeds, memory layout),
and a shared machine's speed drifts by several per cent within minutes: comparing
separate servers cannot resolve a 1 % cost. :class:`Alternator` serves every request with
one of two apps, switching every :data:`WINDOW` seconds under constant load, in the order
A B B A A B ... so that a drift cancels out within each pair of windows. Per window it
records the process CPU time (every thread, loopwatch's watchdog included) and the
requests begun; ``GET /_bench/windows`` hands them to the harness.

Four kinds of server (``BENCH_ALTERNATE``):

- ``middleware``: the app built without and with ``LoopWatchMiddleware``, both started at
  start-up (so the watcher runs in every window): the per-request cost of the middleware.
- ``watch``: the app without loopwatch; every other window runs with ``LoopWatch()``
  started (heartbeat and watchdog): the cost of the watcher, which is per second, not
  per request.
- ``empty``: as ``middleware``, with an :class:`.common.EmptyMiddleware` in place of
  ``LoopWatchMiddleware``: what any ASGI middleware costs a request, for reference.
- ``same``: two copies of the app without loopwatch, built the same way: the control (an
  A/A run). With FastAPIInstrumentor it read +1 to +2 % (hello app, 95 % intervals up to
  +7 %) where the app without OpenTelemetry read within +-0.5 %.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from loopwatch import LoopWatch

from .apps import build_example_app, build_hello_app, report_stall
from .common import EmptyMiddleware

WINDOW = 0.25
"""Default seconds per window (``BENCH_WINDOW``): ~1,400 requests of the hello app. A
request begun in one window may finish in the next: windows must be long next to the
app's latency."""

SETTLE = 0.05
"""Seconds between a switch and its window (in every state): starting a watcher (thread
start, first ticks, the watchdog settling in its wait) is not part of its running cost."""

OFF = "off"
WINDOWS_PATH = "/_bench/windows"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Lifespan:
    """Runs one app's ASGI lifespan in a task: :meth:`start` and :meth:`stop` it."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        self._started = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sent: list[str] = []

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())
        await self._started.wait()
        if "lifespan.startup.complete" not in self._sent:
            raise RuntimeError(f"app start-up failed: {self._sent}")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        messages = ["lifespan.startup"]

        async def receive() -> dict[str, str]:
            if messages:
                return {"type": messages.pop()}
            await self._stopping.wait()
            return {"type": "lifespan.shutdown"}

        async def send(message: dict[str, Any]) -> None:
            self._sent.append(message["type"])
            if message["type"].startswith("lifespan.startup"):
                self._started.set()

        try:
            await self._app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                            receive, send)  # fmt: skip
        finally:
            self._started.set()


class Alternator:
    """Serves requests with ``plain`` or, in every other window, ``watched`` (state
    ``other``: ``middleware`` or ``empty``) or ``plain`` with a watcher started (state
    ``watch``)."""

    def __init__(
        self, plain: ASGIApp, other: str, watched: ASGIApp | None = None, window: float = WINDOW
    ) -> None:
        self._plain = plain
        self._window = window
        self._other = other
        self._watched = watched
        self._current = plain
        self._requests = 0
        self._windows: list[dict[str, float | str]] = []
        self._lifespans = [Lifespan(app) for app in (plain, watched) if app is not None]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http" and scope["path"] == WINDOWS_PATH:
            await _send_json(send, self._windows)
        else:
            self._requests += 1
            await self._current(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await receive()
        for lifespan in self._lifespans:
            await lifespan.start()
        switching = asyncio.create_task(self._switch())
        await send({"type": "lifespan.startup.complete"})
        await receive()
        switching.cancel()
        for lifespan in self._lifespans:
            await lifespan.stop()
        await send({"type": "lifespan.shutdown.complete"})

    async def _switch(self) -> None:
        states = (OFF, self._other)
        for number in itertools.count():
            state = (states if number // 2 % 2 == 0 else states[::-1])[number % 2]
            watch = self._enter(state)
            await asyncio.sleep(SETTLE)  # a started watcher's thread is up and waiting
            cpu, requests, began = time.process_time(), self._requests, time.monotonic()
            await asyncio.sleep(self._window)
            self._windows.append({
                "state": state,
                "began": began,
                "ended": time.monotonic(),
                "cpu_s": time.process_time() - cpu,
                "requests": self._requests - requests,
            })  # fmt: skip
            self._current = self._plain
            if watch is not None:
                watch.stop()

    def _enter(self, state: str) -> LoopWatch | None:
        """Switch to ``state``; the watcher started for it, if any."""
        if state == "watch":
            return LoopWatch(on_block=report_stall).start()
        if state != OFF and self._watched is not None:
            self._current = self._watched
        return None


async def _send_json(send: Send, value: object) -> None:
    body = json.dumps(value).encode()
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def alternating_app() -> Alternator:
    """uvicorn factory: ``BENCH_ALTERNATE`` (``middleware``/``watch``/``empty``/``same``),
    ``BENCH_APP`` (``hello``/``example``), ``BENCH_OTEL`` as in :mod:`bench.apps`,
    ``BENCH_WINDOW``, and ``BENCH_OTHER_FIRST=1`` to build the other app before the plain
    one (the harness swaps the order from one server to the next: see :data:`OTHER_FIRST`)."""
    kind = os.environ.get("BENCH_ALTERNATE", "middleware")
    window = float(os.environ.get("BENCH_WINDOW", WINDOW))
    build = build_example_app if os.environ.get("BENCH_APP") == "example" else build_hello_app
    otel = os.environ.get("BENCH_OTEL", "0") == "1"
    other_first = os.environ.get(OTHER_FIRST, "0") == "1"
    if kind == "watch":
        return Alternator(build(loopwatch=False, otel=otel), "watch", window=window)
    if kind not in ("middleware", "empty", "same"):
        raise ValueError(
            f"BENCH_ALTERNATE={kind!r}: expected 'middleware', 'watch', 'empty' or 'same'"
        )

    def build_other() -> Any:
        if kind == "same":  # an A/A run: what the method reads as a cost when there is none
            return build(loopwatch=False, otel=otel)
        if kind == "empty":
            with_empty = build(loopwatch=False, otel=otel)
            with_empty.add_middleware(EmptyMiddleware)
            return with_empty
        return build(loopwatch=True, otel=otel)

    if other_first:
        other = build_other()
        plain = build(loopwatch=False, otel=otel)
    else:
        plain = build(loopwatch=False, otel=otel)
        other = build_other()
    return Alternator(plain, kind, other, window)


OTHER_FIRST = "BENCH_OTHER_FIRST"
"""Two apps built in one process might differ by the order they were built in. With
FastAPIInstrumentor the same app built twice read +1 to +2 % (hello app, 95 % intervals
up to +7 %); 10 servers of that A/A on 2026-12-03 read -1.0 % (median) where the plain
app was built first and -1.4 % where it was built second, each server between -5 % and
+5 %: no order effect resolved, the servers differ. The harness still builds the other
app first in every other server, so that an order effect could not bias a result."""
