"""Detection never waits on reporting: a hanging span exporter, a sleeping ``on_block``
hook or a blocking log handler leaves every later stall reported while it lasts and when
it ends, metrics count every stall, and ``stop()`` on the loop thread stays bounded."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, use_span

import loopwatch
from loopwatch.watcher import STOP_TIMEOUT

from . import workloads
from .conftest import Telemetry

THRESHOLD = 0.1
STALL_S = 0.3
STALLS = 5
"""The first stall gets the stuck channel stuck; the four after it must still be seen."""
CULPRIT = "tests.workloads.nap"
STOP_MARGIN_S = 0.25
"""What a loaded machine may add to :data:`STOP_TIMEOUT` (thread switches, the join)."""


@dataclass
class Run:
    """What one watched run of :data:`STALLS` stalls produced."""

    windows: list[tuple[float, float]] = field(default_factory=list)
    """Each stall's ``time.time()`` span, measured around the blocking call."""
    hook_calls: list[tuple[float, loopwatch.BlockEvent]] = field(default_factory=list)
    """When the hook was called (``time.time()``), and with what."""
    stop_seconds: float = 0.0
    watchdogs_after_stop: int = 0


def watchdog_threads() -> int:
    return sum(thread.name == "loopwatch-watchdog" for thread in threading.enumerate())


def run_stalls(
    telemetry: Telemetry,
    *,
    tracer_provider: TracerProvider | None = None,
    hook: Callable[[loopwatch.BlockEvent], None] | None = None,
) -> Run:
    """:data:`STALLS` blocking stalls under a watcher, stopped on the loop thread."""
    result = Run()

    def on_block(event: loopwatch.BlockEvent) -> None:
        result.hook_calls.append((time.time(), event))
        if hook is not None:
            hook(event)

    async def scenario() -> None:
        before = watchdog_threads()
        watcher = loopwatch.LoopWatch(
            THRESHOLD,
            tracer_provider=tracer_provider or telemetry.tracer_provider,
            meter_provider=telemetry.meter_provider,
            on_block=on_block,
            report_burst=STALLS,
        ).start()
        await asyncio.sleep(0.1)
        for _ in range(STALLS):
            started = time.time()
            workloads.nap(STALL_S)
            result.windows.append((started, time.time()))
            await asyncio.sleep(0.15)
        began = time.perf_counter()
        watcher.stop()
        result.stop_seconds = time.perf_counter() - began
        result.watchdogs_after_stop = watchdog_threads() - before

    asyncio.run(scenario())
    return result


def seen_while_ongoing(windows: list[tuple[float, float]], times: list[float]) -> int:
    """How many stalls had a report (at ``times``) while they lasted."""
    return sum(any(start <= at <= end for at in times) for start, end in windows)


def seen_ended(windows: list[tuple[float, float]], events: list[tuple[float, float]]) -> int:
    """How many stalls match a finished report (its ``(start, end)``)."""
    return sum(
        any(start < ended and began < end for began, ended in events) for start, end in windows
    )


def ongoing_hook_times(run: Run) -> list[float]:
    return [at for at, event in run.hook_calls if event.ongoing and _ours(event)]


def ended_hook_events(run: Run) -> list[tuple[float, float]]:
    return [
        (event.start, event.end)
        for _, event in run.hook_calls
        if event.end is not None and _ours(event)
    ]


def ongoing_log_times(records: list[logging.LogRecord]) -> list[float]:
    return [
        record.created
        for record in records
        if record.name == "loopwatch"
        and "so far" in record.getMessage()
        and CULPRIT in record.getMessage()
    ]


def span_windows(telemetry: Telemetry) -> list[tuple[float, float]]:
    return [
        (span.start_time / 1e9, span.end_time / 1e9)
        for span in telemetry.blocked_spans()
        if span.start_time
        and span.end_time
        and (span.attributes or {}).get("code.function.name") == CULPRIT
    ]


def stalls_counted(telemetry: Telemetry) -> int:
    points = telemetry.metrics().get("asyncio.eventloop.block.duration", [])
    return sum(point.count for point in points)


def _ours(event: loopwatch.BlockEvent) -> bool:
    return event.culprit is not None and event.culprit.function == CULPRIT


def assert_stop_was_bounded(run: Run) -> None:
    assert run.stop_seconds <= STOP_TIMEOUT + STOP_MARGIN_S, run.stop_seconds
    assert run.watchdogs_after_stop == 0


