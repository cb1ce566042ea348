"""loopwatch's logger while tests are watched: its records stay out of the tests' logs.

The core logs a WARNING for every stall on logger ``loopwatch``. Under the plugin the
failure report says the same, and a record reaching the root logger lands in ``caplog``
and in "Captured log" sections (pytest's handlers sit on the root logger), where tests
that assert on their own logs trip over it. So while the plugin watches, the logger does
not propagate; a handler of its own keeps loopwatch's errors for the end-of-run summary
(and stops :data:`logging.lastResort` from printing records to stderr).
"""

from __future__ import annotations

import logging

LOGGER = "loopwatch"


class KeepErrors(logging.Handler):
    """Keeps the first ``limit`` ERROR records of loopwatch, formatted, for the summary."""

    def __init__(self, kept: list[str], limit: int) -> None:
        super().__init__(logging.ERROR)
        self.kept = kept
        self.limit = limit

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.kept) >= self.limit:
            return
        try:
            message = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                error = record.exc_info[1]
                message += f" ({type(error).__name__}: {error})"
        except Exception:  # a record that cannot be formatted
            message = str(record.msg)
        self.kept.append(message)


class QuietLogger:
    """Turns off propagation of the ``loopwatch`` logger while held; nests.

    Held for the whole run with ``--loopwatch`` (or ``loopwatch = true``), else for each
    test a marker watches (from pytest's main thread); the last release restores the
    logger as it was.
    """

    def __init__(self, handler: logging.Handler) -> None:
        self._handler = handler
        self._holds = 0
        self._propagate = True

    def hold(self) -> None:
        self._holds += 1
        if self._holds == 1:
            logger = logging.getLogger(LOGGER)
            self._propagate = logger.propagate
            logger.propagate = False
            logger.addHandler(self._handler)

    def release(self) -> None:
        if self._holds == 0:
            return
        self._holds -= 1
        if self._holds == 0:
            logger = logging.getLogger(LOGGER)
            logger.removeHandler(self._handler)
            logger.propagate = self._propagate
