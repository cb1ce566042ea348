"""ASGI apps served by uvicorn in the overhead and memory benchmarks.

Both factories read their configuration from the environment, so uvicorn can build them
with ``--factory``:

- ``BENCH_LOOPWATCH`` = ``1``/``0``: add :class:`loopwatch.LoopWatchMiddleware` with the
  default configuration, or nothing at all (not even a pass-through layer).
- ``BENCH_OTEL`` = ``1``/``0``: instrument with ``FastAPIInstrumentor`` (spans go through a
  ``BatchSpanProcessor`` to an exporter that drops them), or not.

Every stall loopwatch reports is written to stderr as a ``BENCH_STALL`` line, so the
harness can count false positives under load.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
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


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").strip() == "1"


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
    """``GET /`` returns a constant JSON body."""
    app = FastAPI()

    @app.get("/")
    async def hello() -> dict[str, str]:
        return {"hello": "world"}

    if _flag("BENCH_OTEL"):
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(BatchSpanProcessor(DropSpans()))
        meter_provider = MeterProvider()
        FastAPIInstrumentor.instrument_app(
            app, tracer_provider=tracer_provider, meter_provider=meter_provider
        )
        if _flag("BENCH_LOOPWATCH"):
            app.add_middleware(
                LoopWatchMiddleware,
                tracer_provider=tracer_provider,
                meter_provider=meter_provider,
                on_block=report_stall,
            )
    elif _flag("BENCH_LOOPWATCH"):
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
    """The example service (``example.factory.create_app``), ``DEMO_MODE`` as set.

    The CPU work per request is scaled down to :data:`EXAMPLE_CPU_ITERATIONS`. With
    ``BENCH_LOOPWATCH=0`` / ``BENCH_OTEL=0`` the factory's ``LoopWatchMiddleware`` /
    ``FastAPIInstrumentor`` are replaced by stand-ins that add no layer at all.
    """
    from example import factory, work

    work.cpu_heavy_blocking_work.__defaults__ = (EXAMPLE_CPU_ITERATIONS,)
    if not _flag("BENCH_LOOPWATCH"):
        factory.LoopWatchMiddleware = _without_middleware  # type: ignore[misc,assignment]
    if not _flag("BENCH_OTEL"):
        factory.FastAPIInstrumentor = _NoInstrumentor  # type: ignore[misc,assignment]
    on_block: Callable[[BlockEvent], None] | None = report_stall
    return factory.create_app(span_exporter=DropSpans(), on_block=on_block)
