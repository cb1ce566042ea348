"""The only part of loopwatch that runs on the event loop: a self-rescheduling timer.

Each tick records when it was due and when it actually ran into a bounded deque, for
the watchdog thread to read around stalls, hands every :data:`RECORD_BATCH` ticks to an
in-memory recorder (the delay metrics) and pushes back the watchdog's dead man's switch
(at most once per :data:`REARM_SHARE` of its delay). It does no I/O, no export and no
formatting.

A tick on an idle loop wakes its thread, which then needs the GIL. Where other threads
run Python code (CPU work handed to ``asyncio.to_thread``), each such wake-up waits for
a GIL hand-over and costs the process far more than the tick itself: the heartbeat then
ticks :data:`IDLE_STRETCH` times less often for as long as the loop stays idle.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import sys
import threading
from collections import deque
from collections.abc import Callable, Sequence
from time import monotonic, process_time, thread_time
from types import CodeType
from typing import NamedTuple

from .deadman import DeadManSwitch
from .gc_clock import GC_CLOCK, GcTrigger
from .sampler import loop_caller
from .trio_loop import TrioLoop, TrioTimer

logger = logging.getLogger("loopwatch")

TICKS_KEPT = 256
"""Ticks kept for the watchdog, which reads them only around stalls (1.3 s at the
default interval); older ones are dropped, and :attr:`Tick.number` shows the gap."""


class Tick(NamedTuple):
    """One heartbeat: ``ran - due`` is the loop delay.

    The three counters let the watchdog tell, between two ticks, how much time went to
    garbage collection, to the loop thread's CPU and to the whole process's CPU.
    ``number`` counts the ticks: consecutive ticks have consecutive numbers.
    """

    number: int
    due: float
    ran: float
    gc_total: float
    thread_cpu: float
    process_cpu: float


_new_tick = tuple.__new__

IDLE_STRETCH = 4
"""How many times longer the interval gets while waking the idle loop costs a GIL hand-over."""

IDLE_SHARE = 0.25
"""Below this share of CPU time between two ticks, the loop thread counts as idle."""

RECORD_BATCH = 32
"""Ticks handed to the recorder at once (160 ms of ticks at the default interval). After
5 ms of serving requests, the code and objects that record a tick are no longer in the
CPU's caches: recorded one by one, a tick cost 120 µs in a server under load with the
OpenTelemetry SDK's histogram (55 µs in batches), 66 µs with the API alone (47 µs)."""

REARM_SHARE = 0.5
"""The dead man's switch is re-armed once per this share of its delay, not at every tick:
it then trips up to that share early (the watchdog, woken early, sleeps on), never late.
Ticks stretched on an idle loop (4 intervals, plus a GIL hand-over) come far more often
than half the delay, so an idle loop does not trip it. A re-arm is a system call: 0.4 µs
in a hot loop, about 35 µs in a server under load (libc through ctypes, out of the CPU
caches); re-arming every quarter of the delay cost 7 µs of a 47 µs tick on average."""


LATE_PROBE = 0.25
LATE_TRIGGER_SHARE = 0.25
LATE_TICKS = 3
"""Busy sampling starts once :data:`LATE_TICKS` ticks of :data:`LATE_PROBE` seconds were
late, beyond :func:`gil_wait`, by ``busy_threshold`` x this share of it in all (31 ms at
the default 0.5). A late tick shows only part of the busy time before it (a loop running
20 ms of work every 25 ms makes its ticks late by 15 ms a cycle), while a healthy loop is
rarely late by :func:`gil_wait` at all."""

HELD_BY_GIL = 2
"""A tick later than this many switch intervals did not just wait for a GIL hand-over
(another thread gives the GIL up after one): its loop was held by a blocking call, and
its interval is not stretched. Stretched, a loop sleeping 20 ms in every 25 ms had its
ticks late by only 5 ms a cycle."""


