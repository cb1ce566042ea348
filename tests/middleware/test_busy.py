"""Busy-loop detection on real uvicorn servers (asyncio and uvloop): a handler that runs
20 ms of synchronous work every 25 ms never stalls for the 100 ms threshold, yet keeps
the loop 80 % busy. loopwatch reports a root ``loop.busy`` span naming the function,
a WARNING, an ``on_busy`` call and ``asyncio.eventloop.busy.time``; a handler that only
awaits gets none of them."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from loopwatch import BusyEvent, LoopWatchMiddleware

from .apps.inprocess import THRESHOLD_S, loopwatch_options
from .conftest import Otel
from .server import serve_in_thread, wait_until

CUT_S = 0.02
EVERY_S = 0.025
WINDOW_S = 2.0
"""A short window keeps the tests fast; one test runs the default 10 s window."""
CHURN_S = 2 * WINDOW_S + 1.5
"""Long enough for at least one whole window after sampling starts."""


def compute_cut() -> None:
    """20 ms of pure Python, in this very function (the culprit is the innermost frame)."""
    end = time.perf_counter() + CUT_S
    while time.perf_counter() < end:
        pass


def sleep_cut() -> None:
    """20 ms blocked in a sync call that releases the GIL."""
    time.sleep(CUT_S)


CUTS = {"compute": compute_cut, "sleep": sleep_cut}


async def churn(request: Request) -> Response:
    """Run ``cut`` every 25 ms for ``seconds`` (no ``cut``: only await)."""
    cut = CUTS.get(request.query_params.get("cut", ""))
    end = time.monotonic() + float(request.query_params["seconds"])
    while time.monotonic() < end:
        started = time.monotonic()
        if cut is not None:
            cut()
        await asyncio.sleep(max(0.0, EVERY_S - (time.monotonic() - started)))
    return PlainTextResponse("done")


def name_of(function: Any) -> str:
    return f"{function.__module__}.{function.__qualname__}"


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


@contextmanager
def busy_server(otel: Otel, loop: str, **options: Any) -> Iterator[tuple[str, list[BusyEvent]]]:
    events: list[BusyEvent] = []
    app = Starlette(routes=[Route("/churn", churn)])
    watched = LoopWatchMiddleware(
        app, **loopwatch_options(otel.providers), on_busy=events.append, **options
    )
    with serve_in_thread(watched, loop=loop) as server:
        yield server.url, events


def run_churn(url: str, cut: str | None, seconds: float) -> None:
    params = {"seconds": str(seconds)} | ({"cut": cut} if cut else {})
    response = httpx.get(f"{url}/churn", params=params, timeout=seconds + 30)
    assert response.text == "done"


def busy_spans(otel: Otel) -> list[ReadableSpan]:
    return [span for span in otel.spans() if span.name == "loop.busy"]


def assert_busy_report(otel: Otel, events: list[BusyEvent], function: str) -> None:
    """At least one ``loop.busy`` span and hook call naming ``function`` on top, with at
    least half the busy time, and no stall."""
    wait_until(lambda: busy_spans(otel) and events, 5.0, "a loop.busy span and hook call")
    spans = busy_spans(otel)
    for span in spans:
        attributes = attrs(span)
        assert span.kind is SpanKind.INTERNAL
        assert span.parent is None  # a root span: a window belongs to no request
        assert attributes["loopwatch.busy.functions"][0] == function, attributes
        assert attributes["loopwatch.busy.shares"][0] >= 0.5, attributes
        assert attributes["loopwatch.busy.ratio"] >= 0.5, attributes
        assert attributes["code.function.name"] == function
        assert str(attributes["code.file.path"]).endswith("test_busy.py")
        shares = list(attributes["loopwatch.busy.shares"])
        assert shares == sorted(shares, reverse=True)
        assert len(shares) == len(attributes["loopwatch.busy.functions"]) <= 10
        assert span.start_time is not None
        assert span.end_time is not None
        assert (span.end_time - span.start_time) / 1e9 >= WINDOW_S * 0.99  # back-dated
    assert events[0].functions[0] == function
    assert events[0].shares[0] >= 0.5
    # The cuts are not stalls: of the hundreds of them, none is reported. (A shared 2-core
    # machine may still keep the loop thread off the CPU, or waiting for the GIL, for over
    # 100 ms once or twice in a run, with or without busy sampling: measured under a load
    # of 6, 30 s of cuts gave one such stall either way. Those are real stalls.)
    stalls = [span for span in otel.spans() if span.name == "loop.blocked"]
    assert len(stalls) <= 2, [attrs(span) for span in stalls]


@pytest.mark.parametrize("cut", ["compute", "sleep"])
def test_a_busy_loop_is_reported_naming_its_function(
    otel: Otel, loop_name: str, cut: str, loopwatch_logs: pytest.LogCaptureFixture
) -> None:
    function = name_of(CUTS[cut])
    with busy_server(otel, loop_name, busy_window=WINDOW_S) as (url, events):
        run_churn(url, cut, CHURN_S)
        assert_busy_report(otel, events, function)
    warnings = [
        record
        for record in loopwatch_logs.records
        if record.levelno == logging.WARNING and "event loop busy" in record.getMessage()
    ]
    assert warnings, loopwatch_logs.text
    assert function in warnings[0].getMessage()
    assert "of the busy time" in warnings[0].getMessage()
    seconds = sum(
        point.value
        for point in otel.metric_points(
            "asyncio.eventloop.busy.time", **{"code.function.name": function}
        )
    )
    assert seconds >= 0.5 * WINDOW_S


def test_a_loop_that_only_awaits_reports_nothing(otel: Otel, loop_name: str) -> None:
    with busy_server(otel, loop_name, busy_window=WINDOW_S) as (url, events):
        run_churn(url, None, CHURN_S)
        time.sleep(0.5)
    assert not busy_spans(otel)
    assert not events
    # Busy time is counted only while the loop is sampled, which a loop that awaits is not
    # (a loaded machine may make a few ticks late and start the sampling for 0.5 s).
    points = otel.metric_points("asyncio.eventloop.busy.time")
    assert sum(point.value for point in points) < 0.1 * CHURN_S


def test_busy_threshold_zero_turns_it_off(otel: Otel) -> None:
    with busy_server(otel, "asyncio", busy_window=WINDOW_S, busy_threshold=0) as (url, events):
        run_churn(url, "compute", CHURN_S)
        time.sleep(0.5)
    assert not busy_spans(otel)
    assert not events


@pytest.mark.parametrize("cut", ["compute", "sleep"])
def test_the_default_window(otel: Otel, cut: str) -> None:
    """The issue's check: threshold 100 ms, defaults otherwise, 13 s per scenario."""
    assert THRESHOLD_S == 0.1
    with busy_server(otel, "asyncio") as (url, events):
        run_churn(url, cut, 13.0)
        assert_busy_report(otel, events, name_of(CUTS[cut]))
