"""A busy window's public description: its :class:`BusyEvent`, span attributes, log line."""

from __future__ import annotations

import logging

from opentelemetry.util.types import AttributeValue

from ..busy import BusyWindow
from ..config import Config
from ..events import BusyEvent
from ..stacks import frame_info
from ..timebase import epoch_seconds
from .describe import frame_attributes
from .logs import where

logger = logging.getLogger("loopwatch")

BUSY_KEY = "<busy>"
"""Rate limiting counts busy reports apart from stalls: by this prefix and the top function."""


def describe_busy(window: BusyWindow, thread: tuple[int, str]) -> BusyEvent:
    """The event of a finished window (off the watchdog thread)."""
    culprits = window.culprits()
    return BusyEvent(
        start=epoch_seconds(window.start),
        end=epoch_seconds(window.end),
        duration=window.end - window.start,
        ratio=round(window.ratio, 4),
        functions=tuple(name for name, _ in culprits),
        shares=tuple(round(share, 4) for _, share in culprits),
        culprit=frame_info(window.top) if window.top is not None else None,
        samples=window.samples,
        thread_id=thread[0],
        thread_name=thread[1],
    )


def rate_key(event: BusyEvent) -> str:
    return BUSY_KEY + (event.functions[0] if event.functions else "")


def busy_attributes(event: BusyEvent, config: Config) -> dict[str, AttributeValue]:
    """The ``loop.busy`` span's attributes (``code.*``: the top function)."""
    attributes: dict[str, AttributeValue] = {
        "loopwatch.busy.ratio": event.ratio,
        "loopwatch.busy.functions": list(event.functions),
        "loopwatch.busy.shares": list(event.shares),
        "loopwatch.busy.threshold": config.busy_threshold,
        "loopwatch.busy.window": event.duration,
        "loopwatch.stack.samples": event.samples,
        "thread.id": event.thread_id,
        "thread.name": event.thread_name,
    }
    if event.culprit is not None:
        attributes |= frame_attributes("code", event.culprit)
    return attributes


def log_busy(event: BusyEvent, *, dropped_reports: int) -> None:
    """One WARNING naming the top function and its share of the busy time."""
    if event.culprit is not None:
        top = f"mostly in {where(event.culprit)}: {event.shares[0]:.0%} of the busy time"
    else:
        top = "in code that could not be named (framework code only)"
    dropped = f" [{dropped_reports} similar reports not logged]" if dropped_reports else ""
    extra: dict[str, AttributeValue] = {
        "loopwatch.busy.ratio": event.ratio,
        "loopwatch.busy.window": event.duration,
    }
    if event.culprit is not None:
        extra |= frame_attributes("loopwatch.culprit", event.culprit)
        extra["loopwatch.busy.share"] = event.shares[0]
    if dropped_reports:
        extra["loopwatch.reports.dropped"] = dropped_reports
    logger.warning(
        "event loop busy %.0f%% of the last %.1f s, with no single stall over the threshold, %s%s",
        100 * event.ratio,
        event.duration,
        top,
        dropped,
        extra=extra,
    )
