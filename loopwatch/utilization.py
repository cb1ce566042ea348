"""Active and idle time of the loop, from the heartbeat's CPU counters.

Each tick records the loop thread's CPU time. Between two ticks, the CPU time the loop
thread used is time it spent running callbacks; the rest of the wall time it waited for
events. Stalls spent waiting on the loop thread (``blocking``: a sleep or blocking I/O
in a callback) are busy time that used no CPU, so their duration is added when they
end; so is the busy time a sampled busy loop (see :mod:`.busy`) spent off the CPU
(blocking calls shorter than the threshold). Shorter blocking calls on a loop not busy
enough to be sampled are not counted. Nothing is measured per callback or per loop
iteration, and it works the same on every loop. A loop thread starved of CPU by other
processes looks less busy than it is.
"""

from __future__ import annotations

from collections.abc import Sequence

from .heartbeat import Tick


class UtilizationClock:
    """Active and idle seconds of one loop since its first tick (updated with each batch
    of ticks, see :data:`.heartbeat.RECORD_BATCH`)."""

    def __init__(self) -> None:
        self.active = 0.0
        self.idle = 0.0
        self._first: Tick | None = None
        self._blocked = 0.0

    def on_ticks(self, ticks: Sequence[Tick]) -> None:
        """Heartbeats ran (oldest first): the loop's time up to the newest one."""
        first = self._first
        if first is None:
            first = self._first = ticks[0]
        tick = ticks[-1]
        wall = tick.ran - first.ran
        active = min(wall, tick.thread_cpu - first.thread_cpu + self._blocked)
        self.active, self.idle = active, wall - active

    def add_blocked(self, seconds: float) -> None:
        """Busy time that used no CPU: a ``blocking`` stall, or blocking calls of a busy loop."""
        self._blocked += seconds

    def totals(self) -> tuple[float, float]:
        """Active and idle seconds so far."""
        return self.active, self.idle
