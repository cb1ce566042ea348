"""A dead man's switch for the watchdog: a Linux timer the heartbeat keeps pushing back.

A thread that wakes up every ``threshold`` to check on the loop needs the GIL each time,
and on a busy loop that drops and retakes the GIL at every iteration it can wait for it
for a long time while every one of those iterations signals it (a GIL convoy: +20 % CPU
on a loop that only switches tasks). With this switch the watchdog sleeps in the kernel
instead: each heartbeat tick re-arms a ``timerfd`` (one system call, no GIL handover),
and the watchdog's file descriptor becomes readable only when the loop has not ticked
for ``delay`` seconds, i.e. when a stall is under way.

Linux only (``timerfd``); elsewhere :meth:`DeadManSwitch.create` returns ``None`` and
the watchdog polls instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import select
import sys
from collections.abc import Callable
from typing import Any

_CLOCK_MONOTONIC = 1
_TFD_FLAGS = os.O_NONBLOCK | os.O_CLOEXEC if sys.platform == "linux" else 0


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _ITimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class DeadManSwitch:
    """A one-shot timer of ``delay`` seconds that :meth:`reset` restarts.

    :meth:`reset` runs on the loop thread at every heartbeat tick; :meth:`wait` and
    :meth:`trip` on other threads.
    """

    def __init__(self, fd: int, arm: Callable[[float], None]) -> None:
        self._fd = fd
        self._arm = arm
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)

    @classmethod
    def create(cls) -> DeadManSwitch | None:
        """A switch backed by a ``timerfd``, or ``None`` where there is none."""
        if sys.platform != "linux":
            return None
        try:
            if sys.version_info >= (3, 13):
                fd = os.timerfd_create(_CLOCK_MONOTONIC, flags=_TFD_FLAGS)
                return cls(fd, lambda seconds: os.timerfd_settime(fd, initial=seconds))
            return cls._create_with_libc()
        except (OSError, AttributeError):
            return None

    @classmethod
    def _create_with_libc(cls) -> DeadManSwitch:
        # PyDLL: called with the GIL held (a short system call; releasing the GIL at every
        # tick would invite the very handover this module avoids).
        libc: Any = ctypes.PyDLL(ctypes.util.find_library("c"), use_errno=True)
        fd = libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_FLAGS)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")
        spec = _ITimerspec()
        settime = libc.timerfd_settime
        spec_ref = ctypes.byref(spec)

        def arm(seconds: float) -> None:
            whole = int(seconds)
            spec.it_value.tv_sec = whole
            spec.it_value.tv_nsec = int((seconds - whole) * 1e9)
            settime(fd, 0, spec_ref, None)

        return cls(fd, arm)

    def reset(self, delay: float) -> None:
        """(Re)start the countdown: the switch trips ``delay`` seconds from now (at least
        a microsecond: a zero delay would disarm the timer instead)."""
        with contextlib.suppress(OSError):  # closed by a stop() racing this tick
            self._arm(max(delay, 1e-6))

    def trip(self) -> None:
        """Trip the switch now (to wake a waiting watchdog, e.g. to stop it)."""
        self.reset(0.0)

    def wait(self, timeout: float | None) -> bool:
        """Block up to ``timeout`` seconds (``None``: until it trips); whether it tripped."""
        milliseconds = -1 if timeout is None else max(0, int(timeout * 1000))
        tripped = bool(self._poll.poll(milliseconds))
        if tripped:
            with contextlib.suppress(BlockingIOError):  # re-armed since: nothing to read
                os.read(self._fd, 8)
        return tripped

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)
