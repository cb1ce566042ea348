"""Fixtures for the end-to-end tests: real Jaeger, Prometheus and example-app servers.

Binaries:
  * Jaeger v2: ``LOOPWATCH_JAEGER_BIN``, else ``jaeger`` on PATH, else ``.cache/bin/jaeger``
    (built by ``.ci/build-jaeger.sh``).
  * Prometheus: ``LOOPWATCH_PROMETHEUS_BIN``, else ``prometheus`` on PATH
    (Debian: ``apt-get install prometheus``).

A missing binary skips the tests that need it, unless ``LOOPWATCH_E2E_REQUIRED=1``
(as in CI), which turns the skip into a failure.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import NoReturn, TypeVar

import httpx
import pytest

from .support import (
    HTTP_TIMEOUT_S,
    ExampleApp,
    ExampleAppFactory,
    JaegerServer,
    ManagedProcess,
    PrometheusFactory,
    PrometheusServer,
    ServerError,
    free_port,
    http_ok,
    scrubbed_environ,
    wait_until,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
JAEGER_CONFIG = Path(__file__).with_name("jaeger-config.yaml")
E2E_REQUIRED = os.environ.get("LOOPWATCH_E2E_REQUIRED") == "1"

#: Attempts at starting a server whose free port was taken by someone else meanwhile.
START_ATTEMPTS = 3
#: Prometheus scrape interval; also its scrape timeout.
SCRAPE_INTERVAL = "1s"

T = TypeVar("T")


def _unavailable(reason: str) -> NoReturn:
    """Skip (or, with LOOPWATCH_E2E_REQUIRED=1, fail) because a binary is missing."""
    if E2E_REQUIRED:
        pytest.fail(f"{reason} (LOOPWATCH_E2E_REQUIRED=1, so this is an error)")
    pytest.skip(reason)


def _find_binary(env_var: str, name: str, extra: Sequence[Path], how_to_get: str) -> str:
    """Locate a server binary: ``$env_var``, then PATH, then ``extra`` candidates."""
    explicit = os.environ.get(env_var)
    if explicit:
        if os.access(explicit, os.X_OK):
            return explicit
        _unavailable(f"{env_var}={explicit} is not an executable file; {how_to_get}")
    found = shutil.which(name)
    if found:
        return found
    for candidate in extra:
        if os.access(candidate, os.X_OK):
            return str(candidate)
    _unavailable(f"'{name}' binary not found (set {env_var} or put it on PATH); {how_to_get}")


def _start_with_retries(start: Callable[[int], T]) -> T:
    """Call ``start(attempt)`` again while the server exits at start-up.

    The usual reason is a port race: another process took the "free" port meanwhile.
    """
    for attempt in range(1, START_ATTEMPTS):
        try:
            return start(attempt)
        except ServerError as exc:
            if not exc.exited:
                raise
    return start(START_ATTEMPTS)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """On failure, attach the output of the servers that ran during the failed phase."""
    report = yield
    if report.failed:
        for process in ManagedProcess.started:
            if process.stopped_at is None or process.stopped_at >= call.start:
                report.sections.append((f"{process.name} output", process.describe()))
    return report


@pytest.fixture(scope="session")
def jaeger_bin() -> str:
    """Path of the Jaeger v2 binary."""
    return _find_binary(
        "LOOPWATCH_JAEGER_BIN",
        "jaeger",
        [REPO_ROOT / ".cache" / "bin" / "jaeger"],
        "build it with `bash .ci/build-jaeger.sh` (needs Go; writes .cache/bin/jaeger)",
    )


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    """Path of the Prometheus binary."""
    return _find_binary(
        "LOOPWATCH_PROMETHEUS_BIN",
        "prometheus",
        [],
        "install it with `apt-get install prometheus` (Debian) or a release binary",
    )


def start_jaeger(
    jaeger_bin: str, config: Path, workdir: Path, name: str = "jaeger"
) -> JaegerServer:
    """Start Jaeger v2 with ``config``, listening on 127.0.0.1 only; wait until it serves.

    ``config`` reads its ports from ``LOOPWATCH_E2E_{OTLP_HTTP,QUERY_HTTP,QUERY_GRPC,
    HEALTH}_PORT``, which get free ports. It gets none of the test's OTEL_* variables:
    they are for the app under test. The caller stops ``server.process``.
    """

    def start(attempt: int) -> JaegerServer:
        otlp_port, query_port, grpc_port = free_port(), free_port(), free_port()
        env = scrubbed_environ(
            LOOPWATCH_E2E_OTLP_HTTP_PORT=str(otlp_port),
            LOOPWATCH_E2E_QUERY_HTTP_PORT=str(query_port),
            LOOPWATCH_E2E_QUERY_GRPC_PORT=str(grpc_port),
            LOOPWATCH_E2E_HEALTH_PORT=str(free_port()),
        )
        process = ManagedProcess(
            name,
            [jaeger_bin, "--config", f"file:{config}"],
            env=env,
            log_path=workdir / f"{name}-{attempt}.log",
            cwd=workdir,
        )
        server = JaegerServer(
            otlp_traces_url=f"http://127.0.0.1:{otlp_port}/v1/traces",
            query_url=f"http://127.0.0.1:{query_port}",
            process=process,
        )

        def ready() -> bool:
            services = httpx.get(f"{server.query_url}/api/v3/services", timeout=HTTP_TIMEOUT_S)
            # An empty OTLP/JSON export: answers 200 once the receiver is serving.
            export = httpx.post(
                server.otlp_traces_url,
                content=b"{}",
                headers={"Content-Type": "application/json"},
                timeout=HTTP_TIMEOUT_S,
            )
            return services.status_code == 200 and export.status_code == 200

        try:
            wait_until(ready, what=name, process=process)
        except BaseException:
            process.stop()
            raise
        return server

    return _start_with_retries(start)


@pytest.fixture(scope="session")
def jaeger(jaeger_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JaegerServer]:
    """A Jaeger v2 with in-memory storage and no sampling (tests/e2e/jaeger-config.yaml)."""
    server = start_jaeger(jaeger_bin, JAEGER_CONFIG, tmp_path_factory.mktemp("jaeger"))
    try:
        yield server
    finally:
        server.process.stop()


@pytest.fixture
def prometheus(prometheus_bin: str, tmp_path: Path) -> Iterator[PrometheusFactory]:
    """Factory: ``prometheus({"job": ["127.0.0.1:port", ...]})`` starts a Prometheus.

    Each call writes its own config (1 s scrape interval) and uses a fresh data dir;
    every server started is stopped at teardown.
    """
    started: list[ManagedProcess] = []

    def start_prometheus(targets: Mapping[str, Sequence[str]]) -> PrometheusServer:
        index = len(started)
        workdir = tmp_path / f"prometheus-{index}"
        workdir.mkdir()
        config = workdir / "prometheus.yml"
        jobs = "".join(
            f"  - job_name: {job!r}\n"
            f"    static_configs:\n"
            f"      - targets: [{', '.join(repr(t) for t in job_targets)}]\n"
            for job, job_targets in targets.items()
        )
        config.write_text(
            "global:\n"
            f"  scrape_interval: {SCRAPE_INTERVAL}\n"
            f"  scrape_timeout: {SCRAPE_INTERVAL}\n"
            f"scrape_configs:\n{jobs}"
        )

        def start(attempt: int) -> PrometheusServer:
            port = free_port()
            process = ManagedProcess(
                "prometheus",
                [
                    prometheus_bin,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={workdir / f'data-{attempt}'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                env=scrubbed_environ(),
                log_path=workdir / f"prometheus-{attempt}.log",
                cwd=workdir,
            )
            started.append(process)
            server = PrometheusServer(url=f"http://127.0.0.1:{port}", process=process)
            try:
                wait_until(
                    lambda: http_ok(f"{server.url}/-/ready"), what="Prometheus", process=process
                )
            except BaseException:
                process.stop()
                raise
            return server

        return _start_with_retries(start)

    try:
        yield start_prometheus
    finally:
        for process in started:
            process.stop()


@pytest.fixture(scope="module")
def example_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExampleAppFactory]:
    """Factory: ``example_app(mode, otlp_traces_url=...)`` starts the example app.

    Runs ``python -m uvicorn example.app:app --loop asyncio`` from the repository root
    with ``DEMO_MODE=mode``, traces exported to ``otlp_traces_url``, the off-loop
    metrics server on a free port and ``OTEL_SERVICE_NAME`` unset (the app names
    itself after its mode). Waits for ``/health``; every app is stopped at teardown.
    """
    started: list[ManagedProcess] = []
    workdir = tmp_path_factory.mktemp("example-app")

    def start_app(mode: str, *, otlp_traces_url: str) -> ExampleApp:
        def start(attempt: int) -> ExampleApp:
            port, metrics_port = free_port(), free_port()
            env = scrubbed_environ(
                DEMO_MODE=mode,
                OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=otlp_traces_url,
                # Export finished spans quickly (SDK default: every 5 s).
                OTEL_BSP_SCHEDULE_DELAY="200",
                LOOPWATCH_METRICS_PORT=str(metrics_port),
                PYTHONUNBUFFERED="1",
            )
            process = ManagedProcess(
                f"example app ({mode})",
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "example.app:app",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--loop",
                    "asyncio",
                ],
                env=env,
                log_path=workdir / f"app-{mode}-{len(started)}-{attempt}.log",
                cwd=REPO_ROOT,
            )
            started.append(process)
            app = ExampleApp(
                mode=mode,
                base_url=f"http://127.0.0.1:{port}",
                metrics_port=metrics_port,
                process=process,
            )
            try:
                wait_until(
                    lambda: http_ok(f"{app.base_url}/health"),
                    what=f"example app ({mode}) /health",
                    process=process,
                )
                wait_until(
                    lambda: http_ok(app.metrics_url),
                    what=f"example app ({mode}) metrics port",
                    process=process,
                )
            except BaseException:
                process.stop()
                raise
            return app

        return _start_with_retries(start)

    try:
        yield start_app
    finally:
        for process in started:
            process.stop()
