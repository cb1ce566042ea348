"""The request registry: what a finished request keeps for the stall reports."""

from __future__ import annotations

from starlette.routing import Route

from loopwatch.inflight import InflightRequests


async def endpoint() -> None:
    """Never called: the route only gives its path template."""


def test_a_finished_request_keeps_its_description_not_its_scope() -> None:
    """The scope (and everything it references) is let go when the request ends; the
    method and route template still describe it, and it still counts as in flight
    during its lifetime."""
    inflight = InflightRequests()
    scope = {"type": "http", "method": "GET", "route": Route("/items/{item_id}", endpoint)}
    request = inflight.start(scope, None)
    assert (request.method, request.route) == ("GET", "/items/{item_id}")
    inflight.finish(request)
    assert request.scope is None
    assert request.ended is not None
    assert (request.method, request.route) == ("GET", "/items/{item_id}")
    assert inflight.delayed_by(request.started, request.ended, None) == [request]
    assert inflight.delayed_by(request.ended + 1, request.ended + 2, None) == []


def test_a_request_before_routing_has_no_route() -> None:
    inflight = InflightRequests()
    request = inflight.start({"type": "http", "method": "POST"}, None)
    inflight.finish(request)
    assert (request.method, request.route) == ("POST", None)
