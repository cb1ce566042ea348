"""Requests in flight on a loop, so a stall can name its culprit request and its victims.

The middleware adds a :class:`Request` when a request starts and removes it when it
ends, on the loop thread; both are a few dictionary and attribute operations, since they
run for every request. The watchdog thread reads them after a stall: the culprit from
the stalled task's context, the victims by time overlap.
"""

from __future__ import annotations

import contextvars
import itertools
from collections import deque
from collections.abc import MutableMapping
from time import monotonic
from typing import Any, NamedTuple

from opentelemetry import trace

CURRENT_REQUEST: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "loopwatch_request", default=None
)
"""The serial number of the request a task serves. A number rather than the
:class:`Request`: tasks a request spawns keep its context, and with it the request's
scope, alive long after it ended; a number keeps nothing alive and is never reused."""

_serials = itertools.count(1)


class Request:
    """One HTTP request being served. ``started`` and ``ended`` are ``time.monotonic()``
    readings; ``span`` is the request's recording span, if any.

    ``stall_delays`` maps each stall that held the request up (by number) to how long it
    did; the watchdog and the request's own ending may both settle a stall, and the
    first to do so wins (``dict.setdefault`` is atomic).

    The ASGI scope is held only while the request is in flight: a finished request keeps
    its method and matched route, not the scope and everything it references (keeping
    scopes of finished requests alive costs every request cache misses).
    """

    __slots__ = ("_method", "_route", "ended", "scope", "serial", "span", "stall_delays", "started")

    def __init__(self, scope: MutableMapping[str, Any], span: trace.Span | None) -> None:
        self.scope: MutableMapping[str, Any] | None = scope
        self.span = span
        self.serial = next(_serials)
        self.started = monotonic()
        self.ended: float | None = None
        self.stall_delays: dict[int, float] | None = None
        self._method: object = None
        self._route: object = None

    @property
    def method(self) -> str:
        scope = self.scope
        method = scope.get("method") if scope is not None else self._method
        return str(method or "")

    @property
    def route(self) -> str | None:
        """The route template (``/items/{item_id}``) once the router has matched it."""
        scope = self.scope
        route = scope.get("route") if scope is not None else self._route
        path = getattr(route, "path_format", None) or getattr(route, "path", None)
        return path if isinstance(path, str) else None

    @property
    def delayed_by(self) -> float:
        """Seconds this request was held up by stalls it did not cause."""
        return sum(self.stall_delays.values()) if self.stall_delays else 0.0

    def settle(self, stall: int, seconds: float) -> None:
        """Record what stall number ``stall`` cost this request, once, on its span too."""
        if self.stall_delays is None:
            self.stall_delays = {}
        self.stall_delays.setdefault(stall, max(0.0, seconds))
        span = self.span
        if span is not None and span.is_recording():
            span.set_attribute("loopwatch.delayed_by", self.delayed_by)


class OpenStall(NamedTuple):
    """A stall the watchdog has seen and not finished reporting."""

    number: int
    start: float
    culprit: Request | None


class InflightRequests:
    """The requests served on one loop, and those that finished a moment ago.

    A request held up by a stall often finishes right after it, before the watchdog has
    closed the stall: it is kept among the recent ones so the stall still links it, and
    :meth:`finish` settles the open stall's delay while its span is still open. The
    watchdog sets :attr:`open_stall` while a stall is seen and not yet reported.
    """

    def __init__(self) -> None:
        self._requests: dict[int, Request] = {}
        self._recent: deque[Request] = deque(maxlen=256)
        self.open_stall: OpenStall | None = None

    def start(self, scope: MutableMapping[str, Any], span: trace.Span | None) -> Request:
        """A request begins (on the loop thread)."""
        request = Request(scope, span)
        self._requests[request.serial] = request
        return request

    def get(self, serial: int) -> Request | None:
        """The request in flight with this serial number, if any."""
        return self._requests.get(serial)

    def running_in(self, context: contextvars.Context | None) -> Request | None:
        """The request whose task runs in ``context`` (read from the watchdog thread)."""
        serial = context.get(CURRENT_REQUEST) if context is not None else None
        if serial is None:
            return None
        request = self._requests.get(serial)
        if request is None:  # finished a moment ago (list(): one atomic copy of the deque)
            request = next((r for r in reversed(list(self._recent)) if r.serial == serial), None)
        return request

    def finish(self, request: Request) -> None:
        """The request is done (on the loop thread): settle what an open stall cost it."""
        request.ended = now = monotonic()
        scope = request.scope
        if scope is not None:  # keep what describes it, not the scope (see Request)
            request._method, request._route = scope.get("method"), scope.get("route")
            request.scope = None  # after the copies: a reader on another thread sees either
        self._recent.append(request)  # before leaving the in-flight set: never in neither
        del self._requests[request.serial]
        stall = self.open_stall
        if stall is not None and stall.culprit is not request:
            request.settle(stall.number, now - max(stall.start, request.started))

    def delayed_by(self, start: float, end: float, culprit: Request | None) -> list[Request]:
        """Requests other than ``culprit`` that were in flight during ``[start, end]``."""
        candidates = {r.serial: r for r in (*self._requests.values(), *self._recent)}
        return [
            request
            for request in candidates.values()
            if request is not culprit
            and request.started < end
            and (request.ended is None or request.ended > start)
        ]
