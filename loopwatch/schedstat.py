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
    """A thread's scheduler counters at ``at`` (monotonic seconds): time it ran or waited
    for a CPU (``runnable``), and of that, time it waited (``queued``)."""

    at: float
    runnable: float
    queued: float


class ThreadSchedStat:
    """Reads one thread's schedstat through a file descriptor kept open (one ``pread``
    per reading: each system call gives up the GIL, and taking it back from a busy loop
    thread can cost a switch interval). Used only around stalls."""

    def __init__(self, native_id: int) -> None:
        try:
            self._fd: int | None = os.open(f"/proc/self/task/{native_id}/schedstat", os.O_RDONLY)
        except OSError:
            self._fd = None
        self.available = self.read() is not None

    def read(self) -> SchedSnapshot | None:
        if self._fd is None:
            return None
        try:
            fields = os.pread(self._fd, 128, 0).split()
            ran, queued = int(fields[0]) / 1e9, int(fields[1]) / 1e9
            return SchedSnapshot(monotonic(), ran + queued, queued)
        except (OSError, IndexError, ValueError):
            return None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def runnable_share(first: SchedSnapshot, last: SchedSnapshot) -> float | None:
    """Share of ``[first, last]`` the thread was running or waiting for a CPU."""
    elapsed = last.at - first.at
    if elapsed <= 0:
        return None
    return min(1.0, (last.runnable - first.runnable) / elapsed)


_EVENT_WAITS = ("poll", "select")
"""Kernel functions a thread sleeps in while it waits in ``epoll_wait``, ``poll`` or
``select`` (``do_epoll_wait``, ``ep_poll``, ``do_sys_poll``, ``do_select``...)."""


def asleep_in_event_wait(native_id: int) -> bool:
    """Whether the thread sleeps in the kernel waiting for file-descriptor events, from
    its wait channel (``False`` where that is unknown). A thread woken and waiting for a
    CPU, or for the GIL, is not."""
    try:
        with open(f"/proc/self/task/{native_id}/wchan", "rb") as channel:
            name = channel.read(64).decode("ascii", "replace")
    except OSError:
        return False
    return any(wait in name for wait in _EVENT_WAITS)
