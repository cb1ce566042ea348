"""uvicorn in subprocesses: the off-loop metrics server answers during a stall, and each
of several workers serves its own loop's metrics on its own port."""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from .conftest import LOOPS, NEEDS_UVLOOP
from .server import (
    HTTP_TIMEOUT_S,
    Samples,
    child_environ,
    free_port,
    free_port_pair,
    python_module,
    run_process,
    sample_total,
    scrape,
    wait_http_ok,
    wait_until,
)

APP = "tests.middleware.apps.served:app"
ONGOING = "asyncio_eventloop_block_ongoing_seconds"
BLOCK_COUNT = "asyncio_eventloop_block_duration_seconds_count"
DELAY_COUNT = "asyncio_eventloop_delay_seconds_count"
STALL_S = 2.0


def uvicorn_argv(port: int, loop: str, *extra: str) -> list[str]:
    return python_module(
        "uvicorn", APP, "--host", "127.0.0.1", "--port", str(port), "--loop", loop, *extra
    )


def try_scrape(url: str) -> Samples | None:
    try:
        return scrape(url, timeout=1.0)
    except httpx.HTTPError:
        return None


@pytest.mark.parametrize(
    ("loop", "configured_by"),
    [
        ("asyncio", "option"),
        pytest.param("uvloop", "environment", marks=NEEDS_UVLOOP),
        ("asyncio", "environment-sdk"),
    ],
)
def test_scrape_answers_during_a_stall(loop: str, configured_by: str, tmp_path: Path) -> None:
    """While a request holds the loop in ``time.sleep(2)``, the metrics port answers and
    reports the ongoing stall; afterwards the stall is counted under its route.

    ``environment-sdk``: the app installed a global SDK MeterProvider without readers
    (``opentelemetry-instrument`` with ``OTEL_METRICS_EXPORTER=none``)."""
    port, metrics_port = free_port(), free_port()
    settings = (
        {"MIDDLEWARE_TEST_METRICS_PORT": str(metrics_port)}
        if configured_by == "option"
        else {"LOOPWATCH_METRICS_PORT": str(metrics_port)}
    )
    if configured_by == "environment-sdk":
        settings["MIDDLEWARE_TEST_SDK_METER_PROVIDER"] = "1"
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    with run_process(
        uvicorn_argv(port, loop), env=child_environ(**settings), log_path=tmp_path / "log"
    ) as server:
        wait_http_ok(f"http://127.0.0.1:{port}/health", server)
        assert ONGOING in scrape(metrics_url), server.output()
        wait_until(
            lambda: sample_total(scrape(metrics_url), ONGOING) == 0,
            5.0,
            "an idle loop",
            detail=server.output,
        )
        with ThreadPoolExecutor(1) as pool:
            blocker = pool.submit(
                httpx.get, f"http://127.0.0.1:{port}/block?seconds={STALL_S}", timeout=10
            )
            during: list[float] = []

            def sees_stall() -> bool:
                samples = try_scrape(metrics_url)
                if samples is not None and sample_total(samples, ONGOING) > 0:
                    during.append(sample_total(samples, ONGOING))
                    return not blocker.done()
                return False

            wait_until(
                sees_stall,
                STALL_S - 0.5,
                "a scrape showing the ongoing stall",
                detail=server.output,
            )
            assert not blocker.done()
            assert 0 < during[0] < STALL_S + 1
            assert blocker.result(HTTP_TIMEOUT_S).status_code == 200
        wait_until(
            lambda: sample_total(scrape(metrics_url), BLOCK_COUNT, http_route="/block") >= 1,
            5.0,
            "the stall to be counted",
            detail=server.output,
        )
        wait_until(lambda: sample_total(scrape(metrics_url), ONGOING) == 0, 5.0, "the gauge at 0")
        after = scrape(metrics_url)
    route = {"http_route": "/block", "http_request_method": "GET"}
    assert sample_total(after, BLOCK_COUNT, **route) == 1
    assert sample_total(after, BLOCK_COUNT, **route, loopwatch_cause="blocking") == 1


@pytest.mark.parametrize("loop", LOOPS)
def test_two_workers_serve_their_own_metrics(loop: str, tmp_path: Path) -> None:
    """``--workers 2`` with a port range: one metrics port per worker, each watching its loop."""
    port, first = free_port(), free_port_pair()
    env = child_environ(LOOPWATCH_METRICS_PORT=f"{first}-{first + 1}")
    urls = [f"http://127.0.0.1:{p}/metrics" for p in (first, first + 1)]
    with run_process(
        uvicorn_argv(port, loop, "--workers", "2"), env=env, log_path=tmp_path / "log"
    ) as server:
        wait_http_ok(f"http://127.0.0.1:{port}/health", server)
        deadline = time.monotonic() + 30
        scrapes: list[Samples | None] = [None, None]
        while time.monotonic() < deadline:
            scrapes = [try_scrape(url) for url in urls]
            if all(s is not None and sample_total(s, DELAY_COUNT) > 0 for s in scrapes):
                break
            assert server.proc.poll() is None, server.output()
            time.sleep(0.1)
    for url, samples in zip(urls, scrapes, strict=True):
        assert samples is not None, f"{url} does not answer:\n{server.output()}"
        assert sample_total(samples, DELAY_COUNT) > 0, url
        assert ONGOING in samples
    assert server.output().count("Started server process") == 2


def test_metrics_port_in_use_does_not_stop_the_app(tmp_path: Path) -> None:
    """A taken metrics port is logged; the app serves and its stalls are still reported."""
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        metrics_port = taken.getsockname()[1]
        env = child_environ(MIDDLEWARE_TEST_METRICS_PORT=str(metrics_port))
        with run_process(
            uvicorn_argv(port, "asyncio"), env=env, log_path=tmp_path / "log"
        ) as server:
            wait_http_ok(f"http://127.0.0.1:{port}/health", server)
            blocked = httpx.get(f"http://127.0.0.1:{port}/block?seconds=0.3", timeout=10)
            assert blocked.status_code == 200
            wait_until(
                lambda: "event loop blocked for" in server.output(),
                5.0,
                "the stall to be logged",
                detail=server.output,
            )
            output = server.output()
    not_started = "loopwatch metrics server not started: cannot serve metrics on 127.0.0.1"
    assert f"{not_started} port(s) {metrics_port}-{metrics_port}" in output
    assert "in tests.middleware.apps.served.blocking_call" in output
