"""Whose code a stall can be charged to: the project's own (under rootdir) or the test's.

A test fails for a stall only when the stall names code its authors can change. Code is
the project's when its file lies under pytest's rootdir and outside the standard library
and any site-packages (a virtualenv inside the project is not the project). That also
holds for a library's own suite: anyio's tests run anyio from its source tree, so anyio's
frames are the project's there even though ``anyio`` is in loopwatch's default skip list.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sysconfig
from collections.abc import Iterable
from pathlib import Path

from ..config import DEFAULT_SKIP_MODULES
from ..events import BlockEvent, FrameInfo

TEST_RUNNER_MODULES = (
    *("__main__", "runpy", "_pytest", "pytest", "pluggy", "pytest_asyncio"),
    "backports.asyncio.runner",  # pytest-asyncio's asyncio.Runner on Python 3.10
)
"""Never the culprit, in addition to loopwatch's own list: the machinery that runs the test."""

ALWAYS_SKIPPED = "loopwatch"
"""loopwatch's frames never name a culprit, not even in loopwatch's own suite."""


def _library_prefixes() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    keys = ("stdlib", "platstdlib", "purelib", "platlib")
    return tuple({os.path.realpath(paths[key]) + os.sep for key in keys})


_LIBRARIES = _library_prefixes()
_PACKAGE_DIRS = (f"{os.sep}site-packages{os.sep}", f"{os.sep}dist-packages{os.sep}")


class ProjectCode:
    """Tells the project's files from library files, for one rootdir."""

    def __init__(self, rootdir: Path) -> None:
        self.root = os.path.join(os.path.realpath(rootdir), "")

    def owns(self, file: str) -> bool:
        """Whether ``file`` is the project's: under rootdir, not a library's."""
        return _owned(self.root, file)

    def charged_to(self, event: BlockEvent, test_file: str) -> FrameInfo | None:
        """The culprit a stall can be charged to: the project's or the test's code."""
        culprit = event.culprit
        if culprit is None:
            return None
        if self.owns(culprit.file) or _same_file(culprit.file, test_file):
            return culprit
        return None

    def skip_modules(self, configured: Iterable[str]) -> tuple[str, ...]:
        """The watchers' skip list: the configured one and the test runner, but without
        the default entries whose package is the project's (a library's own suite)."""
        defaults = set(DEFAULT_SKIP_MODULES + TEST_RUNNER_MODULES) - {ALWAYS_SKIPPED}
        return tuple(
            name
            for name in (*configured, *TEST_RUNNER_MODULES)
            if name not in defaults or not _project_package(self.root, name)
        )


@functools.lru_cache(maxsize=4096)
def _owned(root: str, file: str) -> bool:
    if not os.path.isabs(file):  # "<frozen ...>", "<string>"
        return False
    path = os.path.realpath(file)
    return (
        path.startswith(root)
        and not path.startswith(_LIBRARIES)
        and not any(part in path for part in _PACKAGE_DIRS)
    )


@functools.lru_cache(maxsize=256)
def _project_package(root: str, module: str) -> bool:
    """Whether the top-level package of ``module`` is imported from the project."""
    try:  # a top-level name: found without importing anything
        spec = importlib.util.find_spec(module.partition(".")[0])
    except (ImportError, ValueError):
        return False
    if spec is None:
        return False
    places = list(spec.submodule_search_locations or ()) or [spec.origin or ""]
    return any(_owned(root, place) for place in places)


def _same_file(a: str, b: str) -> bool:
    return bool(a and b) and os.path.realpath(a) == os.path.realpath(b)
