"""The dead man's switch: the watchdog sleeps while the loop ticks, and wakes for a stall.

Without it the watchdog wakes every ``threshold`` and needs the GIL each time, which on a
busy loop costs a GIL convoy (see docs/benchmarks.md); these tests count its wake-ups.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import loopwatch
from loopwatch import BlockEvent
from loopwatch.deadman import DeadManSwitch

from . import workloads

pytestmark = pytest.mark.skipif(
    sys.platform != "linux", reason="the dead man's switch is a Linux timerfd"
)

Run = Callable[[Callable[[], Awaitable[Any]]], Any]


def test_switch_trips_only_when_not_rearmed() -> None:
    switch = DeadManSwitch.create(0.1)
    assert switch is not None
    try:
        switch.rearm()
        for _ in range(5):  # kept alive for 0.25 s: never trips
            assert not switch.wait(0.05)
            switch.rearm()
        started = time.monotonic()
        assert switch.wait(1.0), "not rearmed for 0.1 s: it trips"
        assert 0.05 <= time.monotonic() - started <= 0.5
        assert not switch.wait(0.05), "a trip is reported once"
        switch.reset(0.3)  # another delay, once (the watchdog's)
        started = time.monotonic()
        assert switch.wait(1.0)
        assert 0.25 <= time.monotonic() - started <= 0.7
        switch.trip()
        assert switch.wait(1.0), "trip() wakes a waiter at once"
    finally:
        switch.close()
    switch.rearm()  # after close (a tick racing stop()): ignored, no error
    switch.reset(0.1)


def test_rearming_keeps_the_gil() -> None:
    """Each tick re-arms the switch with the GIL held: another thread running Python code
    gets no chance to run during the system call (the switch interval is made long
    enough that only a release of the GIL could let it run)."""
    switch = DeadManSwitch.create(0.1)
    assert switch is not None
    progress = [0]
    stop = threading.Event()

    def other_python_thread() -> None:
        while not stop.is_set():
            progress[0] += 1

    previous_interval = sys.getswitchinterval()
    thread = threading.Thread(target=other_python_thread)
    thread.start()
    try:
        while progress[0] == 0:
            time.sleep(0.001)
        sys.setswitchinterval(0.5)  # this thread holds the GIL; the other one waits
        before = progress[0]
        for _ in range(100):
            switch.rearm()
            if progress[0] != before:  # released: stop at once (getting it back takes 0.5 s)
                break
        assert progress[0] == before
    finally:
        sys.setswitchinterval(previous_interval)
        stop.set()
        thread.join()
        switch.close()


def _voluntary_switches(native_id: int) -> int:
    """How many times a thread of this process went to sleep so far (Linux)."""
    status = Path(f"/proc/self/task/{native_id}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("voluntary_ctxt"))
    return int(line.split()[1])


def _watchdog_native_id() -> int:
    (thread,) = [t for t in threading.enumerate() if t.name == "loopwatch-watchdog"]
    assert thread.native_id is not None
    return thread.native_id


async def _busy_but_healthy(seconds: float) -> None:
    """Keep the loop busy with 1 ms callbacks, yielding between them."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        workloads.spin(0.001)
        await asyncio.sleep(0)


def _watch_then_stall(run: Run, healthy_for: float) -> tuple[int, list[BlockEvent]]:
    """The watchdog's wake-ups during ``healthy_for`` seconds of a busy healthy loop, then
    the events of a 300 ms stall."""
    events: list[BlockEvent] = []

    async def scenario() -> int:
        # Busy detection off: this loop runs callbacks back to back, 100 % busy; where the
        # machine makes its ticks late (a load of 9 on 2 cores: 3-11 ms, median) the
        # watchdog samples it on purpose (tests/test_busy.py). The switch is tested here.
        async with loopwatch.LoopWatch(0.1, on_block=events.append, busy_threshold=0):
            await asyncio.sleep(0.2)
            watchdog = _watchdog_native_id()
            before = _voluntary_switches(watchdog)
            await _busy_but_healthy(healthy_for)
            wakes = _voluntary_switches(watchdog) - before
            workloads.spin(0.3)
            await asyncio.sleep(0.2)
        return wakes

    return run(scenario), events


def _culprits(events: list[BlockEvent]) -> list[str]:
    return [event.culprit.function for event in events if event.culprit and not event.ongoing]


