"""``loopwatch.suppress()``: deliberate blocking that should not be reported.

Inside a task (asyncio's or trio's) the flag lives in a context variable, so an
``await`` inside the block does not leak it to other tasks. Outside a task (plain
callbacks, start-up code) it is a per-thread counter. The watchdog reads either from its own thread.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import sys
import threading
from collections import Counter
from collections.abc import Callable
from contextlib import ContextDecorator
from types import TracebackType
from typing import Any, TypeVar

_F = TypeVar("_F", bound=Callable[..., Any])

_SUPPRESSED: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "loopwatch_suppressed", default=False
)
_THREAD_DEPTH: Counter[int] = Counter()


class suppress(ContextDecorator):
    """Do not report stalls that happen inside this block (metrics still count them)."""

    def __init__(self) -> None:
        self._tokens: list[contextvars.Token[bool] | None] = []

    def __enter__(self) -> suppress:
        if _in_task():
            self._tokens.append(_SUPPRESSED.set(True))
        else:
            self._tokens.append(None)
            _THREAD_DEPTH[threading.get_ident()] += 1
        return self

    def __call__(self, func: _F) -> _F:
        """Decorate a function or a coroutine function."""
        if not inspect.iscoroutinefunction(func):
            return super().__call__(func)

        @functools.wraps(func)
        async def suppressed(*args: Any, **kwargs: Any) -> Any:
            with self:
                return await func(*args, **kwargs)

        return suppressed  # type: ignore[return-value]

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        token = self._tokens.pop()
        if token is not None:
            _SUPPRESSED.reset(token)
            return
        ident = threading.get_ident()
        _THREAD_DEPTH[ident] -= 1
        if _THREAD_DEPTH[ident] <= 0:
            del _THREAD_DEPTH[ident]


def _in_task() -> bool:
    """Whether an asyncio or trio task runs (trio only where the app imported it)."""
    try:
        return asyncio.current_task() is not None
    except RuntimeError:
        pass
    trio = sys.modules.get("trio")
    if trio is None:
        return False
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True


def is_suppressed(context: contextvars.Context | None, thread_id: int) -> bool:
    """Whether a stall seen in ``context`` (the running task's) on ``thread_id`` is suppressed."""
    if context is not None:
        return context.get(_SUPPRESSED, False)
    return _THREAD_DEPTH.get(thread_id, 0) > 0
