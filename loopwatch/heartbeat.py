"""The only part of loopwatch that runs on the event loop: a self-rescheduling timer.

Each tick records when it was due and when it actually ran into a bounded deque, for
the watchdog thread to read. It does no I/O, no export and no formatting.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from time import monotonic, process_time, thread_time
from typing import NamedTuple

from .gc_clock import GC_CLOCK


class Tick(NamedTuple):
    """One heartbeat: ``ran - due`` is the loop delay.

    The three counters let the watchdog tell, between two ticks, how much time went to
    garbage collection, to the loop thread's CPU and to the whole process's CPU.
    """

    due: float
    ran: float
    gc_total: float
    thread_cpu: float
    process_cpu: float


class Heartbeat:
    """Schedules itself every ``interval`` seconds on ``loop`` and records each tick."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        interval: float,
        wake_watchdog: threading.Event,
    ) -> None:
        self.loop = loop
        self.interval = interval
        self.ticks: deque[Tick] = deque(maxlen=4096)
        self.thread_id: int | None = None
        self.native_thread_id: int | None = None
        self.thread_name = ""
        self.last_ran: float | None = None
        self.watchdog_waiting = False
        self._wake_watchdog = wake_watchdog
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self._running = False

    def start(self) -> None:
        """Begin ticking; safe to call from any thread."""
        self._running = True
        self.loop.call_soon_threadsafe(self._first_tick)

    def stop(self) -> None:
        """Stop rescheduling; safe to call from any thread."""
        self._running = False
        handle = self._handle
        if handle is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                self.loop.call_soon_threadsafe(handle.cancel)

    def _first_tick(self) -> None:
        if not self._running:
            return
        thread = threading.current_thread()
        self.thread_id = thread.ident
        self.native_thread_id = threading.get_native_id()
        self.thread_name = thread.name
        self._due = monotonic()
        self._tick()

    def _tick(self) -> None:
        now = monotonic()
        self.ticks.append(
            Tick(
                self._due,
                now,
                GC_CLOCK.total,
                thread_time(),
                process_time(),
            )
        )
        self.last_ran = now
        if self.watchdog_waiting:
            self._wake_watchdog.set()
        if self._running:
            self._due = now + self.interval
            self._handle = self.loop.call_later(self.interval, self._tick)
