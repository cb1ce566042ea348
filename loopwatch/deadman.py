"""A dead man's switch for the watchdog: a Linux timer the heartbeat keeps pushing back.

A thread that wakes up every ``threshold`` to check on the loop needs the GIL each time,
and on a busy loop that drops and retakes the GIL at every iteration it can wait for it
for a long time while every one of those iterations signals it (a GIL convoy: +20 % CPU
on a loop that only switches tasks). With this switch the watchdog sleeps in the kernel
instead: each heartbeat tick re-arms a ``timerfd`` (one system call, no GIL handover),
and the watchdog's file descriptor becomes readable only when the loop has not ticked
for ``delay`` seconds, i.e. when a stall is under way.

Linux only (``timerfd``, through libc); elsewhere :meth:`DeadManSwitch.create` returns ``None`` and
the watchdog polls instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import select
import sys
import threading
from collections.abc import Callable
from typing import Any

_CLOCK_MONOTONIC = 1
_TFD_FLAGS = os.O_NONBLOCK | os.O_CLOEXEC if sys.platform == "linux" else 0


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _ITimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_SHORTEST_DELAY = 1e-6
"""Every delay is at least this: a zero delay would disarm the timer instead of tripping it."""


def _itimerspec(seconds: float) -> _ITimerspec:
    """A one-shot expiry ``seconds`` from now."""
    whole = int(seconds)
    return _ITimerspec(it_value=_Timespec(whole, int((seconds - whole) * 1e9)))


@functools.cache
def _libc() -> Any:
    """libc's symbols, through dlopen(NULL) (the process's own, libc's among them): not
    ``ctypes.util.find_library("c")``, which runs ``ldconfig`` in a subprocess and reads its
    output on the loop thread at the first start (Starlette's suite, run with blockbuster,
    caught that blocking read; a new loop per request paid 3 ms every time before caching)."""
    return ctypes.PyDLL(None, use_errno=True)


class DeadManSwitch:
    """A one-shot timer of ``delay`` seconds that :attr:`rearm` restarts.

    :attr:`rearm` runs on the loop thread, from heartbeat ticks: it is the prepared
    ``timerfd_settime`` call itself, with no Python call around it. :meth:`reset`,
    :meth:`wait` and :meth:`trip` run on other threads. libc reports failures by return
    value, which is ignored: the only one possible here is a descriptor already closed by
    :meth:`close` (a tick racing a stop).
    """

    def __init__(
        self,
        fd: int,
        delay: float,
        arm: Callable[[float], object],
        rearm: Callable[[], object],
        clear: Callable[[], object],
    ) -> None:
        self._fd = fd
        self._clear = clear
        self.delay = delay
        """Seconds from a :attr:`rearm` to the trip."""
        self._arm = arm
        self.rearm = rearm
        """Restart the countdown: the switch trips ``delay`` seconds from now."""
        self._closing = threading.Lock()
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)

    @classmethod
    def create(cls, delay: float) -> DeadManSwitch | None:
        """A switch of ``delay`` seconds backed by a ``timerfd``, or ``None`` where there
        is none."""
        if sys.platform != "linux":
            return None
        delay = max(delay, _SHORTEST_DELAY)
        try:
            return cls._create_with_libc(delay)
        except (OSError, AttributeError):
            return None

    @classmethod
    def _create_with_libc(cls, delay: float) -> DeadManSwitch:
        # PyDLL: called with the GIL held (a short system call). os.timerfd_settime (3.13+)
        # releases the GIL, and beside a thread running Python code every tick then waited
        # to get it back: 0.1-0.16 ms per re-arm instead of 1-2 us.
        libc = _libc()
        fd = libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_FLAGS)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")
        settime = libc.timerfd_settime

        def arm(seconds: float) -> None:
            settime(fd, 0, ctypes.byref(_itimerspec(seconds)), None)

        preset = _itimerspec(delay)
        rearm = functools.partial(settime, fd, 0, ctypes.byref(preset), None)
        # Also with the GIL held: a watchdog that woke during a stall must sample the
        # loop before the loop can run on (os.read would hand the GIL over first).
        clear = functools.partial(libc.read, fd, ctypes.create_string_buffer(8), 8)
        return cls(fd, delay, arm, rearm, clear)

    def reset(self, delay: float) -> None:
        """Restart the countdown with another delay: the switch trips ``delay`` seconds
        from now (at least :data:`_SHORTEST_DELAY`)."""
        self._arm(max(delay, _SHORTEST_DELAY))

    def trip(self) -> None:
        """Trip the switch now (to wake a waiting watchdog, e.g. to stop it)."""
        self.reset(0.0)

    def wait(self, timeout: float | None) -> bool:
        """Block up to ``timeout`` seconds (``None``: until it trips); whether it tripped."""
        milliseconds = -1 if timeout is None else max(0, int(timeout * 1000))
        tripped = bool(self._poll.poll(milliseconds))
        if tripped:
            self._clear()  # fails harmlessly if re-armed since: nothing to read
        return tripped

    def close(self) -> None:
        """Close the descriptor, once (a second close could hit a reused number)."""
        with self._closing:
            fd, self._fd = self._fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
