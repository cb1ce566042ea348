"""Requests in flight on a loop, so a stall can name its culprit request and its victims.

For a request with a recording span, the middleware keeps a :class:`Request` in the
request's ASGI scope while it serves it (so that a stall's share can be put on the span
before it ends); a request without one gets nothing. Nothing keeps a list: the watchdog
thread finds the requests by their scopes when a stall happens (see :mod:`.asgi_scope`),
the culprit in the stalled stack, the victims in the coroutine chains of the tasks
waiting on the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from time import monotonic
from typing import Any, NamedTuple, TypeAlias

from opentelemetry import trace

from .asgi_scope import MAX_TASKS, Loop, Scopes, stalled_http, tasks_serving_http
from .task_context import current_span_in, task_context
from .trio_loop import TrioLoop

REQUEST_KEY = "loopwatch.request"
"""The ASGI scope key of the :class:`Request` of a traced request, while it is served.
A layer that copies the scope copies it too, and the middleware of a mounted app that
finds it leaves the request to the outer one."""


HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)
"""The methods ``http.request.method`` may take (OpenTelemetry HTTP conventions); any
other is ``_OTHER``: the method token comes from the client, and as a metric attribute
an invented one would make a new series per request."""

OTHER_METHOD = "_OTHER"

MAX_ORIGINAL_METHOD = 64
"""How much of an unknown method is kept (on the span only) as
``http.request.method_original``."""


def known_method(scope: Mapping[str, Any]) -> tuple[str, str | None]:
    """The request's method if it is a standard one, else ``_OTHER`` and the original
    (cut to :data:`MAX_ORIGINAL_METHOD` characters)."""
    method = scope.get("method")
    if method in HTTP_METHODS:
        return method, None
    return OTHER_METHOD, str(method or "")[:MAX_ORIGINAL_METHOD] or None


class Request:
    """One traced HTTP request being served. ``started`` and ``ended`` are
    ``time.monotonic()`` readings (``ended`` is set only if a stall was open when the
    request ended); ``span`` is the request's recording span.

    ``stall_delays`` maps each stall that held the request up (by number) to how long it
    did; the watchdog and the request's own ending may both settle a stall, and the
    first to do so wins (``dict.setdefault`` is atomic).

    ``method`` (a standard method or ``_OTHER``, see :func:`known_method`),
    ``method_original`` (an unknown method as sent) and ``route`` are copied from the
    scope by the watchdog when it finds the request there. The request does not reference
    its scope (which would keep the scope alive as long as the request), and the
    middleware takes it out of the scope when the request ends.
    """

    __slots__ = ("ended", "method", "method_original", "route", "span", "stall_delays", "started")

    def __init__(self, span: trace.Span) -> None:
        self.span = span
        self.started = monotonic()
        self.ended: float | None = None
        self.stall_delays: dict[int, float] | None = None
        self.method = ""
        self.method_original: str | None = None
        self.route: str | None = None

    def described_by(self, scope: Mapping[str, Any]) -> Request:
        """This request, with its method and route template copied from ``scope``."""
        self.method, self.route, self.method_original = RequestSummary.of(scope)
        return self

    @property
    def delayed_by(self) -> float:
        """Seconds this request was held up by stalls it did not cause."""
        return sum(self.stall_delays.values()) if self.stall_delays else 0.0

    def finish(self, open_stall: OpenStall) -> None:
        """The request ends while a stall is open (on the loop thread): the stall is
        settled now, while the request's span is still open, unless the request caused it."""
        self.ended = now = monotonic()
        if open_stall.culprit is not self:
            self.settle(open_stall.number, open_stall.start, now)

    def settle(self, stall: int, start: float, until: float) -> None:
        """Record what stall number ``stall``, begun at ``start``, cost this request up to
        ``until`` (its end or the stall's), once, on its span too."""
        if self.stall_delays is None:
            self.stall_delays = {}
        self.stall_delays.setdefault(stall, max(0.0, until - max(start, self.started)))
        span = self.span
        if span.is_recording():
            span.set_attribute("loopwatch.delayed_by", self.delayed_by)

    def __copy__(self) -> Request:
        return self  # a copy of the scope serves the same request

    def __deepcopy__(self, memo: dict[int, Any]) -> Request:
        return self

    def __repr__(self) -> str:
        return f"<loopwatch.Request {self.method or '?'} {self.route or '?'}>"


