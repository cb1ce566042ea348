"""Requests found by their ASGI scope, from the watchdog thread.

A request is found when a stall happens, by the ``scope`` that every ASGI layer serving
it holds as a local variable, in the stalled stack (the culprit) or in the suspended
coroutine chains of the tasks waiting on the loop (the victims). Only frames whose code
has a variable named ``scope`` are looked into.

Quart and Django run the view in a child task: the stalled stack then holds no scope, and
the culprit request is found in the tasks waiting for the running one (see
:mod:`.awaited_by`; on trio, the tasks whose nurseries hold it), which are no victims of it.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping
from types import CodeType, FrameType
from typing import Any, NamedTuple

from .awaited_by import awaiting_tasks
from .routes import frame_route, scope_route
from .trio_loop import TrioLoop

SCOPE_VARIABLE = "scope"

MAX_DEPTH = 512
"""Frames or awaited coroutines followed per stack or task (a stalled stack may be deep:
recursion in the app's own code)."""

MAX_TASKS = 2000
"""Tasks looked into per stall: a bound on the watchdog's work (and so on the GIL time it
takes from the stalled loop thread) on a loop with very many tasks."""


Scopes = list[Mapping[str, Any]]
"""The HTTP scopes held along one stack or chain: layers may pass a request's scope on,
or a copy of it, and routers add the matched route to the one they hand down."""


class StalledHttp(NamedTuple):
    """What the stalled loop serves: the HTTP scopes, innermost first (the first is the one
    the router has matched a route in, if any), and the route template found with them
    (Litestar's in the scope, Quart's and Django's in their request objects)."""

    scopes: Scopes
    route: str | None


Loop = asyncio.AbstractEventLoop | TrioLoop


def stalled_http(thread_id: int, loop: Loop | None) -> StalledHttp:
    """The HTTP scopes of the request that the stalled loop thread ``thread_id`` serves:
    in its stack, else in the tasks waiting for the running task (a view run in a child
    task; none if ``loop`` is ``None``), nearest first."""
    scopes: Scopes = []
    routes: list[str] = []
    frame: FrameType | None = sys._current_frames().get(thread_id)
    for _ in range(MAX_DEPTH):
        if frame is None:
            break
        _add_http_scope(frame, scopes, routes)
        frame = frame.f_back
    if not scopes and loop is not None:
        for task in _awaiting_running(loop)[1:]:
            chain_routes: list[str] = []
            scopes.extend(reversed(_http_in_chain(_coro_of(task), chain_routes)))
            routes.extend(reversed(chain_routes))
            if scopes:
                break
    routes.extend(route for route in map(scope_route, scopes) if route)
    return StalledHttp(scopes, routes[0] if routes else None)


def tasks_serving_http(loop: Loop, tasks: list[Any]) -> list[tuple[Any, Scopes]]:
    """One task per request served by ``tasks`` (at most :data:`MAX_TASKS` of them), told
    apart by the outermost HTTP scope along their chains of awaited coroutines, with the
    HTTP scopes along the chain, outermost first; the task running on ``loop`` is left
    out, with the tasks waiting for it (they serve the culprit request). These are the
    requests a stall holds up."""
    tasks = tasks[:MAX_TASKS]
    culprit = {id(task) for task in _awaiting_running(loop, tasks)}
    found: dict[int, tuple[Any, Scopes]] = {}
    for task in tasks:
        if id(task) in culprit:
            continue
        scopes = _http_in_chain(_coro_of(task))
        if scopes:
            found.setdefault(id(scopes[0]), (task, scopes))  # one request, several tasks
    return list(found.values())


def _awaiting_running(loop: Loop, tasks: list[Any] | None = None) -> list[Any]:
    """The task running on ``loop`` and the tasks waiting for it, nearest first (none
    outside a task, or if the loop's tasks cannot be read)."""
    if isinstance(loop, TrioLoop):
        return loop.running_chain()
    try:
        running = asyncio.current_task(loop)
        if running is None:
            return []
        if tasks is None:
            tasks = list(asyncio.all_tasks(loop))[:MAX_TASKS]
    except RuntimeError:  # the set of tasks changed while it was read
        return []
    return [running, *awaiting_tasks(running, tasks)]


def _coro_of(task: Any) -> Any:
    get_coro = getattr(task, "get_coro", None)  # a Task from a custom task factory
    if get_coro is not None:
        return get_coro()
    return getattr(task, "coro", None)  # a trio task


def _http_in_chain(awaitable: Any, routes: list[str] | None = None) -> Scopes:
    """The HTTP scopes along a task's chain of awaited coroutines, outermost first (and
    the route templates of request objects along it into ``routes``, if given)."""
    scopes: Scopes = []
    for _ in range(MAX_DEPTH):
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "gi_frame", None)
        if frame is None:
            break
        _add_http_scope(frame, scopes, routes)
        awaitable = getattr(awaitable, "cr_await", None) or getattr(awaitable, "gi_yieldfrom", None)
    return scopes


def _add_http_scope(frame: FrameType, scopes: Scopes, routes: list[str] | None) -> None:
    """Add the HTTP scope ``frame`` holds, if any and not the last one added, and to
    ``routes`` (if given) the route of the request object it holds, if any."""
    scope = _http_scope_of(frame)
    if scope is not None and (not scopes or scopes[-1] is not scope):
        scopes.append(scope)
    if routes is not None:
        route = frame_route(frame)
        if route is not None:
            routes.append(route)


def _http_scope_of(frame: FrameType) -> Mapping[str, Any] | None:
    if not _has_scope_variable(frame.f_code):
        return None
    scope = frame.f_locals.get(SCOPE_VARIABLE)
    if isinstance(scope, Mapping) and scope.get("type") == "http":
        return scope
    return None


def _has_scope_variable(code: CodeType) -> bool:
    return (
        SCOPE_VARIABLE in code.co_varnames
        or SCOPE_VARIABLE in code.co_cellvars
        or SCOPE_VARIABLE in code.co_freevars
    )
