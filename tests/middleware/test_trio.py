"""``LoopWatchMiddleware`` under hypercorn's trio worker, in this process (spans read back
from memory): a handler's stall is a ``loop.blocked`` span in that request's trace, and the
requests it held up are linked, as on asyncio. The served process's test (every request
answered) is in ``test_unwatchable.py``."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import trio
from fastapi import FastAPI
from hypercorn.config import Config
from hypercorn.trio import serve

from loopwatch import LoopWatchMiddleware
from loopwatch.trio_loop import TrioLoop

from .apps.inprocess import (
    Probe,
    Receive,
    Scope,
    Send,
    blocking_work,
    loopwatch_options,
    raw_app,
)
from .conftest import SPAN_WAIT_S, Otel, watchdog_threads
from .server import HTTP_TIMEOUT_S, START_TIMEOUT_S, STOP_TIMEOUT_S, wait_until
from .test_spans import (
    STALL_S,
    VICTIM_SLEEP_S,
    VICTIMS,
    assert_child_of,
    assert_names_culprit,
    assert_victims_linked,
    attrs,
    block_while_victims_wait,
    get,
    server_span,
)


@contextlib.contextmanager
def serve_with_trio(app: Any) -> Iterator[str]:
    """Serve ``app`` with hypercorn's trio worker on 127.0.0.1 in a thread; its URL."""
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    started = threading.Event()
    bound: list[str] = []
    stop: list[Callable[[], None]] = []
    errors: list[BaseException] = []

    async def main() -> None:
        shutdown = trio.Event()
        token = trio.lowlevel.current_trio_token()
        stop.append(lambda: token.run_sync_soon(shutdown.set))
        async with trio.open_nursery() as nursery:
            bound.extend(await nursery.start(_serve, app, config, shutdown.wait))
            started.set()

    def run() -> None:
        try:
            trio.run(main)
        except BaseException as error:  # reported to the test thread
            errors.append(error)
        finally:
            started.set()

    thread = threading.Thread(target=run, name="hypercorn-trio", daemon=True)
    thread.start()
    assert started.wait(START_TIMEOUT_S), "hypercorn (trio) did not start"
    assert bound, f"hypercorn (trio) did not start: {errors!r}"
    try:
        yield bound[0]
    finally:
        stop[0]()
        thread.join(STOP_TIMEOUT_S)
        assert not thread.is_alive(), "hypercorn (trio) did not stop"
        assert errors == []


async def _serve(app: Any, config: Config, trigger: Any, *, task_status: Any) -> None:
    await serve(app, config, shutdown_trigger=trigger, task_status=task_status)


def test_trio_served_request_stall_is_a_span_in_its_trace(
    otel: Otel, fastapi_app: Callable[..., FastAPI]
) -> None:
    app = fastapi_app(instrument="after")
    with serve_with_trio(app) as url:
        assert watchdog_threads() >= 1  # started at lifespan start-up
        with httpx.Client(timeout=HTTP_TIMEOUT_S) as client:
            response = client.get(f"{url}/block/7?seconds={STALL_S}")
            assert response.json() == {"item_id": 7, "blocked": STALL_S}
            [blocked] = otel.blocked_spans()
            parent = server_span(otel, "/block/{item_id}")
    assert_names_culprit(blocked, "/block/{item_id}")
    assert_child_of(blocked, parent)
    assert attrs(blocked)["thread.name"] == "hypercorn-trio"


def test_trio_served_victims_are_linked_and_marked(
    otel: Otel, probe: Probe, fastapi_app: Callable[..., FastAPI]
) -> None:
    """Requests waiting in their handlers while another blocks the trio run are linked
    from its stall and carry ``loopwatch.delayed_by``, as on asyncio."""
    app = fastapi_app(instrument="after")
    with serve_with_trio(app) as url, ThreadPoolExecutor(VICTIMS) as pool:
        block_while_victims_wait(url, pool, probe, item_id=1)
        [blocked] = otel.blocked_spans()
        culprit = server_span(otel, "/block/{item_id}")
        wait_until(lambda: len(otel.server_spans("/sleep")) == VICTIMS, SPAN_WAIT_S, "victim spans")
    assert_victims_linked(blocked, culprit, otel.server_spans("/sleep"))


