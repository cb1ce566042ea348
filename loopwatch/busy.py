"""Busy-loop accounting: which functions keep the loop busy when no single stall is long.

A loop that runs 20 ms of synchronous work every 25 ms never stalls for the threshold,
yet every request waits. The heartbeat notices such a loop (its ticks keep coming late,
see :mod:`.heartbeat`) and asks the watchdog to sample it: once per sampling period, for
as long as the loop stays busy. Each sample shows the loop either running a callback
(busy: computing, or blocked in a sync call such as ``time.sleep``) or waiting for I/O
and timers (idle); the time since the previous sample is credited to what it shows.
Over a window (``busy_window``), the busy seconds divided by the window give the busy
ratio, and the busy seconds per culprit give each function's share. Time outside the
sampling (a loop that was not late) counts as idle.

Samples are only taken while the heartbeat runs late: a healthy loop is never sampled
and its watchdog never woken. A loop that looks busy to the heartbeat but idle to the
samples (ticks late because another thread held the GIL) stops the sampling after
:data:`PROBE_SPAN`, and is not sampled again for a cool-down that doubles each time.
What a sample shows is told by :meth:`.stacks.CulpritFinder.at_rest` (the loop in its
selector or its own dispatching) and :meth:`.stacks.CulpritFinder.culprit`. Runs on the
watchdog thread only.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

from .sampler import RawFrame, Sample, split_own_frames
from .stacks import CulpritFinder, function_name

PROBE_SPAN = 0.5
"""How often the sampling checks that the loop is still busy (and credits the blocked
time to the utilization clock)."""

LEAVE_SHARE = 0.5
"""Sampling stops when less than this share of ``busy_threshold`` was busy in a probe."""

COOL_DOWN = 1.0
"""After sampling found the loop not busy, the heartbeat may not ask again for this long
(doubled each time it happens again, up to the window; reset by a busy probe)."""

FORCED_SWITCH = 0.8
"""A watchdog that waited this share of the switch interval for the GIL or more made the
loop thread drop it (a forced switch), rather than getting it as a Python stretch ended."""

MAX_FUNCTIONS = 10
"""Functions listed in a report (``loopwatch.busy.functions``)."""

MAX_KEYS = 1000
"""Distinct functions tallied in one window; the rest are counted as :data:`OTHER`."""

OTHER = "other"
UNATTRIBUTED = "<unattributed>"
"""Busy samples in which every frame belongs to a skipped module (framework code)."""


@dataclass(frozen=True)
class BusyWindow:
    """One finished window (monotonic seconds): how busy the loop was, and by whom.

    ``ranking`` lists ``(module.qualname, busy seconds)``, biggest first, including
    :data:`OTHER` and :data:`UNATTRIBUTED` if they occurred; ``top`` is a sampled frame
    of the first one named (unless that is :data:`OTHER`)."""

    start: float
    end: float
    busy: float
    samples: int
    ranking: tuple[tuple[str, float], ...]
    top: RawFrame | None

    @property
    def ratio(self) -> float:
        return min(1.0, self.busy / max(self.end - self.start, 1e-9))

    def culprits(self, limit: int = MAX_FUNCTIONS) -> list[tuple[str, float]]:
        """The named functions, biggest first, with their share of the busy time."""
        busy = max(self.busy, 1e-9)
        named = [(name, seconds / busy) for name, seconds in self.ranking if name != UNATTRIBUTED]
        return named[:limit]


class _Tally:
    """Busy seconds per function within one window, in bounded memory."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.busy = 0.0
        self.samples = 0
        self.seconds: dict[str, float] = {}
        self.frames: dict[str, RawFrame] = {}

    def add(self, key: str, frame: RawFrame | None, seconds: float) -> None:
        if key not in self.seconds and len(self.seconds) >= MAX_KEYS:
            key, frame = OTHER, None
        self.seconds[key] = self.seconds.get(key, 0.0) + seconds
        if frame is not None and key not in self.frames:
            self.frames[key] = frame
        self.busy += seconds

    def finish(self, end: float) -> BusyWindow:
        ranking = tuple(sorted(self.seconds.items(), key=lambda item: -item[1]))
        named = [key for key, _ in ranking if key != UNATTRIBUTED]
        top = self.frames.get(named[0]) if named else None
        return BusyWindow(self.start, end, self.busy, self.samples, ranking, top)


