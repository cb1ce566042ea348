"""The culprit finder on real samples of a thread running an asyncio loop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from loopwatch.config import Config
from loopwatch.sampler import Sample, take_sample
from loopwatch.stacks import CulpritFinder, function_name


@contextmanager
def loop_in_thread() -> Iterator[tuple[asyncio.AbstractEventLoop, int]]:
    """A stdlib loop running in a thread of its own; its thread id."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        while not loop.is_running():
            time.sleep(0.001)
        assert thread.ident is not None
        yield loop, thread.ident
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def sample_when(thread_id: int, ready: Callable[[Sample], bool]) -> Sample:
    """The first sample of ``thread_id`` that ``ready`` accepts (within 5 s)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        sample = take_sample(thread_id, 64)
        if sample is not None and ready(sample):
            return sample
        time.sleep(0.005)
    raise AssertionError("the loop thread never reached the expected state")


def names(sample: Sample) -> list[str]:
    return [function_name(frame) for frame in sample.frames]


def blocking_callback(release: threading.Event) -> None:
    release.wait(5)


def test_a_loop_waiting_in_its_selector_is_at_rest_and_names_no_culprit() -> None:
    finder = CulpritFinder(Config().skip_modules)
    with loop_in_thread() as (_, thread_id):
        sample = sample_when(thread_id, lambda s: "select" in names(s)[0])
    assert any(name.startswith("selectors.") for name in names(sample))
    assert finder.culprit(sample) is None
    assert finder.at_rest(sample)


def test_a_callback_blocking_the_loop_is_the_culprit() -> None:
    finder = CulpritFinder(Config().skip_modules)
    release = threading.Event()
    with loop_in_thread() as (loop, thread_id):
        loop.call_soon_threadsafe(blocking_callback, release)
        try:
            sample = sample_when(
                thread_id, lambda s: any("blocking_callback" in n for n in names(s))
            )
        finally:
            release.set()
    culprit = finder.culprit(sample)
    assert culprit is not None
    assert function_name(culprit) == f"{__name__}.blocking_callback"
    assert not finder.at_rest(sample)
