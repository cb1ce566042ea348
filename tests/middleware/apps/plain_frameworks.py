"""Litestar, Quart and Django ASGI apps without loopwatch code, for
``opentelemetry-instrument uvicorn tests.middleware.apps.plain_frameworks:<framework>``."""

from .frameworks import build_django, build_litestar, build_quart

litestar = build_litestar()
quart = build_quart()
django = build_django()
