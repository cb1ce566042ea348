"""Options: keyword arguments, then ``LOOPWATCH_*`` environment variables, then defaults.

Every option is validated here, once, at construction, so the rest of the package (the
watchdog thread above all, where an error would end the watching) can trust its inputs.
An invalid value raises :class:`ValueError` naming the option (or variable), the value
and the accepted range; an object of the wrong kind (a provider, the hook) raises
:class:`TypeError`. Messages name only what the user set: a default that does not fit is
never blamed. A ``LOOPWATCH_*`` variable that looks like a misspelt one
(``LOOPWATCH_THRESHOLD`` for ``LOOPWATCH_THRESHOLD_MS``) is logged as a warning, once.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from opentelemetry import metrics, trace

logger = logging.getLogger("loopwatch")

DEFAULT_SKIP_MODULES: tuple[str, ...] = (
    "asyncio",
    "uvloop",
    "uvicorn",
    "starlette",
    "fastapi",
    "anyio",
    "trio",
    "opentelemetry",
    "loopwatch",
    "concurrent.futures",
    "threading",
    "contextlib",
)
"""Modules whose frames are never named as the culprit (matched as a name or a package prefix)."""


@dataclass(frozen=True)
class Config:
    """Validated settings of one watcher. Durations are in seconds."""

    enabled: bool = True
    threshold: float = 0.1
    interval: float = 0.005
    dump_after: float = 30.0
    skip_modules: tuple[str, ...] = DEFAULT_SKIP_MODULES
    max_frames: int = 64
    max_stack_chars: int = 8192
    report_burst: int = 5
    report_per_minute: float = 6.0
    measure_utilization: bool = True
    busy_threshold: float = 0.5
    """Share of ``busy_window`` the loop must be busy for a ``loop.busy`` report (0: off)."""
    busy_window: float = 10.0


MIN_INTERVAL = 0.0005
MAX_INTERVAL = 60.0
"""The interval's range; the default (threshold / 20) is clamped to it."""

DUMP_AFTER = 30.0
DUMP_AFTER_THRESHOLDS = 2
"""``dump_after`` defaults to 30 s, or to twice the threshold if that is longer: a stall
is then dumped once it has lasted its threshold again, whatever the threshold."""


def default_interval(threshold: float) -> float:
    """A twentieth of the threshold, within [:data:`MIN_INTERVAL`, :data:`MAX_INTERVAL`]:
    below 0.5 ms the ticks only wake the loop for nothing (an idle stdlib loop sleeps in
    whole milliseconds), and 1 ms thresholds then saw a stall at every other tick."""
    return min(MAX_INTERVAL, max(MIN_INTERVAL, threshold / 20))


BUSY_WINDOW = 10.0
BUSY_WINDOW_THRESHOLDS = 10
"""``busy_window`` defaults to 10 s, or to 10 x the threshold if that is longer: a busy
window is made of many stretches of work, each shorter than the threshold."""


def default_busy_window(threshold: float) -> float:
    return max(BUSY_WINDOW, BUSY_WINDOW_THRESHOLDS * threshold)


def default_dump_after(threshold: float) -> float:
    return max(DUMP_AFTER, DUMP_AFTER_THRESHOLDS * threshold)


@dataclass(frozen=True)
class _Option:
    """How one option is read from the environment and checked."""

    env: str
    parse: Callable[[str, str], Any]
    check: Callable[[str, Any], None]


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"{name}={raw!r} is not a boolean; use 1/0, true/false, yes/no or on/off")


