"""Per-key token buckets that keep their limit for any number of keys, in bounded memory."""

from __future__ import annotations

import math
from time import monotonic
from typing import TypeAlias

Bucket: TypeAlias = tuple[float, float, int]
"""Tokens, when they were counted (``time.monotonic()``), events refused since the last
allowed one."""


class RateLimiter:
    """Allows ``burst`` events per key at once, refilled at ``per_minute`` per minute.

    Counts what it refused per key, so the next allowed report can say how many were
    dropped.

    Memory is bounded (at most ``max_keys`` buckets, plus one) and the limit still holds
    for every key, however many there are. Forgetting a key's bucket would give the key
    a full bucket again (least-recently-used eviction did: 3 rounds of 1,100 culprits at
    burst 1 gave 1,239 reports instead of at most 1,100), so a bucket is only forgotten
    once it has refilled completely, when it is no different from a new one. A key
    without a bucket of its own, while every slot holds a bucket that has not refilled,
    draws from one shared *overflow* bucket, and its dropped reports are counted there.
    A key that gets a bucket of its own later starts at the overflow bucket's level:
    the overflow bucket paid for whatever the key took from it, so the key can never get
    more than ``burst`` at once and ``per_minute`` after, as if it had had its own bucket
    all along. (With ``per_minute=0`` no bucket ever refills: past ``max_keys`` keys, the
    rest share ``burst`` reports in all.)
    """

    def __init__(self, burst: int, per_minute: float, max_keys: int = 1024) -> None:
        self._burst = float(burst)
        self._per_second = per_minute / 60.0
        self._max_keys = max_keys
        self._buckets: dict[str, Bucket] = {}
        self._overflow: Bucket = (self._burst, monotonic(), 0)
        self._sweep_at = math.inf  # no bucket has refilled before then

    def allow(self, key: str) -> tuple[bool, int]:
        """Whether an event for ``key`` may be reported now, and how many were dropped."""
        now = monotonic()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys and not self._forget_refilled(now):
                allowed, dropped, self._overflow = self._take(self._overflow, now)
                return allowed, dropped
            bucket = (self._refilled(self._overflow, now), now, 0)
        allowed, dropped, bucket = self._take(bucket, now)
        self._buckets[key] = bucket
        self._sweep_at = min(self._sweep_at, self._full_at(bucket))
        return allowed, dropped

    def _take(self, bucket: Bucket, now: float) -> tuple[bool, int, Bucket]:
        """Spend a token of ``bucket`` if it has one: whether it had, the dropped count to
        report, and the bucket after."""
        refused = bucket[2]
        tokens = self._refilled(bucket, now)
        if tokens >= 1.0:
            return True, refused, (tokens - 1.0, now, 0)
        return False, refused + 1, (tokens, now, refused + 1)

    def _refilled(self, bucket: Bucket, now: float) -> float:
        tokens, updated, _ = bucket
        return min(self._burst, tokens + (now - updated) * self._per_second)

    def _full_at(self, bucket: Bucket) -> float:
        """When ``bucket`` will have refilled completely."""
        tokens, updated, _ = bucket
        missing = self._burst - tokens
        if missing <= 0:
            return updated
        return updated + missing / self._per_second if self._per_second > 0 else math.inf

    def _forget_refilled(self, now: float) -> bool:
        """Forget the buckets that have refilled completely (their keys lose nothing but
        a count of dropped reports, if any); whether any was. It looks only once a bucket
        may have refilled, not for every new key."""
        if now < self._sweep_at:
            return False
        full = [key for key, bucket in self._buckets.items() if self._full_at(bucket) <= now]
        for key in full:
            del self._buckets[key]
        self._sweep_at = min(map(self._full_at, self._buckets.values()), default=math.inf)
        return bool(full)