class BusySampler:
    """The watchdog's busy-sampling state for one loop (see the module docstring).

    A sample stands for the time since the previous one, up to ``longest`` seconds: the
    watchdog, asking for the GIL, waits for the loop thread to drop it (up to the switch
    interval), and it samples no stall (a stall is reported as one).

    ``cpu_seconds`` reads the loop thread's CPU clock (``None`` where it cannot be read):
    busy time the thread did not spend on a CPU was spent blocked, which the utilization
    clock counts as active through ``add_blocked``.
    """

    def __init__(
        self,
        window: float,
        threshold: float,
        period: float,
        longest: float,
        finder: CulpritFinder,
        cpu_seconds: Callable[[], float | None],
        add_blocked: Callable[[float], None] | None,
    ) -> None:
        self.window = window
        self.threshold = threshold
        self.period = period
        self._longest = longest
        self._finder = finder
        self._cpu_seconds = cpu_seconds
        self._add_blocked = add_blocked
        self.sampling = False
        self.next_sample_at = 0.0
        self.resume_at = 0.0
        self._cool_down = COOL_DOWN
        self._tally: _Tally | None = None
        self._last_sample = 0.0
        self._last_cpu: float | None = None
        self._previous: tuple[str, RawFrame | None] | None = None
        self._switch_interval = sys.getswitchinterval()
        self._probe_start = 0.0
        self._probe_busy = 0.0
        self._probe_total = 0.0
        self._probe_cpu: float | None = None

    def window_end(self) -> float | None:
        """When the open window closes (``None``: no window open)."""
        return self._tally.start + self.window if self._tally is not None else None

    def enter(self, now: float) -> None:
        """Start sampling (the heartbeat found the loop busy); opens a window if none is."""
        self.sampling = True
        if self._tally is None:
            self._tally = _Tally(now)
        self._last_sample = now - self.period
        self._last_cpu, self._previous = None, None
        self.next_sample_at = now
        self._start_probe(now)

    def record(self, now: float, sample: Sample | None) -> None:
        """Credit the time since the previous sample to what ``sample`` shows.

        A sample that shows the loop busy gets all of it. One that shows it waiting gets
        none, but the CPU time the loop thread used meanwhile is busy time all the same:
        a watchdog waiting for the GIL gets it when the loop, done with a callback, waits
        in its selector, so such a sample closes a stretch of Python code. That time goes
        to the previous sample's function. So does it when the sample shows another
        function, unless the watchdog waited a whole switch interval for the GIL (the
        loop was made to drop it in the middle of the code the sample shows): the GIL
        came free as a Python function ended and a blocking call began, and crediting
        that call with the CPU time before it overstated blocking calls by up to a third
        (``bench/busy.py``)."""
        tally = self._tally
        if tally is None:
            return
        seconds = min(max(0.0, now - self._last_sample), self._longest)
        forced = now - self.next_sample_at >= FORCED_SWITCH * self._switch_interval
        cpu, before = self._cpu_seconds(), self._last_cpu
        spent = 0.0
        if cpu is not None and before is not None:
            spent = min(max(0.0, cpu - before), seconds)
        self._last_sample, self._last_cpu = now, cpu
        self.next_sample_at = now + self.period
        tally.samples += 1
        self._probe_total += seconds
        found = self._busy_in(sample) if sample is not None else None
        previous, self._previous = self._previous, found
        if found is not None:
            if previous is not None and previous[0] != found[0] and spent > 0 and not forced:
                tally.add(*previous, spent)
                tally.add(*found, seconds - spent)
            else:
                tally.add(*found, seconds)
        elif spent > 0:
            tally.add(*(previous or (UNATTRIBUTED, None)), spent)
            seconds = spent
        else:
            return
        self._probe_busy += seconds

    def _busy_in(self, sample: Sample) -> tuple[str, RawFrame | None] | None:
        """The function ``sample`` shows the loop busy in, or ``None`` if it shows it waiting
        (or in a heartbeat tick)."""
        sample, own = split_own_frames(sample)
        if own or not sample.frames or self._finder.at_rest(sample):
            return None
        culprit = self._finder.culprit(sample)
        return (function_name(culprit) if culprit else UNATTRIBUTED), culprit

    def close_window(self, now: float) -> BusyWindow | None:
        """The window, if it is over (a new one opens at once while sampling)."""
        tally = self._tally
        if tally is None or now < tally.start + self.window:
            return None
        self._tally = _Tally(now) if self.sampling else None
        return tally.finish(now)

    def probe(self, now: float) -> bool:
        """At the end of each probe: credit blocked time, and whether to stop sampling."""
        if now - self._probe_start < PROBE_SPAN:
            return False
        busy, total = self._probe_busy, max(self._probe_total, 1e-9)
        cpu, before = self._cpu_seconds(), self._probe_cpu
        if self._add_blocked is not None and cpu is not None and before is not None:
            self._add_blocked(max(0.0, busy - (cpu - before)))
        self._start_probe(now, cpu)
        if busy / total >= LEAVE_SHARE * self.threshold:
            self._cool_down = COOL_DOWN
            return False
        return True

    def leave(self, now: float) -> None:
        """Stop sampling; the heartbeat may not ask again before :attr:`resume_at`."""
        self.sampling = False
        self.resume_at = now + self._cool_down
        self._cool_down = min(2 * self._cool_down, max(COOL_DOWN, self.window))

    def _start_probe(self, now: float, cpu: float | None = None) -> None:
        self._probe_start = now
        self._probe_busy = self._probe_total = 0.0
        self._probe_cpu = cpu if cpu is not None else self._cpu_seconds()
