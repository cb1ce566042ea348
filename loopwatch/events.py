"""The public records of a stall (``on_block`` hooks) and of a busy window (``on_busy``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FrameInfo:
    """One stack frame: ``function`` is ``module.qualname``."""

    function: str
    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.function} ({self.file}:{self.line})"


@dataclass(frozen=True)
class BlockEvent:
    """A stall of the event loop, ongoing (``end is None``) or finished.

    ``start`` and ``end`` are Unix timestamps in seconds. ``culprit`` is the innermost
    frame of application code; ``offender`` the innermost frame of all, possibly library
    code. Both are ``None`` when no sample showed the stall: it ended before the first
    one, the process was not running (``unscheduled``), or the loop moved on before the
    watchdog could sample after a GIL-holding call or a collection. loopwatch's own
    frames (its gc callback, the heartbeat) are never either.
    """

    start: float
    end: float | None
    duration: float
    cause: str
    culprit: FrameInfo | None
    offender: FrameInfo | None
    stack: str
    samples: int
    task_name: str | None
    thread_id: int
    thread_name: str
    http_route: str | None = None
    http_method: str | None = None
    delayed_requests: int = 0

    @property
    def ongoing(self) -> bool:
        """True while the loop is still blocked."""
        return self.end is None


@dataclass(frozen=True)
class BusyEvent:
    """A window in which the loop was busy for at least ``busy_threshold`` of the time,
    with no single stall to blame: many short stretches of work add up.

    ``start`` and ``end`` are Unix timestamps in seconds (the window); ``ratio`` the share
    of it the loop was busy (running callbacks, computing or blocked in a sync call).
    ``functions`` are the culprits, biggest first (``module.qualname``, at most 10) and
    ``shares`` each one's share of the busy time; ``culprit`` locates the first one.
    Handed to ``on_busy`` hooks.
    """

    start: float
    end: float
    duration: float
    ratio: float
    functions: tuple[str, ...]
    shares: tuple[float, ...]
    culprit: FrameInfo | None
    samples: int
    thread_id: int
    thread_name: str
