"""The middleware changes nothing an app or a client can see: each scenario runs against
the same FastAPI app with and without ``LoopWatchMiddleware`` and must give equal results,
both on the wire and as the ASGI messages and exceptions seen above the middleware."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from asgiref.compatibility import is_double_callable
from fastapi import FastAPI
from hypercorn.utils import is_asgi
from starlette._utils import is_async_callable
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from loopwatch import LoopWatchMiddleware, registry

from .apps.inprocess import Probe, Providers, build_fastapi
from .apps.recorder import Recorder
from .server import HTTP_TIMEOUT_S, serve_in_thread, wait_until

VOLATILE_HEADERS = frozenset({"date", "sec-websocket-accept"})


@dataclass
class Observed:
    """What one scenario produced, comparable between runs."""

    client: Any
    sent: list[tuple[str, dict[str, Any]]]
    errors: list[str]
    lifespan: list[str]


def observe(loop_name: str, watched: bool, scenario: Callable[[str, Probe], Any]) -> Observed:
    """Run ``scenario(base_url, probe)`` against a fresh server; check loopwatch ran iff
    ``watched``."""
    probe = Probe()
    recorder = Recorder(build_fastapi(Providers(), probe, loopwatch=watched))
    with serve_in_thread(recorder, loop=loop_name) as server:
        result = scenario(server.url, probe)
        watcher = registry._watchers.get(server.loop)  # whether the middleware really ran
        assert (watcher is not None and watcher.running) is watched
    return Observed(result, recorder.sent, recorder.errors, probe.lifespan)


def same_with_and_without(loop_name: str, scenario: Callable[[str, Probe], Any]) -> Observed:
    without = observe(loop_name, False, scenario)
    with_middleware = observe(loop_name, True, scenario)
    assert with_middleware == without
    return with_middleware


def headers(response: httpx.Response) -> list[tuple[str, str]]:
    return [(k, v) for k, v in response.headers.multi_items() if k not in VOLATILE_HEADERS]


def test_plain_responses_and_headers(loop_name: str) -> None:
    """Same status, headers (nothing added) and bodies, and the lifespan ran as usual."""

    def scenario(url: str, probe: Probe) -> list[Any]:
        with httpx.Client(base_url=url, timeout=HTTP_TIMEOUT_S) as client:
            return [
                (r.status_code, headers(r), r.content)
                for r in (client.get("/health"), client.get("/block/4?seconds=0.01"))
            ]

    observed = same_with_and_without(loop_name, scenario)
    for _, response_headers, _ in observed.client:
        assert not [name for name, _ in response_headers if "loopwatch" in name]
    assert observed.lifespan == ["startup", "shutdown"]


def test_streaming_response(loop_name: str) -> None:
    """A streamed body arrives byte for byte, as the same ASGI messages."""

    def scenario(url: str, probe: Probe) -> tuple[int, list[tuple[str, str]], bytes]:
        with httpx.stream("GET", f"{url}/stream", timeout=HTTP_TIMEOUT_S) as response:
            body = b"".join(response.iter_raw())
            return response.status_code, headers(response), body

    observed = same_with_and_without(loop_name, scenario)
    status, response_headers, body = observed.client
    assert status == 200
    assert ("transfer-encoding", "chunked") in response_headers
    assert body == b"".join(f"chunk {n}\n".encode() for n in range(5))
    bodies = [m for kind, m in observed.sent if m["type"] == "http.response.body"]
    assert len(bodies) >= 5


def test_websocket(loop_name: str) -> None:
    """A websocket session (accept headers, text and bytes, close code) is unchanged."""

    def scenario(url: str, probe: Probe) -> list[Any]:
        transcript: list[Any] = []
        with connect(url.replace("http://", "ws://") + "/ws", open_timeout=10) as ws:
            assert ws.response is not None
            transcript.append(
                sorted(
                    (k.lower(), v)
                    for k, v in ws.response.headers.raw_items()
                    if k.lower() not in VOLATILE_HEADERS
                )
            )
            for text in ("hello", "world"):
                ws.send(text)
                transcript.append(ws.recv(timeout=10))
                transcript.append(ws.recv(timeout=10))
            ws.send("bye")
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd is not None
            transcript.append((closed.value.rcvd.code, closed.value.rcvd.reason))
        return transcript

    observed = same_with_and_without(loop_name, scenario)
    assert observed.client[1:] == [
        "echo hello",
        b"olleh",
        "echo world",
        b"dlrow",
        (4001, "done"),
    ]
    assert ("x-ws-app", "yes") in observed.client[0]
    assert [m["type"] for kind, m in observed.sent if kind == "websocket"] == [
        "websocket.accept",
        *["websocket.send"] * 4,
        "websocket.close",
    ]


def test_background_task(loop_name: str) -> None:
    """A background task still runs after the response."""

    def scenario(url: str, probe: Probe) -> tuple[int, str, list[str]]:
        response = httpx.get(f"{url}/background?tag=bg", timeout=HTTP_TIMEOUT_S)
        wait_until(lambda: probe.background == ["bg"], 5.0, "the background task")
        return response.status_code, response.text, list(probe.background)

    observed = same_with_and_without(loop_name, scenario)
    assert observed.client == (200, "scheduled bg", ["bg"])


def test_exception_propagates_the_same_way(loop_name: str) -> None:
    """A failing handler: same 500 to the client, same exception up to the server."""

    def scenario(url: str, probe: Probe) -> tuple[int, list[tuple[str, str]], bytes, int]:
        failed = httpx.get(f"{url}/error", timeout=HTTP_TIMEOUT_S)
        after = httpx.get(f"{url}/health", timeout=HTTP_TIMEOUT_S)  # the server carries on
        return failed.status_code, headers(failed), failed.content, after.status_code

    observed = same_with_and_without(loop_name, scenario)
    assert observed.client[0] == 500
    assert observed.client[2] == b"Internal Server Error"
    assert observed.client[3] == 200
    assert observed.errors == ["RuntimeError: handler failed on purpose"]


def test_servers_take_it_for_an_asgi3_app() -> None:
    """``__call__`` is a plain function (untraced requests get the app's own awaitable):
    servers still tell the middleware for an ASGI 3 app, on every supported Python
    (uvicorn and asgiref test with asyncio, hypercorn with inspect)."""
    app = LoopWatchMiddleware(FastAPI())
    config = uvicorn.Config(app)
    config.load()
    assert config.interface == "asgi3"
    assert is_asgi(app)
    assert not is_double_callable(app)
    assert is_async_callable(app)
