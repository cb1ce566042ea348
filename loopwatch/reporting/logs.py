"""The WARNING on logger ``loopwatch`` when a stall reaches the threshold."""

from __future__ import annotations

import logging
import os

from ..events import FrameInfo
from .describe import Description

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


def log_stall(description: Description, *, ongoing: bool, dropped_reports: int) -> None:
    """One line naming the culprit (or the cause, when no culprit could be sampled)."""
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
    logger.warning(
        "event loop blocked for %.2f s%s %s%s%s%s",
        event.duration,
        so_far,
        place,
        request,
        revised,
        dropped,
    )
