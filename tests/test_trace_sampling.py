"""``keep_stalls`` and the ``loopwatch_*`` env samplers: loopwatch's spans survive head
sampling, every other span gets the wrapped sampler's decision, rate limits still apply."""

from __future__ import annotations

import asyncio
import logging
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from importlib.metadata import entry_points
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    Decision,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

import loopwatch
from loopwatch.trace_sampling import LOOPWATCH_SPAN_NAMES

from . import workloads
from .conftest import Telemetry, telemetry_sampled_by
from .middleware.server import REPO_ROOT, child_environ, venv_script
from .middleware.test_zero_code import HAVE_DISTRO

Run = Callable[[Callable[[], Awaitable[Any]]], Any]

ENV_SAMPLERS = {
    "loopwatch_parentbased_traceidratio": "ParentBased{root:TraceIdRatioBased{0.05}",
    "loopwatch_traceidratio": "else:TraceIdRatioBased{0.05}}",
    "loopwatch_parentbased_always_on": "ParentBased{root:AlwaysOnSampler",
}
"""Entry point name -> part of its sampler's description with ``OTEL_TRACES_SAMPLER_ARG=0.05``."""


@pytest.fixture
def nothing_sampled() -> Iterator[Telemetry]:
    """Providers whose sampler keeps loopwatch's spans and drops every new trace."""
    yield from telemetry_sampled_by(loopwatch.keep_stalls(ParentBased(ALWAYS_OFF)))


def watcher(telemetry: Telemetry, **options: Any) -> loopwatch.LoopWatch:
    return loopwatch.LoopWatch(
        0.1,
        tracer_provider=telemetry.tracer_provider,
        meter_provider=telemetry.meter_provider,
        **options,
    )


def test_stall_in_an_unsampled_request_is_kept_as_a_linked_root(
    run: Run, nothing_sampled: Telemetry
) -> None:
    """The request's span is dropped by the sampler; its stall is exported, linked to it."""
    tracer = nothing_sampled.tracer_provider.get_tracer("app")
    request_context: list[SpanContext] = []

    async def scenario() -> None:
        async with watcher(nothing_sampled):
            await asyncio.sleep(0.1)
            with tracer.start_as_current_span("request") as request:
                request_context.append(request.get_span_context())
                workloads.nap(0.3)
            await asyncio.sleep(0.1)

    run(scenario)

    [request] = request_context
    assert not request.trace_flags.sampled
    spans = nothing_sampled.spans.get_finished_spans()
    assert [span.name for span in spans] == ["loop.blocked"]
    [blocked] = spans
    assert blocked.parent is None
    assert [link.context.span_id for link in blocked.links] == [request.span_id]
    assert (blocked.attributes or {})["code.function.name"] == "tests.workloads.nap"


def test_stall_in_a_sampled_request_stays_in_its_trace(
    run: Run, nothing_sampled: Telemetry
) -> None:
    """A request sampled upstream (remote parent, sampled flag) keeps its stall inside."""
    tracer = nothing_sampled.tracer_provider.get_tracer("app")
    upstream = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))

    async def scenario() -> None:
        async with watcher(nothing_sampled):
            await asyncio.sleep(0.1)
            with (
                trace.use_span(NonRecordingSpan(upstream)),
                tracer.start_as_current_span("request"),
            ):
                workloads.nap(0.3)
            await asyncio.sleep(0.1)

    run(scenario)

    spans = {span.name: span for span in nothing_sampled.spans.get_finished_spans()}
    assert set(spans) == {"request", "loop.blocked"}
    blocked, request = spans["loop.blocked"], spans["request"]
    assert blocked.context.trace_id == request.context.trace_id == 0xABC
    assert blocked.parent is not None
    assert blocked.parent.span_id == request.context.span_id
    assert list(blocked.links) == []


def test_a_stall_storm_is_still_rate_limited(
    run: Run, nothing_sampled: Telemetry, loopwatch_logs: pytest.LogCaptureFixture
) -> None:
    """Default limits (burst 5 per culprit): 8 stalls of one function give 5 spans; the
    metric counts all 8. The sampler keeps spans; it does not let more of them through."""

    async def scenario() -> None:
        async with watcher(nothing_sampled, report_per_minute=0):
            for _ in range(8):
                await asyncio.sleep(0.05)
                workloads.nap(0.2)
            await asyncio.sleep(0.1)

    run(scenario)

    assert len(nothing_sampled.blocked_spans()) == 5
    [point] = nothing_sampled.metrics()["asyncio.eventloop.block.duration"]
    assert point.count == 8


def test_other_spans_get_the_wrapped_samplers_decision() -> None:
    """Same decision as the wrapped sampler for every other name, across trace ids; for
    loopwatch's names, record-and-sample with the attributes and the parent's trace state."""
    ratio = ParentBased(TraceIdRatioBased(0.5))
    sampler = loopwatch.keep_stalls(ratio)
    state = TraceState([("vendor", "value")])
    unsampled = trace.set_span_in_context(
        NonRecordingSpan(SpanContext(0x1, 0x2, is_remote=True, trace_state=state))
    )
    for trace_id in range(1, 2**64, 2**58 + 12345):
        for parent in (None, unsampled):
            ours = sampler.should_sample(parent, trace_id, "GET /items", attributes={"a": 1})
            theirs = ratio.should_sample(parent, trace_id, "GET /items", attributes={"a": 1})
            assert ours.decision == theirs.decision
            assert ours.attributes == theirs.attributes
    for name in LOOPWATCH_SPAN_NAMES:
        kept = sampler.should_sample(unsampled, 0x1, name, attributes={"loopwatch.cause": "cpu"})
        assert kept.decision is Decision.RECORD_AND_SAMPLE
        assert dict(kept.attributes) == {"loopwatch.cause": "cpu"}
        assert kept.trace_state == state


