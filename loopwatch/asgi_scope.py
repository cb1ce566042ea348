"""Requests found by their ASGI scope, from the watchdog thread.

A request is found when a stall happens, by the ``scope`` that every ASGI layer serving
it holds as a local variable, in the stalled stack (the culprit) or in the suspended
coroutine chains of the tasks waiting on the loop (the victims). Only frames whose code
has a variable named ``scope`` are looked into.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping
from types import CodeType, FrameType
from typing import Any

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


def http_scopes_in_stack(thread_id: int) -> Scopes:
    """The HTTP scopes among the frames of ``thread_id``'s stack, innermost first (the
    first is the one the router has matched a route in, if any)."""
    scopes: Scopes = []
    frame: FrameType | None = sys._current_frames().get(thread_id)
    for _ in range(MAX_DEPTH):
        if frame is None:
            break
        _add_http_scope(frame, scopes)
        frame = frame.f_back
    return scopes


def tasks_serving_http(
    loop: asyncio.AbstractEventLoop, tasks: list[asyncio.Task[Any]]
) -> list[tuple[asyncio.Task[Any], Scopes]]:
    """One task per request served by ``tasks`` (at most :data:`MAX_TASKS` of them), told
    apart by the outermost HTTP scope along their chains of awaited coroutines, with the
    HTTP scopes along the chain, outermost first; the task running on ``loop`` is left
    out. These are the requests a stall holds up."""
    try:
        running = asyncio.current_task(loop)
    except RuntimeError:
        running = None
    found: dict[int, tuple[asyncio.Task[Any], Scopes]] = {}
    for task in tasks[:MAX_TASKS]:
        if task is running:
            continue
        get_coro = getattr(task, "get_coro", None)  # a Task from a custom task factory
        scopes = _http_scopes_in_chain(get_coro()) if get_coro is not None else []
        if scopes:
            found.setdefault(id(scopes[0]), (task, scopes))  # one request, several tasks
    return list(found.values())


def _http_scopes_in_chain(awaitable: Any) -> Scopes:
    """The HTTP scopes along a task's chain of awaited coroutines, outermost first."""
    scopes: Scopes = []
    for _ in range(MAX_DEPTH):
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "gi_frame", None)
        if frame is None:
            break
        _add_http_scope(frame, scopes)
        awaitable = getattr(awaitable, "cr_await", None) or getattr(awaitable, "gi_yieldfrom", None)
    return scopes


def _add_http_scope(frame: FrameType, scopes: Scopes) -> None:
    """Add the HTTP scope ``frame`` holds, if any and not the last one added."""
    scope = _http_scope_of(frame)
    if scope is not None and (not scopes or scopes[-1] is not scope):
        scopes.append(scope)


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
