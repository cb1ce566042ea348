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
