"""Starting, stopping, many loops, forks, hooks and stalls that never end."""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from opentelemetry import metrics

import loopwatch
from loopwatch import BlockEvent

from . import workloads

REPO = Path(__file__).resolve().parent.parent


def watchdog_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "loopwatch-watchdog"]


def test_start_and_stop_are_idempotent_and_join_the_thread() -> None:
    async def main() -> None:
        watcher = loopwatch.LoopWatch(0.1)
        watcher.start()
        watcher.start()
        assert watcher.running
        assert len(watchdog_threads()) == 1
        watcher.stop()
        watcher.stop()
        assert not watcher.running
        assert watchdog_threads() == []

    asyncio.run(main())


def test_start_outside_a_loop_says_how_to_fix_it() -> None:
    with pytest.raises(RuntimeError, match="call it from a coroutine, or pass the loop"):
        loopwatch.LoopWatch().start()


def test_one_watcher_per_loop_from_the_registry() -> None:
    async def main() -> None:
        first = loopwatch.watch(threshold=0.2)
        second = loopwatch.watch()
        assert first is second
        assert first.config.threshold == 0.2
        first.stop()

    asyncio.run(main())


def test_loops_in_many_threads_each_have_their_own_watcher() -> None:
    events: list[BlockEvent] = []

    def serve(seconds: float) -> None:
        async def main() -> None:
            async with loopwatch.LoopWatch(0.1, on_block=events.append):
                await asyncio.sleep(0.1)
                workloads.nap(seconds)
                await asyncio.sleep(0.15)

        asyncio.run(main())

    threads = [
        threading.Thread(target=serve, args=(0.25 + 0.1 * n,), name=f"server-{n}") for n in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    finished = {e.thread_name: e for e in events if not e.ongoing}
    assert set(finished) == {"server-0", "server-1", "server-2"}
    for n in range(3):
        assert finished[f"server-{n}"].duration == pytest.approx(0.25 + 0.1 * n, abs=0.02)
    assert watchdog_threads() == []


def test_closed_loop_without_stop_ends_the_watchdog_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.new_event_loop()
    loopwatch.LoopWatch(0.1).start(loop)
    loop.run_until_complete(asyncio.sleep(0.05))
    loop.close()
    deadline = time.monotonic() + 2
    while watchdog_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert watchdog_threads() == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_stopped_loop_is_not_a_stall() -> None:
    events: list[BlockEvent] = []
    loop = asyncio.new_event_loop()
    watcher = loopwatch.LoopWatch(0.1, on_block=events.append).start(loop)
    try:
        loop.run_until_complete(asyncio.sleep(0.1))
        time.sleep(0.4)  # the loop is not running: nothing is blocked
        loop.run_until_complete(asyncio.sleep(0.2))
    finally:
        watcher.stop()
        loop.close()
    assert events == []


def test_failing_hook_is_logged_once_and_reporting_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[BlockEvent] = []

    def hook(event: BlockEvent) -> None:
        calls.append(event)
        raise RuntimeError("hook bug")

    async def main() -> None:
        async with loopwatch.LoopWatch(0.1, on_block=hook):
            for _ in range(2):
                await asyncio.sleep(0.1)
                workloads.nap(0.25)
            await asyncio.sleep(0.1)

    asyncio.run(main())
    assert len([e for e in calls if not e.ongoing]) == 2
    errors = [r for r in caplog.records if "on_block hook raised" in r.getMessage()]
    assert len(errors) == 1


def test_hook_sees_the_stall_while_it_lasts_then_when_it_ends() -> None:
    events: list[BlockEvent] = []

    async def main() -> None:
        async with loopwatch.LoopWatch(0.1, on_block=events.append):
            await asyncio.sleep(0.1)
            workloads.spin(0.4)
            await asyncio.sleep(0.1)

    asyncio.run(main())
    ongoing, finished = events
    assert ongoing.ongoing
    assert ongoing.end is None
    assert 0.1 <= ongoing.duration < 0.2
    assert ongoing.culprit is not None
    assert ongoing.culprit.function == "tests.workloads.spin"
    assert not finished.ongoing
    assert finished.duration == pytest.approx(0.4, abs=0.02)
    with pytest.raises(AttributeError):
        finished.duration = 0  # type: ignore[misc]


def test_start_and_stop_leave_no_threads_or_descriptors_behind() -> None:
    fds_before = len(os.listdir("/proc/self/fd")) if Path("/proc/self/fd").exists() else 0
    threads_before = threading.active_count()

    async def cycle() -> None:
        for _ in range(50):
            async with loopwatch.LoopWatch(0.05, interval=0.001):
                await asyncio.sleep(0.01)

    asyncio.run(cycle())
    assert threading.active_count() == threads_before
    if fds_before:
        assert len(os.listdir("/proc/self/fd")) <= fds_before + 1


class _FailingMeterProvider(metrics.NoOpMeterProvider):
    """A provider that passes the construction check and fails when the watcher starts,
    after the dead man's timer was opened. (The tracer is asked for only at the first
    span, on the spans channel: a tracer provider that raises cannot fail a start.)"""

    def get_meter(self, *args: object, **kwargs: object) -> metrics.Meter:
        raise RuntimeError("no meter today")


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="counts /proc/self/fd")
def test_failed_starts_release_what_they_acquired() -> None:
    """200 starts that fail half-way leak no descriptor, thread or GC callback."""
    threads_before = threading.active_count()
    callbacks_before = list(gc.callbacks)

    async def fail_to_start() -> int:
        fds_before = len(os.listdir("/proc/self/fd"))
        for _ in range(200):
            watcher = loopwatch.LoopWatch(0.1, meter_provider=_FailingMeterProvider())
            with pytest.raises(RuntimeError, match="no meter today"):
                watcher.start()
            assert not watcher.running
        await asyncio.sleep(0.05)  # the heartbeats' cancelled first ticks run
        return len(os.listdir("/proc/self/fd")) - fds_before

    assert asyncio.run(fail_to_start()) == 0
    assert threading.active_count() == threads_before
    assert gc.callbacks == callbacks_before


