"""Requests in flight on a loop, so a stall can name its culprit request and its victims.

The middleware adds a :class:`Request` when a request starts and removes it when it
ends (on the loop thread: two dict operations). The watchdog thread reads them after a
stall: the culprit from the stalled task's context, the victims by time overlap.
"""

from __future__ import annotations

import contextvars
from collections import deque
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from time import monotonic
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
    ended: float | None = None

    @property
    def route(self) -> str | None:
        """The route template (``/items/{item_id}``) once the router has matched it."""
        route = self.scope.get("route")
        path = getattr(route, "path_format", None) or getattr(route, "path", None)
        return path if isinstance(path, str) else None


OpenStall = Callable[[], "tuple[float, Request | None] | None"]
"""Start and culprit request of a stall the watchdog has seen but not closed yet."""


class InflightRequests:
    """The requests served on one loop, and those that finished a moment ago.

    A request held up by a stall often finishes right after it, before the watchdog has
    closed the stall: it is kept among the recent ones so the stall still links it, and
    :meth:`remove` counts the stall into its ``delayed_by`` while its span is still open.
    """

    def __init__(self, open_stall: OpenStall = lambda: None) -> None:
        self._requests: dict[int, Request] = {}
        self._recent: deque[Request] = deque(maxlen=256)
        self._open_stall = open_stall

    def add(self, request: Request) -> None:
        self._requests[id(request)] = request

    def remove(self, request: Request) -> None:
        """The request is done (on the loop thread): settle what stalls cost it."""
        self._requests.pop(id(request), None)
        request.ended = now = monotonic()
        self._recent.append(request)
        stall = self._open_stall()
        if stall is not None and stall[1] is not request:
            request.delayed_by += max(0.0, now - max(stall[0], request.started))
        if request.delayed_by and request.span is not None and request.span.is_recording():
            request.span.set_attribute("loopwatch.delayed_by", request.delayed_by)

    def delayed_by(self, start: float, end: float, culprit: Request | None) -> list[Request]:
        """Requests other than ``culprit`` that were in flight during ``[start, end]``."""
        candidates = (*self._requests.values(), *self._recent)
        return [
            request
            for request in candidates
            if request is not culprit
            and request.started < end
            and (request.ended is None or request.ended > start)
        ]


def culprit_request(context: contextvars.Context | None) -> Request | None:
    """The request whose task was running when the loop stalled."""
    return context.get(CURRENT_REQUEST) if context is not None else None
