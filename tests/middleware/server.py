"""Real uvicorn servers for the middleware tests: in a thread of this process, or a subprocess.

Everything listens on 127.0.0.1. Both context managers stop their server on exit, also
when the test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
HTTP_TIMEOUT_S = 10.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_port_pair() -> int:
    """A port ``p`` on 127.0.0.1 such that ``p`` and ``p + 1`` are both free right now."""
    for _ in range(200):
        port = free_port()
        if port >= 65535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as first:
            try:
                first.bind(("127.0.0.1", port))
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as second:
                    second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free ports on 127.0.0.1")


def wait_until(
    condition: Callable[[], bool],
    timeout: float,
    what: str,
    interval: float = 0.02,
    detail: Callable[[], str] | None = None,
) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` (and ``detail()``, e.g. a
    server's output) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            more = f"\n{detail()}" if detail is not None else ""
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{more}")
        time.sleep(interval)


class _Server(uvicorn.Server):
    """A uvicorn server that remembers the loop it runs on."""

    loop: asyncio.AbstractEventLoop | None = None
    exit_code: object = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().serve(sockets)


@dataclass
class InProcessServer:
    """A uvicorn server running in a thread of the test process, on its own loop."""

    url: str
    server: _Server
    thread: threading.Thread

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self.server.loop is not None
        return self.server.loop

    def stop(self) -> None:
        """Shut the server down (lifespan shutdown included) and wait for its thread."""
        self.server.should_exit = True
        self.thread.join(STOP_TIMEOUT_S)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(STOP_TIMEOUT_S)
        assert not self.thread.is_alive(), "uvicorn server thread did not stop"


@contextlib.contextmanager
def serve_in_thread(
    app: Any,
    *,
    loop: str,
    lifespan: Literal["auto", "on", "off"] = "on",
    http: Literal["auto", "h11", "httptools"] = "auto",
) -> Iterator[InProcessServer]:
    """Serve ``app`` with uvicorn (``--loop loop``, ``--lifespan lifespan``, ``--http
    http``) on a free port.

    The socket is made with ``IPPROTO_TCP``: asyncio turns on ``TCP_NODELAY`` only for
    connections whose socket says so (``proto == IPPROTO_TCP``), and without it every
    response written in two parts (headers, body) waits for the client's delayed ACK:
    45 ms per request instead of 2."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        loop=loop,
        lifespan=lifespan,
        http=http,
        log_config=None,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    server = _Server(config)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as error:  # reported to the test thread
            errors.append(error)

    thread = threading.Thread(target=run, name=f"uvicorn-{loop}-{port}", daemon=True)
    thread.start()
    running = InProcessServer(f"http://127.0.0.1:{port}", server, thread)
    try:
        wait_until(
            lambda: server.started or not thread.is_alive(), START_TIMEOUT_S, "uvicorn start-up"
        )
        if not server.started:
            raise RuntimeError(f"uvicorn did not start: {errors!r}")
        yield running
    finally:
        running.stop()
        sock.close()


@dataclass
class Subprocess:
    """A server process started by :func:`run_process`; its output goes to a log file."""

    proc: subprocess.Popen[bytes]
    log_path: Path

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def run_process(
    argv: Sequence[str], *, env: Mapping[str, str], log_path: Path
) -> Iterator[Subprocess]:
    """Run ``argv`` in its own process group from the repository root; always stop it."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            list(argv),
            cwd=REPO_ROOT,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    running = Subprocess(proc, log_path)
    try:
        yield running
    finally:
        _stop_group(proc)


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(STOP_TIMEOUT_S)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(STOP_TIMEOUT_S)


def child_environ(**overrides: str) -> dict[str, str]:
    """This environment without ``OTEL_*`` and ``LOOPWATCH_*`` settings, plus ``overrides``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OTEL_", "LOOPWATCH_"))
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides)
    return env


def python_module(*args: str) -> list[str]:
    """``python -m ...`` with this interpreter."""
    return [sys.executable, "-m", *args]


def venv_script(name: str) -> str:
    """A console script installed next to this interpreter (``opentelemetry-instrument``)."""
    return str(Path(sys.executable).with_name(name))


def wait_http_ok(url: str, process: Subprocess, timeout: float = START_TIMEOUT_S) -> None:
    """Wait until ``url`` answers 200; fail with the server's output if it exits first."""
    deadline = time.monotonic() + timeout
    while True:
        if process.proc.poll() is not None:
            raise AssertionError(f"server exited early:\n{process.output()}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} not answering after {timeout:g} s:\n{process.output()}")
        time.sleep(0.05)


Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(url: str, timeout: float = 5.0) -> Samples:
    """Prometheus samples by name: ``name -> [(labels, value), ...]``."""
    response = httpx.get(url, timeout=timeout)
    response.raise_for_status()
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def sample_total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(
        value
        for sample_labels, value in samples.get(name, [])
        if all(sample_labels.get(key) == wanted for key, wanted in labels.items())
    )


def run_until_exit(app: Any, *, loop: str, timeout: float = START_TIMEOUT_S) -> _Server:
    """Run a server that is expected to exit by itself (e.g. its start-up fails)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # see above
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        app, loop=loop, lifespan="on", log_config=None, log_level="critical", access_log=False
    )
    server = _Server(config)

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except SystemExit as exit_:  # uvicorn exits with 3 when start-up fails
            server.exit_code = exit_.code

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        thread.join(timeout)
        if thread.is_alive():
            server.force_exit = server.should_exit = True
            thread.join(STOP_TIMEOUT_S)
            raise AssertionError("the server did not exit by itself")
    finally:
        sock.close()
    return server
