"""One dump of every thread's stack when a stall outlives ``dump_after``.

It uses :func:`faulthandler.dump_traceback_later`, whose timer thread writes without the
GIL, so the dump appears even if a C call holds the GIL forever. ``faulthandler`` has a
single such timer per process: one watcher at a time arms it, and arming it replaces a
timer set by someone else (e.g. pytest's ``faulthandler_timeout``).
"""

from __future__ import annotations

import faulthandler
import sys
import threading
from typing import TextIO

_owner: object | None = None
_lock = threading.Lock()


def arm(owner: object, seconds: float, stream: TextIO | None = None) -> bool:
    """Dump all stacks in ``seconds`` unless :func:`disarm` comes first."""
    global _owner
    target = stream if stream is not None else sys.stderr
    with _lock:
        if _owner is not None and _owner is not owner:
            return False
        try:
            faulthandler.dump_traceback_later(max(seconds, 0.001), repeat=False, file=target)
        except (ValueError, RuntimeError, OSError, AttributeError):
            return False  # no usable file descriptor (e.g. stderr replaced by a StringIO)
        _owner = owner
        return True


def disarm(owner: object) -> None:
    """Cancel the dump armed by ``owner``."""
    global _owner
    with _lock:
        if _owner is owner:
            faulthandler.cancel_dump_traceback_later()
            _owner = None
