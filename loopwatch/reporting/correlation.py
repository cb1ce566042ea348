"""Tie a stall's log record and metric point to the trace of the task it blocked.

The watchdog reports from its own thread, where no span is current. The stall knows the
span that was current in the blocked task; making it current around the log call lets
OpenTelemetry's ``LoggingHandler`` (which reads the current context when it emits) and
the logging instrumentation's ``otelTraceID``/``otelSpanID`` record factory put that
trace id on the record; passing it to ``Histogram.record`` lets the SDK keep an exemplar
(trace-based filter: only for a sampled span).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import context as otel_context
from opentelemetry import trace


def span_context(span: trace.Span | None) -> otel_context.Context | None:
    """A context with ``span`` current (``None`` without a span: the caller's own)."""
    return trace.set_span_in_context(span) if span is not None else None


@contextmanager
def current_span(span: trace.Span | None) -> Iterator[None]:
    """Make ``span`` current on this thread for the duration of the block."""
    context = span_context(span)
    if context is None:
        yield
        return
    token = otel_context.attach(context)
    try:
        yield
    finally:
        otel_context.detach(token)
