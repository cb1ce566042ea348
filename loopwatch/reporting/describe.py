"""Turn a stall into its public description: a :class:`BlockEvent` and span attributes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property

from opentelemetry.util.types import AttributeValue

from ..config import Config
from ..events import BlockEvent, FrameInfo
from ..inflight import AnyRequest
from ..stacks import format_stack, frame_info
from ..stall import Stall
from ..timebase import epoch_seconds


def frame_attributes(prefix: str, frame: FrameInfo) -> dict[str, AttributeValue]:
    """A frame as ``<prefix>.function.name``, ``.file.path`` and ``.line.number``
    (``code`` on spans; ``loopwatch.culprit`` on log records, whose ``code.*`` are
    their own call site)."""
    return {
        f"{prefix}.function.name": frame.function,
        f"{prefix}.file.path": frame.file,
        f"{prefix}.line.number": frame.line,
    }


@dataclass(frozen=True)
class Description:
    """Everything the reporters need to know about one stall."""

    event: BlockEvent
    stack_truncated: bool
    resumed_in: FrameInfo | None
    method_original: str | None = None
    """An unknown HTTP method as sent (``event.http_method`` is then ``_OTHER``)."""
    culprit_sampled: str | None = None
    """How the culprit was found: ``during``, ``after`` or ``collection`` (see
    :data:`loopwatch.stall.DURING`)."""
    cause_revised: str | None = None
    """Why the final cause differs from the one the live warning gave."""

    @property
    def culprit_key(self) -> str:
        """What rate limiting counts by: the culprit, else the cause."""
        culprit = self.event.culprit
        return culprit.function if culprit else f"<{self.event.cause}>"

    def attributes(self, config: Config) -> dict[str, AttributeValue]:
        """Span attributes, following the OpenTelemetry semantic conventions."""
        event = self.event
        attributes: dict[str, AttributeValue] = {
            "loopwatch.cause": event.cause,
            "loopwatch.threshold": config.threshold,
            "loopwatch.stack.samples": event.samples,
            "loopwatch.duration": event.duration,
            "thread.id": event.thread_id,
            "thread.name": event.thread_name,
        }
        if event.culprit:
            attributes |= frame_attributes("code", event.culprit)
        if self.culprit_sampled and (event.culprit or event.offender):
            attributes["loopwatch.culprit.sampled"] = self.culprit_sampled
        if self.cause_revised:
            attributes["loopwatch.cause.revised"] = self.cause_revised
        if event.offender:
            attributes |= frame_attributes("loopwatch.offender", event.offender)
        if self.resumed_in:
            attributes["loopwatch.resumed_in"] = str(self.resumed_in)
        if event.stack:
            attributes["code.stacktrace"] = event.stack
            attributes["loopwatch.stack.truncated"] = self.stack_truncated
        if event.task_name:
            attributes["asyncio.task.name"] = event.task_name
        if event.http_route:
            attributes["http.route"] = event.http_route
        if event.http_method:
            attributes["http.request.method"] = event.http_method
        if self.method_original:
            attributes["http.request.method_original"] = self.method_original
        attributes["loopwatch.delayed_requests"] = event.delayed_requests
        return attributes


def describe(
    stall: Stall,
    config: Config,
    thread: tuple[int, str],
    request: AnyRequest | None,
    delayed_requests: int,
    *,
    now: float | None = None,
) -> Description:
    """Describe ``stall``; an ongoing one (no ``end``) is measured up to ``now``."""
    found = stall.found
    chosen, how = found if found is not None else (None, None)
    culprit = offender = resumed_in = None
    stack, truncated = "", False
    if chosen is not None:
        culprit = frame_info(chosen.culprit) if chosen.culprit else None
        offender = frame_info(chosen.sample.frames[0]) if chosen.sample.frames else None
        stack, truncated = format_stack(chosen.sample, config.max_stack_chars)
    else:
        resumed = stall.resumed_sample()
        if resumed is not None and resumed.culprit is not None:
            resumed_in = frame_info(resumed.culprit)
    end = stall.end
    measured_to = end if end is not None else (now if now is not None else stall.start)
    event = BlockEvent(
        start=epoch_seconds(stall.start),
        end=epoch_seconds(end) if end is not None else None,
        duration=max(0.0, measured_to - stall.start),
        cause=stall.cause,
        culprit=culprit,
        offender=offender,
        stack=stack,
        samples=len(stall.on_time_samples),
        task_name=stall.task_name,
        thread_id=thread[0],
        thread_name=thread[1],
        http_route=request.route if request else None,
        http_method=request.method if request else None,
        delayed_requests=delayed_requests,
    )
    method_original = request.method_original if request else None
    return Description(event, truncated, resumed_in, method_original, how, stall.revision())


@dataclasses.dataclass(frozen=True)
class StallReport:
    """A stall as it was when reported: a copy the watchdog no longer changes."""

    stall: Stall
    config: Config
    thread: tuple[int, str]
    request: AnyRequest | None
    delayed_requests: int = 0
    now: float | None = None

    @classmethod
    def of(
        cls,
        stall: Stall,
        config: Config,
        thread: tuple[int, str],
        delayed_requests: int = 0,
        now: float | None = None,
    ) -> StallReport:
        frozen = dataclasses.replace(stall, samples=list(stall.samples), in_flight=None)
        return cls(frozen, config, thread, frozen.request, delayed_requests, now)

    @cached_property
    def description(self) -> Description:
        """Described on first use, off the watchdog thread (reads source lines)."""
        return describe(
            self.stall, self.config, self.thread, self.request, self.delayed_requests, now=self.now
        )
