"""The ``loopwatch`` command's own options."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

from loopwatch._version import __version__


def test_version_is_printed_and_is_the_installed_distributions() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "loopwatch", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"loopwatch {__version__}"
    assert version("loopwatch") == __version__  # pyproject takes it from _version.py
