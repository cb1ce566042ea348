"""Zero-code loopwatch: the ``opentelemetry_instrumentor`` entry point, in this process and
under ``opentelemetry-instrument uvicorn`` with an app that has no loopwatch code."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from .conftest import LOOPS, Otel
from .server import (
    HTTP_TIMEOUT_S,
    child_environ,
    free_port,
    run_process,
    sample_total,
    scrape,
    serve_in_thread,
    venv_script,
    wait_http_ok,
    wait_until,
)
from .test_spans import BLOCK_DURATION, STALL_S, assert_child_of, assert_names_culprit, server_span

BLOCK_COUNT = "asyncio_eventloop_block_duration_seconds_count"


@pytest.mark.usefixtures("instrumentor")
@pytest.mark.parametrize("watched_by_app", [False, True], ids=["entry-point", "both"])
def test_instrumentor_inside_fastapi_instrumentation(
    loop_name: str, watched_by_app: bool, otel: Otel, fastapi_app: Callable[..., FastAPI]
) -> None:
    """The instrumentor watches a FastAPI app built after it, inside FastAPIInstrumentor's
    server span; an app that adds the middleware itself is not watched twice."""
    app = fastapi_app(loopwatch=watched_by_app, instrument="after")
    with serve_in_thread(app, loop=loop_name) as server:
        response = httpx.get(f"{server.url}/block/6?seconds={STALL_S}", timeout=HTTP_TIMEOUT_S)
        assert response.status_code == 200
        [blocked] = otel.blocked_spans()
        parent = server_span(otel, "/block/{item_id}")
    assert_names_culprit(blocked, "/block/{item_id}")
    assert_child_of(blocked, parent)
    # Two middlewares would register the request twice: it would count as its own victim.
    assert dict(blocked.attributes or {})["loopwatch.delayed_requests"] == 0
    [point] = otel.metric_points(BLOCK_DURATION, **{"http.route": "/block/{item_id}"})
    assert point.count == 1


HAVE_DISTRO = importlib.util.find_spec("opentelemetry.distro") is not None


def instrumented_uvicorn(port: int, loop: str) -> list[str]:
    """``opentelemetry-instrument uvicorn`` serving the app that has no loopwatch code."""
    return [
        venv_script("opentelemetry-instrument"),
        venv_script("uvicorn"),
        "tests.middleware.apps.plain_fastapi:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--loop",
        loop,
    ]


def instrumented_hypercorn_trio(port: int) -> list[str]:
    """``opentelemetry-instrument hypercorn --worker-class trio`` serving the same app."""
    return [
        venv_script("opentelemetry-instrument"),
        venv_script("hypercorn"),
        "--worker-class",
        "trio",
        "--bind",
        f"127.0.0.1:{port}",
        "tests.middleware.apps.plain_fastapi:app",
    ]


def zero_code_environ(metrics_port: int) -> dict[str, str]:
    return child_environ(
        OTEL_TRACES_EXPORTER="console",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        OTEL_BSP_SCHEDULE_DELAY="100",
        LOOPWATCH_METRICS_PORT=str(metrics_port),
        LOOPWATCH_THRESHOLD_MS="100",
    )


@pytest.mark.parametrize("loop", LOOPS)
def test_opentelemetry_instrument_uvicorn(loop: str, tmp_path: Path) -> None:
    """``opentelemetry-instrument uvicorn`` on an app without loopwatch code: the stall is
    logged naming the function and route, and counted on the metrics port."""
    port, metrics_port = free_port(), free_port()
    env = zero_code_environ(metrics_port)
    argv = instrumented_uvicorn(port, loop)
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    with run_process(argv, env=env, log_path=tmp_path / "log") as server:
        wait_http_ok(f"http://127.0.0.1:{port}/health", server)
        block = httpx.get(f"http://127.0.0.1:{port}/block/1?seconds=0.4", timeout=HTTP_TIMEOUT_S)
        assert block.status_code == 200
        wait_until(
            lambda: sample_total(scrape(metrics_url), BLOCK_COUNT) >= 1,
            5.0,
            "the stall on the metrics port",
            detail=server.output,
        )
        samples = scrape(metrics_url)
        output = server.output()
    assert sample_total(samples, BLOCK_COUNT, http_route="/block/{item_id}") == 1, output
    assert "event loop blocked for" in output
    assert "in tests.middleware.apps.plain_fastapi.blocking_call (" in output
    assert "during GET /block/{item_id}" in output
    assert "Skipping FastAPI instrumentation" not in output


def console_spans(output: str) -> list[dict[str, Any]]:
    """The spans ``ConsoleSpanExporter`` printed (JSON objects) in ``output``."""
    decoder = json.JSONDecoder()
    spans: list[dict[str, Any]] = []
    index = output.find("{")
    while index != -1:
        try:
            value, end = decoder.raw_decode(output, index)
        except json.JSONDecodeError:
            index = output.find("{", index + 1)
            continue
        if isinstance(value, dict) and "context" in value and "name" in value:
            spans.append(value)
        index = output.find("{", end)
    return spans


HEALTHY = 20


@pytest.mark.skipif(not HAVE_DISTRO, reason="needs opentelemetry-distro (SDK set up by env)")
@pytest.mark.parametrize("server_name", ["uvicorn", "hypercorn-trio"])
def test_opentelemetry_instrument_with_distro_parents_the_span(
    server_name: str, tmp_path: Path
) -> None:
    """With the SDK configured by ``opentelemetry-distro``, under uvicorn (asyncio) or
    hypercorn's trio worker: every request is answered, the ``loop.blocked`` span printed
    by the console exporter is a child of FastAPI's server span, and the metrics port still
    counts the stall although ``OTEL_METRICS_EXPORTER=none`` set up a reader-less SDK."""
    port, metrics_port = free_port(), free_port()
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    if server_name == "uvicorn":
        argv = instrumented_uvicorn(port, "asyncio")
    else:
        argv = instrumented_hypercorn_trio(port)
    with run_process(
        argv, env=zero_code_environ(metrics_port), log_path=tmp_path / "log"
    ) as server:
        url = f"http://127.0.0.1:{port}"
        wait_http_ok(f"{url}/health", server)
        healthy = [
            httpx.get(f"{url}/health", timeout=HTTP_TIMEOUT_S).status_code for _ in range(HEALTHY)
        ]
        block = httpx.get(f"{url}/block/2?seconds=0.4", timeout=HTTP_TIMEOUT_S)
        assert healthy == [200] * HEALTHY
        assert block.status_code == 200
        wait_until(
            lambda: (
                sample_total(scrape(metrics_url), BLOCK_COUNT, http_route="/block/{item_id}") >= 1
            ),
            5.0,
            "the stall on the metrics port",
            detail=server.output,
        )
        wait_until(
            lambda: any(span["name"] == "loop.blocked" for span in console_spans(server.output())),
            5.0,
            "the loop.blocked span on the console",
            detail=server.output,
        )
        spans = console_spans(server.output())
    [blocked] = [span for span in spans if span["name"] == "loop.blocked"]
    [parent] = [
        span
        for span in spans
        if span["kind"] == "SpanKind.SERVER"
        and span["attributes"].get("http.route") == "/block/{item_id}"
    ]
    assert blocked["parent_id"] == parent["context"]["span_id"]
    assert blocked["context"]["trace_id"] == parent["context"]["trace_id"]
    assert blocked["attributes"]["code.function.name"].endswith("plain_fastapi.blocking_call")
    assert blocked["attributes"]["http.request.method"] == "GET"
