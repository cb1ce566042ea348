"""Loop metrics through the OpenTelemetry metrics API (meter ``loopwatch``).

Instruments are created once per meter provider and shared by every watched loop. The
heartbeat records its ticks' delays on the loop thread, in batches (in memory);
the observable instruments read each loop's :class:`LoopGauges` from the collecting
thread, so a scrape served from another thread sees a stuck loop as stuck.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable, Sequence

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from .._version import __version__
from ..heartbeat import Tick
from ..utilization import UtilizationClock

DELAY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
BLOCK_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

BUSY_FUNCTIONS = 20
"""Functions that get a ``code.function.name`` of their own on ``asyncio.eventloop.busy.time``
(per meter provider, so per process): the first ones ranked at the top of a busy window;
the rest are counted as ``other``, so the metric's cardinality stays bounded."""


class LoopGauges:
    """The per-loop metrics state: :meth:`record_ticks` runs on the loop thread for each
    batch of heartbeat ticks (in-memory only), the ``take_*`` methods on the collecting
    thread."""

    def __init__(
        self,
        thread_name: Callable[[], str],
        delay: metrics.Histogram,
        ongoing_seconds: Callable[[], float],
        utilization: UtilizationClock | None,
    ) -> None:
        self._thread_name = thread_name
        self._delay = delay
        self.ongoing_seconds = ongoing_seconds
        self.utilization = utilization
        self._lock = threading.Lock()
        self._max_delay = 0.0
        self._last_totals = (0.0, 0.0)

    @property
    def thread_name(self) -> str:
        return self._thread_name()

    def record_ticks(self, ticks: Sequence[Tick]) -> None:
        """Heartbeats ran (oldest first): record their delays (and the loop's busy time)."""
        record = self._delay.record
        largest = 0.0
        for tick in ticks:
            delay = max(0.0, tick.ran - tick.due)
            record(delay)
            largest = max(largest, delay)
        with self._lock:
            self._max_delay = max(self._max_delay, largest)
        if self.utilization is not None and ticks:
            self.utilization.on_ticks(ticks)

    def take_max_delay(self) -> float:
        """The largest delay since the previous call."""
        with self._lock:
            value, self._max_delay = self._max_delay, 0.0
        return value

    def take_utilization(self) -> float | None:
        """Share of time the loop was busy since the previous call (``None`` if unknown)."""
        if self.utilization is None:
            return None
        active, idle = self.utilization.totals()
        last_active, last_idle = self._last_totals
        self._last_totals = (active, idle)
        spent = (active - last_active) + (idle - last_idle)
        return (active - last_active) / spent if spent > 0 else None


class LoopMetrics:
    """The instruments of one meter provider."""

    def __init__(self, meter_provider: metrics.MeterProvider | None) -> None:
        meter = metrics.get_meter("loopwatch", __version__, meter_provider=meter_provider)
        self._loops: weakref.WeakSet[LoopGauges] = weakref.WeakSet()
        self.delay = meter.create_histogram(
            "asyncio.eventloop.delay",
            unit="s",
            description="How late the loop ran its heartbeat, net of the heartbeat interval.",
            explicit_bucket_boundaries_advisory=DELAY_BUCKETS,
        )
        self.block_duration = meter.create_histogram(
            "asyncio.eventloop.block.duration",
            unit="s",
            description="Duration of each stall of the event loop at or above the threshold.",
            explicit_bucket_boundaries_advisory=BLOCK_BUCKETS,
        )
        self.busy_time = meter.create_counter(
            "asyncio.eventloop.busy.time",
            unit="s",
            description="Time the loop was found busy (running callbacks, computing or "
            "blocked in a sync call) while it was sampled as busy, by code.function.name "
            f"(the top {BUSY_FUNCTIONS} functions per process, the rest as other), "
            "all loops of the process together.",
        )
        self._busy_names: set[str] = set()
        self._busy_lock = threading.Lock()
        self.reports_dropped = meter.create_counter(
            "loopwatch.reports.dropped",
            unit="{report}",
            description="Reports (spans, log lines, on_block calls) dropped because their "
            "channel's queue was full, by loopwatch.channel.",
        )
        meter.create_observable_gauge(
            "asyncio.eventloop.delay.max",
            callbacks=[self._observe_max_delay],
            unit="s",
            description="Largest loop delay since the previous collection.",
        )
        meter.create_observable_gauge(
            "asyncio.eventloop.block.ongoing",
            callbacks=[self._observe_ongoing],
            unit="s",
            description="How long the loop has been blocked right now (0 while it runs).",
        )
        meter.create_observable_gauge(
            "asyncio.eventloop.utilization",
            callbacks=[self._observe_utilization],
            unit="1",
            description="Share of time the loop was busy since the previous collection.",
        )
        meter.create_observable_counter(
            "asyncio.eventloop.time",
            callbacks=[self._observe_time],
            unit="s",
            description="Time the loop spent active (running callbacks) and idle (waiting).",
        )

    def busy_label(self, function: str) -> str:
        """``function`` if it has (or may still get) a label of its own, else ``other``."""
        with self._busy_lock:
            if function in self._busy_names:
                return function
            if len(self._busy_names) < BUSY_FUNCTIONS:
                self._busy_names.add(function)
                return function
        return "other"

    def add_loop(self, gauges: LoopGauges) -> None:
        self._loops.add(gauges)

    def remove_loop(self, gauges: LoopGauges) -> None:
        self._loops.discard(gauges)

    def _observe_max_delay(self, options: CallbackOptions) -> Iterable[Observation]:
        for loop in list(self._loops):
            yield Observation(loop.take_max_delay(), {"thread.name": loop.thread_name})

    def _observe_ongoing(self, options: CallbackOptions) -> Iterable[Observation]:
        for loop in list(self._loops):
            yield Observation(loop.ongoing_seconds(), {"thread.name": loop.thread_name})

    def _observe_utilization(self, options: CallbackOptions) -> Iterable[Observation]:
        for loop in list(self._loops):
            value = loop.take_utilization()
            if value is not None:
                yield Observation(value, {"thread.name": loop.thread_name})

    def _observe_time(self, options: CallbackOptions) -> Iterable[Observation]:
        for loop in list(self._loops):
            if loop.utilization is None:
                continue
            active, idle = loop.utilization.totals()
            name = loop.thread_name
            yield Observation(active, {"asyncio.eventloop.state": "active", "thread.name": name})
            yield Observation(idle, {"asyncio.eventloop.state": "idle", "thread.name": name})


_by_provider: dict[int, tuple[object, LoopMetrics]] = {}
_lock = threading.Lock()


def metrics_for(meter_provider: metrics.MeterProvider | None) -> LoopMetrics:
    """The shared instruments for ``meter_provider`` (``None``: the global provider)."""
    provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
    with _lock:
        entry = _by_provider.get(id(provider))
        if entry is None or entry[0] is not provider:
            entry = (provider, LoopMetrics(provider))
            _by_provider[id(provider)] = entry
        return entry[1]
