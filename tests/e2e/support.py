"""Process management and API clients for the end-to-end tests.

Everything here talks to real servers over real HTTP on 127.0.0.1; nothing is mocked.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, ClassVar

import httpx

#: Generous start-up deadline: Jaeger, Prometheus and the example app (which imports
#: FastAPI and the OpenTelemetry SDK) all start on a 2-core CI machine at the same time.
STARTUP_TIMEOUT_S = 60.0
#: How long a server gets to exit after SIGTERM before its process group is killed.
STOP_TIMEOUT_S = 15.0
#: Timeout of a single HTTP request made by the tests.
HTTP_TIMEOUT_S = 10.0

#: Prefix of the environment variables that configure OpenTelemetry SDKs.
OTEL_ENV_PREFIX = "OTEL_"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def scrubbed_environ(**overrides: str) -> dict[str, str]:
    """Return os.environ without OTEL_* variables, updated with ``overrides``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(OTEL_ENV_PREFIX)}
    env.update(overrides)
    return env


class ServerError(RuntimeError):
    """A managed server failed to start or to answer."""

    def __init__(self, message: str, *, exited: bool) -> None:
        super().__init__(message)
        #: Whether the process had exited (e.g. its port was taken) rather than hung.
        self.exited = exited


class ManagedProcess:
    """A server subprocess in its own process group; its output goes to a log file.

    Every instance is kept in :attr:`started` (the conftest shows their logs when a
    test fails) and records when it was stopped (epoch seconds).
    """

    started: ClassVar[list[ManagedProcess]] = []

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        log_path: Path,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            self.argv,
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group, so stop() reaches children too
        )
        self.started_at = time.time()
        self.stopped_at: float | None = None
        ManagedProcess.started.append(self)

    @property
    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the process output."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"<cannot read {self.log_path}: {exc}>"
        return "\n".join(text.splitlines()[-lines:])

    def describe(self) -> str:
        """A short description with the exit status and the end of the log, for errors."""
        status = "running" if self.alive else f"exited with {self.proc.returncode}"
        return (
            f"{self.name} ({status}; log {self.log_path})\n"
            f"--- last lines of {self.name} output ---\n{self.log_tail()}\n---"
        )

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM the process group, SIGKILL it after ``timeout``; return the exit code."""
        try:
            if self.alive:
                self._signal_group(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._signal_group(signal.SIGKILL)
                    self.proc.wait(timeout)
            # Children that outlived the leader (none expected) go too.
            self._signal_group(signal.SIGKILL)
        finally:
            self._log.close()
            if self.stopped_at is None:
                self.stopped_at = time.time()
        return self.proc.returncode


def wait_until(
    ready: Callable[[], bool],
    *,
    what: str,
    process: ManagedProcess | None = None,
    timeout: float = STARTUP_TIMEOUT_S,
    interval: float = 0.1,
) -> None:
    """Poll ``ready`` until it returns True; raise ServerError on timeout or process exit.

    Exceptions raised by ``ready`` count as "not ready yet".
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            if ready():
                return
        except Exception as exc:  # not ready: connection refused, 503, ...
            last_error = exc
        if process is not None and not process.alive:
            raise ServerError(f"{what}: process exited early\n{process.describe()}", exited=True)
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            where = f"\n{process.describe()}" if process else ""
            raise ServerError(
                f"{what}: not ready after {timeout:.0f} s{detail}{where}", exited=False
            )
        time.sleep(interval)


def http_ok(url: str) -> bool:
    """Whether GET ``url`` answers 200."""
    return httpx.get(url, timeout=HTTP_TIMEOUT_S).status_code == 200


# --------------------------------------------------------------------------- Jaeger


@dataclass(frozen=True)
class Span:
    """One span as stored by Jaeger (OTLP JSON from the api_v3 HTTP gateway)."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str
    service: str
    start_ns: int
    end_ns: int
    attributes: Mapping[str, Any] = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        """Span duration in seconds."""
        return (self.end_ns - self.start_ns) / 1e9

    def overlaps(self, other: Span) -> bool:
        """Whether the two spans' time intervals intersect."""
        return self.start_ns < other.end_ns and other.start_ns < self.end_ns


def ancestors(span: Span, spans: Iterable[Span]) -> list[Span]:
    """``span``'s parent, grandparent, ... as far as they are in ``spans``."""
    by_id = {(s.trace_id, s.span_id): s for s in spans}
    chain: list[Span] = []
    current = span
    while current.parent_span_id:
        parent = by_id.get((current.trace_id, current.parent_span_id))
        if parent is None or parent in chain:
            break
        chain.append(parent)
        current = parent
    return chain


def _attribute_value(value: Mapping[str, Any]) -> Any:
    """Decode an OTLP JSON AnyValue into a Python value."""
    if "stringValue" in value:
        return value["stringValue"]
    if "intValue" in value:
        return int(value["intValue"])
    if "doubleValue" in value:
        return float(value["doubleValue"])
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "arrayValue" in value:
        return [_attribute_value(v) for v in value["arrayValue"].get("values", [])]
    return value


