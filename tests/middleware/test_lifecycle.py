"""When the middleware starts and stops the loop's watcher, with and without lifespan, and
how apps sharing a loop share it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

from loopwatch import LoopWatch, LoopWatchMiddleware, registry

from .apps.composite import Composite
from .apps.inprocess import Probe, build_fastapi
from .conftest import Otel, watchdog_threads
from .server import HTTP_TIMEOUT_S, run_until_exit, serve_in_thread, wait_until

STOP_WAIT_S = 5.0


def is_running(watcher: LoopWatch) -> bool:
    """``watcher.running``, read afresh (not narrowed by earlier assertions)."""
    return watcher.running


def get(url: str) -> httpx.Response:
    return httpx.get(url, timeout=HTTP_TIMEOUT_S)


def installed_middleware(app: FastAPI) -> LoopWatchMiddleware:
    """The app's LoopWatchMiddleware instance, found down its built middleware stack."""
    layer: Any = app.middleware_stack
    while not isinstance(layer, LoopWatchMiddleware):
        layer = layer.app
    return layer


def test_lifespan_starts_and_stops_the_watcher(
    loop_name: str, probe: Probe, fastapi_app: Callable[..., FastAPI]
) -> None:
    """Started during lifespan start-up (before any request), stopped at shutdown."""
    baseline = watchdog_threads()
    app = fastapi_app(instrument="after")
    with serve_in_thread(app, loop=loop_name) as server:
        loop = server.loop
        watcher = registry._watchers.get(loop)
        assert watcher is not None
        assert watcher.running
        assert watcher.loop is loop
        assert watchdog_threads() == baseline + 1
        assert probe.lifespan == ["startup"]
        assert get(f"{server.url}/health").status_code == 200
        assert registry._watchers.get(loop) is watcher
        # found by its thread; untraced requests skip looking for it
        assert installed_middleware(app)._lifespan_watchers == {server.thread.ident: watcher}
    assert probe.lifespan == ["startup", "shutdown"]
    assert installed_middleware(app)._lifespan_watchers == {}
    assert not is_running(watcher)
    assert loop not in registry._watchers
    assert watchdog_threads() == baseline


@pytest.mark.parametrize("instrument", ["after", "none"])
def test_without_lifespan_starts_at_first_request(
    loop_name: str, otel: Otel, fastapi_app: Callable[..., FastAPI], instrument: str
) -> None:
    """``--lifespan off``: nothing runs until the first request, which is already watched,
    traced or not (an untraced request with lifespan does not look for its loop's watcher)."""
    baseline = watchdog_threads()
    app = fastapi_app(instrument=instrument)
    with serve_in_thread(app, loop=loop_name, lifespan="off") as server:
        loop = server.loop
        assert loop not in registry._watchers
        assert watchdog_threads() == baseline
        assert get(f"{server.url}/block/1?seconds=0.4").status_code == 200
        watcher = registry._watchers.get(loop)
        assert watcher is not None
        assert watcher.running
        assert watchdog_threads() == baseline + 1
        [blocked] = otel.blocked_spans()
        assert dict(blocked.attributes or {})["http.route"] == "/block/{item_id}"
        assert installed_middleware(app)._lifespan_watchers == {}
    # No shutdown message: the watchdog ends when it sees the loop closed.
    wait_until(lambda: watchdog_threads() == baseline, STOP_WAIT_S, "the watchdog to end")


