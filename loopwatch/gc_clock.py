"""Time spent in garbage collection, from ``gc.callbacks`` (process-wide, shared)."""

from __future__ import annotations

import gc
import threading
from time import monotonic
from typing import Any


class GcClock:
    """Accumulates in ``total`` the wall time of every finished collection, in any thread."""

    def __init__(self) -> None:
        self.total = 0.0
        self._started: float | None = None
        self._users = 0
        self._lock = threading.Lock()

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = monotonic()
        elif self._started is not None:
            self.total += monotonic() - self._started
            self._started = None

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
