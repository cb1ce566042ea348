"""Named ways to block the loop, so tests can check the culprit loopwatch names."""

from __future__ import annotations

import gc
import itertools
import json
import random
import re
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


def backtrack(text: str) -> bool:
    """A regular expression with polynomial backtracking: one C call holding the GIL."""
    return re.match(r"a*a*a*c", text) is not None


def large_document(items: int) -> list[dict[str, object]]:
    """Input for :func:`dump_json` (build it off the loop)."""
    return [
        {"id": i, "name": f"item-{i}", "tags": ["a", "b"], "price": i * 0.5} for i in range(items)
    ]


def dump_json(document: object) -> int:
    """``json.dumps`` with the C encoder: holds the GIL until the whole text is built."""
    return len(json.dumps(document))


def allocate(count: int) -> list[Node]:
    """Allocations with the collector on: the first one past its threshold triggers a
    collection of everything allocated while it was off (new objects: lists and dicts
    come from free lists, which count no allocation)."""
    gc.enable()
    try:
        made: list[Node] = []
        for _ in range(count):
            made.append(Node())
        return made
    finally:
        gc.disable()
