"""Reading another task's OpenTelemetry span from its ``contextvars`` context."""

from __future__ import annotations

import contextvars

from opentelemetry import baggage, context
from opentelemetry.sdk.trace import TracerProvider

from loopwatch.task_context import OTEL_CONTEXT_VARIABLE, OTEL_SPAN_KEY, current_span_in


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


def test_the_current_span_is_found_under_the_key_the_api_keeps_it_under() -> None:
    """The middleware reads a request's span straight from the attached context: the key
    found at import is the one the API uses, also beside other values (baggage)."""
    assert OTEL_CONTEXT_VARIABLE is not None
    assert OTEL_SPAN_KEY is not None
    tracer = TracerProvider().get_tracer("test")
    token = context.attach(baggage.set_baggage("tenant", "a"))
    try:
        with tracer.start_as_current_span("request") as span:
            attached = OTEL_CONTEXT_VARIABLE.get()
            assert len(attached) == 2
            assert attached[OTEL_SPAN_KEY] is span
    finally:
        context.detach(token)
