"""Instructions per request, counted by valgrind: the middleware's cost without timing noise.

The hello app runs under ``valgrind --tool=cachegrind`` in uvicorn and serves a fixed
number of requests, one at a time over one keep-alive connection (with several clients,
how requests batched into loop iterations moved the counts by thousands), once with few
and once with many requests: the difference, divided by the extra requests, is the
server's instructions per request with start-up and shutdown cancelled out. Instruction
counts do not depend on other load on the machine, but they are not exact either: timers
in the server fire per unit of time while valgrind slows requests ~50 times, so their work
is charged to requests in proportion to how slow valgrind ran. The bench apps' 20 ms lag
probe is left out here (``BENCH_PROBE=0``); uvicorn's own 0.1 s tick remains.

The heartbeat runs once a second here (``LOOPWATCH_INTERVAL_MS=1000``): under valgrind
requests take ~50 times longer, so its time-based ticks would be charged to them; the
watcher's own cost is in the wrk runs (*watcher only*).
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from .common import ROOT, Server, free_port, wait_ready

FEW, MANY = 300, 1300
CLIENTS = 1
CONFIGS = {
    "without loopwatch": {"BENCH_LOOPWATCH": "0"},
    "LoopWatchMiddleware": {"BENCH_LOOPWATCH": "1"},
}


def available() -> bool:
    return shutil.which("valgrind") is not None


def _serve_and_count(env: dict[str, str], requests: int) -> int:
    """Instructions the server executed from start to exit, having served ``requests``."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="loopwatch-cg-") as tmp:
        argv = [
            "valgrind", "--tool=cachegrind", "--cache-sim=no",
            f"--cachegrind-out-file={Path(tmp) / 'out'}",
            sys.executable, "-m", "uvicorn", "--factory", "bench.apps:hello_app",
            "--host", "127.0.0.1", "--port", str(port), "--loop", "asyncio",
            "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip
        child_env = {
            **os.environ, **env, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "0",
            "LOOPWATCH_INTERVAL_MS": "1000", "LOOPWATCH_THRESHOLD_MS": "5000", "BENCH_PROBE": "0",
        }  # fmt: skip
        log = Path(tmp) / "stderr"
        with open(log, "wb") as stderr:
            process = subprocess.Popen(
                argv, cwd=ROOT, env=child_env, stdout=subprocess.DEVNULL, stderr=stderr
            )
        try:
            wait_ready(Server(process, port, log), timeout=120.0)
            _load(port, requests)
        finally:
            process.terminate()
            process.wait(timeout=120)
        err = log.read_text(errors="replace")
    found = re.search(r"I\s+refs:\s+([\d,]+)", err)
    if found is None:
        raise RuntimeError(f"no instruction count from valgrind:\n{err[-2000:]}")
    return int(found.group(1).replace(",", ""))


def _load(port: int, requests: int) -> None:
    """``requests`` GETs over :data:`CLIENTS` keep-alive connections, each from its thread."""

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for _ in range(requests // CLIENTS):
            connection.request("GET", "/")
            connection.getresponse().read()
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def per_request(env: dict[str, str]) -> float:
    """Server instructions per request (start-up and shutdown cancelled out)."""
    few, many = _serve_and_count(env, FEW), _serve_and_count(env, MANY)
    return (many - few) / (MANY - FEW)


def run(quick: bool) -> dict[str, object]:
    """Instructions per request of the hello app, without and with the middleware,
    without and with FastAPIInstrumentor."""
    if not available():
        raise RuntimeError("valgrind is not installed (Debian: apt-get install valgrind)")
    rows = []
    for otel in (False,) if quick else (False, True):
        counts = {
            name: per_request({**env, "BENCH_OTEL": "1" if otel else "0"})
            for name, env in CONFIGS.items()
        }
        base, with_middleware = counts["without loopwatch"], counts["LoopWatchMiddleware"]
        rows.append(
            {
                "otel": otel,
                "without": base,
                "with": with_middleware,
                "added": with_middleware - base,
                "ratio": with_middleware / base,
            }
        )
    return {"requests": [FEW, MANY], "clients": CLIENTS, "rows": rows}
