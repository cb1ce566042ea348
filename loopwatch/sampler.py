"""Stack samples of the loop thread, taken from the watchdog thread.

A sample is a bounded tuple of ``(code, line, module)`` triples, innermost first. Taking
one reads no source file and formats nothing: that happens later, in :mod:`stacks`.
"""

from __future__ import annotations

import sys
from types import CodeType, FrameType
from typing import NamedTuple


class RawFrame(NamedTuple):
    """A frame as sampled: the code object, the line being run and the module name."""

    code: CodeType
    line: int
    module: str


class Sample(NamedTuple):
    """The loop thread's stack at one moment, innermost frame first."""

    frames: tuple[RawFrame, ...]
    truncated: bool


def take_sample(thread_id: int, max_frames: int) -> Sample | None:
    """Sample the stack of ``thread_id``; ``None`` if that thread has no Python frame."""
    frame = sys._current_frames().get(thread_id)
    if frame is None:
        return None
    frames: list[RawFrame] = []
    while frame is not None and len(frames) < max_frames:
        frames.append(
            RawFrame(frame.f_code, frame.f_lineno or 0, frame.f_globals.get("__name__", "?"))
        )
        frame = frame.f_back
    return Sample(tuple(frames), frame is not None)


_OWN_PACKAGE = __name__.partition(".")[0]


def is_own(module: str) -> bool:
    """Whether ``module`` is loopwatch's own."""
    return module == _OWN_PACKAGE or module.startswith(_OWN_PACKAGE + ".")


def split_own_frames(sample: Sample) -> tuple[Sample, tuple[RawFrame, ...]]:
    """``sample`` without the frames of loopwatch on top of it, and those frames.

    The loop thread runs loopwatch's code on top of the application's: the garbage
    collector's callback (inside the allocation or ``gc.collect()`` that started a
    collection) and heartbeat ticks. They are never what blocked the loop.
    """
    frames = sample.frames
    own = 0
    while own < len(frames) and is_own(frames[own].module):
        own += 1
    if not own:
        return sample, ()
    return Sample(frames[own:], sample.truncated), frames[:own]


_LOOP_OWN_MODULES = ("asyncio.events", "asyncio.base_events", "asyncio.runners", "trio._core")


def loop_caller(frame: FrameType | None) -> CodeType | None:
    """The code of the innermost frame, from ``frame`` outwards, that is not the loop's
    own (nor loopwatch's): the caller of ``run_until_complete`` or ``trio.run``. Called
    from a callback of the loop; on uvloop, whose loop has no Python frames, it is what
    a sample of the loop at rest shows innermost."""
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if not module.startswith(_LOOP_OWN_MODULES) and not is_own(module):
            return frame.f_code
        frame = frame.f_back
    return None
