"""Stalls of every kind are found with the right cause, culprit and duration; none are invented."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import loopwatch
from loopwatch import BlockEvent
from loopwatch.watchdog import Watchdog

from . import workloads
from .conftest import Telemetry

THRESHOLD = 0.1
STALL = 0.3


def duration_tolerance(seconds: float) -> float:
    """The accuracy loopwatch promises: within max(5 ms, 5 %)."""
    return max(0.005, 0.05 * seconds)


async def watch_while(
    telemetry: Telemetry, block: Callable[[], Any], *, settle: float = 0.2
) -> tuple[list[BlockEvent], float]:
    """Run ``block`` on the loop under a watcher; return the finished events and its duration."""
    events: list[BlockEvent] = []
    async with loopwatch.LoopWatch(
        THRESHOLD,
        tracer_provider=telemetry.tracer_provider,
        meter_provider=telemetry.meter_provider,
        on_block=events.append,
    ):
        await asyncio.sleep(settle)
        started, wall_started = time.perf_counter(), time.time()
        block()
        took = time.perf_counter() - started
        await asyncio.sleep(settle)
    overlapping = [
        event
        for event in events
        if not event.ongoing
        and event.end is not None
        and event.start <= wall_started + took
        and event.end >= wall_started
    ]
    return overlapping, took


def only_stall(events: list[BlockEvent]) -> BlockEvent:
    """The one stall that overlaps the blocking call (a loaded machine may add others)."""
    assert len(events) == 1, f"expected one stall during the blocking call, got {events}"
    return events[0]


@pytest.mark.parametrize(
    ("block", "culprit", "cause"),
    [
        (lambda: workloads.spin(STALL), "tests.workloads.spin", "cpu"),
        (lambda: workloads.nap(STALL), "tests.workloads.nap", "blocking"),
        (lambda: workloads.read_socket(STALL), "tests.workloads.read_socket", "blocking"),
    ],
    ids=["cpu-loop", "time.sleep", "socket-read"],
)
def test_stall_on_the_loop_is_found_with_culprit_cause_and_duration(
    run: Callable[[Callable[[], Awaitable[Any]]], Any],
    telemetry: Telemetry,
    block: Callable[[], Any],
    culprit: str,
    cause: str,
) -> None:
    events, took = run(lambda: watch_while(telemetry, block))

    event = only_stall(events)
    assert event.cause == cause
    assert event.culprit is not None
    assert event.culprit.function == culprit
    assert event.culprit.file.endswith("workloads.py")
    assert event.samples >= 1
    assert abs(event.duration - took) <= duration_tolerance(took), (event.duration, took)
    assert "Traceback (most recent call last):" in event.stack
    assert event.end is not None
    assert event.end > event.start


def test_offender_is_the_innermost_frame_even_in_library_code(
    run: Callable[[Callable[[], Awaitable[Any]]], Any], telemetry: Telemetry
) -> None:
    import pprint

    data = [{"id": i, "tags": [str(j) for j in range(8)], "k": [i]} for i in range(3000)]

    def compare() -> None:
        deadline = time.perf_counter() + STALL
        while time.perf_counter() < deadline:  # pure-Python library code, ~0.1 s a call
            pprint.pformat(data, width=40)

    events, _ = run(lambda: watch_while(telemetry, compare))

    event = only_stall(events)
    assert event.culprit is not None
    assert event.culprit.function.endswith("compare")
    assert event.offender is not None
    assert event.offender.function.startswith("pprint."), event.offender


def test_gil_holding_c_call_names_the_caller_from_the_sample_after_it(
    run: Callable[[Callable[[], Awaitable[Any]]], Any], telemetry: Telemetry
) -> None:
    """No sample is possible while the sort holds the GIL; the first one after it, in the
    same callback, shows the function that called it (see test_unsampled_culprits)."""

    async def scenario() -> tuple[list[BlockEvent], float]:
        values = await asyncio.to_thread(workloads.unsorted_floats, 2_500_000)
        return await watch_while(telemetry, lambda: workloads.sort_floats(values))

    events, took = run(scenario)

    assert took > 1.5 * THRESHOLD, f"the sort was too quick to test with ({took:.3f} s)"
    event = only_stall(events)
    assert event.cause == "gil"
    assert event.culprit is not None
    assert event.culprit.function == "tests.workloads.sort_floats"
    assert event.samples == 0
    assert abs(event.duration - took) <= duration_tolerance(took), (event.duration, took)
    span = telemetry.blocked_spans()[0]
    assert span.attributes["code.function.name"] == "tests.workloads.sort_floats"
    assert span.attributes["loopwatch.culprit.sampled"] == "after"
    assert span.attributes["loopwatch.cause"] == "gil"


def test_stall_that_ends_while_the_watchdog_opens_it_is_closed_at_once(
    telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A watchdog held off by a GIL-holding call gets the GIL when the call ends, and the
    loop may tick between the watchdog's look at the ticks and its request to be woken by
    the next tick. That tick ends the stall: the watchdog must not sleep through it until
    its next sample. Forced here: the watchdog wakes 0.5 s into a 0.6 s stall, opening the
    stall waits until the loop has ticked, and the loop then stops (no other tick comes).
    """
    held_off = threading.Event()
    wait, read_schedstat = Watchdog._wait, Watchdog._read_schedstat

    def wait_until_late_in_the_stall(self: Watchdog) -> tuple[float, bool]:
        woke, on_time = wait(self)
        last_ran = self._heartbeat.last_ran
        if held_off.is_set() or last_ran is None or woke - last_ran < THRESHOLD:
            return woke, on_time
        held_off.set()
        time.sleep(max(0.0, last_ran + 0.5 - time.monotonic()))
        return time.monotonic(), False

    def read_schedstat_once_the_loop_ticked(self: Watchdog) -> Any:
        if self._stall is None and held_off.is_set():  # opening the stall
            deadline = time.monotonic() + 5
            while not self._heartbeat.ticks and time.monotonic() < deadline:
                time.sleep(0.001)
        return read_schedstat(self)

    monkeypatch.setattr(Watchdog, "_wait", wait_until_late_in_the_stall)
    monkeypatch.setattr(Watchdog, "_read_schedstat", read_schedstat_once_the_loop_ticked)
    ended_at: list[float] = []

    def on_block(event: BlockEvent) -> None:
        if not event.ongoing:
            ended_at.append(time.monotonic())

    async def stall_then_stop() -> float:
        await asyncio.sleep(0.2)
        workloads.nap(0.6)
        await asyncio.sleep(0)  # the heartbeat ticks in this turn; then the loop stops
        return time.monotonic()

    loop = asyncio.new_event_loop()
    watch = loopwatch.LoopWatch(
        THRESHOLD,
        tracer_provider=telemetry.tracer_provider,
        meter_provider=telemetry.meter_provider,
        on_block=on_block,
    )
    try:
        watch.start(loop)
        resumed = loop.run_until_complete(stall_then_stop())
        time.sleep(1.0)  # the next sample is due about 0.4 s after the stall ended
        watch.stop()
    finally:
        loop.close()

    assert held_off.is_set(), "the watchdog never woke during the stall"
    assert len(ended_at) == 1, ended_at
    assert ended_at[0] - resumed < 0.15, f"the stall ended {ended_at[0] - resumed:.3f} s late"


