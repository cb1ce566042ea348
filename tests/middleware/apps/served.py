"""A FastAPI app watched by loopwatch, served by ``uvicorn`` in a subprocess.

``metrics_port`` comes from ``MIDDLEWARE_TEST_METRICS_PORT`` when set (the option), else
loopwatch reads ``LOOPWATCH_METRICS_PORT`` itself. ``MIDDLEWARE_TEST_SDK_METER_PROVIDER=1``
installs a global SDK ``MeterProvider`` without readers first, as ``opentelemetry-instrument``
does with ``OTEL_METRICS_EXPORTER=none``. ``MIDDLEWARE_TEST_TRACED=1`` traces the requests
(an SDK ``TracerProvider`` without exporter, and FastAPI's instrumentor).
"""

from __future__ import annotations

import os
import time

from fastapi import FastAPI, WebSocket
from opentelemetry import metrics
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider

from loopwatch import instrument_app

if os.environ.get("MIDDLEWARE_TEST_SDK_METER_PROVIDER") == "1":
    metrics.set_meter_provider(MeterProvider())

app = FastAPI()
if os.environ.get("MIDDLEWARE_TEST_TRACED") == "1":
    FastAPIInstrumentor.instrument_app(app, tracer_provider=TracerProvider())
instrument_app(
    app,
    threshold=0.1,
    metrics_port=os.environ.get("MIDDLEWARE_TEST_METRICS_PORT") or None,
)


def blocking_call(seconds: float) -> None:
    """Blocks the event loop."""
    time.sleep(seconds)


@app.get("/health")
async def health() -> dict[str, int]:
    return {"pid": os.getpid()}


@app.get("/block")
async def block(seconds: float = 0.4) -> dict[str, float]:
    blocking_call(seconds)
    return {"blocked": seconds}


@app.websocket("/echo")
async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text(await websocket.receive_text())
    await websocket.close()