def test_watchdog_sleeps_while_the_loop_is_healthy_and_wakes_for_a_stall(run: Run) -> None:
    """Over 2 s of a busy, healthy loop the watchdog does not wake (it would every 100 ms
    otherwise, and wait for the GIL each time); a stall still gets a live sample."""
    wakes, events = _watch_then_stall(run, 2.0)
    assert wakes <= 2, f"the watchdog woke {wakes} times in 2 s of a healthy loop"
    assert _culprits(events) == ["tests.workloads.spin"]
    assert any(event.ongoing for event in events), "the stall was seen while it lasted"


def test_watchdog_started_on_a_busy_loop_sleeps_from_the_start(run: Run) -> None:
    """Started while the loop is already busy, the watchdog goes straight to sleep on the
    switch. A busy loop drops and retakes the GIL at every iteration (around
    ``epoll_wait``): a watchdog woken then (as by the first tick, before) waits for the GIL
    as long as the loop stays busy, woken at every drop (~1,000 times a second here)."""
    events: list[BlockEvent] = []

    async def scenario() -> int:
        busy = asyncio.create_task(_busy_but_healthy(1.2))
        await asyncio.sleep(0)
        async with loopwatch.LoopWatch(0.1, on_block=events.append, busy_threshold=0):
            watchdog = _watchdog_native_id()
            before = _voluntary_switches(watchdog)
            await busy
            wakes = _voluntary_switches(watchdog) - before
            workloads.spin(0.3)
            await asyncio.sleep(0.2)
        return wakes

    wakes = run(scenario)
    assert wakes <= 5, f"the watchdog woke {wakes} times in 1.2 s of a busy, healthy loop"
    assert _culprits(events) == ["tests.workloads.spin"]


def test_without_the_switch_the_watchdog_polls(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where there is no timerfd (not Linux) the watchdog wakes every threshold instead,
    and finds the same stalls."""
    monkeypatch.setattr(DeadManSwitch, "create", classmethod(lambda cls, delay: None))
    wakes, events = _watch_then_stall(run, 1.0)
    assert wakes >= 8, f"polling every 100 ms: woke {wakes} times in 1 s"
    assert _culprits(events) == ["tests.workloads.spin"]


def test_a_zero_or_negative_delay_trips_at_once() -> None:
    """timerfd disarms on a zero delay: reset() must never do that (a watchdog waiting on a
    disarmed switch would sleep through a stall)."""
    switch = DeadManSwitch.create(0.0)
    assert switch is not None
    try:
        switch.rearm()
        assert switch.wait(1.0), "create(0.0): rearm() did not trip"
        for delay in (0.0, 1e-12, -0.5):
            switch.reset(delay)
            assert switch.wait(1.0), f"reset({delay}) did not trip"
    finally:
        switch.close()


def test_heartbeat_rearms_once_per_quarter_delay_not_every_tick(run: Run) -> None:
    """A re-arm is a system call: the heartbeat re-arms the switch once per quarter of its
    delay (~26 ms at the defaults), not at every 5 ms tick; it still trips in time."""
    rearms = [0]
    events: list[BlockEvent] = []

    async def scenario() -> tuple[int, int]:
        async with loopwatch.LoopWatch(0.1, on_block=events.append) as watcher:
            parts = watcher._parts
            assert parts is not None
            assert parts.deadman is not None
            rearm = parts.deadman.rearm

            def counted() -> object:
                rearms[0] += 1
                return rearm()

            parts.deadman.rearm = counted
            await asyncio.sleep(0.1)
            ticks_before, rearms_before = parts.heartbeat._number, rearms[0]
            await _busy_but_healthy(1.0)
            ticks = parts.heartbeat._number - ticks_before
            rearmed = rearms[0] - rearms_before
            workloads.spin(0.3)
            await asyncio.sleep(0.2)
        return ticks, rearmed

    ticks, rearmed = run(scenario)
    assert ticks >= 100, f"only {ticks} ticks in 1 s"
    assert 10 <= rearmed <= ticks / 3, f"{rearmed} re-arms for {ticks} ticks in 1 s"
    ongoing = [event for event in events if event.ongoing]
    assert ongoing, "the stall was seen while it lasted"
    assert ongoing[0].duration < 0.2, "first seen at the threshold, not later"
    assert _culprits(events) == ["tests.workloads.spin"]