def test_two_apps_on_one_loop_share_one_watcher(loop_name: str, otel: Otel, probe: Probe) -> None:
    """Two watched apps behind one server: one watcher, stopped when both shut down; a stall
    in one app links the requests it held up in the other."""
    baseline = watchdog_threads()
    first = build_fastapi(otel.providers, probe, instrument="after")
    second = build_fastapi(otel.providers, probe, instrument="after")
    composite = Composite({"one": first, "two": second})
    try:
        with (
            serve_in_thread(composite, loop=loop_name) as server,
            ThreadPoolExecutor(1) as pool,
        ):
            loop = server.loop
            assert registry._users.get(loop) == 2
            assert watchdog_threads() == baseline + 1
            victim = pool.submit(get, f"{server.url}/two/sleep?seconds=1.0")
            wait_until(lambda: probe.sleepers >= 1, 5.0, "the victim to reach its handler")
            assert get(f"{server.url}/one/block/8?seconds=0.4").status_code == 200
            assert victim.result(HTTP_TIMEOUT_S).status_code == 200
            [blocked] = otel.blocked_spans()
            wait_until(lambda: len(otel.server_spans("/sleep")) == 1, 5.0, "victim span")
        assert loop not in registry._watchers
        assert watchdog_threads() == baseline
    finally:
        for app in (first, second):
            FastAPIInstrumentor.uninstrument_app(app)
    attributes = dict(blocked.attributes or {})
    assert attributes["http.route"] == "/block/{item_id}"
    assert attributes["loopwatch.delayed_requests"] == 1
    [victim_span] = otel.server_spans("/sleep")
    assert victim_span.context is not None
    assert [link.context.span_id for link in blocked.links] == [victim_span.context.span_id]
    assert float(dict(victim_span.attributes or {})["loopwatch.delayed_by"]) > 0.3  # type: ignore[arg-type]


def test_failed_startup_releases_the_watcher(loop_name: str) -> None:
    """An app whose start-up fails: the server exits and the watcher does not outlive it."""

    @asynccontextmanager
    async def failing(app: FastAPI) -> AsyncIterator[None]:
        raise RuntimeError("start-up fails on purpose")
        yield  # type: ignore[unreachable]  # pragma: no cover

    baseline = watchdog_threads()
    app = FastAPI(lifespan=failing)
    app.add_middleware(LoopWatchMiddleware, threshold=0.1)
    server = run_until_exit(app, loop=loop_name)
    assert not server.started
    assert server.exit_code == 3
    assert server.loop is not None
    assert server.loop not in registry._watchers
    assert watchdog_threads() == baseline


def test_without_lifespan_the_closed_loop_stops_being_reported(
    loop_name: str, otel: Otel, fastapi_app: Callable[..., FastAPI]
) -> None:
    """After a server without lifespan stops, its loop is no longer watched or reported."""
    app = fastapi_app()
    with serve_in_thread(app, loop=loop_name, lifespan="off") as server:
        assert get(f"{server.url}/health").status_code == 200
        loop, thread_name = server.loop, server.thread.name

    def reported() -> set[object]:
        return {
            dict(point.attributes or {}).get("thread.name")
            for point in otel.metric_points("asyncio.eventloop.block.ongoing")
        }

    wait_until(lambda: not is_running_in_registry(loop), 1.0, "the watcher to stop")
    # The watcher counts as stopped as soon as its teardown begins, on the watchdog thread
    # that found the loop closed; its gauges go at the end of that teardown.
    wait_until(lambda: thread_name not in reported(), 2.0, "the loop's gauges to go")


def is_running_in_registry(loop: asyncio.AbstractEventLoop) -> bool:
    watcher = registry._watchers.get(loop)
    return watcher is not None and watcher.running


def test_disabled_by_environment(
    loop_name: str,
    otel: Otel,
    fastapi_app: Callable[..., FastAPI],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``LOOPWATCH_ENABLED=0``: the middleware starts nothing and reports nothing."""
    monkeypatch.setenv("LOOPWATCH_ENABLED", "0")
    baseline = watchdog_threads()
    app = fastapi_app(instrument="after")
    with serve_in_thread(app, loop=loop_name) as server:
        assert get(f"{server.url}/block/1?seconds=0.3").status_code == 200
        assert server.loop not in registry._watchers
        assert watchdog_threads() == baseline
        route = "/block/{item_id}"  # the request itself is traced as usual
        wait_until(lambda: len(otel.server_spans(route)) == 1, 5.0, "the server span")
    assert not [span for span in otel.spans() if span.name == "loop.blocked"]
    assert not otel.metric_points("asyncio.eventloop.block.duration")
