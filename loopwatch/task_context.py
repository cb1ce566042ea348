"""What was running on the loop: the current task, its name and its ``contextvars``.

Read from the watchdog thread while the loop thread is stalled. ``asyncio.current_task``
accepts a loop from another thread on Python 3.10-3.13. The task's context comes from
``Task.get_context()`` on 3.12+. On 3.10 and 3.11 the C task keeps its context private,
but the garbage collector's traversal visits it first (``TaskObj_traverse`` visits
``task_context`` before anything else), so :func:`gc.get_referents` finds it without
touching asyncio internals; the pure-Python task keeps it in ``_context``.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
from typing import Any, NamedTuple

from opentelemetry import context as otel_context
from opentelemetry import trace


class TaskSnapshot(NamedTuple):
    """The task running on the loop at sampling time (all ``None`` outside a task)."""

    name: str | None
    context: contextvars.Context | None


NO_TASK = TaskSnapshot(None, None)


def snapshot_task(loop: asyncio.AbstractEventLoop) -> TaskSnapshot:
    """The task currently running on ``loop`` and its context."""
    try:
        task = asyncio.current_task(loop)
    except RuntimeError:
        return NO_TASK
    if task is None:
        return NO_TASK
    return TaskSnapshot(task.get_name(), task_context(task))


def task_context(task: object) -> contextvars.Context | None:
    """The ``contextvars.Context`` an asyncio or trio task runs its steps in."""
    get_context = getattr(task, "get_context", None)
    if get_context is not None:
        context: contextvars.Context = get_context()
        return context
    for attribute in ("context", "_context"):  # trio's; the pure-Python asyncio task's
        kept = getattr(task, attribute, None)
        if isinstance(kept, contextvars.Context):
            return kept
    for referent in gc.get_referents(task):
        if isinstance(referent, contextvars.Context):
            return referent
    return None


def _find_otel_context_variable() -> contextvars.ContextVar[Any] | None:
    """The context variable OpenTelemetry keeps its current context in, if it uses one.

    Found through the public API: a marker context is attached and looked up among the
    current ``contextvars``. ``None`` if OpenTelemetry keeps its context elsewhere.
    """
    marker = otel_context.Context()
    token = otel_context.attach(marker)
    try:
        for variable, value in contextvars.copy_context().items():
            if value is marker:
                return variable
    finally:
        otel_context.detach(token)
    return None


OTEL_CONTEXT_VARIABLE = _find_otel_context_variable()
"""OpenTelemetry's context variable; unset in a context, no OpenTelemetry context (and so
no span) is attached there."""


def _find_otel_span_key() -> str | None:
    """The key an OpenTelemetry context holds its current span under, found through the
    public API: the only key of an empty context with a span set in it."""
    keys = list(trace.set_span_in_context(trace.INVALID_SPAN, otel_context.Context()))
    return keys[0] if len(keys) == 1 else None


OTEL_SPAN_KEY = _find_otel_span_key()
"""Reading the span under this key is one dictionary lookup; ``trace.get_current_span``
is several Python calls (a cost on every traced request)."""


def current_span_in(context: contextvars.Context | None) -> trace.Span | None:
    """The OpenTelemetry span that is current inside ``context``, if any."""
    if context is None or OTEL_CONTEXT_VARIABLE is None:
        return None
    attached = context.get(OTEL_CONTEXT_VARIABLE)
    if attached is None:
        return None
    span = trace.get_current_span(attached)
    return span if span.get_span_context().is_valid else None
