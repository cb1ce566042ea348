"""A FastAPI app with no loopwatch code at all, for ``opentelemetry-instrument uvicorn``."""

from __future__ import annotations

import time

from fastapi import FastAPI

app = FastAPI()


def blocking_call(seconds: float) -> None:
    """Blocks the event loop: the function loopwatch should name."""
    time.sleep(seconds)


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/block/{item_id}")
async def block(item_id: int, seconds: float = 0.4) -> dict[str, float]:
    blocking_call(seconds)
    return {"blocked": seconds}
