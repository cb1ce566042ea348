"""The WARNING on logger ``loopwatch`` when a stall reaches the threshold.

The record is emitted with the stall's span current (:mod:`.correlation`) and carries
structured fields (:func:`fields`) for log pipelines: JSON formatters and OpenTelemetry's
``LoggingHandler`` (which exports them as log attributes) see them as record attributes.
"""

from __future__ import annotations

import logging
import os

from opentelemetry import trace
from opentelemetry.util.types import AttributeValue

from ..events import FrameInfo
from .correlation import current_span
from .describe import Description, frame_attributes

logger = logging.getLogger("loopwatch")


def short_path(path: str) -> str:
    """``path`` relative to the working directory when it lies below it."""
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return path
    return path if relative.startswith("..") else relative


def where(frame: FrameInfo) -> str:
    return f"{frame.function} ({short_path(frame.file)}:{frame.line})"


_HOW = {"after": "sampled as the loop resumed", "collection": "which triggered the collection"}


def fields(
    description: Description, *, ongoing: bool, dropped_reports: int
) -> dict[str, AttributeValue]:
    """The record's structured fields, named as the ``loop.blocked`` span's attributes
    except the culprit's: a log record's ``code.*`` attributes are its own call site
    (``LoggingHandler`` sets them), so the culprit is ``loopwatch.culprit.*``."""
    event = description.event
    found: dict[str, AttributeValue] = {
        "loopwatch.cause": event.cause,
        "loopwatch.duration": event.duration,
        "loopwatch.ongoing": ongoing,
    }
    if event.culprit is not None:
        found |= frame_attributes("loopwatch.culprit", event.culprit)
    if event.http_route:
        found["http.route"] = event.http_route
    if event.http_method:
        found["http.request.method"] = event.http_method
    if dropped_reports:
        found["loopwatch.reports.dropped"] = dropped_reports
    return found


def log_stall(
    description: Description,
    *,
    ongoing: bool,
    dropped_reports: int,
    span: trace.Span | None = None,
) -> None:
    """One line naming the culprit (or the cause, when no culprit could be sampled),
    logged with ``span`` (the blocked task's) current."""
    event = description.event
    so_far = " so far" if ongoing else ""
    if event.culprit is not None:
        place = f"in {where(event.culprit)}"
        how = _HOW.get(description.culprit_sampled or "")
        if how:  # not sampled while stalled: say so, and the cause
            place = f"by {event.cause} {place}, {how}"
    elif description.resumed_in is not None:
        place = (
            f"by {event.cause} (no sample possible; the loop resumed in "
            f"{where(description.resumed_in)})"
        )
    else:
        place = f"by {event.cause} (no sample possible)"
    request = ""
    if event.http_route:
        request = f" during {event.http_method or ''} {event.http_route}".rstrip()
    dropped = f" [{dropped_reports} similar stalls not logged]" if dropped_reports else ""
    revised = f" ({description.cause_revised})" if description.cause_revised else ""
    extra = fields(description, ongoing=ongoing, dropped_reports=dropped_reports)
    with current_span(span):
        logger.warning(
            "event loop blocked for %.2f s%s %s%s%s%s",
            event.duration,
            so_far,
            place,
            request,
            revised,
            dropped,
            extra=extra,
        )
