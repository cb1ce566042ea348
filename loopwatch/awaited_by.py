"""The tasks that wait for a task, found from the watchdog thread while the loop is stalled.

Quart and Django run a view in a child task and wait for it in the task that holds the
request's ASGI scope, so the request of a stall is found by following the tasks that wait
for the running one. Python 3.14 records these links for ``asyncio.capture_call_graph``;
loopwatch reads the links asyncio keeps on every version it supports (the C and the
Python task alike):

- a task suspended on a future holds it in ``_fut_waiter`` (``await task``, or the
  future that ``asyncio.wait``, ``gather``, ``shield`` or ``wait_for`` waits on);
- the awaited task's done-callbacks hold that future: in a closure (``wait``, ``gather``,
  ``shield``), in a ``functools.partial`` (``wait_for`` on 3.10-3.11), or as the bound
  object (a task's own wake-up method; an ``asyncio.TaskGroup``, whose ``_parent_task``
  waits for its children).

Only attributes are read (no asyncio call, no framework code), the walk is bounded, and an
error ends it with what was found so far (logged once): the loop thread is stalled and
must not be harmed by a look at its tasks.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Iterator
from typing import Any

logger = logging.getLogger("loopwatch")

MAX_LEVELS = 8
"""Awaiting tasks followed up from the running task (a view's task, the request's task,
and a few more for frameworks that nest task groups)."""

MAX_CALLBACKS = 32
"""Done-callbacks of one future looked into."""

_failed = False


def awaiting_tasks(task: asyncio.Future[Any], tasks: list[asyncio.Task[Any]]) -> list[Any]:
    """The tasks among ``tasks`` that wait for ``task``, directly or through the tasks that
    wait for those, nearest first (at most :data:`MAX_LEVELS` levels up)."""
    found: list[Any] = []
    try:
        waiting_on: dict[int, list[Any]] = {}
        for other in tasks:
            waiter = getattr(other, "_fut_waiter", None)
            if waiter is not None:
                waiting_on.setdefault(id(waiter), []).append(other)
        seen = {id(task)}
        level: list[Any] = [task]
        for _ in range(MAX_LEVELS):
            parents: list[Any] = []
            for awaited in level:
                for parent in _waiting_for(awaited, waiting_on):
                    if id(parent) not in seen:
                        seen.add(id(parent))
                        parents.append(parent)
            if not parents:
                break
            found.extend(parents)
            level = parents
    except Exception:
        _log_once()
    return found


def _waiting_for(future: Any, waiting_on: dict[int, list[Any]]) -> Iterator[Any]:
    """The tasks suspended on ``future`` or on a future its done-callbacks hold."""
    yield from waiting_on.get(id(future), ())
    callbacks = getattr(future, "_callbacks", None) or ()
    for entry in list(callbacks)[:MAX_CALLBACKS]:
        callback = entry[0] if isinstance(entry, tuple) else entry
        bound = getattr(callback, "__self__", None)
        if _is_task(bound):  # a task's own wake-up: it awaits ``future``
            yield bound
        elif bound is not None:  # an asyncio.TaskGroup: its parent waits for its children
            parent = _instance_dict(bound).get("_parent_task")
            if _is_task(parent):
                yield parent
        else:
            for held in _futures_held_by(callback):
                yield from waiting_on.get(id(held), ())


def _futures_held_by(callback: Any) -> Iterator[Any]:
    """The futures a plain done-callback holds: its partial's arguments, or in its closure."""
    if isinstance(callback, functools.partial):
        yield from (arg for arg in callback.args if asyncio.isfuture(arg))
        return
    for cell in getattr(callback, "__closure__", None) or ():
        try:
            contents = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if asyncio.isfuture(contents):
            yield contents


def _is_task(obj: object) -> bool:
    """Whether ``obj`` is a task: the C one, the pure-Python one (not a subclass of the C
    one), or another class asyncio accepts as a future with a coroutine."""
    return asyncio.isfuture(obj) and hasattr(type(obj), "get_coro")


def _instance_dict(obj: Any) -> dict[str, Any]:
    """``obj``'s own attributes (no property or ``__getattr__`` runs)."""
    try:
        attributes: dict[str, Any] = object.__getattribute__(obj, "__dict__")
    except AttributeError:
        return {}
    return attributes


def _log_once() -> None:
    global _failed
    if not _failed:
        _failed = True
        logger.exception("loopwatch could not follow the tasks awaiting the stalled one")
