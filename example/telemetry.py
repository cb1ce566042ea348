"""The article's telemetry: a Resource, OTLP traces, Prometheus metrics, two histograms.

Every app gets its own providers, passed explicitly to the instrumentation, so several
apps can live in one process (tests, ``loopwatch demo``) without touching the globals.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import Histogram
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Tracer
from prometheus_client import REGISTRY, CollectorRegistry

DEFAULT_OTLP_TRACES_ENDPOINT = "http://jaeger:4318/v1/traces"
OTLP_TIMEOUT_SECONDS = 2.0
"""Per export, retries included: an unreachable collector never slows shutdown for long."""


def otlp_traces_endpoint(environ: Mapping[str, str] | None = None) -> str | None:
    """The OTLP/HTTP traces URL from the standard variables, or ``None`` if neither is set.

    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is used as is; ``OTEL_EXPORTER_OTLP_ENDPOINT``
    is a base URL that gets ``/v1/traces`` appended.
    """
    environ = os.environ if environ is None else environ
    if traces := environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return traces
    if base := environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return traces_url(base)
    return None


def traces_url(endpoint: str) -> str:
    """``endpoint`` as an OTLP/HTTP traces URL: a base URL gets ``/v1/traces`` appended."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else f"{endpoint}/v1/traces"


@dataclass(frozen=True)
class Telemetry:
    """The providers of one app and the instruments its handlers use."""

    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    tracer: Tracer
    request_duration_ms: Histogram
    background_job_duration_ms: Histogram
    prometheus_registry: CollectorRegistry

    def shutdown(self) -> None:
        """Flush and stop both providers (spans still queued are exported once more)."""
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def setup_telemetry(
    service_name: str,
    *,
    span_exporters: Iterable[SpanExporter],
    metric_readers: Iterable[MetricReader] = (),
    prometheus_registry: CollectorRegistry | None = None,
) -> Telemetry:
    """Providers for ``service_name`` exporting to ``span_exporters`` and Prometheus.

    The Prometheus reader registers with ``prometheus_registry`` (default: the global
    ``prometheus_client.REGISTRY``, as in the article) and unregisters on shutdown.
    """
    resource = Resource.create({"service.name": service_name})
    tracer_provider = TracerProvider(resource=resource)
    for exporter in span_exporters:
        # The batch processor's queue is bounded (2048 spans): if the collector is down,
        # spans are dropped rather than piling up in memory.
        tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
    registry = REGISTRY if prometheus_registry is None else prometheus_registry
    meter_provider = MeterProvider(
        resource=resource,
        metric_readers=[PrometheusMetricReader(registry=registry), *metric_readers],
    )
    meter = meter_provider.get_meter("example")
    return Telemetry(
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        tracer=tracer_provider.get_tracer("example"),
        request_duration_ms=meter.create_histogram(
            name="http.server.request_duration",
            unit="ms",
            description="End-to-end request duration measured in handler",
        ),
        background_job_duration_ms=meter.create_histogram(
            name="background.job.duration",
            unit="ms",
            description="Background job duration",
        ),
        prometheus_registry=registry,
    )


def otlp_exporter(endpoint: str) -> OTLPSpanExporter:
    """An OTLP/HTTP span exporter to ``endpoint`` with a short timeout."""
    return OTLPSpanExporter(endpoint=endpoint, timeout=OTLP_TIMEOUT_SECONDS)
