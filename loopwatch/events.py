"""The public record of one stall, handed to ``on_block`` hooks."""

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
