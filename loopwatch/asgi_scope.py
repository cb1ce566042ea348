"""Requests found by their ASGI scope, from the watchdog thread.

:class:`~loopwatch.middleware.LoopWatchMiddleware` keeps no state for a request that has
no span to mark: such a request is found when a stall happens instead, by the ``scope``
that every ASGI layer serving it holds as a local variable, in the stalled stack (the
culprit) or in the suspended coroutine chains of the tasks waiting on the loop (the
victims). Only frames whose code has a variable named ``scope`` are looked into.
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


def http_scope_in_stack(thread_id: int) -> Mapping[str, Any] | None:
    """The innermost HTTP scope among the frames of ``thread_id``'s stack: the one the
    router has matched a route in, if any."""
    frame: FrameType | None = sys._current_frames().get(thread_id)
    for _ in range(MAX_DEPTH):
        if frame is None:
            return None
        scope = _http_scope_of(frame)
        if scope is not None:
            return scope
        frame = frame.f_back
    return None


def tasks_serving_http(
    loop: asyncio.AbstractEventLoop, tasks: list[asyncio.Task[Any]]
) -> list[asyncio.Task[Any]]:
    """One task per distinct HTTP scope served by ``tasks`` (at most :data:`MAX_TASKS` of
    them), except the task running on ``loop``: the requests a stall holds up."""
    try:
        running = asyncio.current_task(loop)
    except RuntimeError:
        running = None
    found: dict[int, asyncio.Task[Any]] = {}
    for task in tasks[:MAX_TASKS]:
        if task is running:
            continue
        get_coro = getattr(task, "get_coro", None)  # a Task from a custom task factory
        scope = _http_scope_in_chain(get_coro()) if get_coro is not None else None
        if scope is not None:
            found.setdefault(id(scope), task)  # one request, several tasks: counted once
    return list(found.values())


def _http_scope_in_chain(awaitable: Any) -> Mapping[str, Any] | None:
    """The outermost HTTP scope along a task's chain of awaited coroutines."""
    for _ in range(MAX_DEPTH):
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "gi_frame", None)
        if frame is None:
            return None
        scope = _http_scope_of(frame)
        if scope is not None:
            return scope
        awaitable = getattr(awaitable, "cr_await", None) or getattr(awaitable, "gi_yieldfrom", None)
    return None


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
