"""ASGI apps served by uvicorn in the overhead and memory benchmarks.

Both factories read their configuration from the environment, so uvicorn can build them
with ``--factory``:

- ``BENCH_LOOPWATCH`` = ``1``/``0``/``watch``: add :class:`loopwatch.LoopWatchMiddleware`
  with the default configuration; or nothing at all (not even a pass-through layer); or
  only start the loop's watcher (``loopwatch.watch()``: heartbeat, watchdog, no middleware).
- ``BENCH_OTEL`` = ``1``/``0``: instrument with ``FastAPIInstrumentor`` (spans go through a
  ``BatchSpanProcessor`` to an exporter that drops them), or not.

Every stall loopwatch reports is written to stderr as a ``BENCH_STALL`` line, and an
independent probe (a 20 ms timer, in every configuration) writes a ``BENCH_LAG`` line for
each loop lag of 70 ms or more, so the harness can tell real stalls from false positives
(``BENCH_PROBE=0`` leaves it out: the instruction counts, where its ticks per unit of time
would be charged to requests that valgrind slows down).
uvicorn calls these factories on its running loop, which is where the probe and the
watcher start.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from fastapi import FastAPI
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from loopwatch import BlockEvent, LoopWatchMiddleware

EXAMPLE_CPU_ITERATIONS = 20_000
"""The example app's CPU work per request, scaled down from the shipped 7,000,000 (about
0.3 s, which caps the app at a few requests per second and drowns any overhead)."""


class DropSpans(SpanExporter):
    """A span exporter that accepts and discards everything (no network, no memory)."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Nothing to release."""


PROBE_PERIOD = 0.02
PROBE_REPORT = 0.07
"""A stall of duration d delays some probe tick by at least d - PROBE_PERIOD."""


GET_SCOPE = {
    "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
    "scheme": "http", "path": "/", "raw_path": b"/", "query_string": b"", "root_path": "",
    "headers": [(b"host", b"127.0.0.1")], "server": ("127.0.0.1", 8000),
    "client": ("127.0.0.1", 50000),
}  # fmt: skip
"""``GET /`` as a server would pass it, for apps called directly (no server, no socket)."""


async def receive_empty_body() -> dict[str, Any]:
    """ASGI ``receive`` of a request without a body."""
    return {"type": "http.request", "body": b"", "more_body": False}


async def discard(message: dict[str, Any]) -> None:
    """ASGI ``send`` that drops the response."""


def _flag(name: str, default: str = "0") -> bool:
    return os.environ.get(name, default).strip() == "1"


async def lag_probe() -> None:
    """Report loop lags of at least :data:`PROBE_REPORT` seconds on stderr."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + PROBE_PERIOD
        await asyncio.sleep(PROBE_PERIOD)
        lag = loop.time() - due
        if lag >= PROBE_REPORT:
            print(f"BENCH_LAG lag={lag:.4f}", file=sys.stderr, flush=True)


_background: set[asyncio.Task[None]] = set()


def _start_probe_and_watcher() -> None:
    """On uvicorn's running loop: the lag probe, and ``loopwatch.watch()`` if asked."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # built outside a loop (tests): nothing to start
        return
    if _flag("BENCH_PROBE", default="1"):
        task = loop.create_task(lag_probe())
        _background.add(task)
    if os.environ.get("BENCH_LOOPWATCH", "0").strip() == "watch":
        import loopwatch

        loopwatch.watch(loop, on_block=report_stall)


def report_stall(event: BlockEvent) -> None:
    """``on_block`` hook: one line per finished stall, for the harness to count."""
    if event.end is not None:
        print(
            f"BENCH_STALL duration={event.duration:.4f} cause={event.cause} "
            f"culprit={event.culprit}",
            file=sys.stderr,
            flush=True,
        )


def hello_app() -> FastAPI:
    """uvicorn factory: :func:`build_hello_app` as ``BENCH_LOOPWATCH``/``BENCH_OTEL`` say."""
    _start_probe_and_watcher()
    return build_hello_app(loopwatch=_flag("BENCH_LOOPWATCH"), otel=_flag("BENCH_OTEL"))


def build_hello_app(*, loopwatch: bool, otel: bool) -> FastAPI:
    """``GET /`` returns a constant JSON body."""
    app = FastAPI()

    @app.get("/")
    async def hello() -> dict[str, str]:
        return {"hello": "world"}

    if otel:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(BatchSpanProcessor(DropSpans()))
        meter_provider = MeterProvider()
        FastAPIInstrumentor.instrument_app(
            app, tracer_provider=tracer_provider, meter_provider=meter_provider
        )
        if loopwatch:
            app.add_middleware(
                LoopWatchMiddleware,
                tracer_provider=tracer_provider,
                meter_provider=meter_provider,
                on_block=report_stall,
            )
    elif loopwatch:
        app.add_middleware(LoopWatchMiddleware, on_block=report_stall)
    return app


def _without_middleware(app: Any, **_: Any) -> Any:
    """Stands in for a middleware class: Starlette calls it and gets the app back, unwrapped."""
    return app


class _NoInstrumentor:
    """Stands in for ``FastAPIInstrumentor``: instruments nothing."""

    @staticmethod
    def instrument_app(app: Any, **_: Any) -> None:
        return None


def example_app() -> FastAPI:
    """uvicorn factory: :func:`build_example_app` as ``BENCH_LOOPWATCH``/``BENCH_OTEL`` say."""
    _start_probe_and_watcher()
    return build_example_app(loopwatch=_flag("BENCH_LOOPWATCH"), otel=_flag("BENCH_OTEL"))


def build_example_app(*, loopwatch: bool, otel: bool) -> FastAPI:
    """The example service (``example.factory.create_app``), ``DEMO_MODE`` as set.

    The CPU work per request is scaled down to :data:`EXAMPLE_CPU_ITERATIONS`. Without
    ``loopwatch`` / ``otel`` the factory's ``LoopWatchMiddleware`` / ``FastAPIInstrumentor``
    are replaced, for this build only, by stand-ins that add no layer at all. Each build
    has a Prometheus registry of its own (two builds can live in one process).
    """
    from prometheus_client import CollectorRegistry

    from example import factory

    with contextlib.ExitStack() as patches:
        if not loopwatch:
            patches.enter_context(_replaced(factory, "LoopWatchMiddleware", _without_middleware))
        if not otel:
            patches.enter_context(_replaced(factory, "FastAPIInstrumentor", _NoInstrumentor))
        return factory.create_app(
            span_exporter=DropSpans(),
            on_block=report_stall,
            prometheus_registry=CollectorRegistry(),
            cpu_iterations=EXAMPLE_CPU_ITERATIONS,
        )


@contextlib.contextmanager
def _replaced(owner: object, name: str, stand_in: object) -> Iterator[None]:
    """``owner.name`` is ``stand_in`` inside the block."""
    original = getattr(owner, name)
    setattr(owner, name, stand_in)
    try:
        yield
    finally:
        setattr(owner, name, original)
