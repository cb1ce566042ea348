"""Requests as the watchdog finds them: through the loop's tasks, described after they end."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any

from starlette.routing import Route

from loopwatch.inflight import CURRENT_REQUEST, Request, requests_waiting_on, victims

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
    request however many tasks serve it, none for tasks outside a request."""
    seen: Future[list[Request]] = Future()

    tasks: list[asyncio.Task[None]] = []

    async def serve(request: Request, helpers: int) -> None:
        CURRENT_REQUEST.set(request)
        tasks.extend(asyncio.create_task(asyncio.sleep(1)) for _ in range(helpers))
        await asyncio.sleep(1)

    async def scenario() -> tuple[Request, Request, Request]:
        busy = Request({"type": "http", "method": "GET"}, None)
        idle = Request({"type": "http", "method": "GET"}, None)
        done = Request({"type": "http", "method": "GET"}, None)
        done.finish(None)
        tasks.extend(
            [
                asyncio.create_task(serve(busy, helpers=3)),
                asyncio.create_task(serve(idle, helpers=0)),
                asyncio.create_task(serve(done, helpers=1)),
                asyncio.create_task(asyncio.sleep(1)),
            ]
        )
        await asyncio.sleep(0.05)  # every task waits now
        loop = asyncio.get_running_loop()
        reader = threading.Thread(target=lambda: seen.set_result(requests_waiting_on(loop)))
        reader.start()
        reader.join()  # the loop thread is stuck here while the other thread reads
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return busy, idle, done

    busy, idle, _ = run(scenario)

    found = seen.result(timeout=0)
    assert sorted(map(id, found)) == sorted(map(id, [busy, idle]))
