"""Requests in flight on a loop, so a stall can name its culprit request and its victims.

For a request with a recording span, the middleware puts a :class:`Request` in a context
variable for the time it is served (so that a stall's share can be put on the span before
it ends); a request without one gets nothing. Nothing keeps a list: the watchdog thread
finds the requests when a stall happens, the culprit in the stalled task's context (else
by its ASGI scope in the stalled stack), the victims in the contexts (else the coroutine
chains) of the tasks waiting on the loop.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Mapping, MutableMapping
from time import monotonic
from typing import Any, NamedTuple, TypeAlias

from opentelemetry import trace

from .asgi_scope import http_scope_in_stack, tasks_serving_http
from .task_context import current_span_in, task_context

CURRENT_REQUEST: contextvars.ContextVar[Request | None] = contextvars.ContextVar(
    "loopwatch_request", default=None
)
"""The request a task serves; tasks it spawns inherit it. Such tasks may outlive the
request: it then keeps only its description and span alive, not its scope (see
:meth:`Request.finish`)."""


class Request:
    """One HTTP request being served. ``started`` and ``ended`` are ``time.monotonic()``
    readings; ``span`` is the request's recording span, if any.

    ``stall_delays`` maps each stall that held the request up (by number) to how long it
    did; the watchdog and the request's own ending may both settle a stall, and the
    first to do so wins (``dict.setdefault`` is atomic).

    The ASGI scope is held only while the request is in flight: a finished request keeps
    its method and matched route, not the scope and everything it references. Contexts
    captured during the request (timer handles, future callbacks) keep the request alive
    after it ends; with its scope, under uvicorn, that made 4 times the garbage
    collections and p99 latency went from 7 to 14-25 ms (hello app, wrk).
    """

    __slots__ = ("_method", "_route", "ended", "scope", "span", "stall_delays", "started")

    def __init__(self, scope: MutableMapping[str, Any], span: trace.Span | None) -> None:
        self.scope: MutableMapping[str, Any] | None = scope
        self.span = span
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
        return route_template(scope.get("route") if scope is not None else self._route)

    @property
    def delayed_by(self) -> float:
        """Seconds this request was held up by stalls it did not cause."""
        return sum(self.stall_delays.values()) if self.stall_delays else 0.0

    def finish(self, open_stall: OpenStall | None) -> None:
        """The request is done (on the loop thread). A stall the watchdog has not reported
        yet is settled now, while the request's span is still open."""
        self.ended = now = monotonic()
        scope = self.scope
        if scope is not None:  # keep what describes it, not the scope (see the class)
            self._method, self._route = scope.get("method"), scope.get("route")
            self.scope = None  # after the copies: a reader on another thread sees either
        if open_stall is not None and open_stall.culprit is not self:
            self.settle(open_stall.number, open_stall.start, now)

    def settle(self, stall: int, start: float, until: float) -> None:
        """Record what stall number ``stall``, begun at ``start``, cost this request up to
        ``until`` (its end or the stall's), once, on its span too."""
        if self.stall_delays is None:
            self.stall_delays = {}
        self.stall_delays.setdefault(stall, max(0.0, until - max(start, self.started)))
        span = self.span
        if span is not None and span.is_recording():
            span.set_attribute("loopwatch.delayed_by", self.delayed_by)


def route_template(route: object) -> str | None:
    """The path template of a Starlette or FastAPI route (``scope["route"]``)."""
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    return path if isinstance(path, str) else None


class RequestSummary(NamedTuple):
    """A request found by its ASGI scope (none of its own was kept): its method and route
    template, copied when it was found; the scope is not kept."""

    method: str
    route: str | None

    @classmethod
    def of(cls, scope: Mapping[str, Any]) -> RequestSummary:
        return cls(str(scope.get("method") or ""), route_template(scope.get("route")))


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


def request_in(context: contextvars.Context | None) -> Request | None:
    """The request whose task runs in ``context`` (a task's context, read off-loop)."""
    return context.get(CURRENT_REQUEST) if context is not None else None


def stalled_request(context: contextvars.Context | None, thread_id: int) -> AnyRequest | None:
    """The request the stalled task serves: kept in its context, else found by its ASGI
    scope in the stack of the loop thread ``thread_id`` (read off-loop, during the stall)."""
    request = request_in(context)
    if request is not None:
        return request
    scope = http_scope_in_stack(thread_id)
    return RequestSummary.of(scope) if scope is not None else None


def requests_waiting_on(loop: asyncio.AbstractEventLoop) -> InFlight:
    """The unfinished requests whose tasks are alive on ``loop`` (from any thread).

    During a stall these tasks all wait on the loop. ``asyncio.all_tasks`` is written to
    be read from other threads; if it cannot be read, no request is found.
    """
    try:
        tasks = asyncio.all_tasks(loop)
    except RuntimeError:
        return NOTHING_IN_FLIGHT
    tracked: dict[int, Request] = {}  # several tasks may serve one request
    others: list[asyncio.Task[Any]] = []
    for task in tasks:
        request = request_in(task_context(task))
        if request is None:
            others.append(task)
        elif request.ended is None:
            tracked[id(request)] = request
    serving = tasks_serving_http(loop, others)
    spans = [current_span_in(task_context(task)) for task in serving]
    return InFlight(
        list(tracked.values()), len(serving), [span for span in spans if span is not None]
    )


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
