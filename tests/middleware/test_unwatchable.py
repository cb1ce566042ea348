"""A trio server answers every request and reports a stall; a new loop per request (a
test client used without ``with``), which loopwatch cannot watch, leaves no watcher,
thread or per-loop entry behind and costs little."""

from __future__ import annotations

import warnings
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from websockets.sync.client import connect

with warnings.catch_warnings():  # Starlette's notice that its client prefers httpx2
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from loopwatch import LoopWatchMiddleware, registry

from .conftest import watchdog_threads
from .server import (
    HTTP_TIMEOUT_S,
    child_environ,
    free_port,
    python_module,
    run_process,
    wait_http_ok,
    wait_until,
)
from .test_lifecycle import installed_middleware

REQUESTS = 22
UNWATCHED = "requests pass through unwatched"
STALL_LINE = "event loop blocked for"
CULPRIT = "tests.middleware.apps.served.blocking_call"


@pytest.mark.parametrize("traced", [False, True], ids=["untraced", "traced"])
def test_trio_server_answers_every_request_and_reports_a_stall(
    traced: bool, tmp_path: Path
) -> None:
    """hypercorn's trio worker: lifespan, every request and a websocket are served, the app
    is watched (no 'unwatched' line, nothing raises), and a handler's 0.4 s block is logged
    with its function and request."""
    port = free_port()
    argv = python_module(
        "hypercorn",
        "--worker-class",
        "trio",
        "--bind",
        f"127.0.0.1:{port}",
        "tests.middleware.apps.served:app",
    )
    env = child_environ(MIDDLEWARE_TEST_TRACED="1" if traced else "0")
    with run_process(argv, env=env, log_path=tmp_path / "log") as server:
        url = f"http://127.0.0.1:{port}"
        wait_http_ok(f"{url}/health", server)
        statuses = [
            httpx.get(f"{url}/block?seconds=0.01", timeout=HTTP_TIMEOUT_S).status_code
            for _ in range(REQUESTS)
        ]
        with connect(f"ws://127.0.0.1:{port}/echo", open_timeout=HTTP_TIMEOUT_S) as websocket:
            websocket.send("hello")
            echoed = websocket.recv(timeout=HTTP_TIMEOUT_S)
        blocked = httpx.get(f"{url}/block?seconds=0.4", timeout=HTTP_TIMEOUT_S).status_code
        wait_until(lambda: CULPRIT in server.output(), 5.0, "the stall's log line")
        output = server.output()
    assert statuses == [200] * REQUESTS, output
    assert echoed == "hello", output
    assert blocked == 200
    assert "Traceback" not in output, output
    assert UNWATCHED not in output, output
    stalls = [line for line in output.splitlines() if CULPRIT in line]
    assert any(f"in {CULPRIT}" in line and "during GET /block" in line for line in stalls), output


def app_with_middleware(loopwatch: bool) -> FastAPI:
    app = FastAPI()

    @app.get("/")
    async def root() -> dict[str, int]:
        return {"ok": 1}

    if loopwatch:
        app.add_middleware(LoopWatchMiddleware, threshold=0.1)
    return app


def test_a_new_loop_per_request_leaves_nothing_behind() -> None:
    """300 requests, each on its own loop: all answered, and at most the last loop's
    watcher and thread are left. (What a loop per request costs is a figure for the
    benchmarks, measured in the README's Reliability section, not a timed test.)"""
    client = TestClient(app_with_middleware(True))
    statuses = [client.get("/").status_code for _ in range(300)]
    assert statuses == [200] * 300
    middleware = installed_middleware(client.app)  # type: ignore[arg-type]
    assert len(middleware._watchers) <= 1
    assert len([loop for loop in registry._watchers if loop.is_closed()]) <= 1
    # Watchers of closed loops are stopped without waiting for their threads to end.
    wait_until(lambda: watchdog_threads() <= 1, 5.0, "the released watchdog threads to end")
