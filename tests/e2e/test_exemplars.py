"""A stall's ``block.duration`` exemplar, received by a real OpenTelemetry Collector.

The app (uvicorn on 127.0.0.1, FastAPI instrumented) exports its metrics over OTLP/HTTP
to Jaeger v2 (an OpenTelemetry Collector build), whose debug exporter prints every data
point it receives, exemplars included, to Jaeger's log.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ..middleware.apps.inprocess import Probe, Providers, build_fastapi
from ..middleware.conftest import Otel
from ..middleware.server import HTTP_TIMEOUT_S, serve_in_thread
from .support import JaegerServer, wait_until

pytestmark = pytest.mark.e2e

STALL_S = 0.4
METRIC = "Name: asyncio.eventloop.block.duration"
EXEMPLAR_TRACE = re.compile(
    r"Exemplar #\d+\s+-> Trace ID: ([0-9a-f]{32})\s+-> Span ID: ([0-9a-f]{16})"
)


@pytest.fixture
def otel() -> Iterator[Otel]:
    """Spans in memory (the middleware tests' helper reads them back)."""
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield Otel(exporter, InMemoryMetricReader(), Providers(tracer_provider))
    tracer_provider.shutdown()


def test_block_duration_exemplar_reaches_the_collector_with_the_request_trace_id(
    jaeger: JaegerServer, otel: Otel
) -> None:
    meter_provider = MeterProvider(
        metric_readers=[
            PeriodicExportingMetricReader(
                OTLPMetricExporter(endpoint=jaeger.otlp_metrics_url),
                export_interval_millis=3_600_000,  # exported by force_flush below
            )
        ]
    )
    try:
        app = build_fastapi(
            Providers(otel.providers.tracer_provider, meter_provider), Probe(), instrument="after"
        )
        with serve_in_thread(app, loop="asyncio") as server:
            url = f"{server.url}/block/7?seconds={STALL_S}"
            assert httpx.get(url, timeout=HTTP_TIMEOUT_S).status_code == 200
            [blocked] = otel.blocked_spans()
        assert meter_provider.force_flush()
    finally:
        meter_provider.shutdown()
    assert blocked.context is not None
    trace_id = f"{blocked.context.trace_id:032x}"

    def ours() -> list[tuple[str, str]]:
        """(trace id, span id) of the block-duration exemplars Jaeger logged for the trace."""
        log = jaeger.process.log_path.read_text(errors="replace")
        found = []
        for section in log.split("Metric #")[1:]:
            if METRIC in section:
                found += [m for m in EXEMPLAR_TRACE.findall(section) if m[0] == trace_id]
        return found

    wait_until(lambda: bool(ours()), what="the exemplar in Jaeger's log", timeout=10.0)
    [(_, span_id)] = ours()
    assert int(span_id, 16) != 0