TIMER_RESOLUTION = 0.001
"""The shortest delay the heartbeat asks its loop for. Loops time their timers in whole
milliseconds: asked for 0.5 ms, an idle stdlib loop sleeps 1 ms in ``epoll_wait`` (so a
tick due at 0.5 ms came 0.5-0.6 ms late every time: at a 1 ms threshold most of the
threshold), and uvloop rounds it down to 0 and runs the tick at once, every loop
iteration (410,000 ticks in 3 s, a core busy). The tick is then due when it can come."""


def gil_wait(switch_interval: float) -> float:
    """How late a tick must be to have waited for the GIL: another thread running Python
    code gives it up after the switch interval (5 ms by default); an idle stdlib loop
    wakes up to 1 ms late by itself (its ``epoll`` timeout is in whole milliseconds)."""
    return max(0.002, switch_interval / 2)


class Heartbeat:
    """Schedules itself every ``interval`` seconds (at least :data:`TIMER_RESOLUTION`)
    on ``loop`` and records each tick.

    Every :data:`RECORD_BATCH` ticks, oldest first, are passed to ``record``
    (in-memory metrics; the first error turns it off). Each tick re-arms ``deadman`` (if
    given), so that it trips only when the loop stops ticking.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | TrioLoop,
        interval: float,
        wake_watchdog: threading.Event,
        record: Callable[[Sequence[Tick]], None] | None = None,
        deadman: DeadManSwitch | None = None,
        busy_threshold: float = 0.0,
    ) -> None:
        self.loop = loop
        self.interval = max(interval, TIMER_RESOLUTION)
        self.ticks: deque[Tick] = deque(maxlen=TICKS_KEPT)
        self.thread_id: int | None = None
        self.native_thread_id: int | None = None
        self.thread_name = ""
        self.last_ran: float | None = None
        self.watchdog_waiting = False
        self.watch_collections: float | None = None
        """Set (to the shortest collection worth keeping) to have the gc callback note
        where collections on the loop's thread begin, in :attr:`gc_trigger`."""
        self.gc_trigger: GcTrigger | None = None
        self.loop_caller: CodeType | None = None
        """What called into the loop (see :func:`.sampler.loop_caller`), from the first tick."""
        self.busy_sampling = False
        """Set here when the ticks show a busy loop, cleared by the watchdog when its
        samples no longer do."""
        self.busy_resume_at = 0.0
        """Before then the ticks do not ask for busy sampling (set by the watchdog)."""
        self._busy_trigger = busy_threshold * LATE_PROBE * LATE_TRIGGER_SHARE
        self._late_since = -LATE_PROBE
        self._late_sum = 0.0
        self._late_ticks = 0
        self._wake_watchdog = wake_watchdog
        self._record = record
        self._unrecorded: list[Tick] = []
        # Ticks run in an empty context, not in that of whoever started the watcher (a
        # request's span would otherwise be current in every tick's metrics, as exemplar).
        self._context = contextvars.Context()
        self._number = 0
        self._deadman = deadman
        self._rearm_spacing = REARM_SHARE * deadman.delay if deadman is not None else 0.0
        self._rearm_due = 0.0
        self._due = 0.0
        self._gil_wait = gil_wait(sys.getswitchinterval())
        self._held_by_gil = HELD_BY_GIL * sys.getswitchinterval()
        self._previous_cpu = 0.0
        self._handle: asyncio.TimerHandle | TrioTimer | None = None
        self._running = False

    def start(self) -> None:
        """Begin ticking; safe to call from any thread."""
        self._running = True
        self.loop.call_soon_threadsafe(self._first_tick, context=self._context)

    def stop(self, *, record_pending: bool = True) -> None:
        """Stop rescheduling and hand the ticks of the unfinished batch to the recorder
        (unless ``record_pending`` is false); safe to call from any thread. From another
        thread, this happens on the loop, if it still runs."""
        self._running = False
        if self.gc_trigger is not None and self.thread_id is not None:
            self.gc_trigger = None
            GC_CLOCK.unwatch(self.thread_id)
        if not record_pending:
            self._unrecorded = []
        if threading.get_ident() == self.thread_id:
            self._context.run(self._finish)
            return
        try:
            self.loop.call_soon_threadsafe(self._finish, context=self._context)
        except RuntimeError:  # the loop is closed: no tick can run any more
            self._finish()

    def _finish(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        unrecorded, self._unrecorded = self._unrecorded, []
        if unrecorded:
            self._record_batch(unrecorded)

    def _record_batch(self, ticks: list[Tick]) -> None:
        record = self._record
        if record is None:
            return
        try:
            record(ticks)
        except Exception:  # never let metrics stop the heartbeat
            self._record = None
            logger.exception("loopwatch stopped recording loop delay metrics")

    def _note_late(self, now: float, late: float) -> None:
        """A late tick: the loop was busy (or held off) for ``late`` seconds more than a
        GIL hand-over explains. Once :data:`LATE_TICKS` ticks of the last
        :data:`LATE_PROBE` were late by ``busy_trigger`` seconds in all, ask the watchdog
        to sample the busy loop (see :mod:`.busy`), unless it already does or found it
        idle lately (:attr:`busy_resume_at`). Only late ticks get here: a loop running
        1 ms callbacks back to back, or a machine that preempts it now and then, does
        not add up to that."""
        if self.busy_sampling or now < self.busy_resume_at:
            return
        if now - self._late_since > LATE_PROBE:
            self._late_since, self._late_sum, self._late_ticks = now - late, 0.0, 0
        self._late_sum += late
        self._late_ticks += 1
        if self._late_sum < self._busy_trigger or self._late_ticks < LATE_TICKS:
            return
        self._late_sum, self._late_ticks = 0.0, 0
        self.busy_sampling = True
        if self._deadman is not None:
            # Trip it now, and keep this tick from re-arming it (which would cancel the trip).
            self._rearm_due = now + self._rearm_spacing
            self._deadman.trip()
        else:
            self._wake_watchdog.set()

    def _first_tick(self) -> None:
        if not self._running:
            return
        thread = threading.current_thread()
        self.thread_id = thread.ident
        self.native_thread_id = threading.get_native_id()
        self.thread_name = thread.name
        self.loop_caller = loop_caller(sys._getframe(1))
        if self.watch_collections is not None and self.gc_trigger is None:
            self.gc_trigger = GC_CLOCK.watch(thread.ident or 0, self.watch_collections)
        self._due = monotonic()
        self._tick()

    @property
    def next_due(self) -> float:
        """When the next tick is due (the start of a stall is estimated from it)."""
        return self._due

    def _tick(self) -> None:
        now = monotonic()
        self._number += 1
        cpu = thread_time()
        # tuple.__new__: a namedtuple's own __new__ is one more Python call per tick
        tick = _new_tick(Tick, (self._number, self._due, now, GC_CLOCK.total, cpu, process_time()))
        self.ticks.append(tick)
        interval = self.interval
        previous = self.last_ran
        late = now - self._due
        if late > self._gil_wait and previous is not None:
            if late < self._held_by_gil and cpu - self._previous_cpu < IDLE_SHARE * (
                now - previous
            ):
                interval *= IDLE_STRETCH  # it waited for the GIL, with nothing else to do
            if self._busy_trigger:
                self._note_late(now, late - self._gil_wait)
        self._previous_cpu = cpu
        self.last_ran = now
        if self.watchdog_waiting:
            self._wake_watchdog.set()
        if self._running:
            if self._deadman is not None and now >= self._rearm_due:
                self._deadman.rearm()
                self._rearm_due = now + self._rearm_spacing
            self._due = now + interval
            self._handle = self.loop.call_later(interval, self._tick, context=self._context)
        if self._record is not None:
            unrecorded = self._unrecorded
            unrecorded.append(tick)
            if len(unrecorded) >= RECORD_BATCH:
                self._unrecorded = []
                self._record_batch(unrecorded)
