"""``LoopWatch`` inside ``trio.run``: the same stalls, culprits, spans and metrics as on
asyncio, from a heartbeat system task and the same watchdog thread."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import trio

import loopwatch
from loopwatch import BlockEvent

from . import workloads
from .conftest import Telemetry
from .test_detection import STALL, THRESHOLD, duration_tolerance, only_stall

SETTLE = 0.2


def watch_in_trio(
    telemetry: Telemetry, block: Callable[[], Any]
) -> tuple[list[BlockEvent], float, Any]:
    """Run ``block`` in a trio task under a span and a watcher; the finished events that
    overlap it, its duration and the span."""
    events: list[BlockEvent] = []
    tracer = telemetry.tracer_provider.get_tracer(__name__)
    took = 0.0
    span: Any = None

    async def main() -> None:
        nonlocal took, span
        async with loopwatch.LoopWatch(
            THRESHOLD,
            tracer_provider=telemetry.tracer_provider,
            meter_provider=telemetry.meter_provider,
            on_block=events.append,
        ):
            await trio.sleep(SETTLE)
            with tracer.start_as_current_span("work") as span:
                started = time.perf_counter()
                block()
                took = time.perf_counter() - started
            await trio.sleep(SETTLE)

    trio.run(main)
    return [event for event in events if not event.ongoing], took, span


@pytest.mark.parametrize(
    ("block", "culprit", "cause"),
    [
        (lambda: workloads.nap(STALL), "tests.workloads.nap", "blocking"),
        (lambda: workloads.spin(STALL), "tests.workloads.spin", "cpu"),
    ],
    ids=["time.sleep", "cpu-loop"],
)
def test_stall_in_trio_run_is_one_span_naming_the_function_under_the_tasks_span(
    telemetry: Telemetry, block: Callable[[], Any], culprit: str, cause: str
) -> None:
    events, took, span = watch_in_trio(telemetry, block)

    event = only_stall(events)
    assert event.cause == cause
    assert event.culprit is not None
    assert event.culprit.function == culprit
    assert abs(event.duration - took) <= duration_tolerance(took), (event.duration, took)
    assert event.task_name == f"{__name__}.watch_in_trio.<locals>.main"
    assert "unrolled_run" in event.stack  # trio's frames are in the stack, never the culprit
    (blocked,) = telemetry.blocked_spans()
    assert blocked.attributes is not None
    assert blocked.attributes["code.function.name"] == culprit
    assert blocked.attributes["loopwatch.cause"] == cause
    assert blocked.parent is not None
    assert blocked.parent.span_id == span.get_span_context().span_id
    assert blocked.context is not None
    assert blocked.context.trace_id == span.get_span_context().trace_id
    (point,) = telemetry.metrics()["asyncio.eventloop.block.duration"]
    assert point.count == 1


def test_fifty_healthy_concurrent_trio_tasks_are_no_stall(telemetry: Telemetry) -> None:
    events: list[BlockEvent] = []
    switches = 0

    async def switcher(until: float) -> None:
        nonlocal switches
        while time.perf_counter() < until:
            await trio.sleep(0)
            switches += 1

    async def main() -> None:
        async with loopwatch.LoopWatch(
            THRESHOLD, tracer_provider=telemetry.tracer_provider, on_block=events.append
        ):
            until = time.perf_counter() + 1.0
            async with trio.open_nursery() as nursery:
                for _ in range(50):
                    nursery.start_soon(switcher, until)

    trio.run(main)
    assert switches > 10_000
    assert events == []
    assert telemetry.blocked_spans() == []


def test_suppress_and_start_stop_work_in_trio(telemetry: Telemetry) -> None:
    """``suppress()`` in a trio task keeps its stall out of spans; ``start()``/``stop()``
    and ``watch()`` find the trio run; after ``stop()`` nothing is reported."""
    events: list[BlockEvent] = []

    async def main() -> None:
        watcher = loopwatch.LoopWatch(
            THRESHOLD, tracer_provider=telemetry.tracer_provider, on_block=events.append
        ).start()
        assert watcher.running
        await trio.sleep(SETTLE)
        with loopwatch.suppress():
            workloads.nap(STALL)
        await trio.sleep(SETTLE)
        watcher.stop()
        workloads.nap(STALL)
        shared = loopwatch.watch(threshold=THRESHOLD)
        assert shared is loopwatch.watch()
        assert shared.running
        shared.stop()

    trio.run(main)
    assert events == []
    assert telemetry.blocked_spans() == []


def test_a_watcher_left_running_ends_with_the_trio_run() -> None:
    watcher = loopwatch.LoopWatch(THRESHOLD)

    async def main() -> None:
        watcher.start()
        await trio.sleep(0.05)

    trio.run(main)
    deadline = time.monotonic() + 2.0
    while watcher.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not watcher.running