@contextlib.contextmanager
def silent_endpoint() -> Iterator[str]:
    """An HTTP endpoint on 127.0.0.1 that accepts connections and never answers."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.05)
    accepted: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                accepted.append(server.accept()[0])

    thread = threading.Thread(target=accept, name="silent-endpoint", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}/v1/traces"
    finally:
        done.set()
        thread.join()
        for connection in accepted:
            connection.close()
        server.close()


@pytest.fixture
def drained() -> Iterator[None]:
    """Every reporting channel is idle again after the test (the channels are shared by
    the whole process: a stuck one would hold up the next tests' reports)."""
    yield
    assert loopwatch.LoopWatch.flush(30.0), "a reporting channel is still stuck"


@pytest.mark.usefixtures("drained")
@pytest.mark.parametrize("processor", ["simple", "batch"])
def test_a_hanging_exporter_does_not_blind_the_detector(
    telemetry: Telemetry, loopwatch_logs: pytest.LogCaptureFixture, processor: str
) -> None:
    with silent_endpoint() as endpoint:
        exporter = OTLPSpanExporter(endpoint=endpoint, timeout=3)
        provider = TracerProvider()
        kind = SimpleSpanProcessor if processor == "simple" else BatchSpanProcessor
        provider.add_span_processor(kind(exporter))
        try:
            run = run_stalls(telemetry, tracer_provider=provider)
        finally:
            provider.shutdown()

    ongoing = seen_while_ongoing(run.windows, ongoing_hook_times(run))
    assert ongoing == STALLS, f"{ongoing}/{STALLS} stalls reported while ongoing"
    logged = seen_while_ongoing(run.windows, ongoing_log_times(loopwatch_logs.records))
    assert logged == STALLS, f"{logged}/{STALLS} stalls logged while ongoing"
    ended = seen_ended(run.windows, ended_hook_events(run))
    assert ended == STALLS, f"{ended}/{STALLS} stalls reported at their end"
    assert stalls_counted(telemetry) >= STALLS
    assert_stop_was_bounded(run)


@pytest.mark.usefixtures("drained")
def test_a_sleeping_hook_delays_neither_spans_nor_logs(
    telemetry: Telemetry, loopwatch_logs: pytest.LogCaptureFixture
) -> None:
    release = threading.Event()
    try:
        run = run_stalls(telemetry, hook=lambda _: release.wait(2.0))
    finally:
        release.set()

    logged = seen_while_ongoing(run.windows, ongoing_log_times(loopwatch_logs.records))
    assert logged == STALLS, f"{logged}/{STALLS} stalls logged while ongoing"
    ended = seen_ended(run.windows, span_windows(telemetry))
    assert ended == STALLS, f"{ended}/{STALLS} stalls have their span"
    assert stalls_counted(telemetry) >= STALLS
    assert_stop_was_bounded(run)


class BlockingHandler(logging.Handler):
    """A log handler stuck until released (a log shipper whose socket is full)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.release.wait(10.0)


@pytest.mark.usefixtures("drained")
def test_a_blocking_log_handler_delays_neither_spans_nor_hooks(telemetry: Telemetry) -> None:
    handler = BlockingHandler()
    logger = logging.getLogger("loopwatch")
    logger.addHandler(handler)
    try:
        run = run_stalls(telemetry)
    finally:
        handler.release.set()
        logger.removeHandler(handler)

    ongoing = seen_while_ongoing(run.windows, ongoing_hook_times(run))
    assert ongoing == STALLS, f"{ongoing}/{STALLS} stalls reported while ongoing"
    ended = seen_ended(run.windows, span_windows(telemetry))
    assert ended == STALLS, f"{ended}/{STALLS} stalls have their span"
    assert_stop_was_bounded(run)


@pytest.mark.usefixtures("drained")
def test_rate_limit_spends_tokens_only_on_sampled_spans(telemetry: Telemetry) -> None:
    """Two tokens, four stalls the sampler drops, then two it keeps: both are exported."""
    provider = TracerProvider(sampler=ParentBased(ALWAYS_OFF))
    provider.add_span_processor(SimpleSpanProcessor(telemetry.spans))
    sampled = NonRecordingSpan(
        SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    )

    async def scenario() -> None:
        async with loopwatch.LoopWatch(
            THRESHOLD, tracer_provider=provider, report_burst=2, report_per_minute=0.0
        ):
            await asyncio.sleep(0.1)
            for parent in [None] * 4 + [sampled] * 2:
                with use_span(parent) if parent is not None else contextlib.nullcontext():
                    workloads.nap(0.25)
                await asyncio.sleep(0.1)

    asyncio.run(scenario())
    assert len(span_windows(telemetry)) == 2
    assert all(span.context.trace_id == 0x1234 for span in telemetry.blocked_spans()), (
        "only the sampled stalls are exported"
    )


def test_flush_waits_for_reports(telemetry: Telemetry) -> None:
    """``flush()`` returns once the stalls reported so far have their spans."""
    ended: list[Any] = []

    async def scenario() -> None:
        async with loopwatch.LoopWatch(
            THRESHOLD, tracer_provider=telemetry.tracer_provider, on_block=ended.append
        ) as watcher:
            await asyncio.sleep(0.1)
            workloads.nap(STALL_S)
            await asyncio.sleep(0.1)
            assert watcher.flush(5.0)
            assert len(span_windows(telemetry)) == 1

    asyncio.run(scenario())


def test_a_full_channel_drops_instead_of_blocking() -> None:
    """A channel whose thread is stuck refuses what does not fit, at once; ``flush``
    gives up at its timeout, and succeeds once the thread is free again."""
    from loopwatch.reporting.worker import Channel

    release = threading.Event()
    channel = Channel("test", capacity=2)
    assert channel.submit(lambda: release.wait(10.0) and None)
    time.sleep(0.05)  # the thread took the first job: two more fit
    assert channel.submit(lambda: None)
    assert channel.submit(lambda: None)
    began = time.perf_counter()
    assert not channel.submit(lambda: None)
    assert not channel.flush(0.1)
    assert time.perf_counter() - began < 0.5
    release.set()
    assert channel.flush(5.0)


class GatedProcessor(SimpleSpanProcessor):
    """Exports each span once ``gate`` opens (an exporter stuck until then)."""

    def __init__(self, exporter: Any, gate: threading.Event) -> None:
        super().__init__(exporter)
        self.gate = gate

    def on_end(self, span: Any) -> None:
        self.gate.wait(10.0)
        super().on_end(span)


def test_reports_a_full_queue_dropped_are_counted(
    telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spans queue behind a stuck export, one at most: the stalls whose span did not fit
    are counted by the metric, and on the next span once the export is free again."""
    from loopwatch.reporting import worker

    monkeypatch.setattr(worker, "_channels", {})  # fresh channels, one report each
    monkeypatch.setattr(worker, "CAPACITY", 1)
    gate = threading.Event()
    provider = TracerProvider()
    provider.add_span_processor(GatedProcessor(telemetry.spans, gate))

    async def scenario() -> None:
        async with loopwatch.LoopWatch(
            THRESHOLD, tracer_provider=provider, meter_provider=telemetry.meter_provider
        ) as watcher:
            await asyncio.sleep(0.1)
            for stall in range(5):
                if stall == 4:  # the first span is stuck, the second waits, two dropped
                    gate.set()
                    assert watcher.flush(5.0)
                workloads.nap(0.2)
                await asyncio.sleep(0.1)

    asyncio.run(scenario())
    dropped = telemetry.metrics()["loopwatch.reports.dropped"]
    assert {dict(p.attributes)["loopwatch.channel"]: p.value for p in dropped}["spans"] == 2
    last = max(telemetry.blocked_spans(), key=lambda span: span.start_time or 0)
    assert (last.attributes or {}).get("loopwatch.reports.dropped") == 2
    assert len(telemetry.blocked_spans()) == 3


def test_a_hook_may_stop_its_watcher() -> None:
    """``stop()`` from the hook (on the hooks thread) does not wait for itself."""
    took: list[float] = []

    def stop_at_the_end(event: loopwatch.BlockEvent) -> None:
        if not event.ongoing:
            began = time.perf_counter()
            watcher.stop()
            took.append(time.perf_counter() - began)

    watcher = loopwatch.LoopWatch(THRESHOLD, on_block=stop_at_the_end)

    async def scenario() -> None:
        watcher.start()
        await asyncio.sleep(0.1)
        workloads.nap(0.2)
        await asyncio.sleep(0.2)

    asyncio.run(scenario())
    assert loopwatch.LoopWatch.flush(5.0)
    assert len(took) == 1
    assert took[0] < 0.5
    assert not watcher.running
