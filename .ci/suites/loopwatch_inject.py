"""pytest plugin (``-p loopwatch_inject``): add loopwatch to every app a suite builds.

With ``LOOPWATCH_SUITES_INJECT=1`` it calls the public ``LoopWatchInstrumentor().instrument()``
at configure time, before any test builds an app, and counts the middleware stacks built
that contain ``LoopWatchMiddleware``: a count of 0 means the injection reached no app.
Each pytest process (xdist workers too) appends its count to ``LOOPWATCH_SUITES_COUNT_FILE``.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

_stacks = {"built": 0, "with_loopwatch": 0}


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("LOOPWATCH_SUITES_INJECT") != "1":
        return
    from loopwatch.instrumentation import LoopWatchInstrumentor

    LoopWatchInstrumentor().instrument()
    _count_stacks()


def pytest_unconfigure(config: pytest.Config) -> None:
    path = os.environ.get("LOOPWATCH_SUITES_COUNT_FILE")
    if path and os.environ.get("LOOPWATCH_SUITES_INJECT") == "1":
        with open(path, "a", encoding="utf-8") as out:
            out.write(f"{_stacks['built']} {_stacks['with_loopwatch']}\n")


def _count_stacks() -> None:
    """Wrap the (already instrumented) ``build_middleware_stack`` of each app class."""
    from starlette.applications import Starlette

    classes: list[type] = [Starlette]
    try:
        from fastapi.applications import FastAPI
    except ImportError:
        pass
    else:
        if "build_middleware_stack" in FastAPI.__dict__:
            classes.append(FastAPI)
    for cls in classes:
        built = cls.__dict__["build_middleware_stack"]

        def counting(app: Any, _built: Any = built) -> Any:
            stack = _built(app)
            _stacks["built"] += 1
            _stacks["with_loopwatch"] += _contains_loopwatch(stack)
            return stack

        setattr(cls, "build_middleware_stack", counting)  # noqa: B010


def _contains_loopwatch(stack: Any) -> bool:
    """Follow the ``.app`` chain of the middleware stack looking for LoopWatchMiddleware."""
    from loopwatch import LoopWatchMiddleware

    seen = 0
    while stack is not None and seen < 100:
        if isinstance(stack, LoopWatchMiddleware):
            return True
        stack, seen = getattr(stack, "app", None), seen + 1
    return False
