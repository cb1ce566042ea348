"""The tasks waiting for the running one, and the culprit request found through them (a
view run in a child task, as Quart and Django do)."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any

import pytest

from loopwatch.awaited_by import awaiting_tasks
from loopwatch.inflight import (
    REQUEST_KEY,
    AnyRequest,
    InFlight,
    RequestSummary,
    requests_waiting_on,
    stalled_request,
)

from .test_inflight import tracked_scope

Run = Callable[[Callable[[], Awaitable[Any]]], Any]
Waits = Callable[[asyncio.Task[Any]], Awaitable[Any]]


async def _taskgroup(run_child: Callable[[], Awaitable[Any]]) -> Any:
    async with asyncio.TaskGroup() as group:  # type: ignore[attr-defined,unused-ignore]
        group.create_task(run_child())


WAYS: dict[str, Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]] = {
    "await": lambda child: asyncio.ensure_future(child()),
    "wait": lambda child: asyncio.wait([asyncio.ensure_future(child())]),
    "gather": lambda child: asyncio.gather(child()),
    "wait_for": lambda child: asyncio.wait_for(asyncio.ensure_future(child()), 10),
    "shield": lambda child: asyncio.shield(asyncio.ensure_future(child())),
    "taskgroup": _taskgroup,
}


def python_tasks(loop: asyncio.AbstractEventLoop, coro: Any, **options: Any) -> asyncio.Task[Any]:
    """The pure-Python task (asyncio uses the C one unless told otherwise)."""
    task: asyncio.Task[Any] = asyncio.tasks._PyTask(coro, loop=loop, **options)  # type: ignore[attr-defined]
    return task


@pytest.mark.parametrize("task_class", ["c", "python"])
@pytest.mark.parametrize("way", WAYS)
def test_the_waiting_tasks_are_found_nearest_first(run: Run, way: str, task_class: str) -> None:
    """A child task finds the task waiting for it however that one waits, then the task
    waiting for that one (through ``asyncio.wait``), then the test's main task awaiting
    that; other tasks are left out."""
    if way == "taskgroup" and sys.version_info < (3, 11):
        pytest.skip("asyncio.TaskGroup is new in Python 3.11")
    found: list[Any] = []

    async def child() -> None:
        await asyncio.sleep(0.01)  # the waiting tasks are suspended on it now
        running = asyncio.current_task()
        assert running is not None
        found.extend(awaiting_tasks(running, list(asyncio.all_tasks())))

    async def parent() -> None:
        await WAYS[way](child)

    async def scenario() -> list[Any]:
        if task_class == "python":
            asyncio.get_running_loop().set_task_factory(python_tasks)
        bystander = asyncio.ensure_future(asyncio.sleep(1))
        parent_task = asyncio.ensure_future(parent())
        grandparent = asyncio.ensure_future(asyncio.wait([parent_task]))
        await grandparent
        bystander.cancel()
        return [parent_task, grandparent, asyncio.current_task()]

    assert found == run(scenario)


class Broken:
    """A task-like object whose attributes raise (a custom task class gone wrong)."""

    @property
    def _fut_waiter(self) -> Any:
        raise RuntimeError("broken on purpose")


def test_an_error_ends_the_walk_and_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """The watchdog thread must survive whatever a task holds: nothing is found."""
    loop = asyncio.new_event_loop()
    try:
        future = loop.create_future()
        for _ in range(2):
            assert awaiting_tasks(future, [Broken()]) == []  # type: ignore[list-item]
    finally:
        loop.close()
    assert sum("could not follow" in record.getMessage() for record in caplog.records) <= 1


def test_a_request_is_not_its_own_victim_when_its_view_runs_in_a_child_task(run: Run) -> None:
    """As in Quart and Django, the view runs in a child task and the scope is held by the
    task waiting for it: the stalled request is found there, and is no victim; another
    request is."""
    culprit: Future[tuple[AnyRequest | None, InFlight]] = Future()

    def read(thread_id: int, loop: asyncio.AbstractEventLoop) -> None:
        culprit.set_result((stalled_request(thread_id, loop), requests_waiting_on(loop)))

    async def view() -> None:
        reader = threading.Thread(
            target=read, args=(threading.get_ident(), asyncio.get_running_loop())
        )
        reader.start()
        reader.join()  # the loop thread is stuck here while the other thread reads

    async def asgi_app(scope: dict[str, Any]) -> None:
        disconnect = asyncio.ensure_future(asyncio.sleep(1))
        handler = asyncio.ensure_future(view())
        await asyncio.wait([handler, disconnect], return_when=asyncio.FIRST_COMPLETED)
        disconnect.cancel()

    async def other_request(scope: dict[str, Any]) -> None:
        await asyncio.sleep(1)

    async def scenario() -> tuple[AnyRequest, AnyRequest]:
        mine, other = tracked_scope("GET"), tracked_scope("GET")
        waiting = asyncio.ensure_future(other_request(other))
        await asyncio.sleep(0)
        await asyncio.ensure_future(asgi_app(mine))
        waiting.cancel()
        return mine[REQUEST_KEY], other[REQUEST_KEY]

    mine, other = run(scenario)
    request, in_flight = culprit.result(timeout=0)
    assert request is mine
    assert in_flight.tracked == [other]
    assert in_flight.untracked == 0


def test_an_untraced_request_in_a_parent_task_is_summarised(run: Run) -> None:
    """Without a request kept in the scope, the parent's scope still names the culprit
    (method) and does not count as a victim."""
    culprit: Future[tuple[AnyRequest | None, InFlight]] = Future()

    async def view() -> None:
        thread_id, loop = threading.get_ident(), asyncio.get_running_loop()
        reader = threading.Thread(
            target=lambda: culprit.set_result(
                (stalled_request(thread_id, loop), requests_waiting_on(loop))
            )
        )
        reader.start()
        reader.join()

    async def asgi_app(scope: dict[str, Any]) -> None:
        await asyncio.gather(view())

    run(lambda: asgi_app({"type": "http", "method": "POST", "path_template": "/items/{id}"}))
    request, in_flight = culprit.result(timeout=0)
    assert request == RequestSummary("POST", "/items/{id}")
    assert in_flight.untracked == 0
