"""loopwatch: find the code that blocks your asyncio event loop (or trio run).

A heartbeat on the loop and a watchdog thread measure loop lag; while the loop is stalled
the watchdog samples its stack, and when the stall ends it emits a back-dated
``loop.blocked`` span inside the request's trace, plus loop metrics.
"""

from ._version import __version__
from .config import DEFAULT_SKIP_MODULES, ENVIRONMENT_VARIABLES
from .events import BlockEvent, FrameInfo
from .metrics_server import start_metrics_server
from .middleware import LoopWatchMiddleware, instrument_app
from .registry import watch
from .suppress import suppress
from .watcher import LoopWatch

__all__ = [
    "DEFAULT_SKIP_MODULES",
    "ENVIRONMENT_VARIABLES",
    "BlockEvent",
    "FrameInfo",
    "LoopWatch",
    "LoopWatchMiddleware",
    "__version__",
    "instrument_app",
    "start_metrics_server",
    "suppress",
    "watch",
]
