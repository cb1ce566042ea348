"""Serve an ASGI app with uvicorn in a background thread, on a free local port."""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType

import uvicorn
from starlette.types import ASGIApp

STARTUP_TIMEOUT_SECONDS = 20.0
SHUTDOWN_TIMEOUT_SECONDS = 20.0


class BackgroundServer:
    """``with BackgroundServer(app) as server: httpx.get(server.url + "/health")``.

    The app runs on its own (stdlib asyncio) event loop in a daemon thread, with its
    lifespan; leaving the block waits for in-flight requests and background tasks.
    """

    def __init__(self, app: ASGIApp) -> None:
        # proto=IPPROTO_TCP, or asyncio skips TCP_NODELAY on the accepted connections
        # (and keep-alive requests pay Nagle + delayed ACK: 40 ms each).
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        host, port = self._socket.getsockname()
        self.url = f"http://{host}:{port}"
        config = uvicorn.Config(
            app, loop="asyncio", lifespan="on", log_level="warning", access_log=False
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, args=([self._socket],), name="uvicorn", daemon=True
        )

    def start(self) -> None:
        """Start serving; raise :class:`RuntimeError` if the app does not start."""
        self._thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self._socket.close()
                raise RuntimeError(f"the app did not start on {self.url}")
            time.sleep(0.01)

    def stop(self) -> None:
        """Shut down gracefully and wait for the server thread."""
        self._server.should_exit = True
        self._thread.join(SHUTDOWN_TIMEOUT_SECONDS)
        self._socket.close()

    def __enter__(self) -> BackgroundServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
