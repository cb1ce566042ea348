"""Shared fixtures: real OpenTelemetry SDK providers with in-memory readers, and loops."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricsData
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Sampler

try:
    import uvloop
except ImportError:  # pragma: no cover - depends on the platform
    uvloop = None

T = TypeVar("T")

LOOP_KINDS = ["asyncio", "uvloop"]


@dataclass
class Telemetry:
    """SDK providers whose output the test reads back."""

    tracer_provider: TracerProvider
    spans: InMemorySpanExporter
    meter_provider: MeterProvider
    reader: InMemoryMetricReader

    def blocked_spans(self) -> list[ReadableSpan]:
        return [span for span in self.spans.get_finished_spans() if span.name == "loop.blocked"]

    def metrics(self) -> dict[str, list[Any]]:
        """Data points by metric name, from one collection."""
        return points_by_metric(self.reader.get_metrics_data())


def points_by_metric(data: MetricsData | None) -> dict[str, list[Any]]:
    """The data points of one collection, by metric name."""
    points: dict[str, list[Any]] = {}
    if data is None:
        return points
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points.setdefault(metric.name, []).extend(metric.data.data_points)
    return points


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    yield from telemetry_sampled_by(None)


def telemetry_sampled_by(sampler: Sampler | None) -> Iterator[Telemetry]:
    """In-memory providers (spans, metrics); ``sampler``: the SDK's default if ``None``."""
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider(sampler=sampler)
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    yield Telemetry(tracer_provider, spans, meter_provider, reader)
    meter_provider.shutdown()
    tracer_provider.shutdown()


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        if uvloop is None:
            pytest.skip("uvloop is not installed on this platform")
        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


EXAMPLE_STALL_SECONDS = 0.3
"""How long the example app's CPU work lasts in the tests: three times loopwatch's default
threshold on any machine (the article's 7,000,000 iterations take about 0.17 s on the
docs' machine, which a faster one would bring near the threshold)."""


@pytest.fixture(scope="session", autouse=True)
def _example_work_of_three_thresholds() -> Iterator[None]:
    """Size the example's CPU work (``$DEMO_CPU_ITERATIONS``, which apps and demos the
    tests start in other processes inherit) to :data:`EXAMPLE_STALL_SECONDS` here, never
    below the article's."""
    from loopwatch.demo.calibration import iterations_lasting
    from loopwatch.demo.source import make_example_importable

    make_example_importable()
    from example.work import CPU_ITERATIONS, ITERATIONS_VARIABLE, cpu_heavy_blocking_work

    lasting = iterations_lasting(EXAMPLE_STALL_SECONDS, cpu_heavy_blocking_work)
    iterations = max(CPU_ITERATIONS, lasting)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(ITERATIONS_VARIABLE, str(iterations))
        yield


@pytest.fixture(autouse=True)
def _no_collection_pauses() -> Iterator[None]:
    """No automatic garbage collection during a test.

    A full collection of this test process (over a million objects once the suite has
    run a while) holds the GIL for 50-90 ms, more on a loaded machine: a real stall of
    whatever loop a test watches, which loopwatch reports like any other (caught this way:
    a stray 0.12 s stall in a uvloop test that asserted none). Collections happen between
    tests instead; tests of the collector call ``gc.collect()`` themselves.
    """
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.fixture(params=LOOP_KINDS)
def loop_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    if kind == "uvloop" and uvloop is None:
        pytest.skip("uvloop is not installed on this platform")
    return kind


@pytest.fixture
def run(loop_kind: str) -> Callable[[Callable[[], Awaitable[T]]], T]:
    """Run a coroutine function to completion on a fresh loop of ``loop_kind``."""

    def runner(main: Callable[[], Awaitable[T]]) -> T:
        loop = new_loop(loop_kind)
        try:
            return loop.run_until_complete(main())
        finally:
            loop.close()

    return runner


@pytest.fixture
def loopwatch_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger="loopwatch")
    return caplog
