"""What the plugin records: the stalls of the test in progress and the counts and allow-list
use of the whole run."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from ..events import BlockEvent
from ..watcher import WatchedLoop
from .settings import Allow, Policy, Settings


class LoopwatchWarning(pytest.PytestWarning):
    """A loopwatch allow-list entry that never matched a stall."""


@dataclass
class Stall:
    """A reported stall and where it happened."""

    phase: str
    where: str
    event: BlockEvent
    finished: bool


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
    current: Run | None = None
    loops: set[WatchedLoop] = field(default_factory=set)
    active: int = 0
    watched: int = 0
    failed: int = 0
    allowed: int = 0
    allow_used: dict[tuple[str, str], Allow | None] = field(default_factory=dict)
    """Every allow entry in force during the run; ``None`` once it matched a stall."""
    errors: list[str] = field(default_factory=list)

    def register(self, entries: Iterable[Allow]) -> None:
        """Entries in force for a test that ran on a watched loop (kept if already matched)."""
        for entry in entries:
            self.allow_used.setdefault((entry.origin, entry.entry), entry)

    def export(self) -> dict[str, Any]:
        """The counts and allow entries of an xdist worker, for the controller."""
        return {
            "counts": [self.active, self.watched, self.failed, self.allowed],
            "allow": [
                [origin, entry, allow.file if allow else "", allow.line if allow else 0, not allow]
                for (origin, entry), allow in self.allow_used.items()
            ],
        }

    def merge(self, data: dict[str, Any]) -> None:
        """Add a worker's :meth:`export`: an entry is unused if no worker matched it."""
        active, watched, failed, allowed = data["counts"]
        self.active += active
        self.watched += watched
        self.failed += failed
        self.allowed += allowed
        for origin, entry, file, line, used in data["allow"]:
            if used:
                self.allow_used[(origin, entry)] = None
            else:
                self.allow_used.setdefault((origin, entry), Allow.parse(entry, origin, file, line))

    def split(self, run: Run, stalls: list[Stall]) -> list[Stall]:
        """The stalls not covered by the allow-list; marks the entries that matched."""
        blocking = []
        for stall in stalls:
            culprit = stall.event.culprit
            matched = [a for a in run.policy.allow if culprit and a.matches(culprit.function)]
            for entry in matched:
                self.allow_used[(entry.origin, entry.entry)] = None
            if matched:
                self.allowed += 1
            else:
                blocking.append(stall)
        return blocking
