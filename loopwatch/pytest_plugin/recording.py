"""What the plugin records: the stalls of the test in progress and the counts and allow-list
use of the whole run."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from ..events import BlockEvent, FrameInfo
from ..watcher import WatchedLoop
from .charging import ProjectCode
from .logs import QuietLogger, Swallow
from .settings import Allow, Policy, Settings

MAX_LISTED_UNCHARGED = 50
"""Stalls not charged to code that the end-of-run summary lists one by one."""
MAX_LOGGED = 20
"""loopwatch's own error records kept for the end-of-run summary."""


class LoopwatchWarning(pytest.PytestWarning):
    """A loopwatch allow-list entry that never matched a stall."""


@dataclass
class Stall:
    """A reported stall and where it happened."""

    phase: str
    where: str
    event: BlockEvent
    finished: bool
    verdict: str = ""
    """``failed``, ``allowed`` (by an allow entry) or ``uncharged`` (no code of the
    project to name: a warning unless strict)."""
    charged: FrameInfo | None = None
    """The culprit when it is the project's or the test's code."""

    def summary(self) -> str:
        """One line: duration, cause and what was sampled, for the end-of-run summary."""
        event = self.event
        seen = "" if self.finished else " (its end was not seen)"
        named = (
            f"culprit {event.culprit} is not the project's code"
            if event.culprit is not None
            else f"no culprit, offender {event.offender or '-'}"
        )
        return f"{event.duration:.3f} s{seen}, cause {event.cause}, {named}"

    def record(self) -> str:
        """One line of JSON for the test's ``user_properties`` (JUnit XML and the like)."""
        event = self.event
        return json.dumps(
            {
                "verdict": self.verdict,
                "phase": self.phase,
                "where": self.where,
                "duration": round(event.duration, 4),
                "finished": self.finished,
                "cause": event.cause,
                "culprit": _frame(event.culprit),
                "offender": _frame(event.offender),
            },
            separators=(",", ":"),
        )


def _frame(frame: FrameInfo | None) -> dict[str, Any] | None:
    if frame is None:
        return None
    return {"function": frame.function, "file": frame.file, "line": frame.line}


@dataclass
class Run:
    """The watched test whose setup, call or teardown is in progress."""

    item: pytest.Item
    policy: Policy
    phase: str = "setup"
    watched_loop: bool = False
    stalls: list[Stall] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, stall: Stall) -> None:
        with self.lock:
            self.stalls.append(stall)

    def take(self, phases: Sequence[str]) -> list[Stall]:
        with self.lock:
            taken = [stall for stall in self.stalls if stall.phase in phases]
            self.stalls = [stall for stall in self.stalls if stall.phase not in phases]
        return taken


class Recorder:
    """The ``on_block`` hook of one watcher: keeps finished stalls, remembers an open one."""

    def __init__(self, run: Run, where: str) -> None:
        self.run = run
        self.phase = run.phase
        self.where = where
        self.open: BlockEvent | None = None

    def __call__(self, event: BlockEvent) -> None:  # on the watchdog thread
        if event.end is None:
            self.open = event
            return
        self.open = None
        self.run.add(Stall(self.phase, self.where, event, finished=True))

    def close(self) -> None:
        """After the watcher stopped: a stall whose end was never seen is kept as is."""
        event, self.open = self.open, None
        if event is not None:
            self.run.add(Stall(self.phase, self.where, event, finished=False))


@dataclass
class Plugin:
    """Everything the plugin keeps for one pytest run (in ``config.stash``)."""

    settings: Settings
    project: ProjectCode
    current: Run | None = None
    loops: set[WatchedLoop] = field(default_factory=set)
    active: int = 0
    watched: int = 0
    failed: int = 0
    allowed: int = 0
    uncharged: list[str] = field(default_factory=list)
    """The stalls that named no code of the project, as summary lines (the first few)."""
    uncharged_count: int = 0
    allow_used: dict[tuple[str, str], Allow | None] = field(default_factory=dict)
    """Every allow entry in force during the run; ``None`` once it matched a stall."""
    errors: list[str] = field(default_factory=list)
    logged: list[str] = field(default_factory=list)
    """loopwatch's own errors logged during the run (its logger does not reach the root
    logger under the plugin), shown at the end."""
    quiet: QuietLogger = field(init=False)

    def __post_init__(self) -> None:
        self.quiet = QuietLogger(Swallow(self.logged, MAX_LOGGED))

    def register(self, entries: Iterable[Allow]) -> None:
        """Entries in force for a test that ran on a watched loop (kept if already matched)."""
        for entry in entries:
            self.allow_used.setdefault((entry.origin, entry.entry), entry)

    def export(self) -> dict[str, Any]:
        """The counts and allow entries of an xdist worker, for the controller."""
        return {
            "counts": [self.active, self.watched, self.failed, self.allowed, self.uncharged_count],
            "uncharged": self.uncharged,
            "logged": self.logged,
            "allow": [
                [origin, entry, allow.file if allow else "", allow.line if allow else 0, not allow]
                for (origin, entry), allow in self.allow_used.items()
            ],
        }

    def merge(self, data: dict[str, Any]) -> None:
        """Add a worker's :meth:`export`: an entry is unused if no worker matched it."""
        active, watched, failed, allowed, uncharged = data["counts"]
        self.active += active
        self.watched += watched
        self.failed += failed
        self.allowed += allowed
        self.uncharged_count += uncharged
        room = MAX_LISTED_UNCHARGED - len(self.uncharged)
        self.uncharged.extend(data["uncharged"][: max(0, room)])
        self.logged.extend(data["logged"][: max(0, MAX_LOGGED - len(self.logged))])
        for origin, entry, file, line, used in data["allow"]:
            if used:
                self.allow_used[(origin, entry)] = None
            else:
                self.allow_used.setdefault((origin, entry), Allow.parse(entry, origin, file, line))

    def judge(self, run: Run, stalls: list[Stall]) -> list[Stall]:
        """The stalls that fail the test; marks the allow entries that matched.

        A stall fails the test only when it names code of the project or of the test (or
        in strict mode): one with nothing to name is listed at the end of the run.
        """
        failing = []
        test_file = str(run.item.path)
        for stall in stalls:
            stall.verdict = self._verdict(run, stall, test_file)
            if stall.verdict == "failed":
                failing.append(stall)
            elif stall.verdict == "uncharged":
                self.uncharged_count += 1
                if len(self.uncharged) < MAX_LISTED_UNCHARGED:
                    self.uncharged.append(f"{run.item.nodeid} ({stall.where}): {stall.summary()}")
            run.item.user_properties.append(("loopwatch_stall", stall.record()))
        return failing

    def _verdict(self, run: Run, stall: Stall, test_file: str) -> str:
        culprit = stall.event.culprit
        matched = [a for a in run.policy.allow if culprit and a.matches(culprit.function)]
        for entry in matched:
            self.allow_used[(entry.origin, entry.entry)] = None
        if matched:
            self.allowed += 1
            return "allowed"
        stall.charged = self.project.charged_to(stall.event, test_file)
        return "failed" if stall.charged is not None or self.settings.strict else "uncharged"
