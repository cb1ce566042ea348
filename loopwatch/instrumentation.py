"""Zero-code use: ``opentelemetry-instrument uvicorn app:app`` enables loopwatch.

Registered as an ``opentelemetry_instrumentor`` entry point. It adds
:class:`~loopwatch.LoopWatchMiddleware` to every Starlette and FastAPI app built after
it runs (the same hook FastAPI's own instrumentor uses), configured by the
``LOOPWATCH_*`` environment variables; ``LOOPWATCH_ENABLED=0`` turns it off.
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

    _original: Any = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("starlette >= 0.13",)

    def _instrument(self, **options: Any) -> None:
        if not resolve_config().enabled:
            return
        from starlette.applications import Starlette

        original = Starlette.build_middleware_stack
        LoopWatchInstrumentor._original = original

        def build_middleware_stack(app: Starlette) -> Any:
            return LoopWatchMiddleware(original(app), **options)

        Starlette.build_middleware_stack = build_middleware_stack  # type: ignore[method-assign,assignment]

    def _uninstrument(self, **options: Any) -> None:
        from starlette.applications import Starlette

        if LoopWatchInstrumentor._original is not None:
            Starlette.build_middleware_stack = LoopWatchInstrumentor._original  # type: ignore[method-assign]
            LoopWatchInstrumentor._original = None
