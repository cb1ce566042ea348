"""Requests as the watchdog finds them: through the loop's tasks, described after they end."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any

from starlette.routing import Route

from loopwatch.inflight import (
    CURRENT_REQUEST,
    AnyRequest,
    InFlight,
    Request,
    RequestSummary,
    requests_waiting_on,
    stalled_request,
    victims,
)

Run = Callable[[Callable[[], Awaitable[Any]]], Any]


async def endpoint() -> None:
    """Never called: the route only gives its path template."""


def test_a_finished_request_keeps_its_description_not_its_scope() -> None:
    """The scope (and everything it references) is let go when the request ends; the
    method and route template still describe it, and it still counts as in flight
    during its lifetime."""
    scope = {"type": "http", "method": "GET", "route": Route("/items/{item_id}", endpoint)}
    request = Request(scope, None)
    assert (request.method, request.route) == ("GET", "/items/{item_id}")
    request.finish(None)
    assert request.scope is None
    assert request.ended is not None
    assert (request.method, request.route) == ("GET", "/items/{item_id}")
    assert victims([request], request.started, request.ended, None) == [request]
    assert victims([request], request.ended + 1, request.ended + 2, None) == []
    assert victims([request], request.started, request.ended, request) == []


def test_a_request_before_routing_has_no_route() -> None:
    request = Request({"type": "http", "method": "POST"}, None)
    request.finish(None)
    assert (request.method, request.route) == ("POST", None)


def test_requests_are_found_through_the_tasks_waiting_on_a_stalled_loop(run: Run) -> None:
    """Read from another thread while the loop thread is stuck: one entry per unfinished
    tracked request however many tasks serve it, none for tasks outside a request; the
    requests kept by nothing are counted by their HTTP scope (once each, however many
    tasks serve it), except the running task's."""
    seen: Future[InFlight] = Future()

    tasks: list[asyncio.Task[None]] = []

    async def serve(request: Request, helpers: int) -> None:
        CURRENT_REQUEST.set(request)
        tasks.extend(asyncio.create_task(asyncio.sleep(1)) for _ in range(helpers))
        await asyncio.sleep(1)

    async def asgi_layer(scope: dict[str, Any]) -> None:
        await inner_layer(scope)

    async def inner_layer(scope: dict[str, Any]) -> None:
        await asyncio.sleep(1)

    async def scenario() -> tuple[Request, Request, Request]:
        busy = Request({"type": "http", "method": "GET"}, None)
        idle = Request({"type": "http", "method": "GET"}, None)
        done = Request({"type": "http", "method": "GET"}, None)
        done.finish(None)
        untracked = {"type": "http", "method": "GET"}
        tasks.extend(
            [
                asyncio.create_task(serve(busy, helpers=3)),
                asyncio.create_task(serve(idle, helpers=0)),
                asyncio.create_task(serve(done, helpers=1)),
                asyncio.create_task(asyncio.sleep(1)),
                asyncio.create_task(asgi_layer(untracked)),
                asyncio.create_task(asgi_layer(untracked)),  # a second task of one request
                asyncio.create_task(asgi_layer({"type": "http", "method": "POST"})),
                asyncio.create_task(asgi_layer({"type": "websocket"})),
            ]
        )
        await asyncio.sleep(0.05)  # every task waits now
        loop = asyncio.get_running_loop()
        scope = {"type": "http", "method": "PUT"}  # the running task's: not a victim
        reader = threading.Thread(target=lambda: seen.set_result(requests_waiting_on(loop)))
        reader.start()
        reader.join()  # the loop thread is stuck here while the other thread reads
        assert scope
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return busy, idle, done

    busy, idle, _ = run(scenario)

    found = seen.result(timeout=0)
    assert sorted(map(id, found.tracked)) == sorted(map(id, [busy, idle]))
    assert found.untracked == 2


def test_the_stalled_request_is_found_by_its_scope_when_none_was_kept() -> None:
    """No request in the stalled task's context: the innermost HTTP scope in the stalled
    thread's stack names it (method and route template, copied)."""
    seen: Future[AnyRequest | None] = Future()
    thread_id = threading.get_ident()

    def outer_layer(scope: dict[str, Any]) -> None:
        routed = {**scope, "route": Route("/items/{item_id}", endpoint)}
        inner_layer(routed)

    def inner_layer(scope: dict[str, Any]) -> None:
        reader = threading.Thread(target=lambda: seen.set_result(stalled_request(None, thread_id)))
        reader.start()
        reader.join()

    outer_layer({"type": "http", "method": "DELETE"})
    assert seen.result(timeout=0) == RequestSummary("DELETE", "/items/{item_id}")
    context = contextvars.copy_context()
    request = Request({"type": "http", "method": "GET"}, None)
    context.run(CURRENT_REQUEST.set, request)
    assert stalled_request(context, thread_id) is request
    assert stalled_request(None, thread_id) is None  # no HTTP scope in this stack
