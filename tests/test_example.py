"""The example app over real HTTP (uvicorn on 127.0.0.1), in each mode, with loopwatch."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry

from loopwatch import BlockEvent
from loopwatch.demo.server import BackgroundServer
from loopwatch.demo.source import make_example_importable

make_example_importable()

from example.factory import create_app  # noqa: E402
from example.modes import resolve_mode  # noqa: E402
from example.telemetry import otlp_traces_endpoint, traces_url  # noqa: E402
from example.work import CPU_ITERATIONS, resolve_cpu_iterations  # noqa: E402

MODES = ("bottlenecks", "optimized", "process")
UNREACHABLE = "http://127.0.0.1:9/v1/traces"


@dataclass
class Served:
    """An app under test: its HTTP client and what its telemetry recorded."""

    app: FastAPI
    client: httpx.Client
    exporter: InMemorySpanExporter
    events: list[BlockEvent] = field(default_factory=list)

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        spans = self.exporter.get_finished_spans()
        return [span for span in spans if name is None or span.name == name]

    def stalls(self) -> list[BlockEvent]:
        return [event for event in self.events if not event.ongoing]


@contextmanager
def serve(mode: str, **options: Any) -> Iterator[Served]:
    """Serve ``create_app(mode)`` with in-memory spans; spans are complete after the block."""
    exporter = InMemorySpanExporter()
    events: list[BlockEvent] = []
    app = create_app(
        mode,
        span_exporter=exporter,
        prometheus_registry=CollectorRegistry(),
        on_block=events.append,
        **options,
    )
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        yield Served(app, client, exporter, events)


def article_requests(client: httpx.Client) -> None:
    for _ in range(3):
        client.get("/items/1").raise_for_status()
    for _ in range(3):
        client.post("/process/abc").raise_for_status()


def ancestors(span: ReadableSpan, spans: list[ReadableSpan]) -> list[ReadableSpan]:
    by_id = {other.context.span_id: other for other in spans if other.context is not None}
    chain = []
    parent = span.parent
    while parent is not None and parent.span_id in by_id:
        chain.append(by_id[parent.span_id])
        parent = chain[-1].parent
    return chain


@pytest.mark.parametrize("mode", MODES)
def test_endpoints_answer_as_in_the_article(mode: str) -> None:
    with serve(mode) as served:
        client = served.client
        assert client.get("/items/1").json() == {"item_id": 1, "status": "ok", "mode": mode}
        assert client.post("/process/abc").json() == {
            "status": "queued",
            "task_id": "abc",
            "mode": mode,
        }
        assert client.get("/health").json() == {"status": "ok"}
        metrics = client.get("/metrics/")
        assert metrics.status_code == 200
        assert "http_server_request_duration_milliseconds_bucket" in metrics.text
        assert "asyncio_eventloop_delay_seconds_bucket" in metrics.text
        debug = client.get("/debug/block", params={"seconds": 0})
        assert debug.status_code == (200 if mode == "bottlenecks" else 404)
    services = {span.resource.attributes["service.name"] for span in served.spans()}
    assert services == {f"fastapi-demo-{mode}"}


@pytest.mark.parametrize(
    ("mode", "cpu_spans"),
    [
        ("bottlenecks", {"cpu.work.blocking"}),
        ("optimized", {"cpu.work.offloaded", "cpu.work"}),
        ("process", {"cpu.work.process"}),
    ],
)
def test_spans_follow_the_article(mode: str, cpu_spans: set[str]) -> None:
    with serve(mode) as served:
        article_requests(served.client)
    (handler, *_) = served.spans("handler.get_item")
    assert handler.attributes is not None
    assert handler.attributes["item.id"] == 1
    trace_names = {
        span.name for span in served.spans() if span.context.trace_id == handler.context.trace_id
    }
    assert {"db.query", "post.processing", *cpu_spans} <= trace_names
    jobs = served.spans("background.job")
    assert len(jobs) == 3
    assert all(job.attributes and job.attributes["task.id"] == "abc" for job in jobs)
    expected_ns = resolve_mode(mode).background_job_seconds * 1e9
    assert all((job.end_time or 0) - (job.start_time or 0) >= 0.95 * expected_ns for job in jobs)


def test_slow_mode_reports_the_cpu_stall_inside_the_request_trace() -> None:
    with serve("bottlenecks") as served:
        article_requests(served.client)
    all_spans = served.spans()
    blocked = served.spans("loop.blocked")
    assert blocked, "no loop.blocked span in bottlenecks mode"
    culprits = [
        span
        for span in blocked
        if span.attributes
        and str(span.attributes.get("code.function.name", "")).endswith("cpu_heavy_blocking_work")
    ]
    assert len(culprits) == 3
    for span in culprits:
        assert span.attributes is not None
        assert span.attributes["http.route"] == "/items/{item_id}"
        assert str(span.attributes["code.file.path"]).endswith("example/work.py")
        chain = ancestors(span, all_spans)
        assert [s.name for s in chain[:2]] == ["cpu.work.blocking", "handler.get_item"]
        assert [s.name for s in chain if s.kind is SpanKind.SERVER] == ["GET /items/{item_id}"]
    stalls = served.stalls()
    assert any(
        event.culprit and event.culprit.function == "example.work.cpu_heavy_blocking_work"
        for event in stalls
    )
    # The background job sleeps in the thread pool: never a stall of the loop.
    assert not [event for event in stalls if event.http_route == "/process/{task_id}"]
    assert not [
        event for event in stalls if event.culprit and "background_job" in event.culprit.function
    ]


@pytest.mark.parametrize("mode", ["optimized", "process"])
def test_fixed_modes_keep_the_cpu_work_off_the_loop(mode: str) -> None:
    """No stall runs Python code on the loop (on a quiet machine: no stall at all).

    On a starved machine the loop can still wait, e.g. for the thread that the first
    ``asyncio.to_thread`` starts; such a stall has cause ``blocking``, ``gil`` or
    ``unscheduled``, never ``cpu``, and never names the CPU work.
    """
    with serve(mode) as served:
        article_requests(served.client)
    on_the_loop = [
        event
        for event in served.stalls()
        if event.cause == "cpu"
        or (event.culprit and event.culprit.function.endswith("cpu_heavy_blocking_work"))
    ]
    assert on_the_loop == []
    blocked = [
        span
        for span in served.spans("loop.blocked")
        if span.attributes and span.attributes.get("loopwatch.cause") == "cpu"
    ]
    assert blocked == []


def test_debug_route_blocks_the_loop() -> None:
    with serve("bottlenecks") as served:
        response = served.client.get("/debug/block", params={"seconds": 0.3})
        assert response.json() == {"blocked_seconds": 0.3}
        assert served.client.get("/debug/block", params={"seconds": -1}).status_code == 422
    (stall,) = [event for event in served.stalls() if event.http_route == "/debug/block"]
    assert stall.cause == "blocking"
    assert stall.duration >= 0.25


def test_unreachable_otlp_endpoint_still_serves() -> None:
    app = create_app(
        "optimized", otlp_endpoint=UNREACHABLE, prometheus_registry=CollectorRegistry()
    )
    server = BackgroundServer(app)
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for _ in range(3):
                start = time.perf_counter()
                client.get("/items/1").raise_for_status()
                assert time.perf_counter() - start < 1.0
            app.state.telemetry.tracer_provider.force_flush(timeout_millis=100)
            start = time.perf_counter()
            assert client.get("/health").json() == {"status": "ok"}
            assert time.perf_counter() - start < 0.5
    finally:
        start = time.perf_counter()
        server.stop()
    assert time.perf_counter() - start < 5.0, "shutdown waited too long on the OTLP export"


def test_invalid_mode_names_variable_value_and_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO_MODE", "fast")
    with pytest.raises(ValueError, match=r"DEMO_MODE='fast'.*bottlenecks, optimized, process"):
        create_app(span_exporter=InMemorySpanExporter(), prometheus_registry=CollectorRegistry())


def test_cpu_work_size_comes_from_the_environment() -> None:
    assert resolve_cpu_iterations({}) == CPU_ITERATIONS
    assert resolve_cpu_iterations({"DEMO_CPU_ITERATIONS": " 12000000 "}) == 12_000_000
    for bad in ("7M", "0", "-5"):
        with pytest.raises(ValueError, match=rf"DEMO_CPU_ITERATIONS='{bad}' is not a positive"):
            resolve_cpu_iterations({"DEMO_CPU_ITERATIONS": bad})


def test_mode_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO_MODE", "process")
    app = create_app(span_exporter=InMemorySpanExporter(), prometheus_registry=CollectorRegistry())
    assert app.state.mode == "process"


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"},
            "http://collector:4318/v1/traces",
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://jaeger:4318/v1/traces",
            },
            "http://jaeger:4318/v1/traces",
        ),
    ],
)
def test_otlp_endpoint_from_the_standard_variables(
    environ: Mapping[str, str], expected: str | None
) -> None:
    assert otlp_traces_endpoint(environ) == expected


def test_traces_url_accepts_base_and_full_urls() -> None:
    assert traces_url("http://localhost:4318/") == "http://localhost:4318/v1/traces"
    assert traces_url("http://localhost:4318/v1/traces") == "http://localhost:4318/v1/traces"
