"""Hostile clients cannot create metric series: a flood of invented methods and paths
through a real uvicorn server leaves ``asyncio.eventloop.block.duration`` with a bounded
set of attribute values."""

from __future__ import annotations

import random
import string

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from loopwatch import LoopWatchMiddleware
from loopwatch.inflight import HTTP_METHODS

from .apps.inprocess import Receive, Scope, Send, blocking_work
from .conftest import Otel
from .server import HTTP_TIMEOUT_S, serve_in_thread, wait_until

THRESHOLD_S = 0.01
STALL_S = 0.025
"""Every request blocks the loop 2.5 x the threshold: each is a stall naming it."""
REQUESTS = 300
BLOCK_DURATION = "asyncio.eventloop.block.duration"
STANDARD = sorted(HTTP_METHODS - {"CONNECT"})  # a CONNECT answered 200 switches protocols


class _AnyMethod:
    """A raw ASGI endpoint (Starlette routes it for any method) that blocks the loop."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        blocking_work(STALL_S)
        await PlainTextResponse("ok")(scope, receive, send)


async def _blocking_not_found(request: Request, exc: Exception) -> Response:
    blocking_work(STALL_S)
    return PlainTextResponse("not found", status_code=404)


def _invented(rng: random.Random) -> str:
    """A method token nobody standardised (httpx sends it upper-cased)."""
    return "".join(rng.choices(string.ascii_uppercase, k=rng.randint(3, 12)))


def test_invented_methods_and_paths_leave_the_block_metric_bounded(otel: Otel) -> None:
    app = Starlette(
        routes=[Route("/items/{item_id}", _AnyMethod())],
        exception_handlers={404: _blocking_not_found},
    )
    watched = LoopWatchMiddleware(
        app,
        threshold=THRESHOLD_S,
        tracer_provider=otel.providers.tracer_provider,
        meter_provider=otel.providers.meter_provider,
    )
    rng = random.Random(29)
    sent: set[str] = set()
    # h11: httptools answers 400 to a method it does not know, before the app sees it
    with (
        serve_in_thread(watched, loop="asyncio", http="h11") as server,
        httpx.Client(timeout=HTTP_TIMEOUT_S) as client,
    ):
        for number in range(REQUESTS):
            method = _invented(rng) if number % 10 else rng.choice(STANDARD)
            sent.add(method)
            routed = number % 2 == 0
            path = f"/items/{rng.getrandbits(64):x}" if routed else f"/{_invented(rng)}/{number}"
            response = client.request(method, f"{server.url}{path}")
            assert response.status_code == (200 if routed else 404), (method, path)

        def stalls_with_a_method() -> int:
            points = otel.metric_points(BLOCK_DURATION)
            return sum(p.count for p in points if "http.request.method" in p.attributes)

        wait_until(lambda: stalls_with_a_method() >= 0.9 * REQUESTS, 10, "stalls recorded")

    points = otel.metric_points(BLOCK_DURATION)
    methods = {point.attributes.get("http.request.method") for point in points} - {None}
    routes = {point.attributes.get("http.route") for point in points} - {None}
    assert len(sent) > 250  # the flood was as varied as intended
    assert methods <= HTTP_METHODS | {"_OTHER"}
    assert "_OTHER" in methods
    assert routes == {"/items/{item_id}"}
    causes = {point.attributes["loopwatch.cause"] for point in points}
    # every series is (cause, method or none, route or none): a bound independent of the flood
    assert len(points) <= len(causes) * (len(HTTP_METHODS) + 2) * 2
    spans = [span for span in otel.spans() if span.name == "loop.blocked"]
    for span in spans:
        attributes = span.attributes or {}
        method = attributes.get("http.request.method")
        assert method is None or method in HTTP_METHODS | {"_OTHER"}
        if method == "_OTHER":
            assert attributes["http.request.method_original"] in sent
