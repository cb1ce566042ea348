"""Route templates read where the frameworks keep them, without running their code."""

from __future__ import annotations

import sys

from litestar import get

from loopwatch.routes import frame_route, scope_route


def test_litestar_route_from_its_handler_without_a_path_template() -> None:
    """Litestar releases before ``scope["path_template"]`` named only the handler: its one
    path (a slot) is the route."""

    @get("/items/{item_id:int}")
    async def item() -> str:
        return ""

    assert scope_route({"type": "http", "route_handler": item}) == "/items/{item_id:int}"
    assert scope_route({"type": "http", "path_template": "/items/{item_id}"}) == "/items/{item_id}"
    assert scope_route({"type": "http", "route_handler": object()}) is None


class PropertyRequest:
    """A request whose route is a property: reading it would run the framework's code."""

    @property
    def url_rule(self) -> object:
        raise AssertionError("framework code ran on the watchdog thread")


class Rule:
    def __init__(self, rule: str) -> None:
        self.rule = rule


class WerkzeugLikeRequest:
    def __init__(self, rule: str) -> None:
        self.url_rule = Rule(rule)


def route_seen_by(request: object) -> str | None:
    """What the watchdog reads from a frame holding ``request``."""
    return frame_route(sys._getframe())


def test_frame_routes_read_instance_attributes_only() -> None:
    assert route_seen_by(WerkzeugLikeRequest("/items/<int:id>")) == "/items/<int:id>"
    assert route_seen_by(PropertyRequest()) is None
    assert route_seen_by(None) is None
