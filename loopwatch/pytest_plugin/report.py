"""The failure text of a test whose loop stalled: the stalls, their culprits and stacks."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence

import pytest

from ..events import BlockEvent, FrameInfo
from .recording import Plugin, Run, Stall

MAX_REPORTED_STALLS = 5


def fail_on_stalls(plugin: Plugin, run: Run, phases: Sequence[str]) -> None:
    stalls = plugin.judge(run, run.take(phases))
    if stalls:
        plugin.failed += 1
        pytest.fail(describe(stalls, run.policy.threshold), pytrace=False)


def add_section(plugin: Plugin, run: Run, when: str, phases: Sequence[str]) -> None:
    """The test failed anyway: show the stalls next to its own error."""
    stalls = plugin.judge(run, run.take(phases))
    if stalls:
        text = describe(stalls, run.policy.threshold)
        run.item.add_report_section(when, "loopwatch", text)


def describe(stalls: Sequence[Stall], threshold: float) -> str:
    """The failure message: a summary line, then each stall (up to a few)."""
    if len(stalls) == 1:
        head = f"loopwatch: {_headline(stalls[0], threshold)}"
    else:
        longest = max(stall.event.duration for stall in stalls)
        head = (
            f"loopwatch: {len(stalls)} event loop stalls over the threshold "
            f"({threshold:g} s), the longest {longest:.3f} s"
        )
    parts = [head]
    for index, stall in enumerate(stalls[:MAX_REPORTED_STALLS], 1):
        if len(stalls) > 1:
            parts.append(f"\n[{index}] {_headline(stall, threshold)}")
        parts.append(_details(stall))
    if len(stalls) > MAX_REPORTED_STALLS:
        parts.append(f"\n... and {len(stalls) - MAX_REPORTED_STALLS} more stalls")
    return "\n".join(parts)


def _headline(stall: Stall, threshold: float) -> str:
    duration = f"{stall.event.duration:.3f} s"
    if not stall.finished:
        duration = f"at least {duration} (its end was not seen)"
    return f"event loop blocked for {duration} in {stall.where} (threshold {threshold:g} s)"


def _details(stall: Stall) -> str:
    event = stall.event
    task = f", task {event.task_name}" if event.task_name else ""
    lines = [
        f"    duration: {event.duration:.3f} s",
        f"    culprit:  {event.culprit or _no_culprit(event)}",
        f"    offender: {event.offender or '-'}",
        f"    cause:    {event.cause} ({event.samples} sample{'' if event.samples == 1 else 's'}"
        f"{task})",
    ]
    if stall.charged is not None:
        lines.append(
            f"    allow:    {allow_entry(stall.charged)!r} in loopwatch_allow or "
            f"@pytest.mark.loopwatch(allow=[...])"
        )
    else:  # only --loopwatch-strict fails it: no allow entry would name the project's code
        lines.append(
            "    strict:   names no code of the project or the test; it fails because of "
            "--loopwatch-strict (wrap the code in loopwatch.suppress() to accept it)"
        )
    if event.stack:
        lines.append("    stack:")
        lines.extend(f"      {line}" for line in trim_stack(event.stack).splitlines())
    return "\n".join(lines)


def _no_culprit(event: BlockEvent) -> str:
    if event.samples:
        return "none (no application code on the stack: a callback or library code)"
    return f"none (no stack sample could be taken during the stall: cause {event.cause})"


def allow_entry(frame: FrameInfo) -> str:
    """The ``module:function`` entry that allows ``frame`` as a culprit."""
    parts = frame.function.split(".")
    fallback = None
    for cut in range(len(parts) - 1, 0, -1):
        module = sys.modules.get(".".join(parts[:cut]))
        if module is None:
            continue
        path = getattr(module, "__file__", None)
        if path and os.path.realpath(path) == os.path.realpath(frame.file):
            return f"{'.'.join(parts[:cut])}:{'.'.join(parts[cut:])}"
        fallback = fallback or f"{'.'.join(parts[:cut])}:{'.'.join(parts[cut:])}"
    return fallback or f"{parts[0]}:{'.'.join(parts[1:])}"


_PACKAGE = os.path.join(os.path.dirname(__file__), "")
_LOOPWATCH = os.path.join(os.path.dirname(os.path.dirname(__file__)), "")
_DISPATCH = re.compile(r" in (Handle\.)?_run$")  # no qualified names before Python 3.11


def trim_stack(stack: str) -> str:
    """Drop the frames of pytest and the event loop above the watched test or fixture,
    and any frame of loopwatch itself (say, a gc callback under way when sampled)."""
    lines = stack.splitlines()
    ours = f'File "{_PACKAGE}'  # the wrappers in .watching, or any frame of this plugin
    frames = [index for index, line in enumerate(lines) if line.strip().startswith('File "')]
    cut = next((i for i in reversed(frames) if lines[i].strip().startswith(ours)), None)
    if cut is not None:  # drop our wrapper and its source line
        rest = lines[cut + 1 :]
        if rest and not rest[0].strip().startswith('File "'):
            rest = rest[1:]
    else:  # a callback: keep the loop's dispatch frame that called it
        dispatch = f"{os.sep}asyncio{os.sep}events.py"
        cut = next(
            (i for i in reversed(frames) if dispatch in lines[i] and _DISPATCH.search(lines[i])),
            None,
        )
        rest = lines[cut:] if cut is not None else []
    if not rest:
        return "\n".join(_without_loopwatch(lines))
    head = [lines[0], "  ... (outer frames of pytest and the event loop omitted)"]
    return "\n".join(head + _without_loopwatch(rest))


def _without_loopwatch(lines: list[str]) -> list[str]:
    """``lines`` without loopwatch's frames (each with its source line)."""
    kept: list[str] = []
    dropping = False
    for line in lines:
        if line.strip().startswith('File "'):
            dropping = line.strip().startswith(f'File "{_LOOPWATCH}')
        if not dropping:
            kept.append(line)
    return kept
