"""Turn samples into names: the culprit, the offender and a formatted stack.

Runs on the watchdog thread only (it may read source files through :mod:`linecache`).
"""

from __future__ import annotations

import linecache
import os
import sysconfig
from collections.abc import Sequence
from types import CodeType

from .events import FrameInfo
from .sampler import RawFrame, Sample


def _library_prefixes() -> tuple[tuple[str, ...], tuple[str, ...]]:
    paths = sysconfig.get_paths()
    stdlib = tuple({os.path.realpath(paths[key]) + os.sep for key in ("stdlib", "platstdlib")})
    packages = tuple({os.path.realpath(paths[key]) + os.sep for key in ("purelib", "platlib")})
    return stdlib, packages


_STDLIB, _SITE_PACKAGES = _library_prefixes()


def function_name(frame: RawFrame) -> str:
    """``module.qualname`` of a sampled frame."""
    qualname = getattr(frame.code, "co_qualname", frame.code.co_name)
    return f"{frame.module}.{qualname}"


def frame_info(frame: RawFrame) -> FrameInfo:
    """The public view of a sampled frame."""
    return FrameInfo(function_name(frame), frame.code.co_filename, frame.line)


class CulpritFinder:
    """Picks the innermost frame of application code out of a sample.

    Frames of the skipped modules are never the culprit. Among the rest, code outside the
    standard library and site-packages is preferred, then code outside the standard
    library, then any frame: an app installed into site-packages still gets a culprit.
    """

    def __init__(self, skip_modules: Sequence[str]) -> None:
        self._skip = tuple(skip_modules)
        self._verdicts: dict[tuple[str, str], int] = {}
        self.loop_caller: CodeType | None = None
        """The code that called into the loop (see :func:`loop_caller`), once known: on
        uvloop it is the innermost Python frame of a loop at rest, and ran the loop."""

    def culprit(self, sample: Sample) -> RawFrame | None:
        """The culprit frame of ``sample``, or ``None`` if every frame is skipped.

        Frames from the one driving the event loop outwards (``run_until_complete`` or
        trio's ``unrolled_run``, and their callers) ran the loop; they are never what
        blocked it. On the stdlib loop, a sample with no callback under way (no
        ``Handle._run`` below ``_run_once``) shows the loop's own work, such as waiting
        in its selector: it names no culprit.
        """
        best: RawFrame | None = None
        best_rank = 0
        for frame in sample.frames:
            function, module = frame.code.co_name, frame.module
            if _drives_the_loop(function, module) or frame.code is self.loop_caller:
                return None if function == "_run_once" else best
            if function == "_run" and module == "asyncio.events":  # runs one callback
                return best
            rank = self._rank(frame)
            if rank == 3:
                return frame
            if rank > best_rank:
                best, best_rank = frame, rank
        return best

    def at_rest(self, sample: Sample) -> bool:
        """Whether ``sample`` shows the loop in its own machinery, running no callback:
        waiting in its selector for events or timers, or woken and waiting for a CPU.
        Nothing blocks it then; a late tick is the operating system's wake-up latency."""
        for frame in sample.frames:
            if _drives_the_loop(frame.code.co_name, frame.module):
                return True
            if frame.code is self.loop_caller:
                return True
            if not frame.module.startswith(_LOOP_MACHINERY):
                return False
        return False

    def _rank(self, frame: RawFrame) -> int:
        """0 skipped, 1 standard library, 2 site-packages, 3 application code."""
        key = (frame.module, frame.code.co_filename)
        rank = self._verdicts.get(key)
        if rank is None:
            rank = self._classify(*key)
            if len(self._verdicts) < 10_000:
                self._verdicts[key] = rank
        return rank

    def _classify(self, module: str, filename: str) -> int:
        if any(module == skip or module.startswith(skip + ".") for skip in self._skip):
            return 0
        if filename.startswith("<frozen"):
            return 1
        path = os.path.realpath(filename) if os.path.isabs(filename) else filename
        if path.startswith(_STDLIB) and not path.startswith(_SITE_PACKAGES):
            return 1
        if path.startswith(_SITE_PACKAGES) or f"{os.sep}site-packages{os.sep}" in path:
            return 2
        return 3


_LOOP_DRIVERS = frozenset({"_run_once", "run_forever", "run_until_complete", "run", "unrolled_run"})
_LOOP_MODULES = ("asyncio.base_events", "asyncio.runners", "uvloop", "trio._core._run")


_LOOP_MACHINERY = (
    "selectors",
    "asyncio.base_events",
    "asyncio.selector_events",
    "asyncio.unix_events",
    "trio._core",
)
"""Modules of the loops' own work between callbacks (waiting for and dispatching events)."""


def _drives_the_loop(function: str, module: str) -> bool:
    """Whether a frame runs the event loop itself (``run_until_complete``, trio's
    ``unrolled_run`` and the like)."""
    return function in _LOOP_DRIVERS and module.startswith(_LOOP_MODULES)


def format_stack(sample: Sample, max_chars: int) -> tuple[str, bool]:
    """The sample in Python's traceback format, and whether it had to be shortened."""
    lines = ["Traceback (most recent call last):"]
    if sample.truncated:
        lines.append("  ... (outer frames not sampled)")
    for frame in reversed(sample.frames):
        qualname = getattr(frame.code, "co_qualname", frame.code.co_name)
        lines.append(f'  File "{frame.code.co_filename}", line {frame.line}, in {qualname}')
        source = linecache.getline(frame.code.co_filename, frame.line).strip()
        if source:
            lines.append(f"    {source}")
    text = "\n".join(lines)
    if len(text) <= max_chars:
        return text, sample.truncated
    marker = "\n  ... (stack shortened)\n"
    keep = max_chars - len(marker)
    head = text[: keep // 3]
    tail = text[len(text) - (keep - len(head)) :]
    return head + marker + tail, True
