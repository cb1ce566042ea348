"""Loop metrics read back through the SDK's in-memory reader and the Prometheus exposition."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import loopwatch

from . import workloads
from .conftest import Telemetry

Run = Callable[[Callable[[], Awaitable[Any]]], Any]


def test_delay_histogram_and_stall_histogram(run: Run, telemetry: Telemetry) -> None:
    async def scenario() -> dict[str, list[Any]]:
        async with loopwatch.LoopWatch(0.1, meter_provider=telemetry.meter_provider):
            await asyncio.sleep(0.3)
            workloads.nap(0.3)
            await asyncio.sleep(0.2)
            return telemetry.metrics()

    points = run(scenario)
    (delay,) = points["asyncio.eventloop.delay"]
    assert delay.count >= 40, "one observation per heartbeat (every 5 ms)"
    assert 0.25 <= delay.max <= 0.4, "the tick after the stall was late by about the stall"
    (stall,) = points["asyncio.eventloop.block.duration"]
    assert stall.count == 1
    assert dict(stall.attributes) == {"loopwatch.cause": "blocking"}
    assert 0.28 <= stall.sum <= 0.35
    assert stall.explicit_bounds[0] == 0.05
    assert points["asyncio.eventloop.block.ongoing"][0].value == 0.0
    time_points = points["asyncio.eventloop.time"]
    states = {dict(point.attributes)["asyncio.eventloop.state"] for point in time_points}
    assert states == {"active", "idle"}


def test_utilization_is_the_share_of_time_spent_running_callbacks(
    run: Run, telemetry: Telemetry
) -> None:
    """Callbacks spin for a known share of 2 s; the gauge reports that share.

    The reference leaves out the loop's own work between callbacks (real active time),
    so iterations are long (4-12 ms) to keep that part small. A ``blocking`` stall is
    active time without CPU: should one happen (the machine holding up the loop thread
    for 0.1 s), the reference counts it too, as the gauge does.
    """
    rng = random.Random(3)
    stalls: list[loopwatch.BlockEvent] = []

    async def scenario() -> tuple[float, float, dict[str, float]]:
        async with loopwatch.LoopWatch(
            0.1, meter_provider=telemetry.meter_provider, on_block=stalls.append
        ):
            await asyncio.sleep(0.1)
            telemetry.metrics()  # start a fresh measurement window
            busy = 0.0
            started = time.perf_counter()
            while time.perf_counter() - started < 2.0:
                spin = rng.uniform(0.004, 0.012)
                workloads.spin(spin)
                busy += spin
                await asyncio.sleep(rng.uniform(0.004, 0.012))
            elapsed = time.perf_counter() - started
            points = telemetry.metrics()
        (utilization,) = points["asyncio.eventloop.utilization"]
        times = {
            dict(p.attributes)["asyncio.eventloop.state"]: p.value
            for p in points["asyncio.eventloop.time"]
        }
        blocked = sum(e.duration for e in stalls if e.end is not None and e.cause == "blocking")
        return utilization.value, (busy + blocked) / elapsed, times

    measured, share, times = run(scenario)
    assert abs(measured - share) <= 0.1, (
        f"utilization {measured:.3f}, callbacks' share {share:.3f}; "
        f"loop times {times}; stalls {[(e.cause, round(e.duration, 3)) for e in stalls]}"
    )
    assert times["active"] > 0.5
    assert times["idle"] > 0.5


def test_ongoing_gauge_is_read_off_the_loop_while_it_is_stuck(
    run: Run, telemetry: Telemetry
) -> None:
    seen: list[float] = []

    def scrape_during_stall() -> None:
        points = telemetry.metrics()
        seen.append(points["asyncio.eventloop.block.ongoing"][0].value)

    async def scenario() -> None:
        async with loopwatch.LoopWatch(0.1, meter_provider=telemetry.meter_provider):
            await asyncio.sleep(0.1)
            scraper = threading.Timer(0.5, scrape_during_stall)
            scraper.start()
            workloads.nap(0.8)
            scraper.join()
            await asyncio.sleep(0.1)

    run(scenario)
    assert seen
    assert 0.3 <= seen[0] <= 0.8


def test_prometheus_names_as_rendered_by_the_opentelemetry_exporter() -> None:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader

    reader = PrometheusMetricReader()
    provider = MeterProvider(metric_readers=[reader])

    async def scenario() -> str:
        async with loopwatch.LoopWatch(0.1, meter_provider=provider):
            await asyncio.sleep(0.2)
            workloads.spin(0.25)
            await asyncio.sleep(0.1)
            return generate_latest(REGISTRY).decode()

    loop = asyncio.new_event_loop()
    try:
        text = loop.run_until_complete(scenario())
    finally:
        loop.close()
        provider.shutdown()  # also takes the reader's collector out of the registry

    samples = {
        sample.name: sample
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    for name in (
        "asyncio_eventloop_delay_seconds_bucket",
        "asyncio_eventloop_delay_seconds_count",
        "asyncio_eventloop_delay_max_seconds",
        "asyncio_eventloop_block_duration_seconds_bucket",
        "asyncio_eventloop_block_duration_seconds_count",
        "asyncio_eventloop_block_ongoing_seconds",
        "asyncio_eventloop_utilization",
        "asyncio_eventloop_time_seconds_total",
    ):
        assert name in samples, f"{name} missing from:\n{text}"
    stall_count = samples["asyncio_eventloop_block_duration_seconds_count"]
    assert stall_count.labels["loopwatch_cause"] == "cpu"


@pytest.mark.parametrize("kind", ["histogram", "gauge"])
def test_instruments_are_shared_by_loops_on_one_provider(telemetry: Telemetry, kind: str) -> None:
    """Two loops in two threads on one provider: one instrument, one gauge series per loop."""
    barrier = threading.Barrier(3)

    def serve() -> None:
        async def main() -> None:
            async with loopwatch.LoopWatch(0.1, meter_provider=telemetry.meter_provider):
                await asyncio.sleep(0.3)
                await asyncio.to_thread(barrier.wait)
                await asyncio.to_thread(barrier.wait)

        asyncio.run(main())

    threads = [threading.Thread(target=serve, name=f"loop-{n}") for n in range(2)]
    for thread in threads:
        thread.start()
    barrier.wait(timeout=5)
    points = telemetry.metrics()
    barrier.wait(timeout=5)
    for thread in threads:
        thread.join()

    if kind == "histogram":
        assert len(points["asyncio.eventloop.delay"]) == 1
    else:
        ongoing = points["asyncio.eventloop.block.ongoing"]
        names = {dict(point.attributes)["thread.name"] for point in ongoing}
        assert names == {"loop-0", "loop-1"}


def test_ticks_do_not_carry_the_span_of_whoever_started_the_watcher(
    run: Run, telemetry: Telemetry
) -> None:
    """A watcher started inside a request (no lifespan) must not make that request's span
    the exemplar of every delay it records afterwards."""
    tracer = telemetry.tracer_provider.get_tracer("test")

    async def scenario() -> dict[str, list[Any]]:
        with tracer.start_as_current_span("first request"):
            watcher = loopwatch.LoopWatch(0.1, meter_provider=telemetry.meter_provider).start()
        deadline = time.monotonic() + 5
        while True:  # ticks are recorded in batches: wait for 20 or more
            await asyncio.sleep(0.2)
            points = await asyncio.to_thread(telemetry.metrics)
            delays = points.get("asyncio.eventloop.delay", [])
            if sum(p.count for p in delays) >= 20 or time.monotonic() > deadline:
                break
        watcher.stop()
        return points

    points = run(scenario)
    (delay,) = points["asyncio.eventloop.delay"]
    assert delay.count >= 20
    (request,) = telemetry.spans.get_finished_spans()
    traced = [e for e in delay.exemplars if e.trace_id == request.context.trace_id]
    assert traced == []
