"""Convert ``time.monotonic()`` readings to the epoch nanoseconds spans need."""

from __future__ import annotations

import time


def epoch_ns(monotonic_seconds: float) -> int:
    """Epoch nanoseconds of a past (or present) ``time.monotonic()`` reading."""
    return time.time_ns() - int((time.monotonic() - monotonic_seconds) * 1e9)


def epoch_seconds(monotonic_seconds: float) -> float:
    """Epoch seconds of a ``time.monotonic()`` reading."""
    return time.time() - (time.monotonic() - monotonic_seconds)
