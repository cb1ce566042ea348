"""loopwatch's own time in a server under load, timed from inside the server.

The A/B of :mod:`.alternating` compares whole servers, to about ±0.5 %: it cannot say
where a cost of that size comes from. Here the hello app carries two marker middlewares
around the middleware under test (none, an empty one, ``LoopWatchMiddleware``), which read
``perf_counter_ns`` on either side of it: on the way in, on the way out, and as each
response message passes through the ``send`` it hands down. Summed over a wrk run and
divided by the requests, that is the middleware's time per request plus the markers' own,
which the runs with no middleware between them measure. With loopwatch, each heartbeat
tick is timed too. Valgrind counts instructions, not the cache misses and system calls
that make code run 10 times slower in a busy server than in a hot loop; these timings
include them (it is how a ``getpid()`` inside ``asyncio.get_running_loop()`` on Python
< 3.12 was found on every request).

What they leave out: the app's own code and data that loopwatch's evict from the caches,
paid later by the app. The A/B includes that.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from time import perf_counter_ns
from typing import Any

from fastapi import FastAPI

from .common import EmptyMiddleware, median, run_wrk, uvicorn_server, write_raw

KINDS = ("none", "empty", "loopwatch")
LOOPS = ("asyncio", "uvloop")
CONNECTIONS = 32
STATS_PATH = "/_bench/inserver"


class _Timings:
    """Sums kept by the marker middlewares and the timed heartbeat (one loop thread)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.nanoseconds = 0
        self.ticks = 0
        self.tick_nanoseconds = 0
        self.cpu_since = time.process_time()
        self.wall_since = time.monotonic()

    def report(self) -> dict[str, float]:
        return {
            "requests": self.requests,
            "nanoseconds": self.nanoseconds,
            "ticks": self.ticks,
            "tick_nanoseconds": self.tick_nanoseconds,
            "cpu_s": time.process_time() - self.cpu_since,
            "wall_s": time.monotonic() - self.wall_since,
        }


TIMINGS = _Timings()
_entered = _left = _sending = 0


class _OuterMarker:
    """Reads the clock before the middleware under test, after it returned and as a
    message it sends arrives; answers
    ``GET /_bench/inserver`` itself with the sums so far, and starts them again."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        global _entered
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == STATS_PATH:
            await _send_json(send, TIMINGS.report())
            TIMINGS.reset()
            return

        async def timed_send(message: Any) -> None:
            # A message on its way out through the middleware under test (its ``send``)
            TIMINGS.nanoseconds += perf_counter_ns() - _sending
            await send(message)

        _entered = perf_counter_ns()
        await self.app(scope, receive, timed_send)
        # The way out: nothing else ran between the inner marker's return and here.
        TIMINGS.nanoseconds += perf_counter_ns() - _left
        TIMINGS.requests += 1


class _InnerMarker:
    """Reads the clock just inside the middleware under test, as it leaves, and as a
    message goes out to it."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        global _left
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def timing_send(message: Any) -> None:
            global _sending
            _sending = perf_counter_ns()
            await send(message)

        # The way in: the middleware under test does not wait for anything on it.
        TIMINGS.nanoseconds += perf_counter_ns() - _entered
        await self.app(scope, receive, timing_send)
        _left = perf_counter_ns()


async def _send_json(send: Any, data: object) -> None:
    body = json.dumps(data).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _time_heartbeat() -> None:
    """Time each tick of the running loop's heartbeat (loopwatch internals: bench only)."""
    from loopwatch import registry

    watcher = registry._watchers.get(asyncio.get_running_loop())
    if watcher is None or watcher._parts is None:
        return
    heartbeat = watcher._parts.heartbeat
    tick = heartbeat._tick

    def timed_tick() -> None:
        started = perf_counter_ns()
        tick()
        TIMINGS.tick_nanoseconds += perf_counter_ns() - started
        TIMINGS.ticks += 1

    heartbeat._tick = timed_tick  # type: ignore[method-assign]  # its next call_later takes it


