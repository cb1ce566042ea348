"""Options from keyword arguments and ``LOOPWATCH_*`` variables, with clear errors."""

from __future__ import annotations

import asyncio
import logging
import re
import threading

import pytest

import loopwatch
from loopwatch import config as config_module
from loopwatch.config import DEFAULT_SKIP_MODULES, resolve_config


def test_defaults() -> None:
    config = resolve_config({})
    assert config.enabled is True
    assert config.threshold == 0.1
    assert config.interval == pytest.approx(0.005)
    assert config.dump_after == 30.0
    assert config.skip_modules == DEFAULT_SKIP_MODULES


def test_environment_in_milliseconds() -> None:
    config = resolve_config(
        {
            "LOOPWATCH_THRESHOLD_MS": "250",
            "LOOPWATCH_INTERVAL_MS": "20",
            "LOOPWATCH_DUMP_AFTER_MS": "0",
            "LOOPWATCH_SKIP_MODULES": "mylib, other.pkg",
            "LOOPWATCH_REPORT_BURST": "3",
            "LOOPWATCH_ENABLED": "yes",
        }
    )
    assert (config.threshold, config.interval, config.dump_after) == (0.25, 0.02, 0.0)
    assert config.skip_modules == ("mylib", "other.pkg")
    assert config.report_burst == 3


def test_interval_defaults_to_a_twentieth_of_the_threshold() -> None:
    assert resolve_config({"LOOPWATCH_THRESHOLD_MS": "500"}).interval == pytest.approx(0.025)


def test_keyword_arguments_win_over_the_environment() -> None:
    config = resolve_config({"LOOPWATCH_THRESHOLD_MS": "250"}, threshold=0.5)
    assert config.threshold == 0.5


@pytest.mark.parametrize(
    ("environ", "options", "expected"),
    [
        ({"LOOPWATCH_THRESHOLD_MS": "fast"}, {}, "LOOPWATCH_THRESHOLD_MS='fast' is not a number"),
        (
            {"LOOPWATCH_THRESHOLD_MS": "-5"},
            {},
            "LOOPWATCH_THRESHOLD_MS=-5 is out of range; accepted: 1 to 3.6e+06 ms",
        ),
        ({}, {"threshold": -1}, "threshold=-1 is out of range; accepted: 0.001 to 3600 s"),
        ({}, {"threshold": "0.1"}, "threshold='0.1' is not a number"),
        (
            {"LOOPWATCH_INTERVAL_MS": "200"},
            {},
            "LOOPWATCH_INTERVAL_MS=200 must be smaller than the threshold",
        ),
        (
            {},
            {"threshold": 0.1, "interval": 0.1},
            "interval=0.1 must be smaller than the threshold",
        ),
        ({"LOOPWATCH_ENABLED": "maybe"}, {}, "LOOPWATCH_ENABLED='maybe' is not a boolean"),
        ({"LOOPWATCH_MAX_FRAMES": "1.5"}, {}, "LOOPWATCH_MAX_FRAMES='1.5' is not a whole number"),
        ({}, {"dump_after": 0.05}, "dump_after=0.05 must be 0 (off) or larger than the threshold"),
        ({}, {"max_stack_chars": 300.5}, "max_stack_chars=300.5 is not a whole number"),
        ({}, {"max_frames": 1.5}, "max_frames=1.5 is not a whole number"),
        ({}, {"report_burst": 2.5}, "report_burst=2.5 is not a whole number"),
        ({}, {"max_frames": 64.0}, "max_frames=64.0 is not a whole number"),
        ({}, {"max_frames": True}, "max_frames=True is not a whole number"),
        ({}, {"threshold": True}, "threshold=True is not a number"),
        ({}, {"enabled": 1}, "enabled=1 is not a boolean"),
        ({}, {"measure_utilization": "no"}, "measure_utilization='no' is not a boolean"),
        ({}, {"busy_threshold": 1.5}, "busy_threshold=1.5 is out of range; accepted: 0 to 1"),
        ({}, {"busy_threshold": "half"}, "busy_threshold='half' is not a number"),
        (
            {"LOOPWATCH_BUSY_THRESHOLD": "50%"},
            {},
            "LOOPWATCH_BUSY_THRESHOLD='50%' is not a number",
        ),
        (
            {"LOOPWATCH_BUSY_WINDOW_MS": "-1"},
            {},
            "LOOPWATCH_BUSY_WINDOW_MS=-1 is out of range; accepted: 100 to 8.64e+07 ms",
        ),
        ({}, {"busy_window": 0}, "busy_window=0 is out of range; accepted: 0.1 to 86400 s"),
        ({}, {"threshold": float("nan")}, "threshold=nan is out of range"),
        ({}, {"skip_modules": 5}, "skip_modules=5 must be a sequence of module names"),
        ({}, {"skip_modules": ["my lib"]}, "skip_modules=('my lib',) must be a sequence"),
        ({"LOOPWATCH_SKIP_MODULES": "a,b-c"}, {}, "LOOPWATCH_SKIP_MODULES=('a', 'b-c') must be"),
        (
            {},
            {"skip_modules": "asyncio"},
            "skip_modules='asyncio' must be a sequence of module names",
        ),
    ],
)
def test_invalid_values_name_the_option_value_and_range(
    environ: dict[str, str], options: dict[str, object], expected: str
) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(expected)):
        resolve_config(environ, **options)


