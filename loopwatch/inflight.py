"""Requests in flight on a loop, so a stall can name its culprit request and its victims.

The middleware adds a :class:`Request` when a request starts and removes it when it
ends (on the loop thread: two dict operations). The watchdog thread reads them after a
stall: the culprit from the stalled task's context, the victims by time overlap.
"""

from __future__ import annotations

import contextvars
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace

CURRENT_REQUEST: contextvars.ContextVar[Request | None] = contextvars.ContextVar(
    "loopwatch_request", default=None
)


@dataclass(eq=False)
class Request:
    """One HTTP request being served. ``started`` is a ``time.monotonic()`` reading."""

    method: str
    scope: MutableMapping[str, Any]
    started: float
    span: trace.Span | None
    delayed_by: float = 0.0

    @property
    def route(self) -> str | None:
        """The route template (``/items/{item_id}``) once the router has matched it."""
        route = self.scope.get("route")
        path = getattr(route, "path_format", None) or getattr(route, "path", None)
        return path if isinstance(path, str) else None


class InflightRequests:
    """The requests currently served on one loop."""

    def __init__(self) -> None:
        self._requests: dict[int, Request] = {}

    def add(self, request: Request) -> None:
        self._requests[id(request)] = request

    def remove(self, request: Request) -> None:
        self._requests.pop(id(request), None)

    def delayed_by(self, start: float, end: float, culprit: Request | None) -> list[Request]:
        """Requests other than ``culprit`` that were in flight during ``[start, end]``."""
        current = tuple(self._requests.values())
        return [
            request
            for request in current
            if request is not culprit and request.started < end
        ]


def culprit_request(context: contextvars.Context | None) -> Request | None:
    """The request whose task was running when the loop stalled."""
    return context.get(CURRENT_REQUEST) if context is not None else None
