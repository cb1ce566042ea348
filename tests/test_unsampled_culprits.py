"""Stalls no sample can see while they last still name their culprit: a C call that holds
the GIL (named from the first sample after the loop resumed, in the same callback) and a
garbage collection (named from the code that triggered it). loopwatch's own frames are
never culprit, offender or part of the stack."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

import loopwatch
from loopwatch import BlockEvent
from loopwatch.watchdog import Watchdog

from . import workloads
from .conftest import Telemetry
from .test_detection import THRESHOLD, duration_tolerance, only_stall, watch_while

Run = Callable[[Callable[[], Awaitable[Any]]], Any]

TARGET = 0.35
"""How long each stall should last: well above 1.5 x threshold even on a fast machine."""

OWN_DIR = os.path.dirname(loopwatch.__file__) + os.sep


def timed(block: Callable[[], object]) -> float:
    started = time.perf_counter()
    block()
    return time.perf_counter() - started


def size_for(seconds_at: Callable[[int], float], small: int, exponent: float = 1.0) -> int:
    """The size at which the work lasts about :data:`TARGET` here (timed at ``small``),
    at most 40 times ``small``."""
    took = min(seconds_at(small), seconds_at(small))
    return min(40 * small, max(small, int(small * (TARGET / max(took, 1e-4)) ** (1 / exponent))))


def sort_case() -> Callable[[], object]:
    def seconds_at(n: int) -> float:
        values = workloads.unsorted_floats(n)
        return timed(lambda: workloads.sort_floats(values))

    values = workloads.unsorted_floats(size_for(seconds_at, 200_000))
    return lambda: workloads.sort_floats(values)


def regex_case() -> Callable[[], object]:
    size = size_for(lambda n: timed(lambda: workloads.backtrack("a" * n)), 300, 3.0)
    return lambda: workloads.backtrack("a" * size)


def json_case() -> Callable[[], object]:
    def seconds_at(n: int) -> float:
        document = workloads.large_document(n)
        return timed(lambda: workloads.dump_json(document))

    document = workloads.large_document(size_for(seconds_at, 20_000))
    return lambda: workloads.dump_json(document)


def collect_case() -> Callable[[], object]:
    def seconds_at(n: int) -> float:
        workloads.build_cycles(n)
        return timed(workloads.collect)

    workloads.build_cycles(size_for(seconds_at, 200_000))
    return workloads.collect


def allocation_case() -> Callable[[], object]:
    def seconds_at(n: int) -> float:
        workloads.build_cycles(n)
        return timed(lambda: workloads.allocate(10))

    workloads.build_cycles(size_for(seconds_at, 200_000))
    return lambda: workloads.allocate(10)


@dataclass(frozen=True)
class Case:
    prepare: Callable[[], Callable[[], object]]
    """Builds the input (off the loop, collector off) and returns the blocking call."""
    culprit: str
    cause: str
    sampled: str


CASES = {
    "sort": Case(sort_case, "tests.workloads.sort_floats", "gil", "after"),
    "regex": Case(regex_case, "tests.workloads.backtrack", "gil", "after"),
    "json-c-encoder": Case(json_case, "tests.workloads.dump_json", "gil", "after"),
    "gc.collect": Case(collect_case, "tests.workloads.collect", "gc", "collection"),
    "allocation": Case(allocation_case, "tests.workloads.allocate", "gc", "collection"),
}


def assert_no_own_frame(event: BlockEvent) -> None:
    for frame in (event.culprit, event.offender):
        assert frame is not None
        assert not frame.function.startswith("loopwatch"), frame
        assert not frame.file.startswith(OWN_DIR), frame
    assert OWN_DIR not in event.stack, event.stack


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_a_stall_no_sample_can_see_names_the_function_that_made_the_call(
    run: Run, telemetry: Telemetry, loopwatch_logs: pytest.LogCaptureFixture, case: Case
) -> None:
    async def scenario() -> tuple[list[BlockEvent], float]:
        block = await asyncio.to_thread(case.prepare)
        return await watch_while(telemetry, block)

    events, took = run(scenario)

    assert took > 1.5 * THRESHOLD, f"the work was too quick to test with ({took:.3f} s)"
    event = only_stall(events)
    assert (event.cause, event.culprit and event.culprit.function) == (case.cause, case.culprit)
    assert event.culprit is not None
    assert event.culprit.file.endswith("workloads.py")
    assert abs(event.duration - took) <= duration_tolerance(took), (event.duration, took)
    assert_no_own_frame(event)
    (span,) = telemetry.blocked_spans()
    assert span.attributes is not None
    assert span.attributes["code.function.name"] == case.culprit
    assert span.attributes["loopwatch.culprit.sampled"] == case.sampled
    assert "loopwatch.cause.revised" not in span.attributes
    live = [r.getMessage() for r in loopwatch_logs.records if "so far" in r.getMessage()]
    assert len(live) == 1, live
    assert f"by {case.cause} in {case.culprit} " in live[0], live[0]


def test_a_collection_on_another_loops_thread_names_nothing_on_this_one(
    telemetry: Telemetry,
) -> None:
    """Every thread waits for a collection, but only the thread that triggered it is to
    blame: a loop in another thread, stalled as long, names no culprit."""
    other_events: list[BlockEvent] = []
    ready, done = threading.Event(), threading.Event()

    async def other_loop() -> None:
        async with loopwatch.LoopWatch(THRESHOLD, on_block=other_events.append):
            ready.set()
            while not done.is_set():
                await asyncio.sleep(0.01)

    thread = threading.Thread(target=lambda: asyncio.run(other_loop()))
    thread.start()
    try:
        assert ready.wait(5)
        block = collect_case()
        events, took = asyncio.run(watch_while(telemetry, block))
        time.sleep(0.3)
    finally:
        done.set()
        thread.join(5)

    assert took > 1.5 * THRESHOLD, f"the collection was too quick to test with ({took:.3f} s)"
    event = only_stall(events)
    assert (event.cause, event.culprit and event.culprit.function) == (
        "gc",
        "tests.workloads.collect",
    )
    others = [e for e in other_events if not e.ongoing and e.duration >= 0.5 * took]
    assert others, other_events
    # Its cause may be gil (its tick can run before the collecting thread's callback has
    # added the collection to the clock), or unscheduled on a starved machine.
    assert all(e.culprit is None and e.cause != "cpu" for e in others), others


def test_a_loop_that_moved_on_before_the_sample_names_no_culprit(
    telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sample after a GIL-holding call names its culprit only while the loop is still
    in the same callback. Forced here: the watchdog, once it gets the GIL back, lets the
    loop tick before it samples."""
    take_sample = Watchdog._take_sample

    def sample_after_a_tick(self: Watchdog, stall: Any, on_time: bool, sample: Any) -> None:
        if not on_time:
            deadline = time.monotonic() + 5
            while not self._heartbeat.ticks and time.monotonic() < deadline:
                time.sleep(0.001)
            sample = self._sample_loop()
        take_sample(self, stall, on_time, sample)

    monkeypatch.setattr(Watchdog, "_take_sample", sample_after_a_tick)

    async def scenario() -> tuple[list[BlockEvent], float]:
        block = await asyncio.to_thread(sort_case)
        return await watch_while(telemetry, block)

    loop = asyncio.new_event_loop()
    try:
        events, took = loop.run_until_complete(scenario())
    finally:
        loop.close()

    assert took > 1.5 * THRESHOLD, f"the sort was too quick to test with ({took:.3f} s)"
    event = only_stall(events)
    assert event.cause == "gil"
    assert event.culprit is None
    assert event.offender is None
