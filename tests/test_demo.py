"""``loopwatch demo``: end to end in a subprocess, and its parts."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from rich.console import Console

from loopwatch.demo import run_demo, source
from loopwatch.demo.calibration import (
    SHORTEST_DEMO_STALL,
    cpu_seconds,
    demo_iterations,
    iterations_lasting,
)
from loopwatch.demo.runner import run_mode
from loopwatch.demo.stats import quantile

DEMO_BUDGET_SECONDS = 30


def test_demo_runs_end_to_end() -> None:
    environ = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OTEL_", "LOOPWATCH_", "DEMO_MODE"))
    }
    environ["COLUMNS"] = "120"
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "loopwatch", "demo"],
        capture_output=True,
        text=True,
        env=environ,
        timeout=120,
        check=False,
    )
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stderr
    assert elapsed < DEMO_BUDGET_SECONDS
    report = result.stdout
    assert "stalls in example.work.cpu_heavy_blocking_work" in report
    assert "example/work.py:" in report
    assert "GET /items/{item_id}" in report
    for row in ("GET /items/1, median of 3", "loop delay p99", "idle loop delay p99"):
        assert row in report


def test_demo_without_its_app_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(source, "checkout_root", lambda: tmp_path)
    monkeypatch.setattr(source, "bundled_root", lambda: tmp_path / "app")
    output = io.StringIO()
    assert run_demo(console=Console(file=output, width=200)) == 2
    assert "pip install --force-reinstall 'loopwatch[demo]'" in output.getvalue()


def test_demo_work_is_sized_by_the_variable_else_by_time() -> None:
    """``$DEMO_CPU_ITERATIONS`` wins; without it the article's work, made long enough to
    stall the loop at 1.5 x the threshold on a faster machine."""
    from example.work import CPU_ITERATIONS, cpu_heavy_blocking_work

    assert demo_iterations({"DEMO_CPU_ITERATIONS": "1234"}) == 1234
    lasting = iterations_lasting(0.3, cpu_heavy_blocking_work)
    # Other load can slow even CPU time, by up to about twice, during the calibration (CI
    # on this shared machine: 0.155 and 0.18 s of 0.3, on Python 3.12 and 3.13, in the
    # same run: the work comes out shorter than asked) or during the check (0.46 s of 0.3
    # on 3.11, on a slow day). The bounds catch a calibration off by 3x either way.
    assert 0.1 <= cpu_seconds(lambda: cpu_heavy_blocking_work(lasting)) <= 0.9
    iterations = demo_iterations({})
    assert iterations >= CPU_ITERATIONS
    assert cpu_seconds(lambda: cpu_heavy_blocking_work(iterations)) >= 0.8 * SHORTEST_DEMO_STALL


def test_demo_rejects_a_bad_work_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO_CPU_ITERATIONS", "lots")
    output = io.StringIO()
    assert run_demo(console=Console(file=output, width=200)) == 2
    message = output.getvalue()
    assert "DEMO_CPU_ITERATIONS='lots' is not a positive whole number" in message


@pytest.fixture
def otlp_collector() -> Iterator[tuple[str, list[str]]]:
    """A stand-in OTLP/HTTP receiver that accepts every POST and records its path."""
    paths: list[str] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            paths.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            """Quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1/traces", paths
    server.shutdown()
    server.server_close()


def test_mode_run_measures_and_exports_over_otlp(otlp_collector: tuple[str, list[str]]) -> None:
    endpoint, paths = otlp_collector
    steps: list[str] = []
    result = run_mode("bottlenecks", otlp_endpoint=endpoint, step=steps.append)
    assert len(steps) == 5
    assert len(result.item_latencies) == 3
    assert len(result.concurrent_latencies) == 5
    assert len(result.background_jobs) == 3
    assert result.stalls
    assert result.traced_stalls["example.work.cpu_heavy_blocking_work"] >= 3
    assert result.load_delay is not None
    assert result.idle_delay is not None
    assert result.load_delay.max > result.idle_delay.p99
    assert {"db.query", "cpu.work.blocking", "post.processing"} <= set(result.item_spans)
    assert paths
    assert set(paths) == {"/v1/traces"}


def test_quantile_interpolates_inside_the_bucket() -> None:
    bounds = [0.001, 0.01, 0.1]
    counts = [50, 40, 10, 0]
    assert quantile(0.5, bounds, counts, low=0.0002, high=0.09) == pytest.approx(0.001)
    assert quantile(0.7, bounds, counts, low=0.0002, high=0.09) == pytest.approx(0.0055)
    assert quantile(0.99, bounds, counts, low=0.0002, high=0.09) == pytest.approx(0.082)
    assert quantile(1.0, bounds, counts, low=0.0002, high=0.09) == pytest.approx(0.09)
