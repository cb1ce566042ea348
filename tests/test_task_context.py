"""Reading another task's OpenTelemetry span from its ``contextvars`` context."""

from __future__ import annotations

import contextvars

from opentelemetry.sdk.trace import TracerProvider

from loopwatch.task_context import OTEL_CONTEXT_VARIABLE, current_span_in


def test_the_span_current_in_a_context_is_read_from_outside_it() -> None:
    """A context copied while a span was current gives that span; one copied after it
    ended gives none (as the watchdog reads a stalled task's context)."""
    assert OTEL_CONTEXT_VARIABLE is not None  # the contextvars runtime context is the default
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("request") as span:
        during = contextvars.copy_context()
    after = contextvars.copy_context()
    assert current_span_in(during) is span
    assert current_span_in(after) is None
    assert current_span_in(None) is None
