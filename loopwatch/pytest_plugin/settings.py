"""The plugin's settings: the command line and ini options, the ``loopwatch`` markers and
the allow-list entries they give, resolved into the :class:`Policy` of each test."""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pytest

from ..config import resolve_config

DEFAULT_THRESHOLD = 0.1
"""Seconds; used when neither the marker, the command line nor the ini file sets one."""


@dataclass(frozen=True)
class Allow:
    """One allow-list entry, ``module:function``, and where it was written."""

    entry: str
    origin: str
    pattern: str
    file: str = ""
    line: int = 0

    @classmethod
    def parse(cls, entry: str, origin: str, file: str = "", line: int = 0) -> Allow:
        module, sep, function = entry.strip().partition(":")
        if not sep or not module or not function or ":" in function:
            raise ValueError(
                f"loopwatch allow entry {entry!r} ({origin}) is not module:function, "
                f"e.g. 'myapp.db:connect'"
            )
        return cls(entry.strip(), origin, f"{module}.{function}", file, line)

    def matches(self, function: str) -> bool:
        """Whether a culprit named ``function`` (``module.qualname``) is allowed."""
        return fnmatch.fnmatchcase(function, self.pattern) or fnmatch.fnmatchcase(
            function, self.pattern + ".*"
        )


@dataclass(frozen=True)
class Settings:
    """The run-wide settings from the command line and the ini file."""

    enabled: bool
    off: bool
    threshold: float | None
    allow: tuple[Allow, ...]
    strict: bool = False
    """Stalls that name no code of the project fail tests too (else they are warnings)."""


def parse_threshold(raw: str, source: str) -> float:
    """Seconds from ``"0.05"``, ``"0.05s"`` or ``"50ms"``, checked against loopwatch's range."""
    text = raw.strip().lower()
    scale = 1.0
    if text.endswith("ms"):
        text, scale = text[:-2], 0.001
    elif text.endswith("s"):
        text = text[:-1]
    try:
        value = float(text) * scale
    except ValueError:
        raise ValueError(
            f"{source}={raw!r} is not a duration; use seconds (0.05) or milliseconds (50ms)"
        ) from None
    return checked_threshold(value, source)


@functools.lru_cache(maxsize=1024)
def _line_of(path: str, text: str) -> int:
    """The line of ``path`` that mentions ``text`` (1-based), 0 if unknown."""
    try:
        with open(path, encoding="utf-8") as file:
            return next((number for number, line in enumerate(file, 1) if text in line), 0)
    except OSError:
        return 0


def checked_threshold(value: float, source: str) -> float:
    try:
        return resolve_config(threshold=value).threshold
    except (TypeError, ValueError) as error:
        raise ValueError(f"{source}: {error}") from None


def read_settings(config: pytest.Config) -> Settings:
    raw = config.getoption("loopwatch")
    ini_raw = str(config.getini("loopwatch_threshold") or "").strip()
    off = isinstance(raw, str) and raw.strip().lower() == "off"
    try:
        threshold = parse_threshold(ini_raw, "loopwatch_threshold") if ini_raw else None
        if isinstance(raw, str) and raw.strip() and not off:
            try:
                threshold = parse_threshold(raw, "--loopwatch")
            except ValueError as error:
                raise ValueError(
                    f"{error}. If that is a path, write --loopwatch=THRESHOLD or put "
                    f"--loopwatch after the paths"
                ) from None
        ini = str(config.inipath or "")
        allow = tuple(
            Allow.parse(entry, "ini loopwatch_allow", ini, _line_of(ini, entry.strip()))
            for entry in config.getini("loopwatch_allow")
            if entry.strip()
        )
    except ValueError as error:
        raise pytest.UsageError(str(error)) from None
    enabled = not off and (raw is not None or bool(config.getini("loopwatch")))
    strict = bool(config.getoption("loopwatch_strict") or config.getini("loopwatch_strict"))
    return Settings(enabled, off, threshold, allow, strict)


@dataclass(frozen=True)
class Policy:
    """How one test is watched; ``error`` is a bad marker, reported as a setup failure."""

    active: bool
    threshold: float = DEFAULT_THRESHOLD
    allow: tuple[Allow, ...] = ()
    error: str | None = None


def policy_for(item: pytest.Item, settings: Settings) -> Policy:
    """Settings, overridden by the ``loopwatch`` markers on the test (closest first)."""
    if settings.off:
        return Policy(active=False)
    marks = list(item.iter_markers_with_node("loopwatch"))
    active = settings.enabled
    threshold = settings.threshold
    allow = list(settings.allow)
    try:
        if marks:
            active = bool(marks[0][1].kwargs.get("enabled", True))
        threshold_set = False
        for node, mark in marks:
            given, entries = _marker_arguments(mark, item.nodeid)
            if given is not None and not threshold_set:
                threshold, threshold_set = given, True
            origin = f"marker on {_marker_origin(node)}"
            path = str(node.path)
            allow.extend(Allow.parse(e, origin, path, _line_of(path, e)) for e in entries)
        if not active:
            return Policy(active=False)
        if threshold is None:
            threshold = checked_threshold(DEFAULT_THRESHOLD, "threshold")
    except ValueError as error:
        return Policy(active=True, error=str(error))
    return Policy(True, threshold, tuple(allow))


def _marker_arguments(mark: pytest.Mark, nodeid: str) -> tuple[float | None, list[str]]:
    unknown = set(mark.kwargs) - {"threshold", "allow", "enabled"}
    if unknown or len(mark.args) > 1 or (mark.args and "threshold" in mark.kwargs):
        raise ValueError(
            f"{nodeid}: @pytest.mark.loopwatch takes threshold (seconds), allow "
            f"(['module:function', ...]) and enabled; got args={mark.args!r}, "
            f"kwargs={mark.kwargs!r}"
        )
    raw = mark.args[0] if mark.args else mark.kwargs.get("threshold")
    threshold: float | None = None
    if isinstance(raw, str):
        threshold = parse_threshold(raw, "loopwatch(threshold)")
    elif isinstance(raw, int | float) and not isinstance(raw, bool):
        threshold = checked_threshold(float(raw), "loopwatch(threshold)")
    elif raw is not None:
        raise ValueError(f"{nodeid}: loopwatch(threshold={raw!r}) is not a number of seconds")
    entries = mark.kwargs.get("allow", ())
    if isinstance(entries, str):
        entries = [entries]
    if not isinstance(entries, Iterable) or not all(isinstance(e, str) for e in entries):
        raise ValueError(f"{nodeid}: loopwatch(allow={entries!r}) must be a list of strings")
    return threshold, list(entries)


def _marker_origin(node: pytest.Item | pytest.Collector | Any) -> str:
    """Where a marker was written: parametrized copies of one function share it."""
    original = getattr(node, "originalname", None)
    parent = getattr(node, "parent", None)
    if isinstance(node, pytest.Function) and original and parent is not None:
        return f"{parent.nodeid}::{original}"
    return str(node.nodeid)


def is_threshold(token: str) -> bool:
    """Whether ``token`` is meant as the option's value (checked later, with a clear error)."""
    number = r"[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?"
    return re.fullmatch(rf"\s*(off|{number}\s*(ms|s)?)\s*", token, re.IGNORECASE) is not None