def test_trio_served_requests_of_an_untraced_app_are_found_by_scope(
    otel: Otel, probe: Probe, fastapi_app: Callable[..., FastAPI]
) -> None:
    """No tracing: the stall names its request and counts those waiting in the trio run
    (found by the ASGI scopes along their tasks' coroutines)."""
    app = fastapi_app(instrument="none")
    with serve_with_trio(app) as url, ThreadPoolExecutor(VICTIMS) as pool:
        block_while_victims_wait(url, pool, probe, item_id=3)
        [blocked] = otel.blocked_spans()
    assert_names_culprit(blocked, "/block/{item_id}")
    assert attrs(blocked)["loopwatch.delayed_requests"] == VICTIMS
    assert blocked.parent is None
    assert not blocked.links


HEALTHY = 20


@pytest.mark.usefixtures("instrumentor")
def test_trio_served_app_is_watched_by_the_instrumentor(
    otel: Otel, probe: Probe, fastapi_app: Callable[..., FastAPI]
) -> None:
    """The zero-code instrumentor watches a FastAPI app with no loopwatch code served by
    hypercorn's trio worker: every request is answered, the handler's block is a
    ``loop.blocked`` span in its request's trace, and the requests it held up are linked."""
    app = fastapi_app(loopwatch=False, instrument="after")
    with serve_with_trio(app) as url, ThreadPoolExecutor(VICTIMS) as pool:
        healthy = [get(f"{url}/health").status_code for _ in range(HEALTHY)]
        block_while_victims_wait(url, pool, probe, item_id=5)
        [blocked] = otel.blocked_spans()
        culprit = server_span(otel, "/block/{item_id}")
        wait_until(lambda: len(otel.server_spans("/sleep")) == VICTIMS, SPAN_WAIT_S, "victim spans")
    assert healthy == [200] * HEALTHY
    assert_victims_linked(blocked, culprit, otel.server_spans("/sleep"))
    assert attrs(blocked)["loopwatch.delayed_requests"] == VICTIMS


def views_in_child_tasks(probe: Probe) -> Callable[[Scope, Receive, Send], Any]:
    """A raw ASGI app that runs each view in a child task, as Quart does: the view's stack
    holds no ASGI scope (the parent task does). ``/block`` blocks, ``/sleep`` waits."""

    async def view(path: str, send: Send) -> None:
        if path == "/block":
            blocking_work(STALL_S)
        else:
            probe.sleeper_started()
            await trio.sleep(VICTIM_SLEEP_S)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await raw_app(scope, receive, send)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(view, scope["path"], send)
        return None

    return app


def test_trio_view_in_a_child_task_is_its_requests_stall(otel: Otel, probe: Probe) -> None:
    """The stalled task's parents hold its request: the stall names that request (by its
    method), which is not its own victim; the request waiting meanwhile is."""
    app = LoopWatchMiddleware(views_in_child_tasks(probe), **loopwatch_options(otel.providers))
    with serve_with_trio(app) as url, ThreadPoolExecutor(1) as pool:
        victim = pool.submit(get, f"{url}/sleep")
        wait_until(lambda: probe.sleepers >= 1, 5.0, "the victim to reach its view")
        assert get(f"{url}/block").text == "ok"
        assert victim.result(HTTP_TIMEOUT_S).text == "ok"
        [blocked] = otel.blocked_spans()
    assert_names_culprit(blocked, None)
    assert attrs(blocked)["loopwatch.delayed_requests"] == 1


def test_the_trio_run_is_one_watched_loop() -> None:
    async def main() -> tuple[object, object]:
        from loopwatch.trio_loop import current_trio_loop

        return current_trio_loop(), current_trio_loop()

    first, again = trio.run(main)
    assert isinstance(first, TrioLoop)
    assert first is again
    assert first.is_closed()
