"""Litestar, Quart, Django ASGI and aiohttp apps whose view blocks the loop itself (a
synchronous sleep): the view is the culprit the tests expect to see named.

Django is configured here once per process, with this module as its URL configuration.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

import django
from aiohttp import web
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.urls import path
from litestar import Litestar, get
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from quart import Quart

from loopwatch import LoopWatchMiddleware
from loopwatch.aiohttp import watch_app

from .inprocess import ASGIApp, Providers, loopwatch_options

STALL_S = 0.3

Watch = Literal["middleware", "traced", "none"]
"""``middleware``: the app in ``LoopWatchMiddleware``; ``traced``: that, inside the generic
OpenTelemetry ASGI middleware (server spans); ``none``: the app alone (zero-code)."""


@get("/block/{item_id:int}")
async def litestar_view() -> str:
    time.sleep(STALL_S)
    return "blocked"


@get("/health")
async def litestar_health() -> str:
    return "ok"


def build_litestar() -> ASGIApp:
    app: ASGIApp = Litestar(route_handlers=[litestar_view, litestar_health])
    return app


async def quart_view(item_id: int) -> str:
    time.sleep(STALL_S)
    return f"blocked {item_id}"


def build_quart() -> ASGIApp:
    app = Quart(__name__)
    app.get("/block/<int:item_id>")(quart_view)
    app.get("/health")(lambda: "ok")
    return app


async def django_view(request: HttpRequest, item_id: int) -> HttpResponse:
    time.sleep(STALL_S)
    return HttpResponse(f"blocked {item_id}")


async def django_health(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


urlpatterns = [path("block/<int:item_id>", django_view), path("health", django_health)]


def build_django() -> ASGIApp:
    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY="loopwatch-tests",
            ALLOWED_HOSTS=["127.0.0.1"],
            ROOT_URLCONF=__name__,
            INSTALLED_APPS=[],
            MIDDLEWARE=[],
        )
        django.setup(set_prefix=False)
    from django.core.handlers.asgi import ASGIHandler

    return ASGIHandler()


BUILDERS: dict[str, tuple[Callable[[], ASGIApp], Callable[..., Any]]] = {
    "litestar": (build_litestar, litestar_view.fn),
    "quart": (build_quart, quart_view),
    "django": (build_django, django_view),
}
"""Each framework's app builder and its blocking view."""

LIFESPAN: dict[str, Literal["on", "off"]] = {"litestar": "on", "quart": "on", "django": "off"}
"""Django's ASGI handler does not speak lifespan."""


def view_name(view: Callable[..., Any]) -> str:
    """How loopwatch names a view (``module.qualname``)."""
    return f"{view.__module__}.{view.__qualname__}"


def build(framework: str, providers: Providers, watch: Watch) -> ASGIApp:
    app = BUILDERS[framework][0]()
    if watch == "none":
        return app
    watched: ASGIApp = LoopWatchMiddleware(app, **loopwatch_options(providers))
    if watch == "traced":
        return OpenTelemetryMiddleware(watched, tracer_provider=providers.tracer_provider)
    return watched


async def aiohttp_view(request: web.Request) -> web.Response:
    time.sleep(STALL_S)
    return web.Response(text=f"blocked {request.match_info['item_id']}")


def build_aiohttp(providers: Providers) -> web.Application:
    app = web.Application()
    app.router.add_get("/block/{item_id}", aiohttp_view)
    return watch_app(app, **loopwatch_options(providers))
