"""loopwatch's logger while tests are watched: its records stay out of the tests' logs.

The core logs a WARNING for every stall on logger ``loopwatch``. Under the plugin the
failure report says the same, and a record that reaches pytest's handlers lands in
``caplog`` and in "Captured log" sections, where tests that assert on their own logs trip
over it. Turning propagation off is not enough: pytest attaches its capture handlers to
the root logger *and* to every logger that does not propagate. So while the plugin
watches, a filter on the logger stops every record before any handler sees it, and keeps
loopwatch's errors for the end-of-run summary.
"""

from __future__ import annotations

import logging

LOGGER = "loopwatch"


class Swallow(logging.Filter):
    """Stops every record of the logger; keeps the first ``limit`` errors, formatted."""

    def __init__(self, kept: list[str], limit: int) -> None:
        super().__init__()
        self.kept = kept
        self.limit = limit

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and len(self.kept) < self.limit:
            try:
                message = record.getMessage()
            except Exception:  # a record that cannot be formatted
                message = str(record.msg)
            if record.exc_info and record.exc_info[1] is not None:
                error = record.exc_info[1]
                message += f" ({type(error).__name__}: {error})"
            self.kept.append(message)
        return False


class QuietLogger:
    """Swallows the records of logger ``loopwatch`` while held; nests.

    Held for the whole run with ``--loopwatch`` (or ``loopwatch = true``), else for each
    test a marker watches (from pytest's main thread); the last release restores the
    logger as it was.
    """

    def __init__(self, swallow: Swallow) -> None:
        self._swallow = swallow
        self._holds = 0

    def hold(self) -> None:
        self._holds += 1
        if self._holds == 1:
            logging.getLogger(LOGGER).addFilter(self._swallow)

    def release(self) -> None:
        if self._holds == 0:
            return
        self._holds -= 1
        if self._holds == 0:
            logging.getLogger(LOGGER).removeFilter(self._swallow)
