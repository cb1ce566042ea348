"""The corpus of stall patterns: application code that blocks the event loop.

Each ``stall_*`` function is what the loop runs; it is the culprit loopwatch should name
(the innermost frame of application code). ``Pattern.prepare`` builds the arguments off
the loop (in a worker thread) so that only the stall itself runs on the loop, and
returns a ``go`` callback that starts any helper thread's countdown.
"""

from __future__ import annotations

import gc
import http.server
import json
import random
import re
import socket
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "site-packages"


def _slowlib() -> Any:
    if str(FIXTURES) not in sys.path:
        sys.path.append(str(FIXTURES))
    import slowlib

    return slowlib


# --- what runs on the loop -------------------------------------------------------------


def stall_cpu_loop(seconds: float) -> int:
    """Pure-Python CPU loop."""
    deadline = time.perf_counter() + seconds
    count = 0
    while time.perf_counter() < deadline:
        count += 1
    return count


def stall_sleep(seconds: float) -> None:
    """``time.sleep`` on the loop."""
    time.sleep(seconds)


def stall_socket_recv(sock: socket.socket) -> bytes:
    """A blocking ``recv`` that a helper thread answers later."""
    return sock.recv(1)


def stall_http_call(client: Any, url: str) -> int:
    """A synchronous HTTP client call (httpx) to a slow local server."""
    return int(client.get(url).status_code)


def stall_sqlite_cpu(connection: sqlite3.Connection, count: int) -> int:
    """A CPU-bound SQLite query (sqlite3 releases the GIL while SQLite computes)."""
    sql = (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?) "
        "SELECT sum(x) FROM c"
    )
    return int(connection.execute(sql, (count,)).fetchone()[0])


def stall_sqlite_locked(connection: sqlite3.Connection) -> int:
    """A query that waits for another connection's exclusive lock."""
    return int(connection.execute("SELECT count(*) FROM t").fetchone()[0])


def stall_json_c(document: object) -> int:
    """``json.dumps`` of a large document with the C encoder (holds the GIL)."""
    return len(json.dumps(document))


def stall_json_python(document: object) -> int:
    """``json.dumps(indent=1)``: the pure-Python encoder."""
    return len(json.dumps(document, indent=1))


def stall_regex(text: str) -> bool:
    """A regular expression with polynomial backtracking (a C call that holds the GIL)."""
    return re.match(r"a*a*a*c", text) is not None


def stall_sort(values: list[float]) -> None:
    """Sorting a large list of floats (a C call that holds the GIL)."""
    values.sort()


def stall_gc_collect() -> int:
    """``gc.collect()`` with a large graph of reference cycles waiting."""
    try:
        return gc.collect()
    finally:
        gc.enable()


def stall_gc_allocation(count: int) -> int:
    """Allocations with the collector on: the first one triggers a collection of a large
    graph of reference cycles (new objects: lists and dicts come from free lists)."""
    gc.enable()
    made = []
    for _ in range(count):
        made.append(_Node())
    return len(made)


def stall_in_library(seconds: float) -> int:
    """The app calls a library function that is slow (pure Python, in site-packages)."""
    return int(_slowlib().crunch(seconds))


# --- helpers that make the stalls happen -----------------------------------------------