def test_garbage_collection_is_named_as_the_cause(
    run: Callable[[Callable[[], Awaitable[Any]]], Any], telemetry: Telemetry
) -> None:
    async def scenario() -> tuple[list[BlockEvent], float]:
        gc.disable()
        try:
            await asyncio.to_thread(workloads.build_cycles, 1_500_000)
            return await watch_while(telemetry, workloads.collect)
        finally:
            gc.enable()

    events, took = run(scenario)

    assert took > 1.5 * THRESHOLD, f"the collection was too quick to test with ({took:.3f} s)"
    event = only_stall(events)
    assert event.cause == "gc"
    assert abs(event.duration - took) <= duration_tolerance(took), (event.duration, took)


@pytest.mark.parametrize(
    "work",
    [
        lambda: asyncio.sleep(0.5),
        lambda: asyncio.to_thread(time.sleep, 0.5),
        lambda: asyncio.to_thread(workloads.spin, 0.5),
        lambda: asyncio.get_running_loop().run_in_executor(None, workloads.nap, 0.5),
    ],
    ids=["asyncio.sleep", "to_thread-sleep", "to_thread-cpu", "run_in_executor"],
)
def test_waiting_off_the_loop_is_not_a_stall(
    run: Callable[[Callable[[], Awaitable[Any]]], Any],
    telemetry: Telemetry,
    work: Callable[[], Awaitable[Any]],
) -> None:
    events: list[BlockEvent] = []

    async def scenario() -> None:
        async with loopwatch.LoopWatch(THRESHOLD, on_block=events.append):
            await work()

    run(scenario)
    assert events == []


def test_heavy_async_load_is_not_a_stall(
    run: Callable[[Callable[[], Awaitable[Any]]], Any],
) -> None:
    events: list[BlockEvent] = []

    async def switcher(until: float) -> int:
        switches = 0
        while time.perf_counter() < until:
            await asyncio.sleep(0)
            switches += 1
        return switches

    async def scenario() -> int:
        async with loopwatch.LoopWatch(THRESHOLD, on_block=events.append):
            until = time.perf_counter() + 1.0
            counts = await asyncio.gather(*(switcher(until) for _ in range(500)))
        return sum(counts)

    switches = run(scenario)
    assert switches > 10_000
    assert events == []


def test_stall_shorter_than_the_threshold_is_not_reported(
    run: Callable[[Callable[[], Awaitable[Any]]], Any], telemetry: Telemetry
) -> None:
    events, _ = run(lambda: watch_while(telemetry, lambda: workloads.nap(0.04)))
    assert events == []
