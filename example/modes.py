"""The three versions of the demo service and what distinguishes them."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Literal

MODE_VARIABLE = "DEMO_MODE"

CpuPlacement = Literal["loop", "thread", "process"]


@dataclass(frozen=True)
class Mode:
    """One version of the service: where the CPU work runs and how slow the rest is."""

    name: str
    title: str
    cpu: CpuPlacement
    db_seconds: float
    post_processing_seconds: float
    background_job_seconds: float
    background_job_type: str

    @property
    def service_name(self) -> str:
        """The OpenTelemetry ``service.name``, e.g. ``fastapi-demo-bottlenecks``."""
        return f"fastapi-demo-{self.name}"


_SLOW = Mode(
    name="bottlenecks",
    title="FastAPI OTel Demo (Bottlenecks)",
    cpu="loop",  # the article's slow service: CPU work on the event loop thread
    db_seconds=0.4,
    post_processing_seconds=0.1,
    background_job_seconds=1.2,
    background_job_type="slow",
)
_OPTIMIZED = Mode(
    name="optimized",
    title="FastAPI OTel Demo (Optimized)",
    cpu="thread",  # the article's fix: CPU work moved to a thread
    db_seconds=0.08,
    post_processing_seconds=0.02,
    background_job_seconds=0.2,
    background_job_type="fast",
)
# Beyond the article: the CPU work in a worker process, away from the loop's GIL.
_PROCESS = replace(
    _OPTIMIZED, name="process", title="FastAPI OTel Demo (Process pool)", cpu="process"
)

MODES: Mapping[str, Mode] = {mode.name: mode for mode in (_SLOW, _OPTIMIZED, _PROCESS)}


def resolve_mode(mode: str | None = None, environ: Mapping[str, str] | None = None) -> Mode:
    """The mode named by ``mode``, else by ``$DEMO_MODE``, else ``bottlenecks``.

    Raises :class:`ValueError` naming the argument or variable, its value and the
    accepted values when the name is unknown.
    """
    source = "mode"
    if mode is None:
        source = MODE_VARIABLE
        mode = (os.environ if environ is None else environ).get(MODE_VARIABLE) or "bottlenecks"
    try:
        return MODES[mode.strip().lower()]
    except KeyError:
        raise ValueError(
            f"{source}={mode!r} is not a demo mode; accepted values: {', '.join(MODES)}"
        ) from None
