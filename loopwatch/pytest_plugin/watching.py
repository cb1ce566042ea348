"""Watching the loop: async tests and fixtures wrapped so that a watcher runs on their loop."""

from __future__ import annotations

import asyncio
import functools
import inspect
import sys
import types
from collections.abc import AsyncGenerator, Callable, Coroutine
from typing import Any

from opentelemetry import metrics, trace

from ..config import resolve_config
from ..trio_loop import TrioLoop
from ..watcher import LoopWatch, WatchedLoop, running_loop
from .recording import Plugin, Recorder

SETTLE_DELAY = 0.001
"""How long a wrapper sleeps after the watched code, so the overdue heartbeat ticks first:
a timer due later than the heartbeat's. uvloop rounds timers to 1 ms (and runs shorter ones
as soon as possible); the stdlib loop orders any later timer after it."""

MAX_STACK_CHARS = 32_768


_NO_TRACES = trace.NoOpTracerProvider()
_NO_METRICS = metrics.NoOpMeterProvider()
"""The plugin's watchers report to the test only: no spans or metrics in the providers
that the tests under watch may set up and inspect."""


def is_async(func: object) -> bool:
    return inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func)


def watched(func: Callable[..., Any], plugin: Plugin, where: str) -> Callable[..., Any]:
    """``func`` (a coroutine or async generator function) run under a watcher of its loop."""
    if isinstance(func, types.MethodType):  # keep it a method: pytest re-binds fixtures
        return types.MethodType(watched(func.__func__, plugin, where), func.__self__)
    if inspect.isasyncgenfunction(func):
        return watched_asyncgen(func, plugin, where)
    return watched_coroutine(func, plugin, where)


def watched_coroutine(
    func: Callable[..., Coroutine[Any, Any, Any]], plugin: Plugin, where: str
) -> Callable[..., Coroutine[Any, Any, Any]]:
    @functools.wraps(func)
    async def loopwatch_watched(*args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        async with Watching(plugin, where):
            return await func(*args, **kwargs)

    return loopwatch_watched


def watched_asyncgen(
    func: Callable[..., AsyncGenerator[Any]], plugin: Plugin, where: str
) -> Callable[..., AsyncGenerator[Any]]:
    @functools.wraps(func)
    async def loopwatch_watched(*args: Any, **kwargs: Any) -> AsyncGenerator[Any]:
        __tracebackhide__ = True
        inner = func(*args, **kwargs)
        try:
            async with Watching(plugin, f"{where} setup"):
                value = await inner.__anext__()
        except StopAsyncIteration:
            return
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                await inner.aclose()
                raise
            except BaseException as error:
                step = inner.athrow(error)
            else:
                step = inner.asend(sent)
            try:
                async with Watching(plugin, f"{where} teardown"):
                    value = await step
            except StopAsyncIteration:
                return

    return loopwatch_watched


class Watching:
    """Watch the running loop for the test in progress, unless a watcher already does."""

    def __init__(self, plugin: Plugin, where: str) -> None:
        self._plugin = plugin
        self._where = where
        self._owned: tuple[WatchedLoop, LoopWatch, Recorder] | None = None

    async def __aenter__(self) -> None:
        run = self._plugin.current
        if run is None:
            return
        try:
            loop = running_loop("the loopwatch pytest plugin")
        except RuntimeError:  # neither asyncio nor trio (curio)
            return
        if loop in self._plugin.loops:
            return
        recorder = Recorder(run, self._where)
        watcher = LoopWatch(
            run.policy.threshold,
            on_block=recorder,
            tracer_provider=_NO_TRACES,
            meter_provider=_NO_METRICS,
            measure_utilization=False,
            busy_threshold=0,  # the plugin fails tests on stalls; busy windows are not its job
            max_stack_chars=MAX_STACK_CHARS,
            skip_modules=self._plugin.project.skip_modules(resolve_config().skip_modules),
        )
        watcher.start(loop)
        if not watcher.running:  # LOOPWATCH_ENABLED=0
            return
        self._plugin.loops.add(loop)
        self._owned = loop, watcher, recorder
        run.watched_loop = True
        try:
            await _sleep(loop, 0)  # the heartbeat's first tick runs before the watched code
        except BaseException:
            self._release()
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        if self._owned is None:
            return
        loop, _, recorder = self._owned
        try:
            await self._settle(loop, recorder)
        finally:
            self._release()

    @staticmethod
    async def _settle(loop: WatchedLoop, recorder: Recorder) -> None:
        """Let a stall that just ended (or a callback the test left queued) be closed.

        The heartbeat tick that ends a stall is overdue, so it runs before a timer set
        after the stall; stop() then reports the stall. A stall the watchdog saw start
        gets a few more rounds. On trio, tasks woken together run in a random order: the
        first round only lets the overdue tick run.
        """
        delay = 1e-6 if isinstance(loop, asyncio.BaseEventLoop) else SETTLE_DELAY
        await _sleep(loop, 0)  # callbacks already queued run first
        if isinstance(loop, TrioLoop):
            await _sleep(loop, delay)
        for _ in range(5):
            await _sleep(loop, delay)
            if recorder.open is None:
                return

    def _release(self) -> None:
        owned, self._owned = self._owned, None
        if owned is not None:
            loop, watcher, recorder = owned
            watcher.stop()
            self._plugin.loops.discard(loop)
            recorder.close()


async def _sleep(loop: WatchedLoop, seconds: float) -> None:
    """Sleep on ``loop``'s library (trio is running, hence imported, on a trio loop)."""
    if isinstance(loop, TrioLoop):
        await sys.modules["trio"].sleep(seconds)
    else:
        await asyncio.sleep(seconds)
