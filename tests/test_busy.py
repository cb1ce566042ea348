"""Busy windows on a watched loop (asyncio and uvloop, run from a test function's frame,
as ``run_until_complete`` callers do): what the samples count as busy, the utilization of
a loop blocked in sync calls, and a failing ``on_busy`` hook."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from loopwatch import BusyEvent, LoopWatch
from loopwatch.reporting.metrics import BUSY_FUNCTIONS, LoopMetrics

from .conftest import Telemetry

Run = Callable[[Callable[[], Awaitable[Any]]], Any]

WINDOW_S = 1.0


def sleep_cut() -> None:
    time.sleep(0.02)


async def cuts(seconds: float, cut: Callable[[], None] | None) -> None:
    """``cut`` every 25 ms for ``seconds`` (``None``: only await)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.monotonic()
        if cut is not None:
            cut()
        await asyncio.sleep(max(0.0, 0.025 - (time.monotonic() - started)))


def watcher(telemetry: Telemetry, events: list[BusyEvent], **options: Any) -> LoopWatch:
    return LoopWatch(
        threshold=0.1,
        busy_window=WINDOW_S,
        on_busy=events.append,
        tracer_provider=telemetry.tracer_provider,
        meter_provider=telemetry.meter_provider,
        **options,
    )


def test_blocking_cuts_are_busy_time_and_utilization(run: Run, telemetry: Telemetry) -> None:
    """A loop sleeping 20 ms in every 25 ms is busy: reported, and 'active' in the loop's
    time (it used to read as idle: its thread used no CPU)."""
    events: list[BusyEvent] = []
    points: list[Any] = []

    async def main() -> None:
        async with watcher(telemetry, events):
            await cuts(2 * WINDOW_S + 1.0, sleep_cut)
            LoopWatch.flush()
            points.extend(telemetry.metrics()["asyncio.eventloop.time"])  # while watched

    run(main)
    assert events, "no busy window reported"
    assert events[0].functions[0] == f"{__name__}.sleep_cut"
    assert events[0].shares[0] >= 0.5
    assert events[0].ratio >= 0.5
    state = {point.attributes["asyncio.eventloop.state"]: point.value for point in points}
    assert state["active"] / (state["active"] + state["idle"]) >= 0.4, state


def test_a_loop_that_only_awaits_is_never_sampled(run: Run, telemetry: Telemetry) -> None:
    events: list[BusyEvent] = []

    async def main() -> None:
        async with watcher(telemetry, events):
            await cuts(2 * WINDOW_S, None)
            LoopWatch.flush()

    run(main)
    assert not events
    points = telemetry.metrics()["asyncio.eventloop.busy.time"]
    assert sum(point.value for point in points) < 0.1 * WINDOW_S  # the series starts at 0


def test_a_failing_on_busy_hook_is_logged_once(
    run: Run, telemetry: Telemetry, loopwatch_logs: pytest.LogCaptureFixture
) -> None:
    calls: list[BusyEvent] = []

    def hook(event: BusyEvent) -> None:
        calls.append(event)
        raise RuntimeError("hook failed")

    async def main() -> None:
        async with LoopWatch(
            threshold=0.1,
            busy_window=WINDOW_S,
            on_busy=hook,
            tracer_provider=telemetry.tracer_provider,
            meter_provider=telemetry.meter_provider,
        ):
            await cuts(3 * WINDOW_S + 1.0, sleep_cut)
            LoopWatch.flush()

    run(main)
    assert len(calls) >= 2
    failures = [r for r in loopwatch_logs.records if "on_busy hook raised" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].levelno == logging.ERROR
    spans = [s for s in telemetry.spans.get_finished_spans() if s.name == "loop.busy"]
    assert len(spans) >= 2  # the hook's failure stops nothing


def test_busy_time_names_at_most_twenty_functions_per_process(telemetry: Telemetry) -> None:
    """``code.function.name`` stays bounded: the first 20 functions keep their name, later
    ones are counted as ``other`` (a function once named keeps its label)."""
    metrics = LoopMetrics(telemetry.meter_provider)
    labels = [metrics.busy_label(f"app.f{i}") for i in range(BUSY_FUNCTIONS + 5)]
    assert labels[:BUSY_FUNCTIONS] == [f"app.f{i}" for i in range(BUSY_FUNCTIONS)]
    assert set(labels[BUSY_FUNCTIONS:]) == {"other"}
    assert metrics.busy_label("app.f3") == "app.f3"
