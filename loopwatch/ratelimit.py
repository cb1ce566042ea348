"""Per-key token buckets, bounded in the number of keys they remember."""

from __future__ import annotations

from collections import OrderedDict
from time import monotonic


class RateLimiter:
    """Allows ``burst`` events per key at once, refilled at ``per_minute`` per minute.

    Counts what it refused per key, so the next allowed report can say how many were
    dropped. Remembers at most ``max_keys`` keys (least recently used go first).
    """

    def __init__(self, burst: int, per_minute: float, max_keys: int = 1024) -> None:
        self._burst = float(burst)
        self._per_second = per_minute / 60.0
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float, int]] = OrderedDict()

    def allow(self, key: str) -> tuple[bool, int]:
        """Whether an event for ``key`` may be reported now, and how many were dropped."""
        now = monotonic()
        tokens, updated, dropped = self._buckets.pop(key, (self._burst, now, 0))
        tokens = min(self._burst, tokens + (now - updated) * self._per_second)
        if tokens >= 1.0:
            self._remember(key, (tokens - 1.0, now, 0))
            return True, dropped
        self._remember(key, (tokens, now, dropped + 1))
        return False, dropped + 1

    def _remember(self, key: str, state: tuple[float, float, int]) -> None:
        self._buckets[key] = state
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
