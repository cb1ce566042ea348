"""Reporting channels: one daemon thread and one bounded queue per kind of report.

The watchdog must never wait on reporting: span export can hang (a ``SimpleSpanProcessor``
to an endpoint that never answers), and so can a user's ``on_block`` hook or a log
handler. It hands each report to a :class:`Channel` instead and moves on. Channels are
independent, so one stuck channel does not silence the others: a hanging exporter still
lets log lines and hook calls through. A full queue drops the report (the caller counts
it); nothing here ever blocks the submitter.

The channels are process-wide (shared by every watched loop), their threads start with
the first report, and a forked child starts afresh (the parent's threads do not exist
there).
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import threading
from collections.abc import Callable
from time import monotonic

logger = logging.getLogger("loopwatch")

SPANS = "spans"
LOGS = "logs"
HOOKS = "hooks"

CAPACITY = 256
"""Reports a channel holds while its thread is busy (128 stalls' start and end)."""

Job = Callable[[], None]


class Channel:
    """A FIFO of jobs run in order by one daemon thread, started on the first job."""

    def __init__(self, name: str, capacity: int = CAPACITY) -> None:
        self.name = name
        self._capacity = capacity
        self._jobs: collections.deque[Job] = collections.deque()
        self._ready = threading.Condition(threading.Lock())
        self._submitted = 0
        self._done = 0
        self._thread: threading.Thread | None = None
        self._failed = False

    def submit(self, job: Job) -> bool:
        """Queue ``job``; ``False`` if the queue is full (the job is dropped)."""
        with self._ready:
            if len(self._jobs) >= self._capacity:
                return False
            self._jobs.append(job)
            self._submitted += 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"loopwatch-{self.name}", daemon=True
                )
                self._thread.start()
            self._ready.notify_all()
        return True

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the jobs queued so far to be done; whether
        they were. From the channel's own thread (a hook that stops its watcher) it
        cannot wait for itself: it returns at once."""
        if threading.current_thread() is self._thread:
            return False
        deadline = monotonic() + timeout
        with self._ready:
            target = self._submitted
            while self._done < target:
                left = deadline - monotonic()
                if left <= 0 or not self._ready.wait(left):
                    return self._done >= target
        return True

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._jobs:
                    self._ready.wait()
                job = self._jobs.popleft()
            try:
                job()
            except BaseException:  # a report failing (a hook calling sys.exit() too)
                if not self._failed:  # must not end the channel
                    self._failed = True
                    logger.exception(
                        "loopwatch %s report failed; later errors are not logged", self.name
                    )
            with self._ready:
                self._done += 1
                self._ready.notify_all()


_channels: dict[str, Channel] = {}
_lock = threading.Lock()


def channel(name: str) -> Channel:
    """The process's channel called ``name``."""
    found = _channels.get(name)
    if found is None:
        with _lock:
            found = _channels.setdefault(name, Channel(name, CAPACITY))
    return found


def flush(timeout: float) -> bool:
    """Wait up to ``timeout`` seconds in all for every channel's queued reports."""
    deadline = monotonic() + timeout
    done = True
    for found in list(_channels.values()):  # each one, even after one that timed out
        done = found.flush(deadline - monotonic()) and done
    return done


def _forget_in_child() -> None:
    global _lock
    _channels.clear()
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_in_child)
atexit.register(flush, 0.5)  # reports of the last stalls, before the SDK's own shutdown
