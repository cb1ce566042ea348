"""Head sampling that keeps loopwatch's spans: :func:`keep_stalls` and the env samplers.

Not to be confused with :mod:`loopwatch.sampler`, which samples the loop thread's *stack*.

With ``ParentBased(TraceIdRatioBased(r))`` a stall in an unsampled request is a root span
(linked to the request) and the ratio drops it like any other root: only about ``r`` of
the stalls would reach the backend. The SDK's ``should_sample`` gets the span's name but
not its tracer's instrumentation scope, so loopwatch's spans are recognised by name
(:data:`LOOPWATCH_SPAN_NAMES`). They are few: the watchdog emits at most one per stall,
and the per-culprit rate limit (``report_burst``, ``report_per_minute``) still applies.

This module needs ``opentelemetry-sdk``; ``import loopwatch`` does not import it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_ON,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

logger = logging.getLogger("loopwatch")

LOOPWATCH_SPAN_NAMES = frozenset({"loop.blocked", "loop.busy"})
"""Names of the spans loopwatch's tracer (scope ``loopwatch``) emits: a stall, and a loop
busy over a window. :func:`keep_stalls` always records and samples these."""

RATIO_VARIABLE = "OTEL_TRACES_SAMPLER_ARG"


class KeepStalls(Sampler):
    """Samples loopwatch's spans always and delegates every other span to ``delegate``."""

    def __init__(self, delegate: Sampler) -> None:
        self._delegate = delegate

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        sampler = ALWAYS_ON if name in LOOPWATCH_SPAN_NAMES else self._delegate
        return sampler.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        names = ",".join(sorted(LOOPWATCH_SPAN_NAMES))
        return f"KeepStalls{{always:{names},else:{self._delegate.get_description()}}}"


def keep_stalls(sampler: Sampler) -> Sampler:
    """``sampler``, except that loopwatch's spans are always recorded and sampled.

    A stall in a sampled request stays in the request's trace; one in an unsampled request
    is a root span linked to the request, and is now kept too. Other spans get exactly
    ``sampler``'s decision.
    """
    if not isinstance(sampler, Sampler):
        raise TypeError(
            f"keep_stalls(sampler): expected an opentelemetry.sdk.trace.sampling.Sampler, "
            f"got {type(sampler).__name__}; e.g. keep_stalls(ParentBased(TraceIdRatioBased(0.05)))"
        )
    return KeepStalls(sampler)


def parentbased_traceidratio(argument: str | float | None) -> Sampler:
    """``OTEL_TRACES_SAMPLER=loopwatch_parentbased_traceidratio``: keep_stalls(ParentBased(
    TraceIdRatioBased(ratio))), the ratio from ``OTEL_TRACES_SAMPLER_ARG``."""
    ratio = _ratio(argument, "loopwatch_parentbased_traceidratio")
    return keep_stalls(ParentBased(TraceIdRatioBased(ratio)))


def traceidratio(argument: str | float | None) -> Sampler:
    """``OTEL_TRACES_SAMPLER=loopwatch_traceidratio``: keep_stalls(TraceIdRatioBased(ratio))."""
    return keep_stalls(TraceIdRatioBased(_ratio(argument, "loopwatch_traceidratio")))


def parentbased_always_on(argument: str | float | None) -> Sampler:
    """``OTEL_TRACES_SAMPLER=loopwatch_parentbased_always_on``: keep_stalls(ParentBased(
    ALWAYS_ON)); stalls are kept even where an upstream service decided not to sample."""
    del argument  # takes none, like the SDK's parentbased_always_on
    return keep_stalls(ParentBased(ALWAYS_ON))


def _ratio(argument: str | float | None, sampler_name: str) -> float:
    """The sampling ratio of an env sampler: the SDK passes ``OTEL_TRACES_SAMPLER_ARG``
    (``None`` when unset). Unset means 1.0, as for the SDK's samplers; a bad value is
    logged and ignored (the specification's rule), which also means 1.0."""
    if argument is None or (isinstance(argument, str) and not argument.strip()):
        return 1.0
    try:
        ratio = float(argument)
    except ValueError:
        ratio = -1.0
    if 0.0 <= ratio <= 1.0:
        return ratio
    logger.warning(
        "%s=%r is not a sampling ratio for OTEL_TRACES_SAMPLER=%s: set it to a number "
        "from 0 to 1 (e.g. 0.05 keeps 5%% of traces). Sampling every trace (ratio 1.0) "
        "until it is fixed; loopwatch's spans are kept either way.",
        RATIO_VARIABLE,
        argument,
        sampler_name,
    )
    return 1.0
