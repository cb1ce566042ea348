"""A stall in a traced request, seen from a log pipeline and a metrics backend over OTLP.

The app (uvicorn on 127.0.0.1, FastAPI instrumented) stalls its loop for 0.4 s against
a 0.1 s threshold; loopwatch's WARNING goes through OpenTelemetry's ``LoggingHandler`` and
the block-duration histogram through the SDK, both exported over OTLP/HTTP to a receiver
on 127.0.0.1 that decodes the protobuf as a collector would. Both carry the request's
trace id: the log record as its trace context, the histogram point as an exemplar.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import InMemoryLogExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

from loopwatch import BlockEvent
from loopwatch.reporting.describe import Description
from loopwatch.reporting.logs import log_stall

from .apps.inprocess import Probe, Providers, build_fastapi, culprit_name
from .conftest import Otel
from .server import HTTP_TIMEOUT_S, serve_in_thread

STALL_S = 0.4
BLOCK_DURATION = "asyncio.eventloop.block.duration"


@dataclass
class OtlpReceiver:
    """What an OTLP/HTTP collector on 127.0.0.1 received, decoded."""

    url: str
    metrics: list[ExportMetricsServiceRequest] = field(default_factory=list)
    logs: list[ExportLogsServiceRequest] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    """An OTLP/HTTP (protobuf) receiver for ``/v1/metrics`` and ``/v1/logs``."""
    received = OtlpReceiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.path == "/v1/metrics":
                received.metrics.append(ExportMetricsServiceRequest.FromString(body))
            elif self.path == "/v1/logs":
                received.logs.append(ExportLogsServiceRequest.FromString(body))
            self.send_response(200 if self.path in ("/v1/metrics", "/v1/logs") else 404)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    received.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="otlp-receiver", daemon=True)
    thread.start()
    yield received
    server.shutdown()
    server.server_close()


def _value(value: AnyValue) -> object:
    return getattr(value, value.WhichOneof("value") or "string_value")


# The SDK's LoggingHandler is deprecated for opentelemetry-instrumentation-logging's (SDK
# 1.4x); it is the one both the floor (1.30) and the newest SDK have.
@pytest.mark.filterwarnings("ignore:.*LoggingHandler.*:DeprecationWarning")
def test_stall_log_and_exemplar_carry_the_request_trace_id(
    loop_name: str, otel: Otel, probe: Probe, receiver: OtlpReceiver
) -> None:
    meter_provider = MeterProvider(
        metric_readers=[
            PeriodicExportingMetricReader(
                OTLPMetricExporter(endpoint=f"{receiver.url}/v1/metrics"),
                export_interval_millis=3_600_000,  # exported by force_flush below
            )
        ]
    )
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(
        SimpleLogRecordProcessor(OTLPLogExporter(endpoint=f"{receiver.url}/v1/logs"))
    )
    handler = LoggingHandler(logger_provider=logger_provider)
    logging.getLogger("loopwatch").addHandler(handler)
    providers = Providers(otel.providers.tracer_provider, meter_provider)
    try:
        app = build_fastapi(providers, probe, instrument="after")
        with serve_in_thread(app, loop=loop_name) as server:
            url = f"{server.url}/block/7?seconds={STALL_S}"
            assert httpx.get(url, timeout=HTTP_TIMEOUT_S).status_code == 200
            [blocked] = otel.blocked_spans()
        assert meter_provider.force_flush()
    finally:
        logging.getLogger("loopwatch").removeHandler(handler)
        logger_provider.shutdown()
        meter_provider.shutdown()
    assert blocked.context is not None
    trace_id = blocked.context.trace_id  # the request's: loop.blocked is its server span's child

    records = [
        record
        for request in receiver.logs
        for resource in request.resource_logs
        for scope in resource.scope_logs
        for record in scope.log_records
        if record.body.string_value.startswith("event loop blocked")
    ]
    assert len(records) == 1, [record.body.string_value for record in records]
    [record] = records
    assert int.from_bytes(record.trace_id, "big") == trace_id
    assert int.from_bytes(record.span_id, "big") != 0
    attributes = {a.key: _value(a.value) for a in record.attributes}
    assert attributes["loopwatch.culprit.function.name"] == culprit_name()
    assert str(attributes["loopwatch.culprit.file.path"]).endswith("inprocess.py")
    assert int(attributes["loopwatch.culprit.line.number"]) > 0  # type: ignore[call-overload]
    assert attributes["loopwatch.cause"] == "blocking"
    assert attributes["http.route"] == "/block/{item_id}"
    assert attributes["http.request.method"] == "GET"
    assert attributes["loopwatch.ongoing"] is True  # logged live, at the threshold
    assert 0.1 <= float(attributes["loopwatch.duration"]) < STALL_S + 2.0  # type: ignore[arg-type]

    points = [
        point
        for request in receiver.metrics
        for resource in request.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == BLOCK_DURATION
        for point in metric.histogram.data_points
    ]
    ours = [
        exemplar
        for point in points
        for exemplar in point.exemplars
        if int.from_bytes(exemplar.trace_id, "big") == trace_id
    ]
    assert len(ours) == 1, f"exemplars: {[point.exemplars for point in points]}"
    assert STALL_S - 0.1 <= ours[0].as_double <= STALL_S + 2.0


@pytest.mark.filterwarnings("ignore:.*LoggingHandler.*:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:Use InMemoryLogRecordExporter:DeprecationWarning")
def test_a_line_logged_at_the_end_carries_the_span_it_is_given(otel: Otel) -> None:
    """A stall first reported when it ended is logged with its ``loop.blocked`` span
    current; without a span, the record has no trace context (none leaks in)."""
    exporter = InMemoryLogExporter()
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    handler = LoggingHandler(logger_provider=logger_provider)
    logging.getLogger("loopwatch").addHandler(handler)
    event = BlockEvent(
        start=0.0, end=0.5, duration=0.5, cause="cpu", culprit=None, offender=None, stack="",
        samples=0, task_name=None, thread_id=1, thread_name="MainThread",
    )  # fmt: skip
    description = Description(event, stack_truncated=False, resumed_in=None)
    tracer = otel.providers.tracer_provider.get_tracer("test")  # type: ignore[union-attr]
    try:
        with tracer.start_as_current_span("loop.blocked") as span:
            pass
        log_stall(description, ongoing=False, dropped_reports=2, span=span)
        log_stall(description, ongoing=False, dropped_reports=0)
    finally:
        logging.getLogger("loopwatch").removeHandler(handler)
        logger_provider.shutdown()
    with_span, without = (data.log_record for data in exporter.get_finished_logs())
    assert with_span.trace_id == span.get_span_context().trace_id
    assert with_span.span_id == span.get_span_context().span_id
    assert dict(with_span.attributes or {})["loopwatch.reports.dropped"] == 2
    assert dict(with_span.attributes or {})["loopwatch.ongoing"] is False
    assert not without.trace_id