def _number(name: str, raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None


def _millis(name: str, raw: str) -> float:
    return _number(name, raw) / 1000.0


def _integer(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a whole number") from None


def _modules(name: str, raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _in_range(
    low: float, high: float, *, seconds: bool = False, whole: bool = False
) -> Callable[[str, Any], None]:
    """A check for ``low <= value <= high`` (an ``int`` if ``whole``: a float there would
    reach the stack formatting and fail on the watchdog thread at the first stall);
    durations are shown in ms for ``*_MS`` variables."""

    def check(name: str, value: Any) -> None:
        if whole and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"{name}={value!r} is not a whole number; accepted: {low} to {high}")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name}={value!r} is not a number")
        if not low <= value <= high:
            scale, unit = (1000, " ms") if name.endswith("_MS") else (1, " s" if seconds else "")
            raise ValueError(
                f"{name}={value * scale:g} is out of range; accepted: "
                f"{low * scale:g} to {high * scale:g}{unit}"
            )

    return check


def _is_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r} is not a boolean (True or False)")


def _is_modules(name: str, value: Any) -> None:
    if not isinstance(value, tuple) or not all(_is_module_name(item) for item in value):
        raise ValueError(f"{name}={value!r} must be a sequence of module names, e.g. ('mylib',)")


def _is_module_name(item: object) -> bool:
    return isinstance(item, str) and all(part.isidentifier() for part in item.split("."))


_OPTIONS: dict[str, _Option] = {
    "enabled": _Option("LOOPWATCH_ENABLED", _bool, _is_bool),
    "threshold": _Option("LOOPWATCH_THRESHOLD_MS", _millis, _in_range(0.001, 3600.0, seconds=True)),
    "interval": _Option(
        "LOOPWATCH_INTERVAL_MS", _millis, _in_range(MIN_INTERVAL, MAX_INTERVAL, seconds=True)
    ),
    "dump_after": _Option(
        "LOOPWATCH_DUMP_AFTER_MS", _millis, _in_range(0.0, 86400.0, seconds=True)
    ),
    "skip_modules": _Option("LOOPWATCH_SKIP_MODULES", _modules, _is_modules),
    "max_frames": _Option("LOOPWATCH_MAX_FRAMES", _integer, _in_range(1, 1000, whole=True)),
    "max_stack_chars": _Option(
        "LOOPWATCH_MAX_STACK_CHARS", _integer, _in_range(256, 1_000_000, whole=True)
    ),
    "report_burst": _Option("LOOPWATCH_REPORT_BURST", _integer, _in_range(1, 10_000, whole=True)),
    "report_per_minute": _Option("LOOPWATCH_REPORT_PER_MINUTE", _number, _in_range(0.0, 60_000.0)),
    "measure_utilization": _Option("LOOPWATCH_MEASURE_UTILIZATION", _bool, _is_bool),
    "busy_threshold": _Option("LOOPWATCH_BUSY_THRESHOLD", _number, _in_range(0.0, 1.0)),
    "busy_window": _Option(
        "LOOPWATCH_BUSY_WINDOW_MS", _millis, _in_range(0.1, 86400.0, seconds=True)
    ),
}

_OBJECTS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "tracer_provider": (
        lambda value: isinstance(value, trace.TracerProvider),
        "an opentelemetry.trace.TracerProvider (e.g. the SDK's), or None for the global one",
    ),
    "meter_provider": (
        lambda value: isinstance(value, metrics.MeterProvider),
        "an opentelemetry.metrics.MeterProvider (e.g. the SDK's), or None for the global one",
    ),
    "on_block": (callable, "a callable taking a BlockEvent"),
    "on_busy": (callable, "a callable taking a BusyEvent"),
}
"""Options that are objects, not settings: checked here, kept by the watcher."""

ENVIRONMENT_VARIABLES: Mapping[str, str] = {name: opt.env for name, opt in _OPTIONS.items()}
"""Option name -> environment variable, for documentation and error messages."""

OTHER_VARIABLES = ("LOOPWATCH_METRICS_PORT", "LOOPWATCH_METRICS_ADDR")
"""Variables read elsewhere (the middleware's metrics server)."""

_warned_misspelt: set[str] = set()


