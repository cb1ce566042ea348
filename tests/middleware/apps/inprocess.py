"""Apps served in the test process: FastAPI, plain Starlette and raw ASGI, with or without
loopwatch and OpenTelemetry, and the blocking function the tests expect to see named."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
from fastapi import BackgroundTasks, FastAPI, WebSocket
from fastapi.responses import PlainTextResponse, StreamingResponse
from opentelemetry import trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from loopwatch import LoopWatchMiddleware, instrument_app

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

THRESHOLD_S = 0.1
"""The loopwatch threshold of every app here; the tests stall the loop well above it."""

Instrument = Literal["none", "before", "after", "asgi-inside"]


def blocking_work(seconds: float) -> None:
    """Blocks the event loop with a synchronous sleep: the culprit the tests look for."""
    time.sleep(seconds)


def stall_outside_request(seconds: float) -> None:
    """Blocks the loop from a plain callback, outside any request's task."""
    time.sleep(seconds)


def culprit_name() -> str:
    """How loopwatch names :func:`blocking_work` (``module.qualname``)."""
    return f"{blocking_work.__module__}.{blocking_work.__qualname__}"


@dataclass
class Probe:
    """What the app saw, written on the loop thread and read by the test thread."""

    sleepers: int = 0
    background: list[str] = field(default_factory=list)
    lifespan: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def sleeper_started(self) -> None:
        with self.lock:
            self.sleepers += 1


@dataclass
class Providers:
    """The SDK providers an app reports to (``None``: the global API providers)."""

    tracer_provider: TracerProvider | None = None
    meter_provider: MeterProvider | None = None


def loopwatch_options(providers: Providers) -> dict[str, Any]:
    return {
        "threshold": THRESHOLD_S,
        "tracer_provider": providers.tracer_provider,
        "meter_provider": providers.meter_provider,
    }


def build_fastapi(
    providers: Providers,
    probe: Probe,
    *,
    loopwatch: bool = True,
    instrument: Instrument = "none",
) -> FastAPI:
    """A FastAPI app; ``instrument`` calls ``FastAPIInstrumentor.instrument_app`` before or
    after ``add_middleware(LoopWatchMiddleware)`` (either way its middleware ends up
    outermost), or adds the generic OpenTelemetry ASGI middleware inside loopwatch's."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        probe.lifespan.append("startup")
        yield
        probe.lifespan.append("shutdown")

    app = FastAPI(lifespan=lifespan)
    tracer = trace.get_tracer("tests.middleware", tracer_provider=providers.tracer_provider)
    if instrument == "before":
        _instrument_fastapi(app, providers)
    if instrument == "asgi-inside":  # added first: inner
        app.add_middleware(OpenTelemetryMiddleware, tracer_provider=providers.tracer_provider)
    if loopwatch:
        app.add_middleware(LoopWatchMiddleware, **loopwatch_options(providers))
    if instrument == "after":
        _instrument_fastapi(app, providers)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/block/{item_id}")
    async def block(item_id: int, seconds: float = 0.4) -> dict[str, Any]:
        blocking_work(seconds)
        return {"item_id": item_id, "blocked": seconds}

    @app.get("/block-then-wait")
    async def block_then_wait(seconds: float = 0.4, wait: float = 0.3) -> dict[str, float]:
        blocking_work(seconds)
        await asyncio.sleep(wait)  # still in flight when the watchdog reports the stall
        return {"blocked": seconds}

    gate = asyncio.Event()

    @app.get("/wait-for-stall")
    async def wait_for_stall() -> dict[str, bool]:
        probe.sleeper_started()
        await gate.wait()  # released by /stall-releasing-waiters just before it blocks
        return {"released": True}

    @app.get("/stall-releasing-waiters")
    async def stall_releasing_waiters(seconds: float = 0.4) -> dict[str, float]:
        gate.set()  # the waiters' wait ends now, but they resume only after the stall
        blocking_work(seconds)
        return {"blocked": seconds}

    @app.get("/after-outside-stall")
    async def after_outside_stall(outside: float = 0.15, seconds: float = 0.6) -> str:
        # A callback blocks first, then this handler, in the same loop iteration: no
        # heartbeat runs between them, so the watchdog sees one stall.
        asyncio.get_running_loop().call_soon(stall_outside_request, outside)
        await asyncio.sleep(0)
        blocking_work(seconds)
        return "ok"

    @app.get("/block-in-span")
    async def block_in_span(seconds: float = 0.4) -> dict[str, float]:
        with tracer.start_as_current_span("handler-work"):
            blocking_work(seconds)
        return {"blocked": seconds}

    @app.get("/sleep")
    async def sleep(seconds: float = 0.8) -> dict[str, float]:
        probe.sleeper_started()
        await anyio.sleep(seconds)  # served on trio too
        return {"slept": seconds}

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for number in range(5):
                yield f"chunk {number}\n".encode()
                await asyncio.sleep(0.01)

        return StreamingResponse(chunks(), media_type="text/plain", headers={"x-app": "yes"})

    @app.get("/background")
    async def background(tasks: BackgroundTasks, tag: str) -> PlainTextResponse:
        async def record() -> None:
            await asyncio.sleep(0.05)
            probe.background.append(tag)

        tasks.add_task(record)
        return PlainTextResponse(f"scheduled {tag}")

    @app.get("/error")
    async def error() -> None:
        raise RuntimeError("handler failed on purpose")

    @app.websocket("/ws")
    async def echo(websocket: WebSocket) -> None:
        await websocket.accept(headers=[(b"x-ws-app", b"yes")])
        while True:
            text = await websocket.receive_text()
            if text == "bye":
                await websocket.close(code=4001, reason="done")
                return
            await websocket.send_text(f"echo {text}")
            await websocket.send_bytes(text.encode()[::-1])

    return app


def _instrument_fastapi(app: FastAPI, providers: Providers) -> None:
    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=providers.tracer_provider,
        meter_provider=providers.meter_provider,
    )


def build_starlette(providers: Providers, *, traced: bool) -> Starlette:
    """A plain Starlette app watched through :func:`loopwatch.instrument_app`; ``traced``
    adds the generic OpenTelemetry ASGI middleware outside it."""

    async def block(request: Request) -> Response:
        blocking_work(float(request.query_params.get("seconds", "0.4")))
        return JSONResponse({"item_id": request.path_params["item_id"]})

    async def sleep(request: Request) -> Response:
        await asyncio.sleep(float(request.query_params.get("seconds", "0.8")))
        return JSONResponse({"slept": True})

    app = Starlette(routes=[Route("/block/{item_id}", block), Route("/sleep", sleep)])
    instrument_app(app, **loopwatch_options(providers))
    instrument_app(app, **loopwatch_options(providers))  # a second call adds nothing
    if traced:
        app.add_middleware(OpenTelemetryMiddleware, tracer_provider=providers.tracer_provider)
    return app


async def raw_app(scope: Scope, receive: Receive, send: Send) -> None:
    """A bare ASGI app: ``/block`` blocks the loop, anything else answers ``ok``."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    if scope["path"] == "/block":
        blocking_work(0.4)
    body = b"ok"
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def build_raw(providers: Providers, *, traced: bool) -> ASGIApp:
    """:func:`raw_app` in ``LoopWatchMiddleware``, optionally inside the OTel ASGI middleware."""
    watched: ASGIApp = LoopWatchMiddleware(raw_app, **loopwatch_options(providers))
    if traced:
        return OpenTelemetryMiddleware(watched, tracer_provider=providers.tracer_provider)
    return watched
