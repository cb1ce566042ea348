"""Options: keyword arguments, then ``LOOPWATCH_*`` environment variables, then defaults.

Every option is validated here, once, so the rest of the package can trust its inputs.
An invalid value raises :class:`ValueError` naming the option (or variable), the value
and the accepted range. A ``LOOPWATCH_*`` variable that looks like a misspelt one
(``LOOPWATCH_THRESHOLD`` for ``LOOPWATCH_THRESHOLD_MS``) is logged as a warning, once.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

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


def _in_range(low: float, high: float, *, seconds: bool = False) -> Callable[[str, Any], None]:
    """A check for ``low <= value <= high``; durations are shown in ms for ``*_MS`` variables."""

    def check(name: str, value: Any) -> None:
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
    if isinstance(value, str) or not all(isinstance(item, str) and item for item in value):
        raise ValueError(f"{name}={value!r} must be a sequence of module names, e.g. ('mylib',)")


_OPTIONS: dict[str, _Option] = {
    "enabled": _Option("LOOPWATCH_ENABLED", _bool, _is_bool),
    "threshold": _Option("LOOPWATCH_THRESHOLD_MS", _millis, _in_range(0.001, 3600.0, seconds=True)),
    "interval": _Option("LOOPWATCH_INTERVAL_MS", _millis, _in_range(0.0005, 60.0, seconds=True)),
    "dump_after": _Option(
        "LOOPWATCH_DUMP_AFTER_MS", _millis, _in_range(0.0, 86400.0, seconds=True)
    ),
    "skip_modules": _Option("LOOPWATCH_SKIP_MODULES", _modules, _is_modules),
    "max_frames": _Option("LOOPWATCH_MAX_FRAMES", _integer, _in_range(1, 1000)),
    "max_stack_chars": _Option("LOOPWATCH_MAX_STACK_CHARS", _integer, _in_range(256, 1_000_000)),
    "report_burst": _Option("LOOPWATCH_REPORT_BURST", _integer, _in_range(1, 10_000)),
    "report_per_minute": _Option("LOOPWATCH_REPORT_PER_MINUTE", _number, _in_range(0.0, 60_000.0)),
    "measure_utilization": _Option("LOOPWATCH_MEASURE_UTILIZATION", _bool, _is_bool),
}

ENVIRONMENT_VARIABLES: Mapping[str, str] = {name: opt.env for name, opt in _OPTIONS.items()}
"""Option name -> environment variable, for documentation and error messages."""

OTHER_VARIABLES = ("LOOPWATCH_METRICS_PORT", "LOOPWATCH_METRICS_ADDR")
"""Variables read elsewhere (the middleware's metrics server)."""

_warned_misspelt: set[str] = set()


def resolve_config(environ: Mapping[str, str] | None = None, **options: Any) -> Config:
    """Build a :class:`Config` from keyword options, the environment and the defaults.

    Keyword arguments win over the environment; ``None`` means "not given".
    """
    environ = os.environ if environ is None else environ
    _warn_misspelt(environ)
    unknown = set(options) - set(_OPTIONS)
    if unknown:
        raise TypeError(
            f"unknown loopwatch option(s): {', '.join(sorted(unknown))}; "
            f"accepted: {', '.join(_OPTIONS)}"
        )
    values: dict[str, Any] = {}
    for name, option in _OPTIONS.items():
        given = options.get(name)
        if given is not None:
            if name == "skip_modules" and not isinstance(given, str):
                given = tuple(given) if isinstance(given, Sequence) else given
            option.check(name, given)
            values[name] = given
        elif option.env in environ and environ[option.env].strip() != "":
            parsed = option.parse(option.env, environ[option.env])
            option.check(option.env, parsed)
            values[name] = parsed
    threshold = values.get("threshold", Config.threshold)
    if "interval" not in values:
        values["interval"] = threshold / 20
    interval = values["interval"]
    if interval >= threshold:
        source = _source("interval", options)
        raise ValueError(
            f"{source}={_shown(source, interval)} must be smaller than the threshold "
            f"({_shown(_source('threshold', options), threshold)}); accepted: "
            f"(0, threshold), default threshold / 20"
        )
    dump_after = values.get("dump_after", Config.dump_after)
    if 0 < dump_after <= threshold:
        source = _source("dump_after", options)
        raise ValueError(
            f"{source}={_shown(source, dump_after)} must be 0 (off) or larger than the "
            f"threshold ({threshold} s)"
        )
    valid = {field.name for field in fields(Config)}
    return Config(**{key: value for key, value in values.items() if key in valid})


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


def _source(name: str, options: Mapping[str, Any]) -> str:
    return name if options.get(name) is not None else _OPTIONS[name].env


def _shown(source: str, seconds: float) -> str:
    return f"{seconds * 1000:g}" if source.endswith("_MS") else f"{seconds:g}"
