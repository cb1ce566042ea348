"""Named ways to block the loop, so tests can check the culprit loopwatch names."""

from __future__ import annotations

import gc
import itertools
import random
import socket
import threading
import time


def spin(seconds: float) -> None:
    """Pure-Python CPU work on the calling thread."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def nap(seconds: float) -> None:
    """A blocking sleep (releases the GIL)."""
    time.sleep(seconds)


def read_socket(seconds: float) -> bytes:
    """A blocking socket read that a thread answers after ``seconds``."""
    left, right = socket.socketpair()
    timer = threading.Timer(seconds, right.sendall, args=(b"x",))
    timer.start()
    try:
        return left.recv(1)
    finally:
        timer.join()
        left.close()
        right.close()


def unsorted_floats(count: int) -> list[float]:
    """Input for :func:`sort_floats` (build it off the loop)."""
    rng = random.Random(7)
    return [rng.random() for _ in range(count)]


def sort_floats(values: list[float]) -> None:
    """One C call that holds the GIL throughout (no sample can be taken during it)."""
    values.sort()


class Node:
    """A node of a doubly linked cycle graph, garbage for the cycle collector."""

    def __init__(self) -> None:
        self.next: Node | None = None
        self.prev: Node | None = None


def build_cycles(count: int) -> None:
    """Leave ``count`` nodes in reference cycles for the collector (gc disabled meanwhile)."""
    nodes = [Node() for _ in range(count)]
    for left, right in itertools.pairwise(nodes):
        left.next = right
        right.prev = left
    nodes[-1].next = nodes[0]


def collect() -> int:
    """A full collection on the calling thread."""
    return gc.collect()
