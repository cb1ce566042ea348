"""Litestar, Quart and Django ASGI under a real uvicorn, aiohttp under its own server: a
view that blocks the loop 0.3 s (threshold 0.1 s), three times in a row, over real HTTP.

Each stall names the view, the framework's route template, the method, and no victim
(Quart and Django run the view in a child task: the request is found in the task waiting
for it, and is not its own victim).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind

from loopwatch import LoopWatchMiddleware
from loopwatch.aiohttp import watch_app
from loopwatch.instrumentation import LoopWatchInstrumentor

from .apps.frameworks import (
    BUILDERS,
    LIFESPAN,
    STALL_S,
    Watch,
    aiohttp_view,
    build,
    build_aiohttp,
    view_name,
)
from .apps.inprocess import THRESHOLD_S
from .conftest import SPAN_WAIT_S, Otel, watchdog_threads
from .server import (
    HTTP_TIMEOUT_S,
    STOP_TIMEOUT_S,
    free_port,
    run_process,
    sample_total,
    scrape,
    serve_in_thread,
    venv_script,
    wait_http_ok,
    wait_until,
)
from .test_zero_code import BLOCK_COUNT, zero_code_environ

BLOCKS = 3
ROUTES = {
    "litestar": "/block/{item_id}",
    "quart": "/block/<int:item_id>",
    "django": "block/<int:item_id>",
    "aiohttp": "/block/{item_id}",
}
"""Each framework's own template for the path ``/block/<n>``."""


def block_three_times(url: str) -> None:
    for item in range(BLOCKS):
        response = httpx.get(f"{url}/block/{item}", timeout=HTTP_TIMEOUT_S)
        assert response.status_code == 200, response.text


def assert_named(spans: list[ReadableSpan], framework: str) -> None:
    """Every stall names its request: the route template, the method, and no victim."""
    assert len(spans) == BLOCKS
    for span in spans:
        attributes = dict(span.attributes or {})
        assert attributes["http.route"] == ROUTES[framework]
        assert attributes["http.request.method"] == "GET"
        assert attributes["loopwatch.delayed_requests"] == 0
        assert STALL_S - 0.1 <= float(attributes["loopwatch.duration"]) <= STALL_S + 2.0  # type: ignore[arg-type]
        assert not span.links  # no request linked as delayed: not even its own


@pytest.mark.parametrize("watch", ["traced", "middleware"])
@pytest.mark.parametrize("framework", list(BUILDERS))
def test_wrapped_framework_names_the_view_route_and_method(
    framework: str, watch: Watch, loop_name: str, otel: Otel
) -> None:
    app = build(framework, otel.providers, watch)
    view = BUILDERS[framework][1]
    with serve_in_thread(app, loop=loop_name, lifespan=LIFESPAN[framework]) as server:
        block_three_times(server.url)
        spans = otel.blocked_spans(BLOCKS, view_name(view))
    assert_named(spans, framework)
    if watch == "traced":  # each stall is a child of its request's server span
        servers = {s.context.span_id: s for s in otel.spans() if s.kind is SpanKind.SERVER}  # type: ignore[union-attr]
        assert all(span.parent is not None and span.parent.span_id in servers for span in spans)
        assert len({span.parent.span_id for span in spans}) == BLOCKS  # type: ignore[union-attr]


@pytest.mark.usefixtures("instrumentor")
@pytest.mark.parametrize("framework", list(BUILDERS))
def test_zero_code_framework(framework: str, otel: Otel) -> None:
    """The instrumentor watches an app built after it, without loopwatch code, and the
    watcher stops with the server (at lifespan shutdown, or when Django's loop closes)."""
    app = build(framework, otel.providers, "none")
    view = BUILDERS[framework][1]
    with serve_in_thread(app, loop="asyncio", lifespan=LIFESPAN[framework]) as server:
        block_three_times(server.url)
        spans = otel.blocked_spans(BLOCKS, view_name(view))
    assert_named(spans, framework)
    wait_until(lambda: watchdog_threads() == 0, SPAN_WAIT_S, "the watchdog thread to stop")


@pytest.mark.parametrize("framework", list(BUILDERS))
def test_opentelemetry_instrument_uvicorn(framework: str, tmp_path: Path) -> None:
    """``opentelemetry-instrument uvicorn`` on an app without loopwatch code: the stalls
    are counted on the metrics port under the framework's route template."""
    port, metrics_port = free_port(), free_port()
    argv = [
        venv_script("opentelemetry-instrument"),
        venv_script("uvicorn"),
        f"tests.middleware.apps.plain_frameworks:{framework}",
        *("--host", "127.0.0.1", "--port", str(port), "--lifespan", LIFESPAN[framework]),
    ]
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    labels = {"http_route": ROUTES[framework], "http_request_method": "GET"}
    env = zero_code_environ(metrics_port)
    with run_process(argv, env=env, log_path=tmp_path / "log") as server:
        wait_http_ok(f"http://127.0.0.1:{port}/health", server)
        block_three_times(f"http://127.0.0.1:{port}")
        wait_until(
            lambda: sample_total(scrape(metrics_url), BLOCK_COUNT, **labels) >= BLOCKS,
            5.0,
            f"{BLOCKS} stalls of {ROUTES[framework]} on the metrics port",
            detail=server.output,
        )
        assert f"in {view_name(BUILDERS[framework][1])}" in server.output()


@contextlib.contextmanager
def serve_aiohttp(app: web.Application) -> Iterator[str]:
    """Serve ``app`` with aiohttp's own server (``AppRunner`` and ``TCPSite`` on
    127.0.0.1) on a loop in a thread; clean it up (the app's cleanup included) on exit."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    port = free_port()
    started = threading.Event()

    def run() -> None:
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        started.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())

    thread = threading.Thread(target=run, name=f"aiohttp-{port}", daemon=True)
    thread.start()
    try:
        assert started.wait(STOP_TIMEOUT_S), "aiohttp did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(STOP_TIMEOUT_S)
        assert not thread.is_alive(), "aiohttp server thread did not stop"
        loop.close()


def test_aiohttp_watch_app_names_the_route(otel: Otel) -> None:
    """``watch_app`` starts loopwatch with the app (once, however often it is called),
    names aiohttp's resource, and stops loopwatch at the app's cleanup."""
    app = watch_app(build_aiohttp(otel.providers))
    assert len(app.middlewares) == 1
    with serve_aiohttp(app) as url:
        block_three_times(url)
        spans = otel.blocked_spans(BLOCKS, view_name(aiohttp_view))
    assert_named(spans, "aiohttp")
    assert watchdog_threads() == 0


def test_instrumentor_without_starlette(monkeypatch: pytest.MonkeyPatch, otel: Otel) -> None:
    """Starlette is no requirement: without it the other frameworks are still watched."""
    monkeypatch.setitem(sys.modules, "starlette.middleware.errors", None)  # import fails
    instance = LoopWatchInstrumentor()
    instance.instrument(threshold=THRESHOLD_S, tracer_provider=otel.providers.tracer_provider)
    try:
        app = build("quart", otel.providers, "none")
        assert isinstance(app.asgi_app, LoopWatchMiddleware)  # type: ignore[attr-defined]
    finally:
        instance.uninstrument()
    assert not isinstance(build("quart", otel.providers, "none").asgi_app, LoopWatchMiddleware)  # type: ignore[attr-defined]
