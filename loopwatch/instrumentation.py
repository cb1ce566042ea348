"""Zero-code use: ``opentelemetry-instrument uvicorn app:app`` enables loopwatch.

Registered as an ``opentelemetry_instrumentor`` entry point. It adds
:class:`~loopwatch.LoopWatchMiddleware` to every Starlette, FastAPI, Litestar, Quart and
Django ASGI app built after it runs (those installed), configured by the ``LOOPWATCH_*``
environment variables; ``LOOPWATCH_ENABLED=0`` turns it off.

- Starlette and FastAPI: it wraps ``build_middleware_stack`` of Starlette and of FastAPI
  (which overrides it), placing the middleware just inside the outermost
  ``ServerErrorMiddleware``: the stack keeps its type, so FastAPI's own instrumentor still
  wraps it, and loopwatch runs inside the request's server span. Apps that already add
  the middleware are left alone.
- Quart: the app's ``asgi_app`` (the attribute Quart documents for ASGI middleware) is
  wrapped when the app is built; lifespan included.
- Litestar: the app's ``asgi_handler`` is wrapped when the app is built; Litestar keeps
  lifespan to itself, so the watcher starts with the first request and is released by an
  ``on_shutdown`` hook.
- Django: ``ASGIHandler.__call__`` serves through a middleware of each handler's own;
  Django has no lifespan, so the watcher starts with the first request.

aiohttp is not covered (no ASGI app; see :func:`loopwatch.aiohttp.watch_app`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection
from types import ModuleType
from typing import Any

import wrapt
from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)

from .config import resolve_config
from .middleware import LoopWatchMiddleware

Patch = tuple[type, str, Any]
"""A class, the name of the method replaced on it, and the original method."""


class LoopWatchInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Adds loopwatch to Starlette, FastAPI, Litestar, Quart and Django ASGI apps; options
    as :class:`loopwatch.LoopWatch`."""

    _originals: dict[type, Any] = {}  # noqa: RUF012 - class-level on purpose: one patch
    _patches: list[Patch] = []  # noqa: RUF012 - likewise
    _options: dict[str, Any] | None = None
    """The options while instrumented (``None`` after ``uninstrument``)."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return ()  # each framework is patched if installed; none is required

    def _instrument(self, **options: Any) -> None:
        if not resolve_config().enabled:
            return
        LoopWatchInstrumentor._options = options
        for module, name, method, wrap in _FRAMEWORKS:  # now if imported, else on import
            hook = functools.partial(_patch_framework, name, method, wrap)
            wrapt.register_post_import_hook(hook, module)
        try:
            from starlette.middleware.errors import ServerErrorMiddleware
        except ImportError:
            return

        for cls in _app_classes():
            if cls in LoopWatchInstrumentor._originals:
                continue
            original = cls.__dict__["build_middleware_stack"]
            LoopWatchInstrumentor._originals[cls] = original

            def build_middleware_stack(app: Any, _original: Any = original) -> Any:
                stack = _original(app)
                if _has_loopwatch(app):
                    return stack
                if isinstance(stack, ServerErrorMiddleware):
                    stack.app = LoopWatchMiddleware(stack.app, **options)
                    return stack
                return LoopWatchMiddleware(stack, **options)

            setattr(cls, "build_middleware_stack", build_middleware_stack)  # noqa: B010

    def _uninstrument(self, **options: Any) -> None:
        for cls, original in LoopWatchInstrumentor._originals.items():
            setattr(cls, "build_middleware_stack", original)  # noqa: B010
        LoopWatchInstrumentor._originals.clear()
        LoopWatchInstrumentor._options = None
        for cls, name, original in LoopWatchInstrumentor._patches:
            setattr(cls, name, original)
        LoopWatchInstrumentor._patches = []


def _patch_framework(name: str, method: str, wrap: Wrap, module: ModuleType) -> None:
    """Patch ``method`` of class ``name`` of a framework's ``module``, just imported (or
    imported before the instrumentor ran), if instrumented and not patched yet. Called by
    wrapt's post-import hook: frameworks the app does not use are never imported."""
    options = LoopWatchInstrumentor._options
    cls = getattr(module, name, None)
    if options is None or not isinstance(cls, type):
        return
    if any(patched is cls for patched, _, _ in LoopWatchInstrumentor._patches):
        return
    original = cls.__dict__[method]
    setattr(cls, method, functools.wraps(original)(wrap(original, options)))
    LoopWatchInstrumentor._patches.append((cls, method, original))


def _wrap_quart(init: Callable[..., None], options: dict[str, Any]) -> Callable[..., None]:
    def __init__(app: Any, *args: Any, **kwargs: Any) -> None:
        init(app, *args, **kwargs)
        app.asgi_app = LoopWatchMiddleware(app.asgi_app, **options)

    return __init__


def _wrap_litestar(init: Callable[..., None], options: dict[str, Any]) -> Callable[..., None]:
    def __init__(app: Any, *args: Any, **kwargs: Any) -> None:
        init(app, *args, **kwargs)
        watched = LoopWatchMiddleware(app.asgi_handler, **options)
        app.asgi_handler = watched
        app.on_shutdown.append(watched._release)

    return __init__


def _serve_django(call: Callable[..., Any], options: dict[str, Any]) -> Callable[..., Any]:
    async def __call__(handler: Any, scope: Any, receive: Any, send: Any) -> None:
        watched = handler.__dict__.get(_DJANGO_MIDDLEWARE)
        if watched is None:
            watched = LoopWatchMiddleware(functools.partial(call, handler), **options)
            handler.__dict__[_DJANGO_MIDDLEWARE] = watched
        await watched(scope, receive, send)

    return __call__


_DJANGO_MIDDLEWARE = "_loopwatch_middleware"

Wrap = Callable[[Callable[..., Any], dict[str, Any]], Callable[..., Any]]

_FRAMEWORKS: tuple[tuple[str, str, str, Wrap], ...] = (
    ("quart.app", "Quart", "__init__", _wrap_quart),
    ("litestar.app", "Litestar", "__init__", _wrap_litestar),
    ("django.core.handlers.asgi", "ASGIHandler", "__call__", _serve_django),
)
"""The module, class and method patched for each framework, and how."""


def _app_classes() -> list[type]:
    """Starlette, and FastAPI's application class when installed (it overrides the method)."""
    from starlette.applications import Starlette

    classes: list[type] = [Starlette]
    try:
        from fastapi.applications import FastAPI
    except ImportError:
        return classes
    if "build_middleware_stack" in FastAPI.__dict__:
        classes.append(FastAPI)
    return classes


def _has_loopwatch(app: Any) -> bool:
    """Whether the app adds the middleware itself (``instrument_app``, ``add_middleware``)."""
    if getattr(app, "_is_instrumented_by_loopwatch", False):
        return True
    return any(
        getattr(entry, "cls", None) is LoopWatchMiddleware
        for entry in getattr(app, "user_middleware", ())
    )
