"""A trio run seen through the few event loop methods the heartbeat and watchdog use.

Trio has no ``call_later``: one system task runs the heartbeat's timer (a single
pending callback, re-armed by each tick, as the heartbeat uses it). Trio keeps the
task it is stepping in a thread-local; the watchdog reads that thread's copy from its
own thread (a dictionary read, no hook per task step) to find the stalled task and its
``contextvars``, where OpenTelemetry's current span lives. The other tasks, whose
coroutines show the requests a stall holds up, are found from the root task through
trio's public task tree. Trio is imported only when asyncio has no running loop and trio
is already imported (by the app that runs it).
"""

from __future__ import annotations

import contextvars
import logging
import math
import sys
import threading
from collections.abc import Callable
from typing import Any

from .task_context import NO_TASK, TaskSnapshot

logger = logging.getLogger("loopwatch")


class TrioTimer:
    """A callback due at ``when`` on trio's clock; ``cancel()`` drops it."""

    __slots__ = ("callback", "cancelled", "context", "when")

    def __init__(
        self, when: float, callback: Callable[[], object], context: contextvars.Context | None
    ) -> None:
        self.when = when
        self.callback = callback
        self.context = context
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def run(self) -> None:
        if self.context is not None:
            self.context.run(self.callback)
        else:
            self.callback()


class TrioLoop:
    """The trio run of the calling thread (one per run: see :func:`current_trio_loop`)."""

    def __init__(self, trio: Any) -> None:
        self._trio = trio
        self._token = trio.lowlevel.current_trio_token()
        self.thread_id = threading.get_ident()
        self._root = trio.lowlevel.current_root_task()
        self._task_slot = _task_slot()
        self._timer: TrioTimer | None = None
        self._scope: Any = None
        self._closed = False
        trio.lowlevel.spawn_system_task(
            self._run_timers, name="loopwatch-timer", context=contextvars.Context()
        )

    def call_soon_threadsafe(
        self, callback: Callable[[], object], *, context: contextvars.Context | None = None
    ) -> None:
        """Run ``callback`` on the trio thread soon; ``RuntimeError`` once the run ended.

        Called on the trio thread, it runs at once: the token's queue runs only when trio
        schedules its system task (random order, and in guest mode after an I/O wait in
        another thread), and a heartbeat started by a task must tick before that task's
        next step, or a stall in it goes unseen."""
        timer = TrioTimer(0.0, callback, context)
        if threading.get_ident() == self.thread_id and not self._closed:
            self._guarded(timer)
            return
        self._token.run_sync_soon(self._guarded, timer)  # RunFinishedError is a RuntimeError

    def call_later(
        self, delay: float, callback: Callable[[], object], *, context: contextvars.Context | None
    ) -> TrioTimer:
        """Run ``callback`` in ``delay`` seconds; replaces the pending one (trio thread only)."""
        timer = TrioTimer(self._trio.current_time() + delay, callback, context)
        self._timer = timer
        if self._scope is not None:
            self._scope.deadline = timer.when
        return timer

    def is_running(self) -> bool:
        return not self._closed

    def is_closed(self) -> bool:
        return self._closed

    def running_task(self) -> Any:
        """The task trio is stepping right now (from any thread), if any."""
        return self._task_slot.get("task") if self._task_slot is not None else None

    def snapshot_task(self) -> TaskSnapshot:
        """The task trio is stepping right now (from any thread), and its context."""
        task = self.running_task()
        if task is None:
            return NO_TASK
        return TaskSnapshot(str(task.name), task.context)

    def tasks(self, limit: int) -> list[Any]:
        """The run's tasks, at most ``limit`` (from any thread, while the run is stalled).

        Each step of the walk copies a task's nurseries or a nursery's children in one C
        call (trio's public ``child_nurseries`` and ``child_tasks``), so a run that steps
        on meanwhile cannot break it; a trio that lacks them gives no task (logged once).
        """
        found: list[Any] = []
        pending = [self._root]
        try:
            while pending and len(found) < limit:
                task = pending.pop()
                found.append(task)
                for nursery in task.child_nurseries:
                    pending.extend(nursery.child_tasks)
        except Exception:
            _log_once("loopwatch could not list the tasks of the trio run")
            return []
        return found

    def running_chain(self) -> list[Any]:
        """The running task and the tasks whose nurseries hold it, nearest first: a view
        run in a child task (a task group) is the request of the task that opened it."""
        chain: list[Any] = []
        task = self.running_task()
        try:
            while task is not None and len(chain) < MAX_NESTING:
                chain.append(task)
                nursery = task.parent_nursery
                task = nursery.parent_task if nursery is not None else None
        except Exception:
            _log_once("loopwatch could not follow the parents of the stalled trio task")
        return chain

    async def _run_timers(self) -> None:
        """Sleep until the pending timer is due, run it, repeat.

        Trio's only clock is a cancel scope's deadline. A deadline that passes throws
        ``Cancelled`` through the sleep: an exception raised and caught at every tick
        (with ``trio.sleep_until`` too), a quarter of the tick's instructions. Instead,
        the abort callback that trio calls when the scope is cancelled wakes the task
        with a plain value once the deadline (the pending timer's) has passed, and lets
        any other cancellation (the run ending) through.
        """
        trio = self._trio
        lowlevel = trio.lowlevel
        current_time = trio.current_time
        task = lowlevel.current_task()
        woken = lowlevel.Abort.FAILED
        cancelled = lowlevel.Abort.SUCCEEDED

        def abort(raise_cancel: Any) -> Any:
            scope = self._scope
            if scope is not None and current_time() >= scope.deadline:
                lowlevel.reschedule(task)
                return woken
            return cancelled

        try:
            while True:
                timer = self._timer
                with trio.CancelScope(deadline=math.inf if timer is None else timer.when) as scope:
                    self._scope = scope
                    await lowlevel.wait_task_rescheduled(abort)
                self._scope = None
                timer = self._timer  # due: only ``abort`` wakes the task, at the deadline
                if timer is not None:
                    self._timer = None
                    self._guarded(timer)
        finally:
            self._closed = True

    @staticmethod
    def _guarded(timer: TrioTimer) -> None:
        """An error in a system task would end the trio run: log it instead."""
        if timer.cancelled:
            return
        try:
            timer.run()
        except Exception:
            logger.exception("loopwatch timer failed on the trio thread")


