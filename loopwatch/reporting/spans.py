"""The back-dated ``loop.blocked`` and ``loop.busy`` spans, created and ended on the spans
channel."""

from __future__ import annotations

from functools import cached_property

from opentelemetry import context as otel_context
from opentelemetry import trace

from .._version import __version__
from ..config import Config
from ..events import BusyEvent
from ..ratelimit import RateLimiter
from ..timebase import epoch_ns
from .busy import busy_attributes, rate_key
from .describe import StallReport

MAX_LINKS = 32


class SpanReporter:
    """Hands one span per reported stall to the app's tracer provider, rate-limited per
    culprit. Used from the spans channel's thread only."""

    def __init__(self, tracer_provider: trace.TracerProvider | None, config: Config) -> None:
        self._tracer_provider = tracer_provider
        self._config = config
        self._limiter = RateLimiter(config.report_burst, config.report_per_minute)
        self._lost = 0

    @cached_property
    def _tracer(self) -> trace.Tracer:
        """Asked for at the first span, not when watching starts: a watcher that never
        reports a stall never touches the app's tracer provider (FastAPI's own suite counts
        the lookups on a mocked global provider)."""
        return trace.get_tracer("loopwatch", __version__, tracer_provider=self._tracer_provider)

    def emit(
        self,
        report: StallReport,
        parent: trace.Span | None,
        start: float,
        end: float,
        delayed: list[trace.Span],
        lost: int,
    ) -> None:
        """Create the span for a finished stall; ``start``/``end`` are monotonic seconds;
        ``delayed`` are spans of the requests it held up, to link; ``lost`` counts span
        reports a full queue dropped since the previous call.

        The rate limit's token is spent only on a span the sampler records: the span is
        started first, and one the limiter then refuses is never ended (so never exported).
        """
        self._lost += lost
        description = report.description
        links: list[trace.Link] = []
        if parent is not None and parent.get_span_context().trace_flags.sampled:
            context = trace.set_span_in_context(parent)
        else:
            context = otel_context.Context()
            if parent is not None:
                links.append(trace.Link(parent.get_span_context(), {"loopwatch.link": "culprit"}))
        for span in delayed[:MAX_LINKS]:
            links.append(trace.Link(span.get_span_context(), {"loopwatch.link": "delayed"}))
        attributes = description.attributes(self._config)
        if len(delayed) > MAX_LINKS:
            attributes["loopwatch.links.dropped"] = len(delayed) - MAX_LINKS
        span = self._tracer.start_span(
            "loop.blocked",
            context=context,
            kind=trace.SpanKind.INTERNAL,
            attributes=attributes,
            links=links,
            start_time=epoch_ns(start),
        )
        if not span.is_recording():
            return  # not sampled: no token spent
        allowed, limited = self._limiter.allow(description.culprit_key)
        if not allowed:
            return
        dropped, self._lost = limited + self._lost, 0
        if dropped:
            span.set_attribute("loopwatch.reports.dropped", dropped)
        span.end(end_time=epoch_ns(end))

    def emit_busy(self, event: BusyEvent, start: float, end: float) -> None:
        """A root ``loop.busy`` span covering a busy window (monotonic ``start``/``end``),
        rate-limited per top function like stalls."""
        span = self._tracer.start_span(
            "loop.busy",
            context=otel_context.Context(),
            kind=trace.SpanKind.INTERNAL,
            attributes=busy_attributes(event, self._config),
            start_time=epoch_ns(start),
        )
        if not span.is_recording():
            return
        allowed, dropped = self._limiter.allow(rate_key(event))
        if not allowed:
            return
        if dropped:
            span.set_attribute("loopwatch.reports.dropped", dropped)
        span.end(end_time=epoch_ns(end))