def route_template(route: object) -> str | None:
    """The path template of a Starlette or FastAPI route (``scope["route"]``)."""
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    return path if isinstance(path, str) else None


class RequestSummary(NamedTuple):
    """A request found by its ASGI scope (none of its own was kept): its method (see
    :func:`known_method`) and route template, copied when it was found; the scope is not
    kept."""

    method: str
    route: str | None
    method_original: str | None = None

    @classmethod
    def of(cls, scope: Mapping[str, Any]) -> RequestSummary:
        method, original = known_method(scope)
        return cls(method, route_template(scope.get("route")), original)


AnyRequest: TypeAlias = Request | RequestSummary
"""A stall's culprit request, as kept by the middleware or as found by its scope."""


class InFlight(NamedTuple):
    """The requests waiting on a loop while it is stalled: those the middleware keeps a
    :class:`Request` for, how many more were found by their ASGI scope only, and the
    spans current in the tasks of those (tracing inside loopwatch), to link."""

    tracked: list[Request]
    untracked: int
    untracked_spans: list[trace.Span]


NOTHING_IN_FLIGHT = InFlight([], 0, [])


class OpenStall(NamedTuple):
    """A stall the watchdog has seen and not finished reporting."""

    number: int
    start: float
    culprit: AnyRequest | None


class InflightRequests:
    """What the requests served on one loop share with its watchdog: :attr:`open_stall`,
    set while a stall is seen and not yet reported, so that a request ending meanwhile
    settles its own share (see :meth:`Request.finish`)."""

    def __init__(self) -> None:
        self.open_stall: OpenStall | None = None


def kept_request(scopes: Scopes) -> Request | None:
    """The request the middleware keeps in any of ``scopes`` (one request's)."""
    for scope in scopes:
        request = scope.get(REQUEST_KEY)
        if isinstance(request, Request):
            return request
    return None


def stalled_request(thread_id: int, loop: Loop | None) -> AnyRequest | None:
    """The request the stalled loop thread ``thread_id`` serves, found by the HTTP scopes
    in its stack (or in the tasks waiting for its task) and described by the innermost
    (read off-loop, during the stall)."""
    scopes, route = stalled_http(thread_id, loop)
    if not scopes:
        return None
    request = kept_request(scopes)
    if request is None:
        summary = RequestSummary.of(scopes[0])
        return summary if summary.route or not route else summary._replace(route=route)
    request.described_by(scopes[0])
    if not request.route:  # a route the scope does not name (Litestar, Quart, Django)
        request.route = route
    return request


def requests_waiting_on(loop: Loop) -> InFlight:
    """The unfinished requests whose tasks are alive on ``loop`` (from any thread).

    During a stall these tasks all wait on the loop. ``asyncio.all_tasks`` is written to
    be read from other threads (a trio run's tasks are listed by :meth:`TrioLoop.tasks`);
    if they cannot be read, no request is found.
    """
    try:
        if isinstance(loop, TrioLoop):
            tasks = loop.tasks(MAX_TASKS)
        else:
            tasks = list(asyncio.all_tasks(loop))
    except RuntimeError:
        return NOTHING_IN_FLIGHT
    tracked: dict[int, Request] = {}  # tasks with different scopes may serve one request
    untracked = 0
    spans: list[trace.Span] = []
    for task, scopes in tasks_serving_http(loop, tasks):
        request = kept_request(scopes)
        if request is None:
            untracked += 1
            span = current_span_in(task_context(task))
            if span is not None:
                spans.append(span)
        elif request.ended is None:
            tracked[id(request)] = request
    return InFlight(list(tracked.values()), untracked, spans)


def victims(
    candidates: list[Request], start: float, end: float, culprit: AnyRequest | None
) -> list[Request]:
    """The requests among ``candidates``, other than ``culprit``, in flight during
    ``[start, end]``."""
    return [
        request
        for request in candidates
        if request is not culprit
        and request.started < end
        and (request.ended is None or request.ended > start)
    ]