class _SlowHandler(http.server.BaseHTTPRequestHandler):
    """``GET /?s=0.2`` answers after 0.2 s."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        seconds = float(self.path.split("s=", 1)[1]) if "s=" in self.path else 0.0
        time.sleep(seconds)
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


class Fixtures:
    """Long-lived helpers: a slow HTTP server (127.0.0.1), an HTTP client, SQLite files."""

    def __init__(self) -> None:
        import httpx

        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowHandler)
        self.http.daemon_threads = True
        self._http_thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self._http_thread.start()
        self.client = httpx.Client(timeout=10)
        self.tmp = tempfile.TemporaryDirectory(prefix="loopwatch-bench-")
        self.db_path = str(Path(self.tmp.name) / "locked.db")
        with sqlite3.connect(self.db_path) as db:
            db.execute("CREATE TABLE t (x INTEGER)")
            db.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(100)])
        self.memory_db = sqlite3.connect(":memory:", check_same_thread=False)
        self.waiting_db = sqlite3.connect(self.db_path, timeout=30, check_same_thread=False)

    @property
    def http_url(self) -> str:
        host, port = self.http.server_address[:2]
        return f"http://{host!s}:{port}/"

    def close(self) -> None:
        self.client.close()
        self.http.shutdown()
        self.http.server_close()
        self.memory_db.close()
        self.waiting_db.close()
        self.tmp.cleanup()


def _after(go: threading.Event, seconds: float, action: Callable[[], None]) -> threading.Thread:
    """A helper thread that runs ``action`` ``seconds`` after ``go`` is set."""

    def helper() -> None:
        go.wait()
        time.sleep(seconds)
        action()

    thread = threading.Thread(target=helper, daemon=True)
    thread.start()
    return thread


Prepared = tuple[Callable[..., Any], tuple[Any, ...], Callable[[], None]]
"""(stall function, its arguments, ``go``: call just before the stall starts)."""


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class Pattern:
    """One kind of stall and what loopwatch should say about it."""

    name: str
    description: str
    expected_cause: str
    culprit: str
    """``module.qualname`` of the expected culprit."""
    offender: str | None
    """Expected innermost frame, when it is Python code other than the culprit."""
    prepare: Callable[[Fixtures, float, Calibration], Prepared]
    sampled: bool = True
    """Whether the watchdog can take a sample during the stall (no GIL held throughout);
    if not, the culprit comes from the sample after it (``gil``) or from the code that
    triggered the collection (``gc``)."""


class Calibration:
    """Sizes that make the work-sized patterns last a given time on this machine.

    Each is fitted as ``t = fixed + scale * size**exponent`` from two timed sizes (the fixed
    part matters for ``gc.collect()``, which also walks every live object).
    """

    def __init__(self) -> None:
        self.fits: dict[str, tuple[float, float, float]] = {}

    def size(self, name: str, seconds: float) -> int:
        fixed, scale, exponent = self.fits[name]
        return max(1, int((max(seconds - fixed, seconds / 4) / scale) ** (1 / exponent)))

    def fit(self, name: str, run: Callable[[int], float], size: int, exponent: float = 1.0) -> None:
        """Time ``run`` at ``size`` and ``4 * size`` (best of two each) and fit the curve."""
        small, big = size, 4 * size
        t_small = min(run(small), run(small))
        t_big = min(run(big), run(big))
        scale = max((t_big - t_small) / (big**exponent - small**exponent), 1e-12)
        fixed = max(0.0, t_small - scale * small**exponent)
        self.fits[name] = (fixed, scale, exponent)


def _timed(function: Callable[..., object], *args: Any) -> float:
    """Seconds ``function(*args)`` takes (the arguments are built before the clock starts)."""
    started = time.perf_counter()
    function(*args)
    return time.perf_counter() - started


def _document(items: int) -> list[dict[str, object]]:
    return [{"id": i, "name": f"item-{i}", "tags": ["a", "b"], "price": i * 0.5}
            for i in range(items)]  # fmt: skip


def _floats(count: int) -> list[float]:
    rng = random.Random(count)
    return [rng.random() for _ in range(count)]


class _Node:
    __slots__ = ("other", "payload")


def _garbage_cycles(pairs: int) -> None:
    """Leave ``pairs`` two-object cycles for the collector (gc disabled meanwhile)."""
    gc.disable()
    for _ in range(pairs):
        a, b = _Node(), _Node()
        a.other, b.other = b, a
        a.payload = b.payload = None


def calibrate() -> Calibration:
    """Fit the sizes of the patterns whose length is set by the amount of work."""
    cal = Calibration()
    cal.fit("json_c", lambda n: _timed(stall_json_c, _document(n)), 30_000)
    cal.fit("json_python", lambda n: _timed(stall_json_python, _document(n)), 5_000)
    cal.fit("sort", lambda n: _timed(stall_sort, _floats(n)), 150_000, 1.08)
    cal.fit("regex", lambda n: _timed(stall_regex, "a" * n), 300, 3.0)

    def gc_run(n: int) -> float:
        _garbage_cycles(n)
        return _timed(stall_gc_collect)

    cal.fit("gc", gc_run, 50_000)

    def gc_allocation_run(n: int) -> float:
        _garbage_cycles(n)
        try:
            return _timed(stall_gc_allocation, 10)
        finally:
            gc.enable()

    cal.fit("gc_allocation", gc_allocation_run, 50_000)
    db = sqlite3.connect(":memory:")
    cal.fit("sqlite_cpu", lambda n: _timed(stall_sqlite_cpu, db, n), 100_000)
    db.close()
    return cal


def _prep_socket(fx: Fixtures, seconds: float, cal: Calibration) -> Prepared:
    reader, writer = socket.socketpair()
    go = threading.Event()

    def answer() -> None:
        writer.send(b"x")
        writer.close()

    _after(go, seconds, answer)

    def stall(sock: socket.socket = reader) -> bytes:
        try:
            return stall_socket_recv(sock)
        finally:
            sock.close()

    return stall, (), go.set


def _prep_sqlite_locked(fx: Fixtures, seconds: float, cal: Calibration) -> Prepared:
    holder = sqlite3.connect(fx.db_path, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    go = threading.Event()

    def release() -> None:
        holder.commit()
        holder.close()

    _after(go, seconds, release)
    return stall_sqlite_locked, (fx.waiting_db,), go.set


def _prep_gc(fx: Fixtures, seconds: float, cal: Calibration) -> Prepared:
    _garbage_cycles(cal.size("gc", seconds))
    return stall_gc_collect, (), _nothing


def _prep_gc_allocation(fx: Fixtures, seconds: float, cal: Calibration) -> Prepared:
    _garbage_cycles(cal.size("gc_allocation", seconds))
    return stall_gc_allocation, (10,), _nothing


PATTERNS: tuple[Pattern, ...] = (
    Pattern("cpu_loop", "pure-Python CPU loop", "cpu", "bench.stalls.stall_cpu_loop", None,
            lambda fx, s, cal: (stall_cpu_loop, (s,), _nothing)),
    Pattern("sleep", "time.sleep()", "blocking", "bench.stalls.stall_sleep", None,
            lambda fx, s, cal: (stall_sleep, (s,), _nothing)),
    Pattern("socket", "blocking socket recv()", "blocking",
            "bench.stalls.stall_socket_recv", None, _prep_socket),
    Pattern("http", "sync HTTP call (httpx) to a slow local server", "blocking",
            "bench.stalls.stall_http_call", None,
            lambda fx, s, cal: (stall_http_call, (fx.client, f"{fx.http_url}?s={s}"), _nothing)),
    Pattern("sqlite_locked", "sqlite3 query waiting for a locked database", "blocking",
            "bench.stalls.stall_sqlite_locked", None, _prep_sqlite_locked),
    Pattern("sqlite_cpu", "CPU-bound sqlite3 query (GIL released)", "cpu",
            "bench.stalls.stall_sqlite_cpu", None,
            lambda fx, s, cal: (stall_sqlite_cpu, (fx.memory_db, cal.size("sqlite_cpu", s)),
                                _nothing)),
    Pattern("json_python", "json.dumps(indent=1), pure-Python encoder", "cpu",
            "bench.stalls.stall_json_python", None,
            lambda fx, s, cal: (stall_json_python, (_document(cal.size("json_python", s)),),
                                _nothing)),
    Pattern("json_c", "large json.dumps(), C encoder", "gil",
            "bench.stalls.stall_json_c", None,
            lambda fx, s, cal: (stall_json_c, (_document(cal.size("json_c", s)),), _nothing),
            sampled=False),
    Pattern("regex", "regex with catastrophic backtracking", "gil",
            "bench.stalls.stall_regex", None,
            lambda fx, s, cal: (stall_regex, ("a" * cal.size("regex", s),), _nothing),
            sampled=False),
    Pattern("sort", "list.sort() of a large list", "gil", "bench.stalls.stall_sort", None,
            lambda fx, s, cal: (stall_sort, (_floats(cal.size("sort", s)),), _nothing),
            sampled=False),
    Pattern("gc", "gc.collect() with a large cycle graph", "gc",
            "bench.stalls.stall_gc_collect", None, _prep_gc, sampled=False),
    Pattern("gc_allocation", "allocation that triggers a collection of a large cycle graph",
            "gc", "bench.stalls.stall_gc_allocation", None, _prep_gc_allocation, sampled=False),
    Pattern("library", "slow pure-Python library call (site-packages)", "cpu",
            "bench.stalls.stall_in_library", "slowlib.crunch",
            lambda fx, s, cal: (stall_in_library, (s,), _nothing)),
)  # fmt: skip
