"""End to end: loop-lag metrics of the example app, scraped by a real Prometheus.

Prometheus scrapes the off-loop metrics endpoint of each app (``LOOPWATCH_METRICS_PORT``,
served by a thread, so it answers even while the event loop is stuck).
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .support import (
    HTTP_TIMEOUT_S,
    ExampleApp,
    ExampleAppFactory,
    JaegerServer,
    PrometheusFactory,
    PrometheusServer,
    send_article_requests,
)

pytestmark = pytest.mark.e2e

SLOW_JOB = "bottlenecks"
OPTIMIZED_JOB = "optimized"
ITEMS_ROUTE = "/items/{item_id}"

DELAY_COUNT = "asyncio_eventloop_delay_seconds_count"
BLOCK_COUNT = "asyncio_eventloop_block_duration_seconds_count"
BLOCK_ONGOING = "asyncio_eventloop_block_ongoing_seconds"

#: Metrics are recorded by the watchdog thread shortly after a stall ends; a scrape
#: that starts this long after the last request has seen everything the requests caused.
SETTLE_S = 1.0
#: Deadline for Prometheus to have such a scrape of every target (interval: 1 s).
SCRAPE_DEADLINE_S = 30.0

#: ``GET /debug/block?seconds=...`` (bottlenecks mode) sleeps on the loop this long.
DEBUG_BLOCK_S = 2.0
#: A scrape of the off-loop endpoint must answer this fast even while the loop is stuck.
OFF_LOOP_SCRAPE_MAX_S = 0.5


def _wait_for_scrape_after(prom: PrometheusServer, jobs: list[str], moment: float) -> None:
    """Wait until Prometheus has, for each job, a scrape that started after ``moment``."""
    deadline = time.monotonic() + SCRAPE_DEADLINE_S
    pending = list(jobs)
    while pending:
        pending = [
            job
            for job in pending
            if not any(
                float(r["value"][1]) > moment
                for r in prom.query(f'timestamp(up{{job="{job}"}} == 1)')
            )
        ]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"Prometheus has no successful scrape of {pending} after the requests "
                f"(targets: {prom.targets_health()})\n{prom.process.describe()}"
            )
        time.sleep(0.25)


def _sum(prom: PrometheusServer, expr: str) -> float | None:
    """Value of ``sum(expr)``, or None when no series matches."""
    result = prom.query(f"sum({expr})")
    return float(result[0]["value"][1]) if result else None


def test_loop_metrics_reach_prometheus(
    jaeger: JaegerServer,
    example_app: ExampleAppFactory,
    prometheus: PrometheusFactory,
) -> None:
    """Both apps report loop delay; only the slow one reports blocks, on its items route."""
    slow = example_app("bottlenecks", otlp_traces_url=jaeger.otlp_traces_url)
    optimized = example_app("optimized", otlp_traces_url=jaeger.otlp_traces_url)
    prom = prometheus({SLOW_JOB: [slow.metrics_target], OPTIMIZED_JOB: [optimized.metrics_target]})

    # The two apps are independent: send their traffic at the same time.
    errors: list[BaseException] = []

    def traffic(app: ExampleApp) -> None:
        try:
            send_article_requests(app)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=traffic, args=(app,)) for app in (slow, optimized)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, f"requests failed: {errors}"

    _wait_for_scrape_after(prom, [SLOW_JOB, OPTIMIZED_JOB], time.time() + SETTLE_S)

    for job in (SLOW_JOB, OPTIMIZED_JOB):
        delays = _sum(prom, f'{DELAY_COUNT}{{job="{job}"}}')
        assert delays is not None, f"{DELAY_COUNT} missing for job {job}"
        assert delays > 0, f"{DELAY_COUNT}{{job={job!r}}} = {delays}"

    blocks = _sum(prom, f'{BLOCK_COUNT}{{job="{SLOW_JOB}"}}')
    assert blocks is not None, f"{BLOCK_COUNT} missing for the slow app"
    assert blocks > 0
    # The three GET /items/1 each stall the loop once (CPU work for ~0.3-0.6 s).
    route_blocks = _sum(prom, f'{BLOCK_COUNT}{{job="{SLOW_JOB}", http_route="{ITEMS_ROUTE}"}}')
    assert route_blocks is not None, f"{BLOCK_COUNT} has no http_route={ITEMS_ROUTE!r} series"
    assert route_blocks >= 3, f"{route_blocks} blocks on {ITEMS_ROUTE}, expected >= 3"

    optimized_blocks = _sum(prom, f'{BLOCK_COUNT}{{job="{OPTIMIZED_JOB}"}}')
    assert optimized_blocks in (None, 0.0), f"optimized app reported {optimized_blocks} blocks"


def _ongoing_block_seconds(metrics_url: str) -> tuple[float, float]:
    """Scrape ``metrics_url``; return (largest ongoing-block value, scrape seconds)."""
    start = time.monotonic()
    response = httpx.get(metrics_url, timeout=HTTP_TIMEOUT_S)
    elapsed = time.monotonic() - start
    response.raise_for_status()
    values = [
        sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name == BLOCK_ONGOING
    ]
    return max(values, default=0.0), elapsed


def test_ongoing_block_is_visible_while_the_loop_is_stuck(
    jaeger: JaegerServer, example_app: ExampleAppFactory
) -> None:
    """While a request blocks the loop for 2 s, the off-loop endpoint answers quickly
    and shows a non-zero ``asyncio_eventloop_block_ongoing_seconds``."""
    app = example_app("bottlenecks", otlp_traces_url=jaeger.otlp_traces_url)
    ongoing, _ = _ongoing_block_seconds(app.metrics_url)
    assert ongoing == 0.0, f"{BLOCK_ONGOING} = {ongoing} before any stall"

    outcome: list[httpx.Response | BaseException] = []

    def block() -> None:
        try:
            outcome.append(
                httpx.get(
                    f"{app.base_url}/debug/block",
                    params={"seconds": DEBUG_BLOCK_S},
                    timeout=HTTP_TIMEOUT_S,
                )
            )
        except BaseException as exc:
            outcome.append(exc)

    blocker = threading.Thread(target=block)
    started = time.monotonic()
    blocker.start()
    seen: list[tuple[float, float, float]] = []  # (seconds since start, value, scrape time)
    try:
        # Poll until the middle of the stall; the watchdog reports it after its threshold.
        while time.monotonic() - started < DEBUG_BLOCK_S * 0.75:
            value, elapsed = _ongoing_block_seconds(app.metrics_url)
            seen.append((time.monotonic() - started, value, elapsed))
            if value > 0:
                break
            time.sleep(0.05)
    finally:
        blocker.join()

    assert len(outcome) == 1
    response = outcome[0]
    assert isinstance(response, httpx.Response), f"GET /debug/block failed: {response!r}"
    assert response.status_code == 200, (
        f"GET /debug/block answered {response.status_code}: {response.text[:200]} "
        "(the bottlenecks example app must offer GET /debug/block?seconds=N)"
    )
    assert time.monotonic() - started >= DEBUG_BLOCK_S, "the loop was not blocked for 2 s"

    observed = ", ".join(f"t={t:.2f}s value={v:.3f} scrape={e * 1000:.0f}ms" for t, v, e in seen)
    assert any(value > 0 for _, value, _ in seen), (
        f"{BLOCK_ONGOING} stayed 0 during a {DEBUG_BLOCK_S} s stall: {observed}"
    )
    assert all(e <= OFF_LOOP_SCRAPE_MAX_S for _, _, e in seen), (
        f"off-loop metrics endpoint was slow while the loop was stuck: {observed}"
    )
