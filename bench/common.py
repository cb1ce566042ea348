"""Shared helpers: machine description, statistics, server processes, wrk runs and an
empty ASGI middleware (the reference for what one more layer costs)."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
"""The repository root (the parent of ``bench/``)."""

RAW_DIR = ROOT / "bench" / "results" / "raw"
"""Raw per-run JSON (git-ignored)."""

WRK_SCRIPT = Path(__file__).resolve().parent / "wrk_report.lua"
SERVER_CPU = "1"
"""Core the server is pinned to (``taskset``); wrk gets :data:`LOAD_CPU`."""
LOAD_CPU = "0"


def machine() -> dict[str, str]:
    """What every figure is taken with: CPU, cores, kernel, Python and package versions."""
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for name in ("uvicorn", "uvloop", "fastapi", "opentelemetry-sdk", "loopwatch"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[name] = version(name)
    wrk = shutil.which("wrk")
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "kernel": platform.release(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "packages": ", ".join(f"{k} {v}" for k, v in versions.items()),
        "wrk": _wrk_version() if wrk else "not installed",
        "pinning": "server on CPU 1, load generator on CPU 0 (taskset)"
        if can_pin()
        else "no CPU pinning",
    }


def _wrk_version() -> str:
    out = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    first = (out.stdout or out.stderr).splitlines()
    return first[0].split(" Copyright")[0] if first else "wrk"


def can_pin() -> bool:
    """Pin server and load generator to separate cores when there are at least two."""
    return shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2


def pinned(cpu: str, argv: Sequence[str]) -> list[str]:
    """``argv`` run on core ``cpu`` when pinning is possible."""
    return ["taskset", "-c", cpu, *argv] if can_pin() else list(argv)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: Sequence[float]) -> tuple[float, float]:
    """Minimum and maximum (the spread reported next to medians)."""
    return (min(values), max(values)) if values else (float("nan"), float("nan"))


def median_interval(
    values: Sequence[float] | Sequence[Sequence[float]],
    confidence: float = 0.95,
    resamples: int = 4000,
) -> tuple[float, float]:
    """Bootstrap confidence interval of the median of ``values`` (fixed seed: the same
    values give the same interval).

    ``values`` may come in clusters (a list of lists: e.g. the window pairs of each server
    process, which differ from process to process): clusters are then resampled first,
    and values within each chosen cluster, so the interval covers the spread between
    clusters too.
    """
    nested = bool(values) and isinstance(values[0], Sequence)
    clusters = [list(c) for c in values] if nested else [list(values)]  # type: ignore[arg-type]
    clusters = [c for c in clusters if c]
    if sum(len(c) for c in clusters) < 2:
        return (float("nan"), float("nan"))
    rng = random.Random(0)
    medians = []
    for _ in range(resamples):
        pooled = []
        for cluster in rng.choices(clusters, k=len(clusters)):
            pooled += rng.choices(cluster, k=len(cluster))
        medians.append(statistics.median(pooled))
    medians.sort()
    tail = (1 - confidence) / 2
    return medians[int(tail * resamples)], medians[int((1 - tail) * resamples) - 1]


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def busy_cpu_seconds() -> float:
    """System-wide CPU seconds spent not idle, summed over cores."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


@dataclass
class Server:
    """A uvicorn process on 127.0.0.1, pinned to :data:`SERVER_CPU`."""

    process: subprocess.Popen[bytes]
    port: int
    stderr_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stalls(self) -> list[str]:
        """The ``BENCH_STALL`` lines the app's ``on_block`` hook wrote so far."""
        return self._lines("BENCH_STALL")

    def lags(self) -> list[str]:
        """The ``BENCH_LAG`` lines of the independent lag probe so far."""
        return self._lines("BENCH_LAG")

    def _lines(self, prefix: str) -> list[str]:
        text = self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""
        return [line for line in text.splitlines() if line.startswith(prefix)]

    def mark(self) -> tuple[int, int]:
        """How many stall and lag lines there are now (to count those of one run)."""
        return len(self.stalls()), len(self.lags())

    def cpu_seconds(self) -> float:
        """CPU seconds used by the server so far (all its threads)."""
        times = psutil.Process(self.pid).cpu_times()
        return float(times.user + times.system)


@contextlib.contextmanager
def uvicorn_server(
    factory: str,
    loop: str,
    env: Mapping[str, str],
    ready_path: str = "/",
    log_dir: Path = RAW_DIR,
) -> Iterator[Server]:
    """Serve ``bench.apps:<factory>`` (or ``module:factory``) with uvicorn; always stopped
    on exit."""
    target = factory if ":" in factory else f"bench.apps:{factory}"
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    stderr_path = log_dir / f"uvicorn-{port}.log"
    argv = [
        sys.executable, "-m", "uvicorn", "--factory", target,
        "--host", "127.0.0.1", "--port", str(port), "--loop", loop,
        "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    child_env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    with open(stderr_path, "wb") as stderr:
        process = subprocess.Popen(
            pinned(SERVER_CPU, argv), cwd=ROOT, env=child_env,
            stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
    server = Server(process, port, stderr_path)
    try:
        wait_ready(server, ready_path)
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        stderr_path.unlink(missing_ok=True)


def wait_ready(server: Server, path: str = "/", timeout: float = 30.0) -> None:
    """Until ``path`` answers; raises with the server's log if it exits or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            log = server.stderr_path.read_text(errors="replace")
            raise RuntimeError(f"uvicorn exited with {server.process.returncode}:\n{log}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(server.url(path), timeout=2) as response,
        ):
            response.read()
            return
        time.sleep(0.05)
    raise RuntimeError(f"uvicorn on port {server.port} not ready after {timeout} s")


@dataclass(frozen=True)
class WrkResult:
    """One wrk run: totals, latency percentiles (ms) and the CPU other processes used."""

    requests: int
    seconds: float
    errors: int
    non2xx: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    wrk_cpu_s: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def run_wrk(url: str, seconds: float, connections: int, threads: int = 1) -> WrkResult:
    """Load ``url`` for ``seconds`` with wrk pinned to :data:`LOAD_CPU` (bounded: +30 s)."""
    argv = pinned(
        LOAD_CPU,
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "5s",
         "-s", str(WRK_SCRIPT), url],
    )  # fmt: skip
    _children_rusage_delta()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = process.communicate(timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    rusage = _children_rusage_delta()
    lines = [line for line in out.decode().splitlines() if line.startswith("WRK_JSON ")]
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({process.returncode}): {err.decode()}{out.decode()}")
    data = json.loads(lines[-1].removeprefix("WRK_JSON "))
    return WrkResult(
        requests=int(data["requests"]),
        seconds=data["duration_us"] / 1e6,
        errors=int(data["errors"]),
        non2xx=int(data["non2xx"]),
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        wrk_cpu_s=rusage,
    )


_last_children_cpu = 0.0


def _children_rusage_delta() -> float:
    """CPU seconds of children reaped since the previous call (the wrk just waited for)."""
    import resource

    global _last_children_cpu
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = usage.ru_utime + usage.ru_stime
    delta, _last_children_cpu = total - _last_children_cpu, total
    return delta


def write_raw(name: str, data: object) -> Path:
    """Save raw results as JSON under :data:`RAW_DIR`."""
    RAW_DIR.mkdir(parents=True, exist_ok=True)
    path = RAW_DIR / f"{name}.json"
    path.write_text(json.dumps(data, indent=1, default=str))
    return path


class EmptyMiddleware:
    """A pure ASGI middleware that only calls the app: the least a middleware costs."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)
