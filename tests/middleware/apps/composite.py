"""Several ASGI apps behind one server: requests go by path prefix, lifespan goes to all."""

from __future__ import annotations

import asyncio
from typing import Any

from .inprocess import ASGIApp, Message, Receive, Scope, Send


class Composite:
    """Dispatches ``/<prefix>/...`` to ``apps[prefix]`` (prefix stripped) and runs each
    app's lifespan protocol in a task of its own."""

    def __init__(self, apps: dict[str, ASGIApp]) -> None:
        self.apps = apps

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        prefix, _, rest = scope["path"].lstrip("/").partition("/")
        app = self.apps.get(prefix)
        if app is None:
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await app({**scope, "path": f"/{rest}", "raw_path": f"/{rest}".encode()}, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        children: list[tuple[asyncio.Queue[Message], asyncio.Queue[Message], Any]] = []
        for app in self.apps.values():
            inbox: asyncio.Queue[Message] = asyncio.Queue()
            outbox: asyncio.Queue[Message] = asyncio.Queue()
            task = asyncio.ensure_future(app(dict(scope), inbox.get, outbox.put))
            children.append((inbox, outbox, task))
        for phase in ("startup", "shutdown"):
            message = await receive()
            assert message["type"] == f"lifespan.{phase}"
            for inbox, outbox, _ in children:
                await inbox.put(message)
                reply = await outbox.get()
                assert reply["type"] == f"lifespan.{phase}.complete", reply
            await send({"type": f"lifespan.{phase}.complete"})
        await asyncio.gather(*(task for _, _, task in children))
