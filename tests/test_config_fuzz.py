"""Fuzzing the configuration surface: whatever is passed as keyword arguments or
``LOOPWATCH_*`` variables is either rejected at construction, with a ``ValueError`` or
``TypeError`` naming only what was set, or accepted and works: the watcher starts, sees
a stall (formatting its stack within the limits given) and stops."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from opentelemetry import metrics, trace

import loopwatch
from loopwatch.config import ENVIRONMENT_VARIABLES

from . import workloads

_BAD = st.one_of(
    st.booleans(),
    st.text(max_size=4),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**7), 10**7),
    st.lists(st.integers(), max_size=2),
    st.just(object()),
)
"""Anything at all, mostly of the wrong type or out of range."""


def _option(
    good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any] = _BAD, unset: int = 8
) -> st.SearchStrategy[Any]:
    """Unset ``unset`` times in 16, else a good value mostly, and a bad one 1 time in 16:
    with a dozen options, a good part of the examples are then accepted."""
    kinds = st.sampled_from(["none"] * unset + ["good"] * (15 - unset) + ["bad"])
    return kinds.flatmap(lambda kind: {"none": st.none(), "good": good, "bad": bad}[kind])


_SECONDS = st.floats(0.001, 0.03)
_WHOLE = st.integers(1, 2000)
_NOT_WHOLE = _BAD | st.floats(1, 2000)
"""Mostly floats in range: these used to be accepted, and failed at the first stall."""
_OPTIONS: dict[str, st.SearchStrategy[Any]] = {
    # mostly small enough to stall the loop above it; long ones alone used to be rejected
    "threshold": _option(_SECONDS | _SECONDS | st.floats(20, 3600), unset=3),
    "interval": _option(st.floats(0.0005, 0.005)),
    "dump_after": _option(st.one_of(st.just(0), st.floats(0.01, 100))),
    "skip_modules": _option(
        st.lists(st.sampled_from(["mylib", "a.b", "tests"]), max_size=3),
        _BAD | st.lists(st.sampled_from(["", "my lib", "1x", "a..b", "mylib"]), min_size=1),
    ),
    "max_frames": _option(_WHOLE, _NOT_WHOLE),
    "max_stack_chars": _option(st.integers(200, 5000), _NOT_WHOLE | st.floats(256, 5000)),
    "report_burst": _option(_WHOLE, _NOT_WHOLE),
    "report_per_minute": _option(st.floats(0, 100)),
    "enabled": _option(st.booleans()),
    "measure_utilization": _option(st.booleans()),
    "busy_threshold": _option(st.one_of(st.just(0), st.floats(0, 1))),
    "busy_window": _option(st.floats(0.1, 100)),
    "tracer_provider": _option(
        st.sampled_from([trace.NoOpTracerProvider()] * 7 + [metrics.NoOpMeterProvider()])
    ),
    "meter_provider": _option(
        st.sampled_from([metrics.NoOpMeterProvider()] * 7 + [trace.NoOpTracerProvider()])
    ),
    "on_block": _option(st.just("record"), st.sampled_from([42, "print"]), unset=1),
    "on_busy": _option(st.just(print), st.sampled_from([42, "print"])),
}

_ENV_TEXT = st.one_of(
    st.from_regex(r"-?[0-9]{1,6}(\.[0-9]{1,3})?", fullmatch=True),
    st.sampled_from(["", " ", "1", "0", "yes", "off", "maybe", "nan", "inf", "1e3", "a,b"]),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=6),
)
_ENVIRON = st.dictionaries(
    st.sampled_from(sorted(ENVIRONMENT_VARIABLES.values())), _ENV_TEXT, max_size=3
)


@contextlib.contextmanager
def _environment(variables: Mapping[str, str]) -> Iterator[None]:
    """Exactly ``variables`` as the ``LOOPWATCH_*`` environment, restored after."""
    saved = {name: value for name, value in os.environ.items() if name.startswith("LOOPWATCH_")}
    for name in saved:
        del os.environ[name]
    os.environ.update(variables)
    try:
        yield
    finally:
        for name in variables:
            os.environ.pop(name, None)
        os.environ.update(saved)


def _only(**given: Any) -> dict[str, Any]:
    """Options with only ``given`` set (and the stall recorder)."""
    return dict.fromkeys(_OPTIONS) | {"on_block": "record"} | given


@example(_only(max_stack_chars=300.5), {})  # each of these broke the watchdog or start()
@example(_only(max_frames=1.5, threshold=0.01), {})
@example(_only(report_burst=2.5), {})
@example(_only(tracer_provider=5), {})
@example(_only(threshold=60), {})
@example(_only(), {"LOOPWATCH_THRESHOLD_MS": "40000"})
@example(_only(threshold=0.001), {})
@example(_only(threshold=0.01, busy_window=0.1, busy_threshold=0.01), {})
@example(_only(threshold=20, busy_window=100), {})
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(options=st.fixed_dictionaries(_OPTIONS), environ=_ENVIRON)
def test_every_configuration_is_rejected_at_construction_or_works(
    options: dict[str, Any], environ: dict[str, str]
) -> None:
    events: list[loopwatch.BlockEvent] = []
    if options["on_block"] == "record":
        options["on_block"] = events.append
    given_names = {name for name, value in options.items() if value is not None}
    given_names |= {name for name, value in environ.items() if value.strip()}
    with _environment(environ):
        try:
            watcher = loopwatch.LoopWatch(**options)
        except (ValueError, TypeError) as error:
            message = str(error)
            named = re.match(r"(\w+)=", message)
            assert named is not None, message
            assert named.group(1) in given_names, message
            assert set(re.findall(r"LOOPWATCH_\w+", message)) <= given_names, message
            with pytest.raises(type(error), match=re.escape(message)):  # the same checks
                loopwatch.LoopWatchMiddleware(_app, **options)
            event(f"rejected: {type(error).__name__}")
            return
        loopwatch.LoopWatchMiddleware(_app, **options)
    event(f"accepted, {'stalled' if _stalls(watcher) else 'no stall'}")
    _works(watcher, events)


async def _app(scope: object, receive: object, send: object) -> None:
    """The app a middleware is built around (never called)."""


def _stalls(watcher: loopwatch.LoopWatch) -> bool:
    """Whether :func:`_works` stalls the loop for ``watcher`` (if small enough, and seen)."""
    config = watcher.config
    return config.enabled and config.threshold <= 0.03 and watcher._on_block is not None


def _works(watcher: loopwatch.LoopWatch, events: list[loopwatch.BlockEvent]) -> None:
    """The watcher starts, reports a stall of 3 x a small threshold, and stops."""
    config = watcher.config
    stalls = _stalls(watcher)

    async def main() -> None:
        watcher.start()
        assert watcher.running is config.enabled
        await asyncio.sleep(0.01)
        if stalls:
            workloads.nap(3 * config.threshold)
            await asyncio.sleep(2 * config.interval + 0.005)
            deadline = time.monotonic() + 2.0
            while not any(e.end is not None for e in events) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert any(e.end is not None for e in events), "no stall reported"
            assert all(len(e.stack) <= config.max_stack_chars for e in events)
        assert watcher.running is config.enabled  # the watchdog is alive
        watcher.stop()

    asyncio.run(main())
    assert not any(t.name == "loopwatch-watchdog" for t in threading.enumerate())
