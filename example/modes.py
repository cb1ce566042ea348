"""The three versions of the demo service and what distinguishes them."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
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


MODES: Mapping[str, Mode] = {
    mode.name: mode
    for mode in (
        # The article's slow service: CPU work on the event loop thread.
        Mode("bottlenecks", "FastAPI OTel Demo (Bottlenecks)", "loop", 0.4, 0.1, 1.2, "slow"),
        # The article's fixes: faster dependencies, CPU work moved to a thread.
        Mode("optimized", "FastAPI OTel Demo (Optimized)", "thread", 0.08, 0.02, 0.2, "fast"),
        # Beyond the article: the CPU work in another process, away from the GIL.
        Mode("process", "FastAPI OTel Demo (Process pool)", "process", 0.08, 0.02, 0.2, "fast"),
    )
}


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
