"""loopwatch: find the code that blocks your asyncio event loop (or trio run).

A heartbeat on the loop and a watchdog thread measure loop lag; while the loop is stalled
the watchdog samples its stack, and when the stall ends it emits a back-dated
``loop.blocked`` span inside the request's trace, plus loop metrics.
"""

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .config import DEFAULT_SKIP_MODULES, ENVIRONMENT_VARIABLES
from .events import BlockEvent, BusyEvent, FrameInfo
from .metrics_server import start_metrics_server
from .middleware import LoopWatchMiddleware, instrument_app
from .registry import watch
from .suppress import suppress
from .watcher import LoopWatch

if TYPE_CHECKING:
    from .trace_sampling import keep_stalls
else:

    def __getattr__(name: str) -> Any:
        """``keep_stalls`` is imported on first use: it needs the OpenTelemetry SDK, which
        ``import loopwatch`` must not (the core dependency is the API only)."""
        if name == "keep_stalls":
            try:
                from .trace_sampling import keep_stalls
            except ModuleNotFoundError as error:
                raise ImportError(
                    "loopwatch.keep_stalls wraps an OpenTelemetry SDK sampler and needs "
                    "opentelemetry-sdk: pip install 'loopwatch[sdk]'"
                ) from error
            return keep_stalls
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_SKIP_MODULES",
    "ENVIRONMENT_VARIABLES",
    "BlockEvent",
    "BusyEvent",
    "FrameInfo",
    "LoopWatch",
    "LoopWatchMiddleware",
    "__version__",
    "instrument_app",
    "keep_stalls",
    "start_metrics_server",
    "suppress",
    "watch",
]
