"""The demo's report: rich tables comparing the modes."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from loopwatch import BlockEvent, FrameInfo
from loopwatch.demo.runner import ModeResult, culprit_label
from loopwatch.demo.stats import Distribution, median

CAUSES = {
    "cpu": "Python code running on the loop",
    "blocking": "the loop thread waited: sleep, blocking I/O, a lock",
    "gc": "garbage collection",
    "gil": "the loop waited for the GIL; no stack sample possible",
    "unscheduled": "the process was not running",
    "code": "code on the loop",
}
ITEM_SPANS = (
    "handler.get_item",
    "db.query",
    "cpu.work.blocking",
    "cpu.work.offloaded",
    "cpu.work.process",
    "post.processing",
)


def duration(seconds: float | None) -> str:
    """``1.52 s``, ``172 ms``, ``4.8 ms``, ``0.06 ms``; ``-`` for no value."""
    if seconds is None:
        return "-"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    millis = seconds * 1000
    if millis >= 10:
        return f"{millis:.0f} ms"
    return f"{millis:.1f} ms" if millis >= 1 else f"{millis:.2f} ms"


def render(results: Sequence[ModeResult], *, root: Path, console: Console) -> None:
    """Print the stalls, the side-by-side comparison and the span breakdown."""
    console.print(Group(*_stalls(results, root)))
    console.print(_comparison_table(results))
    console.print(_spans_table(results))
    console.print(
        "Traced: loop.blocked spans parented into a request's trace; they are "
        "rate-limited per culprit (LOOPWATCH_REPORT_BURST, LOOPWATCH_REPORT_PER_MINUTE).\n"
        "Loop delay: how late loopwatch's heartbeat ran (asyncio.eventloop.delay; p50/p99 "
        "interpolated from its buckets), idle = 1 s before the requests.\n"
        "A thread running Python code holds the GIL, so the loop keeps waiting for it in "
        "short slices; a worker process has its own GIL.",
        style="dim",
    )


def _stalls(results: Sequence[ModeResult], root: Path) -> Iterator[RenderableType]:
    yield Text("Stalls found by loopwatch", style="bold")
    for result in results:
        groups: defaultdict[tuple[str, str, str, str], list[BlockEvent]] = defaultdict(list)
        for event in result.stalls:
            culprit = event.culprit.function if event.culprit else None
            function = culprit_label(culprit, event.cause)
            route = f"{event.http_method} {event.http_route}" if event.http_route else "-"
            groups[function, _location(event.culprit, root), route, event.cause].append(event)
        if not groups:
            yield Text.assemble(f"{result.mode}: ", ("no stall", "green"))
        for (function, where, route, cause), events in groups.items():
            durations = [event.duration for event in events]
            facts = Table.grid(padding=(0, 2))
            facts.add_column(style="dim")
            facts.add_column()
            facts.add_row("where", where)
            facts.add_row("during", route)
            facts.add_row("cause", f"{cause} ({CAUSES.get(cause, 'see the loopwatch docs')})")
            facts.add_row(
                "duration", f"median {duration(median(durations))}, max {duration(max(durations))}"
            )
            held_up = sum(event.delayed_requests for event in events)
            facts.add_row("held up", f"{held_up} other requests")
            facts.add_row(
                "traced", f"{result.traced_stalls[function]} loop.blocked spans in request traces"
            )
            count = f"{len(events)} stall{'s' if len(events) > 1 else ''}"
            title = f"{result.mode}: {count} in [bold red]{function}[/]"
            yield Panel(facts, title=title, title_align="left", expand=False)


def _location(frame: FrameInfo | None, root: Path) -> str:
    if frame is None:
        return "-"
    path = Path(frame.file)
    if path.is_relative_to(root):
        path = path.relative_to(root)
    return f"{path}:{frame.line}"


def _comparison_table(results: Sequence[ModeResult]) -> Table:
    table = Table(title="Side by side", title_justify="left")
    table.add_column("")
    for result in results:
        table.add_column(result.mode, justify="right")
    rows: list[tuple[str, Callable[[ModeResult], str]]] = [
        ("GET /items/1, median of 3", lambda r: duration(median(r.item_latencies))),
        ("5 concurrent GET /items/2, slowest", lambda r: duration(_max(r.concurrent_latencies))),
        ("POST /process/abc, median of 3", lambda r: duration(median(r.process_latencies))),
        ("background.job, median", lambda r: duration(median(r.background_jobs))),
        ("loop stalls", lambda r: str(len(r.stalls))),
        ("requests held up", lambda r: str(sum(e.delayed_requests for e in r.stalls))),
        ("loop delay p50", lambda r: _delay(r.load_delay, lambda d: d.p50)),
        ("loop delay p99", lambda r: _delay(r.load_delay, lambda d: d.p99)),
        ("loop delay max", lambda r: _delay(r.load_delay, lambda d: d.max)),
        ("idle loop delay p99", lambda r: _delay(r.idle_delay, lambda d: d.p99)),
    ]
    for label, cell in rows:
        table.add_row(label, *(cell(result) for result in results))
    return table


def _spans_table(results: Sequence[ModeResult]) -> Table:
    table = Table(
        title="Where GET /items/1 spends its time (median span durations)", title_justify="left"
    )
    table.add_column("span")
    for result in results:
        table.add_column(result.mode, justify="right")
    for name in ITEM_SPANS:
        table.add_row(name, *(duration(result.item_spans.get(name)) for result in results))
    return table


def _delay(distribution: Distribution | None, pick: Callable[[Distribution], float]) -> str:
    return "-" if distribution is None else duration(pick(distribution))


def _max(values: Sequence[float]) -> float | None:
    return max(values) if values else None
