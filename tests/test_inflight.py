"""Requests as the watchdog finds them: through the loop's tasks, described after they end."""

from __future__ import annotations

import asyncio
import copy
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any

import pytest
from opentelemetry import trace
from starlette.routing import Route

from loopwatch.inflight import (
    REQUEST_KEY,
    AnyRequest,
    InFlight,
    OpenStall,
    Request,
    RequestSummary,
    requests_waiting_on,
    stalled_request,
    victims,
)

Run = Callable[[Callable[[], Awaitable[Any]]], Any]
NO_SPAN = trace.NonRecordingSpan(trace.INVALID_SPAN_CONTEXT)


async def endpoint() -> None:
    """Never called: the route only gives its path template."""


def tracked_scope(method: str) -> dict[str, Any]:
    """The scope of a traced request, as the middleware leaves it while serving it."""
    return {"type": "http", "method": method, REQUEST_KEY: Request(NO_SPAN)}


def test_copies_of_a_scope_hold_the_same_request() -> None:
    """Code that copies or deep-copies a scope gets the request itself, not a copy of it
    (nor an error from copying its span)."""
    scope = tracked_scope("GET")
    assert copy.copy(scope)[REQUEST_KEY] is scope[REQUEST_KEY]
    assert copy.deepcopy(scope)[REQUEST_KEY] is scope[REQUEST_KEY]
    assert repr(scope[REQUEST_KEY]) == "<loopwatch.Request ? ?>"


def test_a_request_is_a_victim_of_the_stalls_during_its_lifetime() -> None:
    """A request that ends while a stall is open settles its share itself; it is a
    victim of the stalls that overlap its lifetime, except of its own."""
    request = Request(NO_SPAN)
    other = Request(NO_SPAN)
    request.finish(OpenStall(1, request.started, other))
    assert request.ended is not None
    assert request.stall_delays == {1: request.ended - request.started}
    assert victims([request], request.started, request.ended, None) == [request]
    assert victims([request], request.ended + 1, request.ended + 2, None) == []
    assert victims([request], request.started, request.ended, request) == []
    own = Request(NO_SPAN)
    own.finish(OpenStall(2, own.started, own))
    assert own.stall_delays is None


def test_requests_are_found_through_the_tasks_waiting_on_a_stalled_loop(run: Run) -> None:
    """Read from another thread while the loop thread is stuck, by the HTTP scopes in the
    tasks' coroutine chains: one entry per unfinished tracked request however many tasks
    (or copies of its scope) serve it, none for tasks outside a request; the requests with
    nothing in their scope are counted (once each, however many tasks serve it), except
    the running task's."""
    seen: Future[InFlight] = Future()

    async def asgi_layer(scope: dict[str, Any]) -> None:
        await inner_layer(scope)

    async def inner_layer(scope: dict[str, Any]) -> None:
        await asyncio.sleep(1)

    async def server_layer(scope: dict[str, Any], app_scope: dict[str, Any]) -> None:
        """A request kept only in the copy of the scope an inner layer got."""
        await asgi_layer(app_scope)

    async def scenario() -> tuple[AnyRequest, AnyRequest, AnyRequest]:
        busy, idle, done = tracked_scope("GET"), tracked_scope("GET"), tracked_scope("GET")
        done[REQUEST_KEY].ended = 0.0
        untracked = {"type": "http", "method": "GET"}
        inner = tracked_scope("GET")
        layers = [
            busy,
            busy,  # a second task of one request
            {**busy, "route": Route("/items/{item_id}", endpoint)},  # a copy of its scope
            idle,
            done,
            untracked,
            untracked,
            {"type": "http", "method": "POST"},
            {"type": "websocket"},
        ]
        tasks = [asyncio.create_task(asgi_layer(scope)) for scope in layers]
        tasks.append(asyncio.create_task(server_layer({"type": "http"}, inner)))
        tasks.append(asyncio.create_task(asyncio.sleep(1)))
        await asyncio.sleep(0.05)  # every task waits now
        loop = asyncio.get_running_loop()
        scope = tracked_scope("PUT")  # the running task's: not a victim
        reader = threading.Thread(target=lambda: seen.set_result(requests_waiting_on(loop)))
        reader.start()
        reader.join()  # the loop thread is stuck here while the other thread reads
        assert scope
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return busy[REQUEST_KEY], idle[REQUEST_KEY], inner[REQUEST_KEY]

    expected = run(scenario)

    found = seen.result(timeout=0)
    assert sorted(map(id, found.tracked)) == sorted(map(id, expected))
    assert found.untracked == 2


def test_the_stalled_request_is_found_by_its_scope() -> None:
    """The innermost HTTP scope in the stalled thread's stack names the request: the one
    kept there, else a summary (method and route template, copied)."""
    seen: list[AnyRequest | None] = []
    thread_id = threading.get_ident()

    def outer_layer(scope: dict[str, Any]) -> None:
        routed = {**scope, "route": Route("/items/{item_id}", endpoint)}
        inner_layer(routed)

    def inner_layer(scope: dict[str, Any]) -> None:
        reader = threading.Thread(target=lambda: seen.append(stalled_request(thread_id, loop)))
        reader.start()
        reader.join()

    loop = asyncio.new_event_loop()  # not running: no task to follow

    outer_layer({"type": "http", "method": "DELETE"})
    assert seen.pop() == RequestSummary("DELETE", "/items/{item_id}")
    traced = tracked_scope("GET")
    outer_layer(traced)
    request = seen.pop()
    assert request is traced[REQUEST_KEY]
    assert isinstance(request, Request)
    assert (request.method, request.route) == ("GET", "/items/{item_id}")
    assert stalled_request(thread_id, loop) is None  # no HTTP scope in this stack
    loop.close()


@pytest.mark.parametrize(
    ("sent", "method", "original"),
    [
        ("PATCH", "PATCH", None),
        ("get", "_OTHER", "get"),  # methods are case-sensitive
        ("PROPFIND", "_OTHER", "PROPFIND"),
        ("X" * 1000, "_OTHER", "X" * 64),
        (None, "_OTHER", None),
    ],
)
def test_an_unknown_method_is_other_with_the_original_kept_apart(
    sent: str | None, method: str, original: str | None
) -> None:
    """Metrics, logs and spans get a standard method or ``_OTHER``; the span may keep
    what was sent (bounded) in ``http.request.method_original``."""
    scope = {"type": "http", "method": sent}
    assert RequestSummary.of(scope) == RequestSummary(method, None, original)
    request = tracked_scope("GET")[REQUEST_KEY].described_by(scope)
    assert (request.method, request.method_original) == (method, original)
