"""``LoopWatchMiddleware`` under hypercorn's trio worker, in this process (spans read back
from memory): a handler's stall is a ``loop.blocked`` span in that request's trace. The
served process's test (every request answered) is in ``test_unwatchable.py``."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import trio
from fastapi import FastAPI
from hypercorn.config import Config
from hypercorn.trio import serve

from loopwatch.trio_loop import TrioLoop

from .conftest import Otel, watchdog_threads
from .server import HTTP_TIMEOUT_S, START_TIMEOUT_S, STOP_TIMEOUT_S
from .test_spans import STALL_S, assert_child_of, assert_names_culprit, attrs, server_span


@contextlib.contextmanager
def serve_with_trio(app: Any) -> Iterator[str]:
    """Serve ``app`` with hypercorn's trio worker on 127.0.0.1 in a thread; its URL."""
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    started = threading.Event()
    bound: list[str] = []
    stop: list[Callable[[], None]] = []
    errors: list[BaseException] = []

    async def main() -> None:
        shutdown = trio.Event()
        token = trio.lowlevel.current_trio_token()
        stop.append(lambda: token.run_sync_soon(shutdown.set))
        async with trio.open_nursery() as nursery:
            bound.extend(await nursery.start(_serve, app, config, shutdown.wait))
            started.set()

    def run() -> None:
        try:
            trio.run(main)
        except BaseException as error:  # reported to the test thread
            errors.append(error)
        finally:
            started.set()

    thread = threading.Thread(target=run, name="hypercorn-trio", daemon=True)
    thread.start()
    assert started.wait(START_TIMEOUT_S), "hypercorn (trio) did not start"
    assert bound, f"hypercorn (trio) did not start: {errors!r}"
    try:
        yield bound[0]
    finally:
        stop[0]()
        thread.join(STOP_TIMEOUT_S)
        assert not thread.is_alive(), "hypercorn (trio) did not stop"
        assert errors == []


async def _serve(app: Any, config: Config, trigger: Any, *, task_status: Any) -> None:
    await serve(app, config, shutdown_trigger=trigger, task_status=task_status)


def test_trio_served_request_stall_is_a_span_in_its_trace(
    otel: Otel, fastapi_app: Callable[..., FastAPI]
) -> None:
    app = fastapi_app(instrument="after")
    with serve_with_trio(app) as url:
        assert watchdog_threads() >= 1  # started at lifespan start-up
        with httpx.Client(timeout=HTTP_TIMEOUT_S) as client:
            response = client.get(f"{url}/block/7?seconds={STALL_S}")
            assert response.json() == {"item_id": 7, "blocked": STALL_S}
            [blocked] = otel.blocked_spans()
            parent = server_span(otel, "/block/{item_id}")
    assert_names_culprit(blocked, "/block/{item_id}")
    assert_child_of(blocked, parent)
    assert attrs(blocked)["thread.name"] == "hypercorn-trio"


def test_the_trio_run_is_one_watched_loop() -> None:
    async def main() -> tuple[object, object]:
        from loopwatch.trio_loop import current_trio_loop

        return current_trio_loop(), current_trio_loop()

    first, again = trio.run(main)
    assert isinstance(first, TrioLoop)
    assert first is again
    assert first.is_closed()