def test_a_derived_interval_stays_in_its_range() -> None:
    """threshold / 20, clamped to 0.5 ms - 60 s (1 ms used to give 50 us)."""
    assert resolve_config({}, threshold=0.001).interval == 0.0005
    assert resolve_config({}, threshold=3600).interval == 60.0


def test_busy_options() -> None:
    """Busy detection is on by default (half of a 10 s window); 0 turns it off, and a
    window too short for its threshold is accepted when busy detection is off."""
    config = resolve_config({})
    assert (config.busy_threshold, config.busy_window) == (0.5, 10.0)
    config = resolve_config({"LOOPWATCH_BUSY_THRESHOLD": "0.8", "LOOPWATCH_BUSY_WINDOW_MS": "2000"})
    assert (config.busy_threshold, config.busy_window) == (0.8, 2.0)
    assert resolve_config({"LOOPWATCH_BUSY_THRESHOLD": "0"}).busy_threshold == 0
    assert resolve_config({}, busy_threshold=0, busy_window=0.5).busy_window == 0.5
    assert resolve_config({}, threshold=5).busy_window == 50  # follows a long threshold


def test_dump_after_follows_a_long_threshold() -> None:
    """A threshold of 30 s or more works alone: dump_after defaults to twice it."""
    assert resolve_config({}, threshold=60).dump_after == 120
    assert resolve_config({"LOOPWATCH_THRESHOLD_MS": "40000"}).dump_after == 80
    assert resolve_config({}, threshold=10).dump_after == 30.0


@pytest.mark.parametrize(
    ("environ", "options", "expected"),
    [
        (
            {"LOOPWATCH_THRESHOLD_MS": "60000"},
            {"dump_after": 30},
            "dump_after=30 must be 0 (off) or larger than the threshold "
            "(LOOPWATCH_THRESHOLD_MS=60000)",
        ),
        (
            {"LOOPWATCH_DUMP_AFTER_MS": "50"},
            {},
            "LOOPWATCH_DUMP_AFTER_MS=50 must be 0 (off) or larger than the threshold "
            "(default threshold 0.1 s)",
        ),
        (
            {},
            {"threshold": 0.004, "interval": 0.005},
            "interval=0.005 must be smaller than the threshold (threshold=0.004)",
        ),
        (
            {"LOOPWATCH_BUSY_WINDOW_MS": "500"},
            {},
            "LOOPWATCH_BUSY_WINDOW_MS=500 must be at least 10 x the threshold "
            "(default threshold 0.1 s)",
        ),
        (
            {},
            {"threshold": 1, "busy_window": 5},
            "busy_window=5 must be at least 10 x the threshold (threshold=1)",
        ),
    ],
)
def test_a_combination_error_names_only_what_was_set(
    environ: dict[str, str], options: dict[str, object], expected: str
) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(expected)):
        resolve_config(environ, **options)


@pytest.mark.parametrize("option", ["tracer_provider", "meter_provider", "on_block", "on_busy"])
def test_objects_of_the_wrong_kind_are_rejected_at_construction(option: str) -> None:
    with pytest.raises(TypeError, match=f"^{option}=5 must be"):
        loopwatch.LoopWatch(**{option: 5})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=f"^{option}=5 must be"):
        loopwatch.LoopWatchMiddleware(_no_app, **{option: 5})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"max_frames": 1.5}, "max_frames=1.5 is not a whole number"),
        ({"metrics_port": 9464.5}, "metrics_port=9464.5 is not a port"),
        ({"metrics_port": 9464, "metrics_addr": 5}, "metrics_addr=5 is not an address"),
    ],
)
def test_the_middleware_rejects_bad_settings_at_construction(
    options: dict[str, object], expected: str
) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(expected)):
        loopwatch.LoopWatchMiddleware(_no_app, **options)  # type: ignore[arg-type]


async def _no_app(scope: object, receive: object, send: object) -> None:
    """An ASGI app that is never called."""


def test_unknown_option_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="unknown loopwatch option"):
        resolve_config({}, treshold=0.1)


def test_misspelt_variable_is_logged_once_and_others_pass(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config_module, "_warned_misspelt", set())
    environ = {
        "LOOPWATCH_THRESHOLD": "250",  # the unit suffix forgotten: the default stays
        "LOOPWATCH_METRIC_PORT": "9464",
        "LOOPWATCH_JAEGER_BIN": "/opt/jaeger",  # not loopwatch's, nothing like it
        "LOOPWATCH_THRESHOLD_MS": "300",
    }
    with caplog.at_level(logging.WARNING, logger="loopwatch"):
        assert resolve_config(environ).threshold == 0.3
        resolve_config(environ)
    messages = sorted(record.getMessage() for record in caplog.records)
    assert messages == [
        "LOOPWATCH_METRIC_PORT is not a loopwatch setting and is ignored; "
        "did you mean LOOPWATCH_METRICS_PORT?",
        "LOOPWATCH_THRESHOLD is not a loopwatch setting and is ignored; "
        "did you mean LOOPWATCH_THRESHOLD_MS?",
    ]


def test_invalid_hook() -> None:
    with pytest.raises(TypeError, match="on_block=42 must be a callable"):
        loopwatch.LoopWatch(on_block=42)  # type: ignore[arg-type]


def test_disabled_by_environment_starts_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOPWATCH_ENABLED", "0")
    before = threading.active_count()

    async def main() -> bool:
        async with loopwatch.LoopWatch() as watcher:
            await asyncio.sleep(0.05)
            return watcher.running

    assert asyncio.run(main()) is False
    assert threading.active_count() == before
