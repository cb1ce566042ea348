"""How much a thread ran or waited for a CPU, from Linux's ``/proc/.../schedstat``.

A CPU-bound loop thread on a busy machine may get only a fraction of a core, so its CPU
time alone can look like waiting. The scheduler also counts the time the thread was
runnable but queued; CPU plus queueing separates "busy" from "blocked" under load.
Read on the watchdog thread only (it is a small procfs read).
"""

from __future__ import annotations

import os
from time import monotonic
from typing import NamedTuple


class SchedSnapshot(NamedTuple):
    """A thread's scheduler counters at ``at`` (monotonic seconds)."""

    at: float
    runnable: float


class ThreadSchedStat:
    """Reads one thread's schedstat; :meth:`read` returns ``None`` where it is unavailable."""

    def __init__(self, native_id: int) -> None:
        self._path = f"/proc/self/task/{native_id}/schedstat"
        self.available = self.read() is not None

    def read(self) -> SchedSnapshot | None:
        try:
            fd = os.open(self._path, os.O_RDONLY)
        except OSError:
            return None
        try:
            fields = os.read(fd, 128).split()
        finally:
            os.close(fd)
        try:
            return SchedSnapshot(monotonic(), (int(fields[0]) + int(fields[1])) / 1e9)
        except (IndexError, ValueError):
            return None


def runnable_share(first: SchedSnapshot, last: SchedSnapshot) -> float | None:
    """Share of ``[first, last]`` the thread was running or waiting for a CPU."""
    elapsed = last.at - first.at
    if elapsed <= 0:
        return None
    return min(1.0, (last.runnable - first.runnable) / elapsed)
