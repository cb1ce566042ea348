"""``LoopWatch``: one event loop watched by a heartbeat and a watchdog thread."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Sequence
from time import monotonic
from types import TracebackType

from opentelemetry import metrics, trace

from .config import Config, resolve_config
from .deadman import DeadManSwitch
from .gc_clock import GC_CLOCK
from .heartbeat import Heartbeat
from .inflight import InflightRequests
from .reporting import worker
from .reporting.metrics import LoopGauges, metrics_for
from .reporting.reporter import BlockHook, BusyHook, Reporter
from .trio_loop import TrioLoop, current_trio_loop
from .utilization import UtilizationClock
from .watchdog import Watchdog, detection_delay

logger = logging.getLogger("loopwatch")

STOP_TIMEOUT = 1.0
"""The longest :meth:`LoopWatch.stop` takes: it ends the watchdog thread (which never
waits on reporting, so this is quick) and then waits for reports still queued (spans,
logs, hooks) up to what is left; a report stuck longer (a hanging exporter) goes on in
its channel's thread."""


class LoopWatch:
    """Finds and reports the code that blocks an asyncio event loop or a trio run.

    >>> async def main():
    ...     async with LoopWatch(threshold=0.1):
    ...         ...

    Options not given here come from ``LOOPWATCH_*`` environment variables, then from
    the defaults; see :mod:`loopwatch.config`.
    """

    def __init__(
        self,
        threshold: float | None = None,
        *,
        interval: float | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        on_block: BlockHook | None = None,
        enabled: bool | None = None,
        dump_after: float | None = None,
        skip_modules: Sequence[str] | None = None,
        max_frames: int | None = None,
        max_stack_chars: int | None = None,
        report_burst: int | None = None,
        report_per_minute: float | None = None,
        measure_utilization: bool | None = None,
        busy_threshold: float | None = None,
        busy_window: float | None = None,
        on_busy: BusyHook | None = None,
    ) -> None:
        self.config: Config = resolve_config(
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            on_block=on_block,
            threshold=threshold,
            interval=interval,
            enabled=enabled,
            dump_after=dump_after,
            skip_modules=skip_modules,
            max_frames=max_frames,
            max_stack_chars=max_stack_chars,
            report_burst=report_burst,
            report_per_minute=report_per_minute,
            measure_utilization=measure_utilization,
            busy_threshold=busy_threshold,
            busy_window=busy_window,
            on_busy=on_busy,
        )
        self.inflight = InflightRequests()
        self._tracer_provider = tracer_provider
        self._meter_provider = meter_provider
        self._on_block = on_block
        self._on_busy = on_busy
        self._lock = threading.Lock()
        self._loop: WatchedLoop | None = None
        self._parts: _Running | None = None

    @property
    def loop(self) -> WatchedLoop | None:
        """The loop being watched (a :class:`~.trio_loop.TrioLoop` on trio), if started."""
        return self._loop

    @property
    def running(self) -> bool:
        return self._parts is not None

    def start(self, loop: WatchedLoop | None = None) -> LoopWatch:
        """Watch ``loop`` (default: the running asyncio loop or trio run). Does nothing if
        already started."""
        if not self.config.enabled:
            return self
        if loop is None:
            loop = running_loop("LoopWatch.start()")
        elif not isinstance(loop, (asyncio.AbstractEventLoop, TrioLoop)):
            raise TypeError(
                f"LoopWatch.start(loop={loop!r}): loop must be an asyncio event loop (or "
                "omitted, to watch the running asyncio loop or trio run)"
            )
        with self._lock:
            if self._parts is not None:
                if loop is not self._loop:
                    raise RuntimeError("this LoopWatch already watches another event loop")
                return self
            if loop.is_closed():
                raise RuntimeError("cannot watch a closed event loop")
            self._parts = _Running(self, loop)
            self._loop = loop
        return self

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop watching: end the watchdog thread and wait for queued reports, within
        ``timeout`` seconds in all (also on the loop's own thread). Does nothing if not
        started."""
        with self._lock:
            parts, self._parts = self._parts, None
        if parts is not None:
            parts.stop(monotonic() + timeout)

    @staticmethod
    def flush(timeout: float = STOP_TIMEOUT) -> bool:
        """Wait up to ``timeout`` seconds for the stalls reported so far to reach their
        spans, logs and hooks (which run off the watchdog thread); whether they did."""
        return worker.flush(timeout)

    def _watchdog_exited(self, error: BaseException | None) -> None:
        """The loop closed without ``stop()`` (or the watchdog failed): tear down quietly."""
        if error is not None:
            logger.error("loopwatch watchdog stopped after an internal error", exc_info=error)
        self.stop()

    def _abandon(self) -> None:
        """Forget the watchdog after ``fork()``: its thread does not exist in the child."""
        parts, self._parts = self._parts, None
        if parts is not None:
            parts.heartbeat.stop(record_pending=False)  # the parent's ticks
            if parts.deadman is not None:
                parts.deadman.close()

    async def __aenter__(self) -> LoopWatch:
        return self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<LoopWatch {state} threshold={self.config.threshold:g}s>"


WatchedLoop = asyncio.AbstractEventLoop | TrioLoop
"""An asyncio event loop, or a trio run through :class:`~.trio_loop.TrioLoop`."""


def find_running_loop() -> WatchedLoop | None:
    """The running asyncio loop or trio run; ``None`` under any other library."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return current_trio_loop()


def running_loop(caller: str) -> WatchedLoop:
    """The running asyncio loop or trio run, or an error that says what ``caller`` needs."""
    loop = find_running_loop()
    if loop is not None:
        return loop
    raise RuntimeError(
        f"{caller} found no running asyncio event loop or trio run (loopwatch watches "
        "asyncio and trio, not curio): call it from a coroutine, or pass the loop "
        f"to {caller}"
    )


class _Running:
    """The parts of a started watcher, wired together; undone by :meth:`stop`.

    If wiring fails half-way (a meter provider that raises), what was already acquired
    (the dead man's timer descriptor, the GC clock, the heartbeat) is released before the
    error propagates: a failed start leaves nothing behind."""

    def __init__(self, owner: LoopWatch, loop: WatchedLoop) -> None:
        config = owner.config
        wake = threading.Event()
        with contextlib.ExitStack() as undo:
            self.deadman = DeadManSwitch.create(detection_delay(config))
            if self.deadman is not None:
                undo.callback(self.deadman.close)
            self.metrics = metrics_for(owner._meter_provider)
            utilization = UtilizationClock() if config.measure_utilization else None
            self.gauges = LoopGauges(
                lambda: self.heartbeat.thread_name,
                self.metrics.delay,
                lambda: self.watchdog.ongoing_stall_seconds,
                utilization,
            )
            self.heartbeat = Heartbeat(
                loop,
                config.interval,
                wake,
                self.gauges.record_ticks,
                self.deadman,
                config.busy_threshold,
            )
            self.reporter = Reporter(
                config,
                self.heartbeat,
                self.metrics,
                owner._tracer_provider,
                owner._on_block,
                owner._on_busy,
            )
            undo.callback(self.reporter.close)
            self.watchdog = Watchdog(
                loop,
                self.heartbeat,
                config,
                self.reporter,
                wake,
                owner._watchdog_exited,
                owner.inflight,
                utilization,
                self.deadman,
            )
            self.metrics.add_loop(self.gauges)
            undo.callback(self.metrics.remove_loop, self.gauges)
            GC_CLOCK.acquire()
            undo.callback(GC_CLOCK.release)
            self.heartbeat.start()
            undo.callback(self.heartbeat.stop, record_pending=False)
            self.watchdog.start()
            undo.pop_all()  # started: stop() releases it all from now on

    def stop(self, deadline: float) -> None:
        self.watchdog.stop(max(0.0, deadline - monotonic()))
        self.heartbeat.stop()
        if self.deadman is not None and not self.watchdog.alive:  # else it closes it
            self.deadman.close()
        self.reporter.close()
        self.metrics.remove_loop(self.gauges)
        GC_CLOCK.release()
        worker.flush(max(0.0, deadline - monotonic()))