def resolve_config(environ: Mapping[str, str] | None = None, **options: Any) -> Config:
    """Build a :class:`Config` from keyword options, the environment and the defaults.

    Keyword arguments win over the environment; ``None`` means "not given". The object
    options (``tracer_provider``, ``meter_provider``, ``on_block``, ``on_busy``) are
    checked too,
    though a :class:`Config` does not hold them.
    """
    environ = os.environ if environ is None else environ
    _warn_misspelt(environ)
    unknown = set(options) - set(_OPTIONS) - set(_OBJECTS)
    if unknown:
        raise TypeError(
            f"unknown loopwatch option(s): {', '.join(sorted(unknown))}; "
            f"accepted: {', '.join([*_OPTIONS, *_OBJECTS])}"
        )
    for name, (accepts, expected) in _OBJECTS.items():
        given = options.get(name)
        if given is not None and not accepts(given):
            raise TypeError(f"{name}={given!r} must be {expected}")
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, option in _OPTIONS.items():
        given = options.get(name)
        if given is not None:
            if name == "skip_modules" and _is_iterable(given) and not isinstance(given, str):
                given = tuple(given)
            option.check(name, given)
            values[name], sources[name] = given, name
        elif option.env in environ and environ[option.env].strip() != "":
            parsed = option.parse(option.env, environ[option.env])
            option.check(option.env, parsed)
            values[name], sources[name] = parsed, option.env
    _settle_durations(values, sources)
    valid = {field.name for field in fields(Config)}
    return Config(**{key: value for key, value in values.items() if key in valid})


def _settle_durations(values: dict[str, Any], sources: Mapping[str, str]) -> None:
    """Fill in the defaults that follow the threshold, and check the durations together.

    Only a duration the user set is blamed: a default that follows the threshold always
    fits it (the interval is a twentieth of the threshold, or 0.5 ms, half the smallest
    threshold; ``dump_after`` at least twice the threshold)."""
    threshold = values.get("threshold", Config.threshold)
    interval = values.setdefault("interval", default_interval(threshold))
    dump_after = values.setdefault("dump_after", default_dump_after(threshold))
    if interval >= threshold:
        raise ValueError(
            f"{_shown(sources, 'interval', interval)} must be smaller than the threshold "
            f"({_shown(sources, 'threshold', threshold)}); leave the interval unset "
            f"for threshold / 20"
        )
    busy_window = values.setdefault("busy_window", default_busy_window(threshold))
    busy_on = values.get("busy_threshold", Config.busy_threshold) > 0
    if busy_on and busy_window < BUSY_WINDOW_THRESHOLDS * threshold:
        raise ValueError(
            f"{_shown(sources, 'busy_window', busy_window)} must be at least 10 x the "
            f"threshold ({_shown(sources, 'threshold', threshold)}): a busy window is made "
            f"of many short stretches of work, each below the threshold"
        )
    if 0 < dump_after <= threshold:
        raise ValueError(
            f"{_shown(sources, 'dump_after', dump_after)} must be 0 (off) or larger than "
            f"the threshold ({_shown(sources, 'threshold', threshold)}); leave it unset "
            f"for max(30 s, 2 x threshold)"
        )


def _is_iterable(value: object) -> bool:
    try:
        iter(value)  # type: ignore[call-overload]
    except TypeError:
        return False
    return True


def _warn_misspelt(environ: Mapping[str, str]) -> None:
    """Log once each ``LOOPWATCH_*`` variable that is not loopwatch's but close to one
    (other ``LOOPWATCH_*`` names, e.g. of a deployment's own tooling, pass silently)."""
    known = [*ENVIRONMENT_VARIABLES.values(), *OTHER_VARIABLES]
    for name in environ:
        if not name.startswith("LOOPWATCH_") or name in known or name in _warned_misspelt:
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
        if close:
            _warned_misspelt.add(name)
            logger.warning(
                "%s is not a loopwatch setting and is ignored; did you mean %s?", name, close[0]
            )


def _shown(sources: Mapping[str, str], name: str, seconds: float) -> str:
    """``name=value`` as the user set it (``LOOPWATCH_*_MS`` in ms), or the default's value."""
    source = sources.get(name)
    if source is None:
        return f"default {name} {seconds:g} s"
    return f"{source}={seconds * 1000:g}" if source.endswith("_MS") else f"{source}={seconds:g}"
