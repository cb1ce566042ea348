"""``LoopWatchMiddleware``: a pure ASGI middleware that watches the serving loop.

It starts the loop's watcher at lifespan start-up (or at the first request when the
server runs without lifespan) and releases it at shutdown; several apps on one loop
share one watcher. A traced HTTP request gets a :class:`~.inflight.Request` in its ASGI
scope, so that a stall puts the time it held the request up on the request's span before
the span ends; a stall finds every request by its scope (see :mod:`.inflight`).
Websocket scopes pass through untouched; nothing is added to responses.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from opentelemetry import metrics, trace

from . import registry
from .config import resolve_config
from .inflight import REQUEST_KEY, InflightRequests, OpenStall, Request
from .metrics_server import requested_server, start_metrics_server
from .reporting.reporter import BlockHook, BusyHook
from .task_context import OTEL_CONTEXT_VARIABLE, OTEL_SPAN_KEY
from .trio_loop import TrioLoop
from .watcher import LoopWatch, WatchedLoop, find_running_loop

logger = logging.getLogger("loopwatch")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]
ASGIApp = Callable[[Any, Receive, Send], Awaitable[None]]


class LoopWatchMiddleware:
    """Watch the event loop that serves ``app``; options are those of :class:`LoopWatch`.

    ``metrics_port`` (or ``LOOPWATCH_METRICS_PORT``; a range like ``9464-9471`` gives each
    worker process its own port) serves the Prometheus exposition from a thread on
    ``metrics_addr`` (``LOOPWATCH_METRICS_ADDR``, default ``127.0.0.1``).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        threshold: float | None = None,
        interval: float | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        on_block: BlockHook | None = None,
        enabled: bool | None = None,
        dump_after: float | None = None,
        skip_modules: Sequence[str] | None = None,
        max_frames: int | None = None,
        max_stack_chars: int | None = None,
        report_burst: int | None = None,
        report_per_minute: float | None = None,
        measure_utilization: bool | None = None,
        busy_threshold: float | None = None,
        busy_window: float | None = None,
        on_busy: BusyHook | None = None,
        metrics_port: int | str | None = None,
        metrics_addr: str | None = None,
    ) -> None:
        self.app = app
        self._options: dict[str, Any] = {
            "threshold": threshold,
            "interval": interval,
            "tracer_provider": tracer_provider,
            "meter_provider": meter_provider,
            "on_block": on_block,
            "enabled": enabled,
            "dump_after": dump_after,
            "skip_modules": skip_modules,
            "max_frames": max_frames,
            "max_stack_chars": max_stack_chars,
            "report_burst": report_burst,
            "report_per_minute": report_per_minute,
            "measure_utilization": measure_utilization,
            "busy_threshold": busy_threshold,
            "busy_window": busy_window,
            "on_busy": on_busy,
        }
        self._enabled = resolve_config(**self._options).enabled
        self._metrics_server = requested_server(metrics_port, metrics_addr)
        self._watchers: dict[WatchedLoop, LoopWatch | None] = {}
        # The watchers that lifespan start-ups started, by the thread of their loop, from
        # start-up complete to shutdown: a loop runs in one thread, and the thread's id is
        # cheaper to get than the loop. While any is there, the server sends lifespan
        # events, and untraced requests need not check that their loop's watcher runs (a
        # second server without lifespan on another loop then starts its watcher with its
        # first traced request).
        self._lifespan_watchers: dict[int, LoopWatch | None] = {}
        # Servers tell an ASGI 3 app from an ASGI 2 one by ``app.__call__`` being a
        # coroutine function (uvicorn and asgiref with asyncio's test, hypercorn with
        # inspect's, which no marker passes before Python 3.12). ``__call__`` is not one
        # (see below), so the instance's own attribute is; calling the instance still
        # runs the class's ``__call__``.
        self.__dict__["__call__"] = self._awaited_call

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not a coroutine function: an untraced HTTP request on a server whose lifespan
        # started the watcher gets the app's own awaitable, with no coroutine of
        # loopwatch's around it (one more coroutine layer cost FastAPI ~2,300
        # instructions, 0.7 % of an in-process hello request); a stall finds the request
        # by its scope. Everything else is served by a coroutine of loopwatch's.
        if scope["type"] != "http":
            return self._serve_other(scope, receive, send)
        if self._lifespan_watchers and _attached_otel_context(None) is None:
            return self.app(scope, receive, send)
        return self._serve_http(scope, receive, send)

    async def _awaited_call(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``app.__call__`` as ASGI servers see it: see :meth:`__init__`."""
        await type(self).__call__(self, scope, receive, send)

    async def _serve_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Runs for requests in an OpenTelemetry context, and for all on a server without
        # lifespan, with its code and data out of the CPU caches under load: each step
        # costs about half a microsecond (bench/inserver.py times them). A request without
        # a recording span, on a server whose lifespan started the watcher, gets nothing
        # more (a stall finds it by its scope).
        span = watcher = None
        try:
            attached = _attached_otel_context(None)
            span = None if attached is None else _recording_span(attached)
            if span is not None or not self._lifespan_watchers:
                # asyncio.get_running_loop() makes a getpid() system call on Python < 3.12
                watcher = self._lifespan_watchers.get(threading.get_ident(), _NOT_STARTED)
                if watcher is _NOT_STARTED:
                    loop = _running_loop()
                    watcher = self._watchers.get(loop, _NOT_STARTED) if loop is not None else None
                    if loop is not None and watcher is _NOT_STARTED:
                        watcher = await self._start_without_lifespan(loop)
        except Exception:
            _failed_once("serving a request")
        # A request already in the scope is an outer LoopWatchMiddleware's (a mounted app).
        if span is None or watcher is None or REQUEST_KEY in scope:
            await self.app(scope, receive, send)
            return
        inflight = watcher.inflight
        request = Request(span)
        scope[REQUEST_KEY] = request
        try:
            await self.app(scope, receive, _settle_before_completion(request, inflight, send))
        finally:
            scope.pop(REQUEST_KEY, None)
            open_stall = inflight.open_stall
            if open_stall is not None and request.ended is None:
                _finish(request, open_stall)

    async def _serve_other(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Lifespan (start and release the watcher) and websocket scopes (untouched)."""
        if scope["type"] == "lifespan":
            try:
                await self.app(scope, self._lifespan_receive(receive), self._lifespan_send(send))
            finally:
                self._release()  # also when start-up failed: no shutdown will follow
        else:
            await self.app(scope, receive, send)

    async def _start_without_lifespan(self, loop: WatchedLoop) -> LoopWatch | None:
        """The server runs without lifespan: the watcher starts with the first request on
        its loop. Yields once so that the heartbeat's first tick runs: a stall in this
        very request is then seen."""
        watcher = self._watcher(loop)
        if watcher is not None:
            await (_trio_checkpoint() if isinstance(loop, TrioLoop) else asyncio.sleep(0))
        return watcher

    def _lifespan_receive(self, receive: Receive) -> Receive:
        async def wrapped() -> Message:
            message: Message = await receive()
            if message.get("type") == "lifespan.startup":
                self._guarded(self._start_for_lifespan)
            return message

        return wrapped

    def _lifespan_send(self, send: Send) -> Send:
        async def wrapped(message: Message) -> None:
            await send(message)
            if message.get("type") == "lifespan.startup.complete":
                self._guarded(self._started_by_lifespan)
            if message.get("type") in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                self._release()

        return wrapped

    def _start_for_lifespan(self) -> None:
        loop = _running_loop()
        if loop is not None:
            self._watcher(loop)

    def _started_by_lifespan(self) -> None:
        """Start-up is complete: requests on this thread need not look for their loop's
        watcher (``None`` where there is no loop to watch: they pass through)."""
        loop = _running_loop()
        watcher = self._watchers.get(loop) if loop is not None else None
        self._lifespan_watchers[threading.get_ident()] = watcher

    def _guarded(self, step: Callable[[], None]) -> None:
        """Run a lifespan step of loopwatch's own; an error in it is logged, never raised."""
        try:
            step()
        except Exception:
            _failed_once("at lifespan start-up")

    def _watcher(self, loop: WatchedLoop) -> LoopWatch | None:
        """``loop``'s watcher, acquired once per loop by this middleware. Watchers of
        loops closed since are released first: with a new loop per request (a test
        client), their state does not pile up."""
        try:
            return self._watchers[loop]
        except KeyError:
            pass
        self._release_closed_loops()
        options = dict(self._options)
        watcher: LoopWatch | None = None
        if not self._enabled:
            self._watchers[loop] = None
            return None
        try:
            if self._metrics_server is not None and options["meter_provider"] is None:
                options["meter_provider"] = self._serve_metrics()
            elif self._metrics_server is not None:
                self._serve_metrics()
            watcher = registry.acquire(loop, **options)
        except Exception:
            logger.exception("loopwatch could not start; the app runs unwatched")
        self._watchers[loop] = watcher if watcher is not None and watcher.running else None
        return self._watchers[loop]

    def _release_closed_loops(self) -> None:
        """Release the watchers of loops closed since, without waiting for their
        threads (which end by themselves: nothing runs on a closed loop)."""
        for loop in [loop for loop in self._watchers if loop.is_closed()]:
            if self._watchers.pop(loop) is not None:
                registry.release(loop, timeout=0.0)

    def _serve_metrics(self) -> metrics.MeterProvider | None:
        """Start the off-loop metrics server; give loopwatch a Prometheus reader if needed."""
        assert self._metrics_server is not None
        ports, addr = self._metrics_server
        provider = self._options.get("meter_provider") or _prometheus_provider_if_missing()
        try:
            start_metrics_server(ports, addr)
        except OSError as error:
            logger.error("loopwatch metrics server not started: %s", error)
        return provider

    def _release(self) -> None:
        self._lifespan_watchers.pop(threading.get_ident(), None)
        loop = _running_loop()
        if loop is not None and self._watchers.pop(loop, None) is not None:
            try:
                registry.release(loop)
            except Exception:
                _failed_once("at lifespan shutdown")


def _running_loop() -> WatchedLoop | None:
    """The running asyncio loop or trio run; ``None`` under another library (curio),
    whose apps then pass through unwatched (said once per process)."""
    loop = find_running_loop()
    if loop is None:
        _unwatched_once()
    return loop


def _trio_checkpoint() -> Awaitable[None]:
    """Trio's yield to its scheduler (trio is running, hence imported)."""
    checkpoint: Callable[[], Awaitable[None]] = sys.modules["trio"].lowlevel.checkpoint
    return checkpoint()


_said: set[str] = set()


def _unwatched_once() -> None:
    if "unwatched" not in _said:
        _said.add("unwatched")
        logger.warning(
            "loopwatch: no asyncio event loop or trio run is running (another async library "
            "serves the app): requests pass through unwatched"
        )


def _failed_once(where: str) -> None:
    """Log loopwatch's own error once per process; the request goes on unwatched."""
    if "failed" not in _said:
        _said.add("failed")
        logger.exception("loopwatch failed %s; the request is served unwatched", where)


def _finish(request: Request, open_stall: OpenStall) -> None:
    try:
        request.finish(open_stall)
    except Exception:
        _failed_once("settling a request")


def _maybe_attached(default: None) -> object:
    """Stands in for OpenTelemetry's context variable where it was not found: a context
    may be attached."""
    return _maybe_attached


_attached_otel_context: Callable[[None], object] = (
    OTEL_CONTEXT_VARIABLE.get if OTEL_CONTEXT_VARIABLE is not None else _maybe_attached
)
"""The OpenTelemetry context attached where it is called, ``None`` if none is (and so no
span): one C call."""


def _recording_span(attached: Any) -> trace.Span | None:
    """The request's recording span, if it has one, read straight from the ``attached``
    OpenTelemetry context (see :data:`.task_context.OTEL_SPAN_KEY`)."""
    if attached is _maybe_attached or OTEL_SPAN_KEY is None:  # kept elsewhere: ask the API
        span: trace.Span | None = trace.get_current_span()
    else:
        span = attached.get(OTEL_SPAN_KEY)
    return span if span is not None and span.is_recording() else None


def _settle_before_completion(request: Request, inflight: InflightRequests, send: Send) -> Send:
    """Wrap ``send`` so that, while a stall is open, the request is settled just before
    its response completes.

    Tracing middlewares end the server span when the response is complete, before the app
    returns: settling then puts the request's share of the open stall on its span. With no
    stall open the wrapper only checks that (it sees every message of every traced
    request) and the request ends when the app returns.
    """

    def send_and_settle(message: Message) -> Awaitable[None]:
        # Not a coroutine function: it hands back send's awaitable (a coroutine of its
        # own per message cost ~1,500 instructions per request).
        open_stall = inflight.open_stall
        if open_stall is not None and request.ended is None and _may_complete(message):
            _finish(request, open_stall)
        return send(message)

    return send_and_settle


def _may_complete(message: Message) -> bool:
    """Whether ``message`` may be the last one of an HTTP response: a last body part
    (trailers may follow; the request then counts as done a moment early) or the last
    trailers."""
    kind = message.get("type")
    if kind == "http.response.body":
        return not message.get("more_body", False)
    return kind == "http.response.trailers" and not message.get("more_trailers", False)


_NOT_STARTED: Any = object()
"""Marks a loop this middleware has not acquired a watcher for yet."""


_fallback_provider: metrics.MeterProvider | None = None


def _prometheus_provider_if_missing() -> metrics.MeterProvider | None:
    """A Prometheus-backed provider for loopwatch, unless the global one exports to Prometheus.

    An SDK provider without a Prometheus reader (``opentelemetry-instrument`` with
    ``OTEL_METRICS_EXPORTER=none`` or ``otlp``) would leave the metrics port without
    loopwatch's metrics, so it gets the fallback too.
    """
    global _fallback_provider
    global_provider = metrics.get_meter_provider()
    if type(global_provider).__module__.startswith("opentelemetry.sdk") and _has_prometheus_reader(
        global_provider
    ):
        return None
    if _fallback_provider is not None:
        return _fallback_provider
    try:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.sdk.metrics import MeterProvider
    except ImportError:
        raise ImportError(
            "serving metrics without a configured MeterProvider needs the Prometheus "
            "exporter: pip install 'loopwatch[prometheus]'"
        ) from None
    _fallback_provider = MeterProvider(metric_readers=[PrometheusMetricReader()])
    return _fallback_provider


def _has_prometheus_reader(provider: metrics.MeterProvider) -> bool:
    """Whether an SDK provider has a Prometheus reader (assumed so if it cannot be told)."""
    readers = getattr(provider, "_metric_readers", None)
    if readers is None:
        readers = getattr(getattr(provider, "_sdk_config", None), "metric_readers", None)
    if readers is None:
        return True
    return any(type(reader).__name__ == "PrometheusMetricReader" for reader in readers)


def instrument_app(app: Any, **options: Any) -> Any:
    """Add :class:`LoopWatchMiddleware` to a Starlette or FastAPI app (once)."""
    if getattr(app, "_is_instrumented_by_loopwatch", False):
        return app
    app.add_middleware(LoopWatchMiddleware, **options)
    app._is_instrumented_by_loopwatch = True
    return app
