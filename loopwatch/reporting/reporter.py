"""Receives the watchdog's stall notices and fans them out to every reporting channel."""

from __future__ import annotations

import logging
from collections.abc import Callable
from time import monotonic

from opentelemetry import trace
from opentelemetry.util.types import AttributeValue

from .. import dump
from ..config import Config
from ..events import BlockEvent
from ..heartbeat import Heartbeat, Tick
from ..inflight import NOTHING_IN_FLIGHT, victims
from ..ratelimit import RateLimiter
from ..stall import Stall
from ..watchdog import StallListener
from .correlation import span_context
from .describe import Description, describe
from .logs import log_stall
from .metrics import LoopMetrics
from .spans import SpanReporter

logger = logging.getLogger("loopwatch")

BlockHook = Callable[[BlockEvent], None]


class Reporter(StallListener):
    """Metrics for every stall; logs, spans and hooks for unsuppressed stalls."""

    def __init__(
        self,
        config: Config,
        heartbeat: Heartbeat,
        metrics: LoopMetrics,
        tracer_provider: trace.TracerProvider | None,
        on_block: BlockHook | None,
    ) -> None:
        self._config = config
        self._heartbeat = heartbeat
        self._metrics = metrics
        self._spans = SpanReporter(tracer_provider, config)
        self._on_block = on_block
        self._limiter = RateLimiter(config.report_burst, config.report_per_minute)
        self._hook_failed = False
        self._reported: dict[int, tuple[bool, int]] = {}

    def on_stall_started(self, stall: Stall) -> None:
        if self._config.dump_after > 0:
            dump.arm(self, self._config.dump_after - (monotonic() - stall.start))
        if stall.suppressed:
            return
        description = self._describe(stall, now=monotonic())
        allowed, dropped = self._limiter.allow(description.culprit_key)
        self._reported[id(stall)] = (allowed, dropped)
        if allowed:
            log_stall(description, ongoing=True, dropped_reports=dropped, span=stall.span)
        self._call_hook(description.event)

    def on_stall_ended(self, stall: Stall, before: Tick, after: Tick) -> None:
        dump.disarm(self)
        end = stall.end if stall.end is not None else after.ran
        request = stall.request
        self._metrics.block_duration.record(
            end - stall.start, self._metric_attributes(stall), context=span_context(stall.span)
        )
        if stall.suppressed:
            self._reported.pop(id(stall), None)
            return
        in_flight = stall.in_flight or NOTHING_IN_FLIGHT
        delayed = victims(in_flight.tracked, stall.start, end, request)
        for victim in delayed:
            victim.settle(stall.number, stall.start, end)
        delayed_count = len(delayed) + in_flight.untracked
        description = describe(stall, self._config, self._thread(), request, delayed_count)
        decision = self._reported.pop(id(stall), None)
        unlogged = decision is None
        if decision is None:
            decision = self._limiter.allow(description.culprit_key)
        allowed, dropped = decision
        if allowed:
            delayed_spans = [victim.span for victim in delayed]
            delayed_spans += in_flight.untracked_spans
            span = self._spans.emit(
                description, stall.span, stall.start, end, delayed_spans, dropped
            )
            if unlogged:  # not seen live: the line comes now, with loop.blocked's context
                own = span if span.get_span_context().is_valid else stall.span
                log_stall(description, ongoing=False, dropped_reports=dropped, span=own)
        self._call_hook(description.event)

    def close(self) -> None:
        """Cancel a pending stack dump (the watcher is stopping)."""
        dump.disarm(self)

    def _describe(self, stall: Stall, now: float) -> Description:
        request = stall.request
        return describe(stall, self._config, self._thread(), request, 0, now=now)

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

    def _call_hook(self, event: BlockEvent) -> None:
        hook = self._on_block
        if hook is None:
            return
        try:
            hook(event)
        except Exception:
            if not self._hook_failed:
                self._hook_failed = True
                logger.exception("loopwatch on_block hook raised; later errors are not logged")
