"""``create_app``: the article's FastAPI service, in the chosen mode, watched by loopwatch."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import BackgroundTasks, FastAPI, Query
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.trace.export import SpanExporter
from prometheus_client import CollectorRegistry, make_asgi_app

from example.modes import Mode, resolve_mode
from example.telemetry import (
    DEFAULT_OTLP_TRACES_ENDPOINT,
    Telemetry,
    otlp_exporter,
    otlp_traces_endpoint,
    setup_telemetry,
)
from example.work import Workload, resolve_cpu_iterations
from loopwatch import BlockEvent, LoopWatchMiddleware

MAX_DEBUG_BLOCK_SECONDS = 10.0


def create_app(
    mode: str | None = None,
    *,
    span_exporter: SpanExporter | None = None,
    otlp_endpoint: str | None = None,
    metric_readers: Iterable[MetricReader] = (),
    prometheus_registry: CollectorRegistry | None = None,
    on_block: Callable[[BlockEvent], None] | None = None,
    cpu_iterations: int | None = None,
) -> FastAPI:
    """Build the demo service.

    Args:
        mode: ``bottlenecks``, ``optimized`` or ``process``; default ``$DEMO_MODE``, else
            ``bottlenecks``.
        span_exporter: Where spans go. Without it, spans go over OTLP/HTTP to
            ``otlp_endpoint``, else ``$OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (or
            ``$OTEL_EXPORTER_OTLP_ENDPOINT`` + ``/v1/traces``), else the article's
            ``http://jaeger:4318/v1/traces``.
        otlp_endpoint: OTLP/HTTP traces URL; with ``span_exporter``, spans go to both.
        metric_readers: Extra readers next to the Prometheus one behind ``GET /metrics``.
        prometheus_registry: The registry ``GET /metrics`` serves; default the global one,
            which the off-loop server of ``LOOPWATCH_METRICS_PORT`` serves too.
        on_block: loopwatch's hook, called on its watchdog thread for every stall.
        cpu_iterations: The CPU work per ``GET /items``; default ``$DEMO_CPU_ITERATIONS``,
            else the article's 7,000,000.

    The providers are shut down (spans flushed) when the app's lifespan ends, so an app
    is served once. ``app.state.telemetry`` holds them.
    """
    demo_mode = resolve_mode(mode)
    exporters: list[SpanExporter] = [] if span_exporter is None else [span_exporter]
    if span_exporter is None and otlp_endpoint is None:
        otlp_endpoint = otlp_traces_endpoint() or DEFAULT_OTLP_TRACES_ENDPOINT
    if otlp_endpoint is not None:
        exporters.append(otlp_exporter(otlp_endpoint))
    telemetry = setup_telemetry(
        demo_mode.service_name,
        span_exporters=exporters,
        metric_readers=metric_readers,
        prometheus_registry=prometheus_registry,
    )
    workload = Workload(
        demo_mode,
        telemetry.tracer,
        telemetry.background_job_duration_ms,
        resolve_cpu_iterations() if cpu_iterations is None else cpu_iterations,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            await workload.start()
            yield
        finally:
            # Both block (pool join, last export): off the loop, or loopwatch reports them.
            await asyncio.to_thread(workload.close)
            await asyncio.to_thread(telemetry.shutdown)

    app = FastAPI(title=demo_mode.title, lifespan=lifespan)
    app.state.telemetry = telemetry
    app.state.mode = demo_mode.name
    _add_routes(app, demo_mode, telemetry, workload)
    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=telemetry.tracer_provider,
        meter_provider=telemetry.meter_provider,
        excluded_urls="/health$",
    )
    app.add_middleware(
        LoopWatchMiddleware,
        tracer_provider=telemetry.tracer_provider,
        meter_provider=telemetry.meter_provider,
        on_block=on_block,
    )
    app.mount("/metrics", make_asgi_app(telemetry.prometheus_registry))
    return app


def _add_routes(app: FastAPI, mode: Mode, telemetry: Telemetry, workload: Workload) -> None:
    tracer = telemetry.tracer

    @app.get("/items/{item_id}")
    async def get_item(item_id: int) -> dict[str, int | str]:
        start = time.perf_counter()
        with tracer.start_as_current_span("handler.get_item") as span:
            span.set_attribute("item.id", item_id)
            await workload.db_query()
            await workload.cpu_work()
            await workload.post_processing()
        duration_ms = (time.perf_counter() - start) * 1000.0
        telemetry.request_duration_ms.record(duration_ms, attributes={"route": "/items/{item_id}"})
        return {"item_id": item_id, "status": "ok", "mode": mode.name}

    @app.post("/process/{task_id}")
    async def process(task_id: str, background_tasks: BackgroundTasks) -> dict[str, str]:
        background_tasks.add_task(workload.background_job, task_id)
        return {"status": "queued", "task_id": task_id, "mode": mode.name}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    if mode.name == "bottlenecks":

        @app.get("/debug/block")
        async def debug_block(seconds: Annotated[float, Query(ge=0)] = 1.0) -> dict[str, float]:
            """Block the event loop with ``time.sleep`` (at most 10 s), for tests."""
            blocked = min(seconds, MAX_DEBUG_BLOCK_SECONDS)
            time.sleep(blocked)
            return {"blocked_seconds": blocked}
