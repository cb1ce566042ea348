"""Time spent in garbage collection, from ``gc.callbacks`` (process-wide, shared), and
where each collection on a watched loop's thread began.

A collection holds the GIL throughout: no sample of the loop can be taken while it lasts,
and a sample taken after it shows whatever ran next. So the callback notes, when a
collection starts on a watched thread, the frame that triggered it (an allocation there,
or a call of ``gc.collect()``): its code object, line and instruction, read from the one
frame under the callback (no stack walk, nothing formatted). The watchdog turns that into
the stall's culprit.
"""

from __future__ import annotations

import gc
import sys
import threading
from threading import get_ident
from time import monotonic
from types import CodeType
from typing import Any, NamedTuple


class Collection(NamedTuple):
    """One collection on a watched thread: the frame that triggered it (``lasti`` is the
    offset of the instruction it ran at), when it started and ended (``None``: going on)."""

    code: CodeType
    line: int
    lasti: int
    module: str
    started: float
    ended: float | None


class GcTrigger:
    """The slot the callback writes for one watched thread (on that thread only).

    ``code``..``started`` describe the latest collection, ``ended`` is ``None`` while it
    lasts; ``long`` keeps the latest one that lasted ``min_duration`` or more (short ones
    that follow do not overwrite it).
    """

    __slots__ = ("code", "ended", "lasti", "line", "long", "min_duration", "module", "started")

    def __init__(self, min_duration: float) -> None:
        self.min_duration = min_duration
        self.code: CodeType | None = None
        self.line = 0
        self.lasti = 0
        self.module = ""
        self.started = 0.0
        self.ended: float | None = None
        self.long: Collection | None = None

    def overlapping(self, start: float, end: float) -> Collection | None:
        """The collection on this thread that overlaps [start, end]: the one going on (or
        just ended, if long), else the latest long one. Read from another thread: read
        again if the callback was rewriting the fields meanwhile."""
        for _ in range(3):
            started, ended, code = self.started, self.ended, self.code
            line, lasti, module = self.line, self.lasti, self.module
            if ended == 0.0 or self.started != started:
                continue  # a collection began while we read
            long_enough = (
                ended is not None and ended >= start and ended - started >= self.min_duration
            )
            if code is not None and started <= end and (ended is None or long_enough):
                return Collection(code, line, lasti, module, started, ended)
            long = self.long
            if long is not None and long.started <= end and (long.ended or end) >= start:
                return long
            return None
        return None


class GcClock:
    """Accumulates in ``total`` the wall time of every finished collection, in any thread,
    and notes in each watched thread's :class:`GcTrigger` where its collections began."""

    def __init__(self) -> None:
        self.total = 0.0
        self._started: float | None = None
        self._users = 0
        self._lock = threading.Lock()
        self._watched: dict[int, GcTrigger] = {}
        self._watchers: dict[int, int] = {}

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        now = monotonic()
        slot = self._watched.get(get_ident())
        if phase == "start":
            self._started = now
            if slot is not None:
                try:
                    frame = sys._getframe(1)  # what triggered it: under this callback
                except ValueError:  # no Python frame on this thread
                    return
                slot.ended = 0.0  # mark the fields as being rewritten
                slot.code = frame.f_code
                slot.line = frame.f_lineno or 0
                slot.lasti = frame.f_lasti
                slot.module = frame.f_globals.get("__name__", "?")
                slot.started = now
                slot.ended = None
        elif self._started is not None:
            self.total += now - self._started
            self._started = None
            if slot is not None and slot.ended is None and slot.code is not None:
                slot.ended = now
                if now - slot.started >= slot.min_duration:
                    slot.long = Collection(
                        slot.code, slot.line, slot.lasti, slot.module, slot.started, now
                    )

    def total_at(self, now: float) -> float:
        """``total`` plus the part of a collection still going on (or whose end the
        callback has not recorded yet) up to ``now``."""
        for _ in range(3):
            total, started = self.total, self._started
            if total == self.total:
                return total + (now - started if started is not None else 0.0)
        return self.total

    def watch(self, thread_id: int, min_duration: float) -> GcTrigger:
        """Note where collections on ``thread_id`` begin, keeping those of
        ``min_duration`` or more; pair with :meth:`unwatch`."""
        with self._lock:
            slot = self._watched.get(thread_id)
            if slot is None:
                slot = self._watched[thread_id] = GcTrigger(min_duration)
            slot.min_duration = min(slot.min_duration, min_duration)
            self._watchers[thread_id] = self._watchers.get(thread_id, 0) + 1
            return slot

    def unwatch(self, thread_id: int) -> None:
        with self._lock:
            left = self._watchers.get(thread_id, 0) - 1
            if left > 0:
                self._watchers[thread_id] = left
            else:
                self._watchers.pop(thread_id, None)
                self._watched.pop(thread_id, None)

    def acquire(self) -> None:
        """Register in ``gc.callbacks`` for the first user."""
        with self._lock:
            self._users += 1
            if self._users == 1:
                gc.callbacks.append(self)

    def release(self) -> None:
        """Unregister when the last user is gone."""
        with self._lock:
            self._users = max(0, self._users - 1)
            if self._users == 0 and self in gc.callbacks:
                gc.callbacks.remove(self)


GC_CLOCK = GcClock()