MAX_NESTING = 64
"""Parent tasks followed up from the running one (nurseries nest a few levels deep)."""

_failed: set[str] = set()


def _log_once(message: str) -> None:
    """The watchdog thread must go on: a trio whose tasks look unlike these is logged once."""
    if message not in _failed:
        _failed.add(message)
        logger.exception(message)


def _task_slot() -> dict[str, Any] | None:
    """This thread's copy of trio's thread-local run state (it holds the task being
    stepped as ``task``), readable from other threads; ``None`` if trio's layout changed."""
    try:
        from trio._core._run import GLOBAL_RUN_CONTEXT
    except ImportError:
        return None
    state = getattr(GLOBAL_RUN_CONTEXT, "__dict__", None)
    return state if isinstance(state, dict) else None


_loops: Any = None


def current_trio_loop() -> TrioLoop | None:
    """The calling thread's trio run as a :class:`TrioLoop`, created on first use;
    ``None`` outside a trio run (or where trio was never imported)."""
    global _loops
    trio = sys.modules.get("trio")
    if trio is None:
        return None
    try:
        trio.lowlevel.current_trio_token()
    except RuntimeError:
        return None
    if _loops is None:
        _loops = trio.lowlevel.RunVar("loopwatch_trio_loop")
    loop: TrioLoop | None = _loops.get(None)
    if loop is None:
        loop = TrioLoop(trio)
        _loops.set(loop)
    return loop
