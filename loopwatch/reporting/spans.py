"""The back-dated ``loop.blocked`` span, created and ended on the watchdog thread."""

from __future__ import annotations

from opentelemetry import context as otel_context
from opentelemetry import trace

from .._version import __version__
from ..config import Config
from ..timebase import epoch_ns
from .describe import Description

MAX_LINKS = 32


class SpanReporter:
    """Hands one span per reported stall to the app's tracer provider."""

    def __init__(self, tracer_provider: trace.TracerProvider | None, config: Config) -> None:
        self._tracer = trace.get_tracer("loopwatch", __version__, tracer_provider=tracer_provider)
        self._config = config

    def emit(
        self,
        description: Description,
        parent: trace.Span | None,
        start: float,
        end: float,
        delayed: list[trace.Span],
        dropped_reports: int,
    ) -> trace.Span:
        """Create the span for a finished stall and return it (ended); ``start``/``end``
        are monotonic seconds; ``delayed`` are spans of the requests it held up, to link."""
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
        if dropped_reports:
            attributes["loopwatch.reports.dropped"] = dropped_reports
        span = self._tracer.start_span(
            "loop.blocked",
            context=context,
            kind=trace.SpanKind.INTERNAL,
            attributes=attributes,
            links=links,
            start_time=epoch_ns(start),
        )
        span.end(end_time=epoch_ns(end))
        return span
