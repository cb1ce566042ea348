"""``watch_app(app)``: loopwatch for an ``aiohttp.web.Application``.

aiohttp is not ASGI, so no ASGI scope names its requests. A small middleware holds one
for each request, as a local variable named ``scope`` of its coroutine frame (method and
the resource's canonical name as ``path_template``), where the watchdog finds ASGI
scopes: in the stalled stack for the culprit, in the waiting tasks for the victims. The
loop's watcher starts when the app starts up and is released at its cleanup.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from . import registry
from .config import resolve_config

logger = logging.getLogger("loopwatch")

_OBJECT_OPTIONS = frozenset({"tracer_provider", "meter_provider", "on_block", "on_busy"})


def watch_app(app: web.Application, **options: Any) -> web.Application:
    """Watch the loop that serves ``app`` from its start-up to its cleanup, naming the
    route of the request a stall holds; options are those of :class:`loopwatch.LoopWatch`.
    Call it before the app starts (aiohttp freezes its middlewares then)."""
    if not resolve_config(**{k: v for k, v in options.items() if k not in _OBJECT_OPTIONS}).enabled:
        return app
    if _request_scope in app.middlewares:  # watched already
        return app
    app.middlewares.insert(0, _request_scope)
    watching: list[asyncio.AbstractEventLoop] = []

    async def start(app: web.Application) -> None:
        loop = asyncio.get_running_loop()
        try:
            registry.acquire(loop, **options)
        except Exception:
            logger.exception("loopwatch could not start; the app runs unwatched")
            return
        watching.append(loop)

    async def stop(app: web.Application) -> None:
        if watching:
            registry.release(watching.pop())

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    return app


@web.middleware
async def _request_scope(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Serve ``request`` with an ASGI-like ``scope`` naming it held in this frame."""
    scope = {"type": "http", "method": request.method, "path_template": _template(request)}  # noqa: F841 - read from the frame by the watchdog
    return await handler(request)


def _template(request: web.Request) -> str | None:
    """The canonical name of the resource that matched (``/items/{id}``), if any."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else None
