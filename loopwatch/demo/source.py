"""Locate the example app: the wheel's copy, else ``example/`` of a source checkout.

The app is the article's, kept once in the repository's ``example/`` (the image for
``k8s/`` runs it from there); the wheel carries the same files as
``loopwatch/demo/app/example/``. Either way it is imported as the top-level package
``example``, so stalls name ``example.work.cpu_heavy_blocking_work`` (a module under
``loopwatch`` would be skipped as loopwatch's own code when picking the culprit).
"""

from __future__ import annotations

import sys
from pathlib import Path

import loopwatch


class ExampleNotFoundError(RuntimeError):
    """Neither a checkout's ``example/`` nor the wheel's copy of it is there."""


def checkout_root() -> Path:
    """The directory holding the ``loopwatch`` package (the repository root in a checkout)."""
    return Path(loopwatch.__file__).resolve().parent.parent


def bundled_root() -> Path:
    """The directory holding the wheel's copy of ``example/``."""
    return Path(loopwatch.__file__).resolve().parent / "demo" / "app"


def make_example_importable() -> Path:
    """Put the directory holding ``example/`` on ``sys.path``; return that directory.

    The wheel's copy comes first: an installed package's "checkout root" is
    site-packages, where an unrelated ``example`` package could be. Raises
    :class:`ExampleNotFoundError` when neither has ``example/app.py``.
    """
    for root in (bundled_root(), checkout_root()):
        if (root / "example" / "app.py").is_file():
            if str(root) not in sys.path:
                sys.path.insert(0, str(root))
            return root
    raise ExampleNotFoundError(
        f"the demo app (example/app.py) is neither in {bundled_root()} nor in "
        f"{checkout_root()}: reinstall loopwatch with the demo extra: "
        "pip install --force-reinstall 'loopwatch[demo]'"
    )
