"""The watchdog thread: notices stalls while they last, samples them, and closes them.

It sleeps until the heartbeat would be ``threshold`` overdue. If the loop has not ticked
by then, a stall is under way: it samples the loop thread's stack at once and again at
each doubling of the stall's age, and reports the stall as ongoing. The first tick after
the stall ends it. Ticks also reveal stalls the watchdog could not see live (it was held
off by a C call that kept the GIL, or the process was not scheduled).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import sys
import threading
import time
from collections.abc import Callable
from time import monotonic

try:
    import resource
except ImportError:  # pragma: no cover - not on Windows
    resource = None  # type: ignore[assignment]

from .busy import BusySampler, BusyWindow
from .config import Config
from .deadman import DeadManSwitch
from .gc_clock import GC_CLOCK
from .heartbeat import Heartbeat, Tick
from .inflight import (
    InflightRequests,
    OpenStall,
    requests_waiting_on,
    stalled_request,
)
from .sampler import Sample, split_own_frames, take_sample
from .schedstat import SchedSnapshot, ThreadSchedStat, asleep_in_event_wait, runnable_share
from .stacks import CulpritFinder
from .stall import BLOCKING, CPU, GC, GIL, Stall, TakenSample
from .suppress import is_suppressed
from .task_context import TaskSnapshot, current_span_in, snapshot_task
from .trio_loop import TrioLoop
from .utilization import UtilizationClock

logger = logging.getLogger("loopwatch")

MIN_SCHED_WINDOW = 0.02
"""Shortest window over which the loop thread's scheduler counters are trusted."""

MIN_BUSY_PERIOD = 0.005
"""The shortest time between two samples of a busy loop (see :mod:`.busy`)."""

PAUSED_CHECK = 1.0
"""How often a watchdog with a dead man's switch looks at a loop that is not running
(to notice it was closed). While the loop runs, only the switch wakes it."""


def detection_delay(config: Config) -> float:
    """How long after a tick the watchdog takes the loop for stalled: a stall that began
    after the tick is estimated to have begun half an interval later (see
    :func:`estimated_start`), and it is one once it lasts ``threshold``. After a stretched
    interval (see :mod:`.heartbeat`) it is later: the watchdog, woken early, sleeps on."""
    return config.interval / 2 + config.threshold


def estimated_start(last_ran: float, next_due: float) -> float:
    """When a stall that began after the tick at ``last_ran`` most likely began.

    It began before the next tick was due: the middle of that interval is off by at most
    half an interval (2.5 ms at the default settings, 10 ms after a stretched one).
    """
    return last_ran + max(0.0, next_due - last_ran) / 2


_HEARTBEAT_CODE = frozenset({Heartbeat._tick.__code__, Heartbeat._first_tick.__code__})
"""A sample that shows the loop thread in a tick shows a loop that has moved on."""


_RUSAGE_THREAD: int | None = getattr(resource, "RUSAGE_THREAD", None) if resource else None


def _voluntary_switches() -> int:
    """Times the calling thread went to sleep (Linux; 0 elsewhere)."""
    return resource.getrusage(_RUSAGE_THREAD).ru_nvcsw if _RUSAGE_THREAD is not None else 0


WAIT_SWITCHES = 3
"""Voluntary switches of a wait that was not held off (the sleep itself and its wake-up)."""


def waited_for_gil(switches: int, late: float) -> bool:
    """Whether a watchdog that woke ``late`` seconds late was kept from the GIL, not from
    the CPU. A thread waiting for the GIL sleeps for one switch interval at a time (and
    asks the holder to drop it) for as long as the holder runs: dozens of voluntary
    switches in a long C call, fewer on a starved machine (each wake-up waits for a CPU).
    A process that was stopped or not scheduled makes none: the watchdog thread never got
    to sleep again."""
    expected = late / sys.getswitchinterval()
    return switches - WAIT_SWITCHES >= max(2.0, 0.05 * expected)


def held_off_tolerance(threshold: float) -> float:
    """How late a wake-up may be before the watchdog counts as held off.

    Pure Python code hands the GIL over within the switch interval (5 ms by default);
    a busy machine adds scheduling latency on top. Later than this, something kept the
    watchdog from the GIL (a C call) or from the CPU (the process was not scheduled).
    At most 0.4 x threshold (40 ms by default), so that a GIL-holding call of 1.5 x
    threshold is told from a CPU stall with room for the start estimate's error.
    """
    return max(4 * sys.getswitchinterval(), min(0.04, 0.4 * threshold))