def _child_after_fork(queue: multiprocessing.Queue[object]) -> None:
    from loopwatch import registry

    inherited = len(registry._watchers)
    events: list[BlockEvent] = []

    async def main() -> None:
        async with loopwatch.LoopWatch(0.1, on_block=events.append):
            await asyncio.sleep(0.1)
            workloads.nap(0.25)
            await asyncio.sleep(0.1)

    asyncio.run(main())
    queue.put((inherited, [(e.cause, str(e.culprit)) for e in events if not e.ongoing]))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
# Forking beside the watchdog thread is the point; 3.12+ warns about any such fork.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_forked_child_starts_clean_and_watches_its_own_loop() -> None:
    async def parent() -> None:
        loopwatch.watch()
        context = multiprocessing.get_context("fork")
        queue: multiprocessing.Queue[object] = context.Queue()
        child = context.Process(target=_child_after_fork, args=(queue,))
        child.start()
        result = await asyncio.to_thread(queue.get, True, 20)
        await asyncio.to_thread(child.join, 20)
        assert child.exitcode == 0
        inherited, stalls = result
        assert inherited == 0
        assert [cause for cause, _ in stalls] == ["blocking"]
        assert stalls[0][1].startswith(f"tests.workloads.nap ({workloads.__file__}:")
        loopwatch.watch().stop()

    asyncio.run(parent())


def run_script(code: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_never_ending_stall_is_logged_gauged_and_dumped_while_it_lasts() -> None:
    result = run_script(
        """
        import asyncio, logging, time
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        import loopwatch
        logging.basicConfig(level=logging.WARNING)
        reader = InMemoryMetricReader()
        provider = MeterProvider(metric_readers=[reader])

        def ongoing():
            for rm in reader.get_metrics_data().resource_metrics:
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        if m.name == "asyncio.eventloop.block.ongoing":
                            return m.data.data_points[0].value

        async def main():
            async with loopwatch.LoopWatch(0.1, dump_after=0.5, meter_provider=provider):
                await asyncio.sleep(0.1)
                loop = asyncio.get_running_loop()
                loop.call_later(0.3, lambda: None)
                import threading
                threading.Timer(0.8, lambda: print("GAUGE", ongoing(), flush=True)).start()
                deadline = time.monotonic() + 1.2
                while time.monotonic() < deadline:   # "never ends" for the test's purpose
                    time.sleep(0.01)
                await asyncio.sleep(0.1)

        asyncio.run(main())
        """
    )
    assert result.returncode == 0, result.stderr
    assert "event loop blocked for 0.1" in result.stderr
    assert "so far in __main__.main" in result.stderr
    assert "Timeout (0:00:00" in result.stderr, "faulthandler dumped all threads"
    assert "loopwatch-watchdog" in result.stderr or "Thread 0x" in result.stderr
    gauge = float(result.stdout.split("GAUGE")[1].split()[0])
    assert 0.6 <= gauge <= 1.2


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP")
def test_process_not_scheduled_is_told_apart() -> None:
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                """
                import asyncio, sys
                import loopwatch
                events = []
                async def main():
                    async with loopwatch.LoopWatch(0.1, on_block=events.append):
                        print("READY", flush=True)
                        await asyncio.sleep(2.0)
                asyncio.run(main())
                print("CAUSES", [e.cause for e in events if not e.ongoing], flush=True)
                """
            ),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "READY"
        time.sleep(0.3)
        child.send_signal(signal.SIGSTOP)
        time.sleep(0.5)
        child.send_signal(signal.SIGCONT)
        output, _ = child.communicate(timeout=20)
    finally:
        child.kill()
    assert "CAUSES ['unscheduled']" in output