def test_description_names_both_rules() -> None:
    description = loopwatch.keep_stalls(TraceIdRatioBased(0.05)).get_description()
    assert description == "KeepStalls{always:loop.blocked,loop.busy,else:TraceIdRatioBased{0.05}}"


def test_keep_stalls_wants_a_sampler() -> None:
    with pytest.raises(TypeError, match=r"keep_stalls\(sampler\).*got float.*ParentBased"):
        loopwatch.keep_stalls(0.05)  # type: ignore[arg-type]


def env_sampler(name: str, argument: str | None) -> Sampler:
    """The sampler the SDK configurator builds: entry point ``name`` called with the
    value of ``OTEL_TRACES_SAMPLER_ARG`` (``None`` when unset)."""
    [entry_point] = entry_points(group="opentelemetry_traces_sampler", name=name)
    sampler: Sampler = entry_point.load()(argument)
    return sampler


@pytest.mark.parametrize("name", sorted(ENV_SAMPLERS))
def test_env_samplers_are_registered(name: str) -> None:
    description = env_sampler(name, "0.05").get_description()
    assert description.startswith("KeepStalls{always:loop.blocked")
    assert ENV_SAMPLERS[name] in description


@pytest.mark.parametrize("argument", [None, "", "  "])
def test_unset_ratio_means_every_trace_silently(
    argument: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    sampler = env_sampler("loopwatch_parentbased_traceidratio", argument)
    assert "TraceIdRatioBased{1.0}" in sampler.get_description()
    assert not caplog.records


@pytest.mark.parametrize("argument", ["five percent", "5", "-0.1", "nan"])
@pytest.mark.parametrize("name", ["loopwatch_parentbased_traceidratio", "loopwatch_traceidratio"])
def test_bad_ratio_is_logged_and_ignored(
    name: str, argument: str, caplog: pytest.LogCaptureFixture
) -> None:
    """As the specification says for the SDK's samplers: logged, then as if unset (1.0)."""
    caplog.set_level(logging.WARNING, logger="loopwatch")
    sampler = env_sampler(name, argument)
    assert "TraceIdRatioBased{1.0}" in sampler.get_description()
    [record] = caplog.records
    message = record.getMessage()
    assert f"OTEL_TRACES_SAMPLER_ARG={argument!r} is not a sampling ratio" in message
    assert f"OTEL_TRACES_SAMPLER={name}" in message
    assert "a number from 0 to 1 (e.g. 0.05" in message


PRINT_SAMPLER = (
    "from opentelemetry import trace; print(trace.get_tracer_provider().sampler.get_description())"
)


@pytest.mark.skipif(not HAVE_DISTRO, reason="needs opentelemetry-distro (SDK set up by env)")
@pytest.mark.parametrize(
    ("argument", "expected"), [("0.01", "TraceIdRatioBased{0.01}"), ("1%", "{1.0}")]
)
def test_opentelemetry_instrument_builds_the_env_sampler(argument: str, expected: str) -> None:
    """The SDK set up by ``opentelemetry-instrument`` (distro configurator) from the env."""
    env = child_environ(
        OTEL_TRACES_SAMPLER="loopwatch_parentbased_traceidratio",
        OTEL_TRACES_SAMPLER_ARG=argument,
        OTEL_TRACES_EXPORTER="none",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
    )
    argv = [venv_script("opentelemetry-instrument"), venv_script("python"), "-c", PRINT_SAMPLER]
    done = subprocess.run(
        argv, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.startswith("KeepStalls{always:loop.blocked"), done.stdout + done.stderr
    assert expected in done.stdout
    bad = "is not a sampling ratio for OTEL_TRACES_SAMPLER=loopwatch_parentbased_traceidratio"
    assert (bad in done.stderr) == (argument == "1%"), done.stderr


LAZY_IMPORT = """
import sys
import loopwatch
assert not [name for name in sys.modules if name.startswith("opentelemetry.sdk")]
sys.modules["opentelemetry.sdk"] = None  # as if opentelemetry-sdk were not installed
try:
    loopwatch.keep_stalls
except ImportError as error:
    print(error)
"""


def test_import_loopwatch_does_not_import_the_sdk() -> None:
    """The core depends on the API only; keep_stalls says what to install without the SDK."""
    done = subprocess.run(
        [venv_script("python"), "-c", LAZY_IMPORT],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "needs opentelemetry-sdk: pip install 'loopwatch[sdk]'" in done.stdout, done.stderr


def test_a_self_built_tracer_provider_knows_only_the_sdks_names(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """As the README says: ``TracerProvider()`` does not look up sampler entry points (the
    SDK's configurator does), so it samples every trace; if an SDK release changes that,
    this fails and the README's advice (pass ``keep_stalls`` there) needs updating."""
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "loopwatch_parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.05")
    provider = TracerProvider()
    try:
        description = provider.sampler.get_description()
    finally:
        provider.shutdown()
    assert description.startswith("ParentBased{root:AlwaysOnSampler")
    assert "Couldn't recognize sampler loopwatch_parentbased_traceidratio" in caplog.text
