"""Fixtures of the middleware tests: the uvicorn loop to use and in-memory OpenTelemetry."""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi import FastAPI
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Sampler
from opentelemetry.trace import SpanKind

from loopwatch.instrumentation import LoopWatchInstrumentor

from ..conftest import points_by_metric
from .apps.inprocess import (
    THRESHOLD_S,
    Instrument,
    Probe,
    Providers,
    build_fastapi,
    culprit_name,
)
from .server import wait_until

HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None
NEEDS_UVLOOP = pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed")
LOOPS = ["asyncio", pytest.param("uvloop", marks=NEEDS_UVLOOP)]
"""``--loop`` values for tests that start uvicorn in a subprocess."""

SPAN_WAIT_S = 5.0
"""How long a test waits for the watchdog thread to emit a ``loop.blocked`` span."""


@pytest.fixture(autouse=True)
def _no_ambient_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """``LOOPWATCH_*``/``OTEL_*`` variables of the calling shell must not change the tests."""
    for name in list(os.environ):
        if name.startswith(("LOOPWATCH_", "OTEL_")):
            monkeypatch.delenv(name)


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_name(request: pytest.FixtureRequest) -> str:
    """The ``--loop`` of the uvicorn server under test."""
    name: str = request.param
    if name == "uvloop" and not HAVE_UVLOOP:
        pytest.skip("uvloop is not installed on this platform")
    return name


@dataclass
class Otel:
    """SDK providers reporting to memory, and helpers to read what they got."""

    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader
    providers: Providers

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def blocked_spans(self, count: int = 1, function: str | None = None) -> list[ReadableSpan]:
        """The ``loop.blocked`` spans naming ``function`` (default :func:`blocking_work`),
        once ``count`` exist.

        Other stalls (a slow machine importing or compiling modules on the loop at
        start-up) are left out: the tests assert on the stalls they cause.
        """
        function = function or culprit_name()
        wait_until(
            lambda: len(self._ours(function)) >= count,
            SPAN_WAIT_S,
            f"{count} loop.blocked span(s) naming {function}",
        )
        return self._ours(function)

    def server_spans(self, route: str) -> list[ReadableSpan]:
        """The finished SERVER spans of ``route``."""
        return [
            span
            for span in self.spans()
            if span.kind is SpanKind.SERVER
            and span.attributes is not None
            and span.attributes.get("http.route") == route
        ]

    def metric_points(self, name: str, **attributes: str) -> list[Any]:
        """The data points of metric ``name`` whose attributes include ``attributes``."""
        points = points_by_metric(self.reader.get_metrics_data()).get(name, [])
        return [
            point
            for point in points
            if all((point.attributes or {}).get(key) == v for key, v in attributes.items())
        ]

    def _ours(self, function: str) -> list[ReadableSpan]:
        return [
            span
            for span in self._named("loop.blocked")
            if (span.attributes or {}).get("code.function.name") == function
        ]

    def _named(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.spans() if span.name == name]


@pytest.fixture
def otel() -> Iterator[Otel]:
    yield from otel_sampled_by(None)


def otel_sampled_by(sampler: Sampler | None) -> Iterator[Otel]:
    """In-memory providers (spans, metrics); ``sampler``: the SDK's default if ``None``."""
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider(sampler=sampler)
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    yield Otel(exporter, reader, Providers(tracer_provider, meter_provider))
    meter_provider.shutdown()
    tracer_provider.shutdown()


@pytest.fixture
def probe() -> Probe:
    return Probe()


def watchdog_threads() -> int:
    """How many loopwatch watchdog threads are alive in this process."""
    return sum(thread.name == "loopwatch-watchdog" for thread in threading.enumerate())


@pytest.fixture
def fastapi_app(otel: Otel, probe: Probe) -> Iterator[Callable[..., FastAPI]]:
    """Builds :func:`build_fastapi` apps reporting to ``otel``; uninstruments them after."""
    built: list[FastAPI] = []

    def make(*, loopwatch: bool = True, instrument: Instrument = "none") -> FastAPI:
        app = build_fastapi(otel.providers, probe, loopwatch=loopwatch, instrument=instrument)
        built.append(app)
        return app

    yield make
    for app in built:
        if getattr(app, "_is_instrumented_by_opentelemetry", False):
            FastAPIInstrumentor.uninstrument_app(app)


@pytest.fixture
def instrumentor(otel: Otel) -> Iterator[LoopWatchInstrumentor]:
    """The entry point's instrumentor, active for one test and always undone."""
    instance = LoopWatchInstrumentor()
    instance.instrument(
        threshold=THRESHOLD_S,
        tracer_provider=otel.providers.tracer_provider,
        meter_provider=otel.providers.meter_provider,
    )
    try:
        yield instance
    finally:
        instance.uninstrument()