def _attributes(items: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    return {item["key"]: _attribute_value(item.get("value", {})) for item in items}


def parse_otlp_spans(payload: Mapping[str, Any]) -> list[Span]:
    """Flatten an api_v3 ``{"result": {"resourceSpans": [...]}}`` answer into spans."""
    spans: list[Span] = []
    for resource_spans in payload.get("result", {}).get("resourceSpans", []):
        resource = _attributes(resource_spans.get("resource", {}).get("attributes", []))
        service = str(resource.get("service.name", ""))
        for scope_spans in resource_spans.get("scopeSpans", []):
            for raw in scope_spans.get("spans", []):
                spans.append(
                    Span(
                        trace_id=raw["traceId"],
                        span_id=raw["spanId"],
                        parent_span_id=raw.get("parentSpanId", ""),
                        name=raw["name"],
                        kind=str(raw.get("kind", "")),
                        service=service,
                        start_ns=int(raw["startTimeUnixNano"]),
                        end_ns=int(raw["endTimeUnixNano"]),
                        attributes=_attributes(raw.get("attributes", [])),
                    )
                )
    return spans


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class JaegerServer:
    """A running Jaeger v2 (OTLP HTTP in, api_v3 HTTP query out)."""

    otlp_traces_url: str
    query_url: str
    process: ManagedProcess

    @property
    def otlp_metrics_url(self) -> str:
        """Its OTLP/HTTP metrics endpoint (the debug exporter prints what it receives)."""
        return self.otlp_traces_url.removesuffix("/v1/traces") + "/v1/metrics"

    def find_spans(self, service: str, since: datetime) -> list[Span]:
        """All spans of all traces of ``service`` that started after ``since``."""
        params = {
            "query.service_name": service,
            "query.start_time_min": _rfc3339(since - timedelta(seconds=5)),
            "query.start_time_max": _rfc3339(datetime.now(timezone.utc) + timedelta(minutes=1)),
            "query.num_traces": "1000",
            # Spans exactly as the app sent them: no clock-skew or other adjusters.
            "query.raw_traces": "true",
        }
        response = httpx.get(
            f"{self.query_url}/api/v3/traces", params=params, timeout=HTTP_TIMEOUT_S
        )
        if response.status_code == 404:  # the gateway's answer for "No traces found"
            return []
        response.raise_for_status()
        return parse_otlp_spans(response.json())

    def wait_for_spans(
        self,
        service: str,
        since: datetime,
        complete: Callable[[list[Span]], bool],
        *,
        what: str,
        timeout: float = 30.0,
    ) -> list[Span]:
        """Poll find_spans until ``complete(spans)`` holds; fail with a summary otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.find_spans(service, since)
            if complete(spans):
                return spans
            if time.monotonic() > deadline:
                names = sorted(f"{s.name}" for s in spans)
                raise AssertionError(
                    f"Jaeger: {what} for service {service!r} not there after {timeout:.0f} s; "
                    f"it has {len(spans)} spans: {names}\n{self.process.describe()}"
                )
            time.sleep(0.25)


# --------------------------------------------------------------------------- Prometheus


@dataclass
class PrometheusServer:
    """A running Prometheus scraping the targets it was started with."""

    url: str
    process: ManagedProcess

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Run an instant query; return ``data.result`` (a vector)."""
        response = httpx.get(
            f"{self.url}/api/v1/query", params={"query": expr}, timeout=HTTP_TIMEOUT_S
        )
        response.raise_for_status()
        body = response.json()
        if body.get("status") != "success":
            raise AssertionError(f"Prometheus query {expr!r} failed: {body}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def targets_health(self) -> dict[str, str]:
        """``job -> health`` of the active scrape targets ("up", "down", "unknown")."""
        response = httpx.get(f"{self.url}/api/v1/targets", timeout=HTTP_TIMEOUT_S)
        response.raise_for_status()
        active = response.json()["data"]["activeTargets"]
        return {t["labels"]["job"]: t["health"] for t in active}


# --------------------------------------------------------------------------- example app


@dataclass
class ExampleApp:
    """A running ``example.app:app`` under uvicorn."""

    mode: str
    base_url: str
    metrics_port: int
    process: ManagedProcess

    @property
    def metrics_url(self) -> str:
        """The off-loop metrics endpoint (LOOPWATCH_METRICS_PORT)."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def metrics_target(self) -> str:
        """``host:port`` of the off-loop metrics endpoint, for a Prometheus scrape config."""
        return f"127.0.0.1:{self.metrics_port}"

    def stop(self) -> int:
        """Stop the app gracefully (SIGTERM): uvicorn shuts down and the SDK flushes spans."""
        return self.process.stop()


#: ``example_app(mode, otlp_traces_url=...)``, the fixture of the same name.
ExampleAppFactory = Callable[..., ExampleApp]
#: ``prometheus({"job": ["127.0.0.1:port"]})``, the fixture of the same name.
PrometheusFactory = Callable[[Mapping[str, Sequence[str]]], PrometheusServer]


def send_article_requests(app: ExampleApp) -> None:
    """The article's traffic: 3 x ``GET /items/1``, then 3 x ``POST /process/abc``."""
    with httpx.Client(base_url=app.base_url, timeout=HTTP_TIMEOUT_S) as client:
        for _ in range(3):
            client.get("/items/1").raise_for_status()
        for _ in range(3):
            client.post("/process/abc").raise_for_status()