def marked_hello_app() -> FastAPI:
    """uvicorn factory: the hello app with ``BENCH_MIDDLEWARE`` between two markers
    (``BENCH_OTEL=1``: traced by FastAPIInstrumentor)."""
    from .apps import DropSpans

    kind = os.environ.get("BENCH_MIDDLEWARE", "none")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        _time_heartbeat()  # LoopWatchMiddleware started the watcher before this runs
        yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/")
    async def hello() -> dict[str, str]:
        return {"hello": "world"}

    options: dict[str, Any] = {}
    if os.environ.get("BENCH_OTEL") == "1":
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(BatchSpanProcessor(DropSpans()))
        meter_provider = MeterProvider()
        FastAPIInstrumentor.instrument_app(
            app, tracer_provider=tracer_provider, meter_provider=meter_provider
        )
        options = {"tracer_provider": tracer_provider, "meter_provider": meter_provider}
    app.add_middleware(_InnerMarker)
    if kind == "loopwatch":
        from loopwatch import LoopWatchMiddleware

        app.add_middleware(LoopWatchMiddleware, **options)
    elif kind == "empty":
        app.add_middleware(EmptyMiddleware)
    app.add_middleware(_OuterMarker)
    return app


def _stats(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{STATS_PATH}", timeout=10) as reply:
        data: dict[str, float] = json.load(reply)
    return data


def measure(loop: str, kind: str, otel: bool, seconds: float) -> dict[str, Any]:
    """One server, one wrk run: nanoseconds per request in the middleware, tick times."""
    env = {"BENCH_MIDDLEWARE": kind, "BENCH_OTEL": "1" if otel else "0"}
    with uvicorn_server("bench.inserver:marked_hello_app", loop, env) as server:
        run_wrk(server.url("/"), 1.0, CONNECTIONS)  # warm-up, not measured
        _stats(server.port)  # resets the sums
        run_wrk(server.url("/"), seconds, CONNECTIONS)
        data = _stats(server.port)
    requests = max(data["requests"], 1)
    ticks = data["ticks"]
    return {
        "loop": loop,
        "kind": kind,
        "otel": otel,
        "requests": data["requests"],
        "ns_per_request": data["nanoseconds"] / requests,
        "cpu_us_per_request": data["cpu_s"] / requests * 1e6,
        "ticks_per_s": ticks / data["wall_s"],
        "us_per_tick": data["tick_nanoseconds"] / ticks / 1e3 if ticks else None,
        "tick_cpu_share": data["tick_nanoseconds"] / 1e9 / data["cpu_s"] if ticks else None,
    }


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per loop and tracing: medians per kind, and loopwatch's share of a request's CPU."""
    rows = []
    for loop in LOOPS:
        for otel in (False, True):
            group = [run for run in runs if run["loop"] == loop and run["otel"] == otel]
            if not group:
                continue

            def of(kind: str, key: str, group: list[dict[str, Any]] = group) -> float:
                return median([run[key] for run in group if run["kind"] == kind])

            cpu_ns = of("loopwatch", "cpu_us_per_request") * 1e3
            middleware_ns = of("loopwatch", "ns_per_request") - of("none", "ns_per_request")
            empty_ns = of("empty", "ns_per_request") - of("none", "ns_per_request")
            tick_share = of("loopwatch", "tick_cpu_share")
            rows.append(
                {
                    "loop": loop,
                    "otel": otel,
                    "cpu_us_per_request": cpu_ns / 1e3,
                    "middleware_ns": middleware_ns,
                    "empty_ns": empty_ns,
                    "middleware_share": middleware_ns / cpu_ns,
                    "us_per_tick": of("loopwatch", "us_per_tick"),
                    "ticks_per_s": of("loopwatch", "ticks_per_s"),
                    "tick_share": tick_share,
                    "total_share": middleware_ns / cpu_ns + tick_share,
                }
            )
    return rows


def run(quick: bool, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every loop, without and with FastAPIInstrumentor, each kind ``rounds`` times
    (the order of the kinds rotating each round)."""
    rounds, seconds = (1, 3.0) if quick else (4, 5.0)
    runs = []
    for loop in LOOPS:
        for otel in (False, True):
            for index in range(rounds):
                for kind in KINDS[index % 3 :] + KINDS[: index % 3]:
                    result = measure(loop, kind, otel, seconds)
                    log(
                        f"inserver {loop} otel={otel} {kind}: "
                        f"{result['ns_per_request']:.0f} ns/request, "
                        f"{result['cpu_us_per_request']:.0f} us CPU/request"
                    )
                    runs.append(result)
    write_raw("inserver", runs)
    return {
        "rounds": rounds,
        "seconds": seconds,
        "connections": CONNECTIONS,
        "rows": summarize(runs),
    }
