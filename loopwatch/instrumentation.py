"""Zero-code use: ``opentelemetry-instrument uvicorn app:app`` enables loopwatch.

Registered as an ``opentelemetry_instrumentor`` entry point. It adds
:class:`~loopwatch.LoopWatchMiddleware` to every Starlette and FastAPI app built after
it runs, configured by the ``LOOPWATCH_*`` environment variables; ``LOOPWATCH_ENABLED=0``
turns it off. It wraps ``build_middleware_stack`` of Starlette and of FastAPI (which
overrides it), placing the middleware just inside the outermost ``ServerErrorMiddleware``:
the stack keeps its type, so FastAPI's own instrumentor still wraps it, and loopwatch runs
inside the request's server span. Apps that already add the middleware are left alone.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)

from .config import resolve_config
from .middleware import LoopWatchMiddleware


class LoopWatchInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Adds loopwatch to Starlette/FastAPI apps; options as :class:`loopwatch.LoopWatch`."""

    _originals: dict[type, Any] = {}  # noqa: RUF012 - class-level on purpose: one patch

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("starlette >= 0.13",)

    def _instrument(self, **options: Any) -> None:
        if not resolve_config().enabled:
            return
        from starlette.middleware.errors import ServerErrorMiddleware

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
