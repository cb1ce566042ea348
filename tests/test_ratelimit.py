"""The per-culprit rate limit holds for any number of culprits, in bounded memory."""

from __future__ import annotations

import itertools
import random
import time

from loopwatch.ratelimit import RateLimiter


def test_a_burst_then_dropped_reports_are_counted() -> None:
    limiter = RateLimiter(burst=2, per_minute=0)
    assert [limiter.allow("f") for _ in range(4)] == [(True, 0), (True, 0), (False, 1), (False, 2)]
    assert limiter.allow("g") == (True, 0)


def test_the_limit_holds_past_the_keys_it_can_remember() -> None:
    """3 rounds of 1,100 culprits, burst 1, no refill: at most one report each (LRU
    eviction of the 1,024 remembered gave 1,239), and never more than 1,025 buckets."""
    limiter = RateLimiter(burst=1, per_minute=0)
    allowed: dict[str, int] = {}
    for _round, number in itertools.product(range(3), range(1100)):
        key = f"module.culprit_{number}"
        allowed[key] = allowed.get(key, 0) + limiter.allow(key)[0]
        assert len(limiter._buckets) <= 1024
    assert max(allowed.values()) == 1
    assert sum(allowed.values()) == 1025  # 1,024 buckets of their own, one shared
    assert limiter.allow("module.culprit_5") == (False, 3)  # refused twice before
    assert limiter.allow("module.culprit_1099") == (False, 3 * 76)  # all refused in overflow


def test_with_refill_no_key_ever_gets_more_than_its_own_bucket_would_give() -> None:
    """Many keys, few slots, a fast refill: buckets come and go, and every key stays
    within burst + rate x time, as with a bucket of its own."""
    burst, per_minute = 2, 6000.0  # 100 per second
    limiter = RateLimiter(burst, per_minute, max_keys=8)
    rng = random.Random(29)
    first: dict[str, float] = {}
    allowed: dict[str, int] = {}
    started = time.monotonic()
    while time.monotonic() - started < 0.3:
        key = f"k{rng.randrange(40)}"
        first.setdefault(key, time.monotonic())
        allowed[key] = allowed.get(key, 0) + limiter.allow(key)[0]
        assert len(limiter._buckets) <= 8
    ended = time.monotonic()
    for key, count in allowed.items():
        assert count <= burst + (ended - first[key]) * per_minute / 60, key
    assert sum(allowed.values()) > 8 * burst  # forgotten buckets made room for others
