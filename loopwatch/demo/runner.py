"""Run one mode of the example app in-process and measure it: latency, stalls, loop delay."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import httpx
from opentelemetry.sdk.metrics import Histogram
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry

from example.factory import create_app
from loopwatch import BlockEvent
from loopwatch.demo.server import BackgroundServer
from loopwatch.demo.stats import DELAY_METRIC, Distribution, histogram_points, summarize

IDLE_SECONDS = 1.0
ARTICLE_REQUESTS = 3
CONCURRENT_REQUESTS = 5
JOB_WAIT_SECONDS = 5.0
STEPS = 5
"""Calls of the ``step`` callback per :func:`run_mode`."""

Step = Callable[[str], None]


@dataclass(frozen=True)
class ModeResult:
    """What one mode of the example app did under the article's requests (seconds)."""

    mode: str
    item_latencies: list[float]
    process_latencies: list[float]
    concurrent_latencies: list[float]
    background_jobs: list[float]
    stalls: list[BlockEvent]
    """Every finished stall, from the ``on_block`` hook."""
    traced_stalls: Counter[str]
    """``loop.blocked`` spans inside a request's trace, by :func:`culprit_label`."""
    idle_delay: Distribution | None
    load_delay: Distribution | None
    item_spans: Mapping[str, float]
    """Median duration per span name in the traces of ``GET /items/1``."""


def run_mode(
    mode: str, *, otlp_endpoint: str | None, step: Step, cpu_iterations: int | None = None
) -> ModeResult:
    """Serve ``mode`` on a free port, send the article's requests, read back the telemetry.
    ``cpu_iterations`` sizes the CPU work (default: the app's own)."""
    spans = InMemorySpanExporter()
    stalls: list[BlockEvent] = []

    def collect(event: BlockEvent) -> None:  # on the watchdog thread
        if not event.ongoing:
            stalls.append(event)

    # Delta temporality: every collection covers only the time since the previous one.
    metrics = InMemoryMetricReader(preferred_temporality={Histogram: AggregationTemporality.DELTA})
    app = create_app(
        mode,
        span_exporter=spans,
        otlp_endpoint=otlp_endpoint,
        metric_readers=[metrics],
        prometheus_registry=CollectorRegistry(),
        on_block=collect,
        cpu_iterations=cpu_iterations,
    )
    tracer_provider: TracerProvider = app.state.telemetry.tracer_provider
    step(f"{mode}: starting the app")
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        client.get("/health").raise_for_status()
        metrics.get_metrics_data()
        step(f"{mode}: measuring the idle loop")
        time.sleep(IDLE_SECONDS)
        idle = summarize(histogram_points(metrics.get_metrics_data(), DELAY_METRIC))
        step(f"{mode}: the article's requests")
        items = [_timed(client, "GET", "/items/1") for _ in range(ARTICLE_REQUESTS)]
        processes = [_timed(client, "POST", "/process/abc") for _ in range(ARTICLE_REQUESTS)]
        step(f"{mode}: {CONCURRENT_REQUESTS} concurrent requests")
        concurrent = asyncio.run(_concurrent(server.url, "/items/2", CONCURRENT_REQUESTS))
        step(f"{mode}: waiting for the background jobs")
        _wait_for_spans(tracer_provider, spans, "background.job", ARTICLE_REQUESTS)
        load = summarize(histogram_points(metrics.get_metrics_data(), DELAY_METRIC))
    finished = spans.get_finished_spans()  # all of them: the lifespan flushed on shutdown
    return ModeResult(
        mode=mode,
        item_latencies=items,
        process_latencies=processes,
        concurrent_latencies=concurrent,
        background_jobs=[_duration(span) for span in finished if span.name == "background.job"],
        stalls=stalls,
        traced_stalls=_traced_stalls(finished),
        idle_delay=idle,
        load_delay=load,
        item_spans=_item_spans(finished, item_id=1),
    )


def _timed(client: httpx.Client, method: str, path: str) -> float:
    start = time.perf_counter()
    client.request(method, path).raise_for_status()
    return time.perf_counter() - start


async def _concurrent(url: str, path: str, count: int) -> list[float]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def one() -> float:
            start = time.perf_counter()
            (await client.get(path)).raise_for_status()
            return time.perf_counter() - start

        return list(await asyncio.gather(*(one() for _ in range(count))))


def _wait_for_spans(
    provider: TracerProvider, exporter: InMemorySpanExporter, name: str, count: int
) -> None:
    deadline = time.monotonic() + JOB_WAIT_SECONDS
    while time.monotonic() < deadline:
        provider.force_flush()
        if sum(span.name == name for span in exporter.get_finished_spans()) >= count:
            return
        time.sleep(0.05)


def _duration(span: ReadableSpan) -> float:
    return ((span.end_time or 0) - (span.start_time or 0)) / 1e9


def culprit_label(function: str | None, cause: str) -> str:
    """The culprit's function, or ``<cause>`` when no stack sample named one."""
    return function or f"<{cause}>"


def _traced_stalls(spans: Sequence[ReadableSpan]) -> Counter[str]:
    by_id = {span.context.span_id: span for span in spans if span.context is not None}
    labels = []
    for span in spans:
        if span.name == "loop.blocked" and _in_request(span, by_id):
            attributes = span.attributes or {}
            function = attributes.get("code.function.name")
            cause = attributes.get("loopwatch.cause")
            labels.append(culprit_label(_str_or_none(function), str(cause)))
    return Counter(labels)


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)


def _in_request(span: ReadableSpan, by_id: Mapping[int, ReadableSpan]) -> bool:
    """Whether a server span is among the ancestors of ``span``."""
    parent = span.parent
    while parent is not None and (ancestor := by_id.get(parent.span_id)) is not None:
        if ancestor.kind is SpanKind.SERVER:
            return True
        parent = ancestor.parent
    return False


def _item_spans(spans: Sequence[ReadableSpan], *, item_id: int) -> dict[str, float]:
    traces = {
        span.context.trace_id
        for span in spans
        if span.name == "handler.get_item"
        and span.context is not None
        and (span.attributes or {}).get("item.id") == item_id
    }
    durations: defaultdict[str, list[float]] = defaultdict(list)
    for span in spans:
        if span.context is not None and span.context.trace_id in traces:
            durations[span.name].append(_duration(span))
    return {name: statistics.median(values) for name, values in durations.items()}
