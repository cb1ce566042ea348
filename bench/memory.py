"""Memory: RSS and thread count of a uvicorn server under loopwatch over a million requests.

wrk loads the hello-world app in chunks until the target number of requests is reached;
a sampler thread reads the server's RSS and thread count with psutil every 0.5 s.
"""

from __future__ import annotations

import itertools
import threading
import time

import psutil

from .common import median, run_wrk, uvicorn_server

CHUNK_SECONDS = 10.0
TIME_CAP = 600.0
"""Load stops here even short of the target; the report then says how many requests were
served. 1M requests took 260-300 s on this 2-core machine at ~3,400-3,800 req/s, but on
2026-12-03 it served ~2,000 req/s and a 420 s cap stopped at 854,160; this cap leaves room
down to ~1,700 req/s."""
WARM_REQUESTS = 50_000
"""RSS is compared against its value once this many requests were served (caches warm)."""


def run(quick: bool) -> dict[str, object]:
    """Load until ``target`` requests (1,000,000; 100,000 with ``quick``)."""
    target = 100_000 if quick else 1_000_000
    loop = "asyncio"
    env = {"BENCH_LOOPWATCH": "1", "BENCH_OTEL": "0"}
    samples: list[tuple[float, int, int]] = []
    marks: list[tuple[float, int]] = []
    stop = threading.Event()
    with uvicorn_server("hello_app", loop, env) as server:
        process = psutil.Process(server.pid)

        def sample() -> None:
            while not stop.is_set():
                info = process.memory_info()
                samples.append((time.monotonic(), info.rss, process.num_threads()))
                stop.wait(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        started = time.monotonic()
        marks.append((started, 0))
        sampler.start()
        total, chunks = 0, []
        try:
            while total < target and time.monotonic() - started < TIME_CAP / (2 if quick else 1):
                result = run_wrk(server.url("/"), CHUNK_SECONDS / (2 if quick else 1), 32)
                total += result.requests
                marks.append((time.monotonic(), total))
                chunks.append({"rps": result.rps, "p99_ms": result.p99_ms,
                               "errors": result.errors + result.non2xx})  # fmt: skip
                _, rss_now, threads_now = samples[-1]
                print(f"  memory: {total:>9,} requests, RSS {rss_now / 2**20:.1f} MiB, "
                      f"{threads_now} threads", flush=True)  # fmt: skip
        finally:
            stop.set()
            sampler.join()
        stalls = server.stalls()
        lags = server.lags()
    elapsed = marks[-1][0] - started
    points = [(_requests_at(t, marks), rss / 2**20, threads) for t, rss, threads in samples]
    warm = next((p for p in points if p[0] >= WARM_REQUESTS), points[0])
    rss = [p[1] for p in points]
    threads = [p[2] for p in points]
    return {
        "loop": loop,
        "target": target,
        "requests": total,
        "seconds": elapsed,
        "rps_median": median([c["rps"] for c in chunks]),
        "errors": sum(c["errors"] for c in chunks),
        "stalls_reported": len(stalls),
        "stall_lines": stalls[:20],
        "lags_seen": len(lags),
        "time_cap_s": TIME_CAP / (2 if quick else 1),
        "rss_start_mib": rss[0],
        "rss_warm_mib": warm[1],
        "rss_end_mib": rss[-1],
        "rss_max_mib": max(rss),
        "threads_min": min(threads),
        "threads_max": max(threads),
        "points": points,
    }


def _requests_at(moment: float, marks: list[tuple[float, int]]) -> float:
    """Requests served by ``moment``, interpolated between chunk boundaries."""
    for (t0, n0), (t1, n1) in itertools.pairwise(marks):
        if moment <= t1:
            return n0 + (n1 - n0) * max(0.0, moment - t0) / max(t1 - t0, 1e-9)
    return float(marks[-1][1])
