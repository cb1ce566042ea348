"""Locate the example app: it ships with the source checkout, not with the wheel."""

from __future__ import annotations

import sys
from pathlib import Path

import loopwatch


class ExampleNotFoundError(RuntimeError):
    """The demo runs from a source checkout, and this installation is not one."""


def checkout_root() -> Path:
    """The directory holding the ``loopwatch`` package (the repository root in a checkout)."""
    return Path(loopwatch.__file__).resolve().parent.parent


def make_example_importable() -> Path:
    """Put the checkout root on ``sys.path`` so ``import example`` works; return the root.

    Raises :class:`ExampleNotFoundError` when ``example/app.py`` is not next to the package.
    """
    root = checkout_root()
    if not (root / "example" / "app.py").is_file():
        raise ExampleNotFoundError(
            f"the demo app (example/app.py) is not in {root}: `loopwatch demo` runs from a "
            "source checkout of loopwatch; clone the repository and run "
            "`pip install -e '.[demo]'` there"
        )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return root
