"""Receives the watchdog's notices: records metrics, hands everything else off.

On the watchdog thread it only records the metrics of stalls and busy windows (in memory,
for every one),
arms and disarms the stack dump and settles the requests a stall held up. Logs, spans and
``on_block`` hooks (which may block: a log handler, a span exporter, user code) run on
their own :mod:`.worker` channels, from a copy of the stall taken when it was reported
(the watchdog goes on changing the stall itself).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from time import monotonic

from opentelemetry import trace
from opentelemetry.util.types import AttributeValue

from .. import dump
from ..busy import BusyWindow
from ..config import Config
from ..events import BlockEvent, BusyEvent
from ..heartbeat import Heartbeat, Tick
from ..inflight import NOTHING_IN_FLIGHT, victims
from ..ratelimit import RateLimiter
from ..stall import Stall
from ..watchdog import StallListener
from . import worker
from .busy import describe_busy, log_busy, rate_key
from .correlation import span_context
from .describe import StallReport
from .logs import log_stall
from .metrics import LoopMetrics
from .spans import SpanReporter

logger = logging.getLogger("loopwatch")

BlockHook = Callable[[BlockEvent], None]
BusyHook = Callable[[BusyEvent], None]


class Reporter(StallListener):
    """Metrics for every stall; logs, spans and hooks for unsuppressed stalls."""

    def __init__(
        self,
        config: Config,
        heartbeat: Heartbeat,
        metrics: LoopMetrics,
        tracer_provider: trace.TracerProvider | None,
        on_block: BlockHook | None,
        on_busy: BusyHook | None = None,
    ) -> None:
        self._config = config
        self._heartbeat = heartbeat
        self._metrics = metrics
        self._spans = SpanReporter(tracer_provider, config)
        self._on_block = on_block
        self._on_busy = on_busy
        self._log_limiter = RateLimiter(config.report_burst, config.report_per_minute)
        self._hook_failed = False
        self._logged_live: set[int] = set()  # stalls (by number) reported while ongoing
        self._spans_lost = 0  # span reports dropped by a full queue, not yet handed on
        if config.busy_threshold > 0:  # a series from the start: dashboards show 0, not gaps
            metrics.busy_time.add(0.0, {"code.function.name": "other"})

    def on_stall_started(self, stall: Stall) -> None:
        if self._config.dump_after > 0:
            dump.arm(self, self._config.dump_after - (monotonic() - stall.start))
        if stall.suppressed:
            return
        self._logged_live.add(stall.number)
        report = StallReport.of(stall, self._config, self._thread(), now=monotonic())
        self._submit(worker.LOGS, partial(self._log, report, ongoing=True))
        if self._on_block is not None:
            self._submit(worker.HOOKS, partial(self._call_hook, report))

    def on_stall_ended(self, stall: Stall, before: Tick, after: Tick) -> None:
        dump.disarm(self)
        end = stall.end if stall.end is not None else after.ran
        self._metrics.block_duration.record(
            end - stall.start, self._metric_attributes(stall), context=span_context(stall.span)
        )
        logged_live = stall.number in self._logged_live
        self._logged_live.discard(stall.number)
        if stall.suppressed:
            return
        request = stall.request
        in_flight = stall.in_flight or NOTHING_IN_FLIGHT
        delayed = victims(in_flight.tracked, stall.start, end, request)
        for victim in delayed:
            victim.settle(stall.number, stall.start, end)
        delayed_count = len(delayed) + in_flight.untracked
        report = StallReport.of(stall, self._config, self._thread(), delayed_requests=delayed_count)
        if not logged_live:
            self._submit(worker.LOGS, partial(self._log, report, ongoing=False))
        delayed_spans = [victim.span for victim in delayed] + in_flight.untracked_spans
        lost, self._spans_lost = self._spans_lost, 0
        emit = partial(self._spans.emit, report, stall.span, stall.start, end, delayed_spans, lost)
        if not self._submit(worker.SPANS, emit):
            self._spans_lost += lost + 1
        if self._on_block is not None:
            self._submit(worker.HOOKS, partial(self._call_hook, report))

    def on_busy_window(self, window: BusyWindow) -> None:
        """Count the window's busy time by function; report a window busy enough."""
        thread = self._thread()
        for function, seconds in window.ranking:
            label = self._metrics.busy_label(function)
            self._metrics.busy_time.add(seconds, {"code.function.name": label})
        if window.ratio < self._config.busy_threshold:
            return
        self._submit(worker.LOGS, partial(self._log_busy, window, thread))
        emit = partial(self._emit_busy, window, thread)
        self._submit(worker.SPANS, emit)
        if self._on_busy is not None:
            self._submit(worker.HOOKS, partial(self._call_busy_hook, window, thread))

    def close(self) -> None:
        """Cancel a pending stack dump (the watcher is stopping)."""
        dump.disarm(self)
        self._logged_live.clear()

    def _submit(self, channel: str, job: worker.Job) -> bool:
        """Queue a report; a full queue drops it, counted by channel."""
        if worker.channel(channel).submit(job):
            return True
        self._metrics.reports_dropped.add(1, {"loopwatch.channel": channel})
        return False

    def _thread(self) -> tuple[int, str]:
        return self._heartbeat.thread_id or 0, self._heartbeat.thread_name

    def _metric_attributes(self, stall: Stall) -> dict[str, AttributeValue]:
        attributes: dict[str, AttributeValue] = {"loopwatch.cause": stall.cause}
        request = stall.request
        if request is not None:
            route = request.route
            if route:
                attributes["http.route"] = route
            attributes["http.request.method"] = request.method
        return attributes

    def _log(self, report: StallReport, *, ongoing: bool) -> None:
        """On the logs channel: one line per stall, rate-limited per culprit."""
        description = report.description
        allowed, dropped = self._log_limiter.allow(description.culprit_key)
        if allowed:
            log_stall(description, ongoing=ongoing, dropped_reports=dropped, span=report.stall.span)

    def _log_busy(self, window: BusyWindow, thread: tuple[int, str]) -> None:
        """On the logs channel: one line per busy window, rate-limited per top function."""
        event = describe_busy(window, thread)
        allowed, dropped = self._log_limiter.allow(rate_key(event))
        if allowed:
            log_busy(event, dropped_reports=dropped)

    def _emit_busy(self, window: BusyWindow, thread: tuple[int, str]) -> None:
        self._spans.emit_busy(describe_busy(window, thread), window.start, window.end)

    def _call_busy_hook(self, window: BusyWindow, thread: tuple[int, str]) -> None:
        """On the hooks channel: the user's ``on_busy``; its first error is logged."""
        assert self._on_busy is not None
        try:
            self._on_busy(describe_busy(window, thread))
        except Exception:
            if not self._hook_failed:
                self._hook_failed = True
                logger.exception("loopwatch on_busy hook raised; later errors are not logged")

    def _call_hook(self, report: StallReport) -> None:
        """On the hooks channel: the user's ``on_block``; its first error is logged."""
        assert self._on_block is not None
        try:
            self._on_block(report.description.event)
        except Exception:
            if not self._hook_failed:
                self._hook_failed = True
                logger.exception("loopwatch on_block hook raised; later errors are not logged")
