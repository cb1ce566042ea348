"""``loopwatch.watch()``: one watcher per event loop, process-wide, fork-safe."""

from __future__ import annotations

import os
import threading
from typing import Any

from .watcher import STOP_TIMEOUT, LoopWatch, WatchedLoop, running_loop

_watchers: dict[WatchedLoop, LoopWatch] = {}
_users: dict[WatchedLoop, int] = {}
_lock = threading.RLock()


def watch(loop: WatchedLoop | None = None, **config: Any) -> LoopWatch:
    """The started watcher of ``loop`` (default: the running loop), created on first use.

    Later calls for the same loop return the same watcher; their options are ignored.
    """
    loop = _resolve(loop)
    with _lock:
        _forget_closed_loops()
        watcher = _watchers.get(loop)
        if watcher is None or (not watcher.running and watcher.config.enabled):
            watcher = LoopWatch(**config)
            _watchers[loop] = watcher
        watcher.start(loop)
        return watcher


def acquire(loop: WatchedLoop, **config: Any) -> LoopWatch:
    """Like :func:`watch`, counting users so that the last :func:`release` stops it."""
    with _lock:
        watcher = watch(loop, **config)
        _users[loop] = _users.get(loop, 0) + 1
        return watcher


def release(loop: WatchedLoop, timeout: float = STOP_TIMEOUT) -> None:
    """One user of the loop's watcher is done; stop it when none is left (waiting up to
    ``timeout`` seconds for its thread and reports, see :meth:`LoopWatch.stop`)."""
    with _lock:
        remaining = _users.get(loop, 0) - 1
        if remaining > 0:
            _users[loop] = remaining
            return
        _users.pop(loop, None)
        watcher = _watchers.pop(loop, None)
    if watcher is not None:
        watcher.stop(timeout)


def _resolve(loop: WatchedLoop | None) -> WatchedLoop:
    return loop if loop is not None else running_loop("loopwatch.watch()")


def _forget_closed_loops() -> None:
    """Drop the entries of loops closed without a release; their watchers are told to
    stop, without waiting (their threads end by themselves)."""
    for closed in [loop for loop in _watchers if loop.is_closed()]:
        _watchers.pop(closed).stop(0.0)
        _users.pop(closed, None)


def _forget_all_in_child() -> None:
    for watcher in list(_watchers.values()):
        watcher._abandon()
    _watchers.clear()
    _users.clear()


os.register_at_fork(after_in_child=_forget_all_in_child)
