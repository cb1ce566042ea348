"""``loopwatch demo``: the article's service, slow and fixed, measured without Jaeger.

The example app comes from the checkout, else from the wheel (:mod:`.source`).
"""

from __future__ import annotations

import os
import time

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from loopwatch.demo.source import ExampleNotFoundError, make_example_importable

INSTALL_HINT = "install the demo extra: pip install 'loopwatch[demo]'"


def run_demo(*, otlp_endpoint: str | None = None, console: Console | None = None) -> int:
    """Run every mode and print the report; return the exit status (2: cannot run).

    ``otlp_endpoint`` (a base or traces URL) also sends the traces over OTLP/HTTP;
    without it, the standard ``OTEL_EXPORTER_OTLP_*ENDPOINT`` variables are honoured.
    """
    console = console or Console()
    try:
        root = make_example_importable()
    except ExampleNotFoundError as error:
        console.print(f"[bold red]loopwatch demo:[/] {escape(str(error))}")
        return 2
    # These import the example app, importable only now that the checkout is on sys.path.
    try:
        from example.modes import MODES
        from example.telemetry import otlp_traces_endpoint, traces_url
        from loopwatch.demo.calibration import demo_iterations
        from loopwatch.demo.report import render
        from loopwatch.demo.runner import STEPS, run_mode
    except ModuleNotFoundError as error:
        console.print(f"[bold red]loopwatch demo:[/] {escape(f'{error}; {INSTALL_HINT}')}")
        return 2
    try:
        cpu_iterations = demo_iterations(os.environ)
    except ValueError as error:
        console.print(f"[bold red]loopwatch demo:[/] {escape(str(error))}")
        return 2
    otlp_endpoint = traces_url(otlp_endpoint) if otlp_endpoint else otlp_traces_endpoint()

    started = time.perf_counter()
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    with progress:
        task = progress.add_task("starting", total=STEPS * len(MODES))

        def step(description: str) -> None:
            progress.update(task, description=description, advance=1)

        results = [
            run_mode(mode, otlp_endpoint=otlp_endpoint, step=step, cpu_iterations=cpu_iterations)
            for mode in MODES
        ]
    console.rule("loopwatch demo: the article's FastAPI service, slow and fixed")
    render(results, root=root, console=console)
    elapsed = time.perf_counter() - started
    services = ", ".join(mode.service_name for mode in MODES.values())
    exported = f"; traces also exported to {otlp_endpoint} ({services})" if otlp_endpoint else ""
    console.print(f"Done in {elapsed:.1f} s{exported}.", style="dim")
    return 0
