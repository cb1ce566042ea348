"""Active and idle time of a stdlib selector event loop, measured around ``select()``.

The loop calls ``select()`` once per iteration; timing that call tells when the loop
was idle (waiting for I/O or a timer) and when it was busy running callbacks, with no
per-callback cost. uvloop and the Windows proactor loop have no Python-level selector,
so this is only installed on loops that do.
"""

from __future__ import annotations

import asyncio
import selectors
from time import monotonic
from typing import Any


class SelectorClock:
    """A transparent wrapper of a loop's selector that times each ``select()`` call.

    ``busy_since`` is when the current busy period began (the last ``select()`` return);
    ``last_busy_start`` is when the previous busy period began. Reads from other threads
    are safe: each field is a single float written by the loop thread.
    """

    def __init__(self, selector: selectors.BaseSelector) -> None:
        self.wrapped = selector
        now = monotonic()
        self.busy_since = now
        self.last_busy_start = now
        self.idle_since: float | None = None
        self.idle_total = 0.0
        self.active_total = 0.0
        self.register = selector.register
        self.unregister = selector.unregister
        self.modify = selector.modify
        self.get_key = selector.get_key
        self.get_map = selector.get_map
        self.close = selector.close

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        entered = monotonic()
        self.active_total += entered - self.busy_since
        self.last_busy_start = self.busy_since
        self.idle_since = entered
        try:
            return self.wrapped.select(timeout)
        finally:
            woke = monotonic()
            self.idle_since = None
            self.idle_total += woke - entered
            self.busy_since = woke

    def totals(self) -> tuple[float, float]:
        """Active and idle seconds so far, counting the period in progress."""
        now = monotonic()
        idle_since = self.idle_since
        if idle_since is not None:
            return self.active_total, self.idle_total + (now - idle_since)
        return self.active_total + (now - self.busy_since), self.idle_total

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)


def install(loop: asyncio.AbstractEventLoop) -> SelectorClock | None:
    """Wrap the loop's selector; ``None`` for loops without one (uvloop, proactor)."""
    selector = getattr(loop, "_selector", None)
    if isinstance(selector, SelectorClock):
        return selector
    if not isinstance(selector, selectors.BaseSelector):
        return None
    clock = SelectorClock(selector)
    loop._selector = clock  # type: ignore[attr-defined]
    return clock


def uninstall(loop: asyncio.AbstractEventLoop, clock: SelectorClock) -> None:
    """Put the original selector back, if ours is still in place."""
    if getattr(loop, "_selector", None) is clock:
        loop._selector = clock.wrapped  # type: ignore[attr-defined]