class StallListener:
    """What the watchdog tells the reporting side. Every method runs on the watchdog
    thread, so it must not block: it hands off anything that may (export, hooks, logs)."""

    def on_stall_started(self, stall: Stall) -> None:
        """A stall reached the threshold and is still going on (first sample taken)."""

    def on_stall_ended(self, stall: Stall, before: Tick, after: Tick) -> None:
        """A stall is over; ``before`` and ``after`` are the ticks around it."""

    def on_busy_window(self, window: BusyWindow) -> None:
        """A busy window is over (busy or not: its busy time is counted either way)."""


class Watchdog:
    """One thread per watched loop. ``on_exit`` is called (from the thread) if it ends on its
    own: when the loop was closed without ``stop()``, or after an internal error."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | TrioLoop,
        heartbeat: Heartbeat,
        config: Config,
        listener: StallListener,
        wake: threading.Event,
        on_exit: Callable[[BaseException | None], None],
        inflight: InflightRequests,
        utilization: UtilizationClock | None = None,
        deadman: DeadManSwitch | None = None,
    ) -> None:
        self._loop = loop
        self._heartbeat = heartbeat
        self._config = config
        self._listener = listener
        self._wake = wake
        self._on_exit = on_exit
        self._inflight = inflight
        self._deadman = deadman
        self._finder = CulpritFinder(config.skip_modules)
        self._tolerance = held_off_tolerance(config.threshold)
        self.utilization = utilization
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loopwatch-watchdog", daemon=True)
        self._stall: Stall | None = None
        self._next_sample_at = 0.0
        self._last_tick: Tick | None = None
        self._held_off_until = 0.0
        self._paused = False
        self._numbers = itertools.count(1)
        self._schedstat: ThreadSchedStat | None = None
        self._sched_at_detection: SchedSnapshot | None = None
        self._rest_seen = 0.0
        """When a sample last showed the loop asleep in its selector (nothing held it)."""
        self._waited_for_gil = False
        # Collections of a quarter of the threshold or more are kept: a ``gc`` stall is at
        # least half collection.
        heartbeat.watch_collections = config.threshold / 4
        self._busy = (
            BusySampler(
                config.busy_window,
                config.busy_threshold,
                max(config.interval, MIN_BUSY_PERIOD),
                max(2 * MIN_BUSY_PERIOD, config.interval, config.threshold / 2),
                self._finder,
                self._loop_thread_cpu,
                utilization.add_blocked if utilization is not None else None,
            )
            if config.busy_threshold > 0
            else None
        )

    @property
    def ongoing_stall_seconds(self) -> float:
        """How long the loop has been stalled right now (0 while it runs)."""
        stall = self._stall
        return max(0.0, monotonic() - stall.start) if stall is not None else 0.0

    def start(self) -> None:
        if self._deadman is not None:  # trips if the loop does not tick from the start
            self._deadman.reset(self._deadman.delay)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float) -> None:
        """Ask the thread to end and wait for it (not from the watchdog thread itself)."""
        self._stopping.set()
        self._wake.set()
        if self._deadman is not None:
            self._deadman.trip()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        error: BaseException | None = None
        try:
            while not self._stopping.is_set() and not self._loop.is_closed():
                woke, on_time = self._wait()
                if not on_time:
                    self._held_off_until = woke
                self._process_ticks()
                self._check(woke, on_time)
                if self._busy is not None and self._stall is None:
                    self._busy_step(self._busy, woke)
            self._process_ticks()  # a stall that ended just before stop() is still reported
        except BaseException as exc:  # the watchdog must never take the app down
            error = exc
        self._inflight.open_stall = None
        if self._schedstat is not None:
            self._schedstat.close()
        if self._deadman is not None:  # closed by its only waiter (stop() may not wait)
            self._deadman.close()
        if not self._stopping.is_set():  # the loop closed, or an internal error
            self._on_exit(error)
        elif error is not None:
            logger.error("loopwatch watchdog failed while stopping", exc_info=error)

    def _wait(self) -> tuple[float, bool]:
        """Sleep until a stall may need attention; when it woke, and whether on time.

        With a dead man's switch and no stall under way, it sleeps until the switch trips
        (the heartbeat is ``threshold`` overdue), from the start on: a healthy loop never
        wakes it, so it never competes for the GIL. That matters on a busy loop: it drops
        and retakes the GIL around every ``epoll_wait``, and a thread woken then waits for
        the GIL as long as the loop stays busy, woken (and spending CPU) at every drop.
        Else it sleeps until the next check of :meth:`_next_wake`, or a tick ending the
        stall.
        """
        switches = _voluntary_switches()
        woke, intended = self._sleep()
        late = woke - intended
        self._waited_for_gil = late > self._tolerance and waited_for_gil(
            _voluntary_switches() - switches, late
        )
        return woke, late <= self._tolerance

    def _sleep(self) -> tuple[float, float]:
        """Sleep (see :meth:`_wait`); when it woke, and when it meant to."""
        deadman = self._deadman
        busy = self._busy
        if deadman is not None and self._stall is None and not (busy and busy.sampling):
            if self._paused:
                woke = self._wait_for_ticks()
                return woke, woke
            window_end = busy.window_end() if busy is not None else None
            # until it trips (or a busy window that sampling left open is due to close)
            deadman.wait(None if window_end is None else max(0.0, window_end - monotonic()))
            woke = monotonic()
            intended = self._next_wake()  # when it tripped, or later if ticked since
        else:
            intended = self._next_wake()
            timeout = intended - monotonic()
            # A tick that came while a stall was being opened (before the heartbeat was
            # told to wake us) ends it: no sleep then, or the stall would close late.
            pending = self._stall is not None and self._heartbeat.ticks
            if timeout > 0 and not pending and self._wake.wait(timeout):
                self._wake.clear()
            woke = monotonic()
        return woke, intended

    def _wait_for_ticks(self) -> float:
        """Until the loop (re)starts ticking (its next tick wakes the thread), or for
        :data:`PAUSED_CHECK` (to notice that it was closed)."""
        heartbeat = self._heartbeat
        heartbeat.watchdog_waiting = True
        if self._wake.wait(PAUSED_CHECK):
            self._wake.clear()
        heartbeat.watchdog_waiting = False
        return monotonic()

    def _next_wake(self) -> float:
        config = self._config
        last_ran = self._heartbeat.last_ran
        if last_ran is None or self._paused:
            return monotonic() + config.interval
        if self._stall is not None:
            return self._next_sample_at
        stalled_at = estimated_start(last_ran, self._heartbeat.next_due) + config.threshold
        wake = max(stalled_at, self._rest_seen + config.interval)
        busy = self._busy
        if busy is not None and busy.sampling:
            wake = min(wake, busy.next_sample_at)
        return wake

    def _process_ticks(self) -> None:
        ticks = self._heartbeat.ticks
        while ticks:
            tick = ticks.popleft()
            before = self._last_tick
            self._last_tick = tick
            if self._paused:
                self._paused = False
                continue
            if before is not None and before.number + 1 == tick.number:  # else: a gap
                self._close_stall(before, tick)

    def _close_stall(self, before: Tick, tick: Tick) -> None:
        """End the live stall at ``tick``, or report a stall only this tick revealed."""
        stall = self._stall
        if stall is None:
            start = self._tick_start(before, tick)
            if self._held_for(start, before, tick) < self._config.threshold:
                return
            stall = Stall(start=start, number=next(self._numbers))
            # Long enough that a running watchdog would have caught it live: it was not.
            missed = tick.ran - start > self._config.threshold + self._tolerance
            stall.watchdog_held_off = missed or self._held_off_until > start
        else:
            stall.start = min(stall.start, self._tick_start(before, tick))
        stall.end = tick.ran
        stall.runnable_share = self._runnable_share(stall)
        stall.cause = stall.classify(before, tick)
        self._find_culprit(stall, tick.ran)
        if stall.in_flight is None and not stall.suppressed:
            stall.in_flight = requests_waiting_on(self._loop)
        if self.utilization is not None and stall.cause == BLOCKING:
            self.utilization.add_blocked(tick.ran - stall.start)
        self._listener.on_stall_ended(stall, before, tick)
        if self._stall is stall:  # still "open" while reported: requests ending meanwhile
            self._stall = None  # settle it themselves (see Request.finish)
            self._inflight.open_stall = None
            self._heartbeat.watchdog_waiting = False

    def _held_for(self, start: float, before: Tick, tick: Tick) -> float:
        """How long something held the loop, of a gap between ticks that only ``tick``
        revealed (no sample saw it held).

        Not before a sample that saw the loop asleep in its selector: a loop released by
        whatever held it finds its tick overdue and does not sleep, so what came before
        made it no later. And not at all for a gap a watchdog on time can miss (shorter
        than threshold + tolerance) with the loop thread mostly off the CPU: nothing shows
        that anything held it. A loop is late by itself, without a cause its thread can
        see: its timers fire up to 1 ms late (whole milliseconds), its thread, woken on a
        busy machine, queues for a CPU, and on a virtual machine the host delays its
        timers by several milliseconds now and then. At small thresholds that is a stall
        a second; a call that blocks the loop is sampled by a watchdog on time.
        """
        held = tick.ran - max(start, self._rest_seen)
        config = self._config
        idle = tick.thread_cpu - before.thread_cpu < 0.5 * (tick.ran - before.ran)
        on_time = self._held_off_until <= start
        if held < config.threshold + self._tolerance and idle and on_time:
            return 0.0
        return held

    def _tick_start(self, before: Tick, tick: Tick) -> float:
        """The start of a stall that ``tick`` ended, from the ticks' own records."""
        return estimated_start(before.ran, tick.due)

    def _check(self, now: float, on_time: bool) -> None:
        stall = self._stall
        if stall is None:
            self._maybe_start_stall(now, on_time)
        elif now >= self._next_sample_at:
            self._sample(stall, on_time)
            self._next_sample_at = stall.start + 2 * (now - stall.start)

    def _maybe_start_stall(self, now: float, on_time: bool) -> None:
        last_ran = self._heartbeat.last_ran
        if last_ran is None:  # no tick since start(): wait for the first, as after a pause
            self._paused = True
            return
        if self._heartbeat.ticks:
            return
        if not self._loop.is_running():
            self._paused = True
            return
        if self._paused:
            return  # the loop runs again: its first tick resets the reference point
        start = estimated_start(last_ran, self._heartbeat.next_due)
        if now - start < self._config.threshold:
            if self._deadman is not None:  # woken early: make sure the switch trips in time
                self._deadman.reset(start + self._config.threshold - now)
            return
        # First the sample: reading the scheduler counters releases the GIL, and a loop
        # that held the watchdog off would run on meanwhile, away from the culprit.
        sample = self._sample_loop()
        if sample is not None and self._finder.at_rest(sample):
            # Late, but held by nothing: waiting for its timer or for a CPU. Look again.
            # Only a watchdog on time learns from it: one the machine held off (a stopped
            # process) samples a loop that has not yet run since it was let go.
            native_id = self._heartbeat.native_thread_id
            if on_time and native_id is not None and asleep_in_event_wait(native_id):
                self._rest_seen = now
            if self._deadman is not None:
                self._deadman.reset(self._config.interval)
            return
        stall = Stall(start=start, number=next(self._numbers), watchdog_held_off=not on_time)
        stall.watchdog_waited_for_gil = not on_time and self._waited_for_gil
        self._sample(stall, on_time, sample)
        self._sched_at_detection = self._read_schedstat()
        stall.cause = stall.live_cause = self._provisional_cause(start, now, on_time)
        self._find_culprit(stall, now)
        self._heartbeat.watchdog_waiting = True
        self._stall = stall
        if not stall.suppressed:  # every request's task waits on the loop now
            stall.in_flight = requests_waiting_on(self._loop)
        self._next_sample_at = start + 2 * (now - start)
        self._listener.on_stall_started(stall)

    def _find_culprit(self, stall: Stall, end: float) -> None:
        """Name the culprit; for a ``gc`` stall, from the collection on the loop's thread."""
        trigger = self._heartbeat.gc_trigger
        if stall.cause == GC and trigger is not None:
            stall.collection = trigger.overlapping(stall.start, end)
        stall.find_culprit(self._finder)

    def _read_schedstat(self) -> SchedSnapshot | None:
        if self._schedstat is None:
            native_id = self._heartbeat.native_thread_id
            if native_id is None:
                return None
            self._schedstat = ThreadSchedStat(native_id)
        return self._schedstat.read() if self._schedstat.available else None

    def _runnable_share(self, stall: Stall) -> float | None:
        """Share of the stall the loop thread ran or queued for a CPU (Linux only)."""
        now = self._read_schedstat()
        detected = self._sched_at_detection
        self._sched_at_detection = None
        if now is None:
            return None
        if detected is not None and now.at - detected.at >= MIN_SCHED_WINDOW:
            return runnable_share(detected, now)
        return None  # too short to trust: the ticks' CPU counters decide

    def _provisional_cause(self, start: float, now: float, on_time: bool) -> str:
        """The cause as far as it can be told while the stall goes on: garbage collection
        if it took half the stall so far (counting one still under way: the watchdog
        gets the GIL in the callback that ends it), else for a held-off watchdog ``gil``,
        else the loop thread's CPU share since its last tick (a clock read that keeps the
        GIL)."""
        tick = self._last_tick
        if tick is not None and GC_CLOCK.total_at(now) - tick.gc_total >= 0.5 * (now - start):
            return GC
        if not on_time:
            return GIL
        cpu = self._loop_thread_cpu() if tick is not None else None
        if tick is None or cpu is None:
            return CPU
        return CPU if cpu - tick.thread_cpu >= 0.5 * (now - tick.ran) else BLOCKING

    def _loop_thread_cpu(self) -> float | None:
        """The loop thread's CPU time (a clock read that keeps the GIL), if it can be read."""
        thread_id = self._heartbeat.thread_id
        if thread_id is None or not hasattr(time, "pthread_getcpuclockid"):
            return None
        try:
            return time.clock_gettime(time.pthread_getcpuclockid(thread_id))
        except OSError:
            return None

    def _busy_step(self, busy: BusySampler, now: float) -> None:
        """Sample a busy loop (sampling starts when the heartbeat asks, and stops when the
        samples no longer show it busy); report each window as it closes."""
        heartbeat = self._heartbeat
        if not busy.sampling and heartbeat.busy_sampling and not self._paused:
            busy.enter(now)
        if busy.sampling and self._paused:  # the loop stopped: nothing to sample
            busy.leave(now)
            heartbeat.busy_sampling = False
        elif busy.sampling and now >= busy.next_sample_at:
            busy.record(now, self._sample_loop())
            if busy.probe(now):
                busy.leave(now)
                heartbeat.busy_resume_at = busy.resume_at
                heartbeat.busy_sampling = False
        window = busy.close_window(now)
        if window is not None:
            self._listener.on_busy_window(window)

    def _sample(self, stall: Stall, on_time: bool, sample: Sample | None = None) -> None:
        """Sample the stalled loop (unless given the sample just taken); tell the
        requests which stall is open, and its culprit."""
        self._take_sample(stall, on_time, sample or self._sample_loop())
        self._inflight.open_stall = OpenStall(stall.number, stall.start, stall.request)

    def _sample_loop(self) -> Sample | None:
        thread_id = self._heartbeat.thread_id
        if thread_id is None:
            return None
        self._finder.loop_caller = self._heartbeat.loop_caller
        return take_sample(thread_id, self._config.max_frames)

    def _take_sample(self, stall: Stall, on_time: bool, sample: Sample | None) -> None:
        thread_id = self._heartbeat.thread_id
        if thread_id is None:
            return
        task = self._snapshot_task()
        if self._loop_moved_on():
            return  # the stall ended while we sampled: the stack no longer shows it
        stall.suppressed = stall.suppressed or is_suppressed(task.context, thread_id)
        if sample is None:
            return
        sample, own = split_own_frames(sample)
        if any(frame.code in _HEARTBEAT_CODE for frame in own):
            return  # the loop is ticking: the stall is over
        stall.samples.append(
            TakenSample(
                sample,
                self._finder.culprit(sample),
                on_time,
                task.name,
                current_span_in(task.context),
                stalled_request(thread_id, self._loop),
            )
        )

    def _snapshot_task(self) -> TaskSnapshot:
        loop = self._loop
        return loop.snapshot_task() if isinstance(loop, TrioLoop) else snapshot_task(loop)

    def _loop_moved_on(self) -> bool:
        """Whether the loop has run again since the stall began (a heartbeat ticked)."""
        return bool(self._heartbeat.ticks)
