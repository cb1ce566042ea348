"""The *Peers side by side* part of the benchmark page: tables, a figure, and what each
peer does that loopwatch does not."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

Results = dict[str, Any]

NOTES = {
    "aiocop": "patches the loop's scheduling to time every task step, and uses audit hooks "
    "on known blocking calls: it names the call with its arguments and a trace "
    "(`time.sleep(0.3)`, the socket, the SQL) and scores the step's severity; it can raise "
    "on violations in tests. It reports when the step ends.",
    "pyleak": "a test-time context manager (`no_event_loop_blocking`) that can fail a test "
    "on a block, next to its task and thread leak detectors; its watchdog thread logs a "
    "block once the threshold passes, while the stall lasts.",
    "fastapi-loopguard": "an ASGI middleware: a 10 ms sentinel sleep measures lag, which is "
    "attributed to every request in flight (response headers, a strict mode that answers "
    "503, Prometheus); it names requests, never code. Driven here through the sentinel the "
    "middleware starts, with no request in flight.",
    "aiodebug": "one patch of `asyncio.Handle._run` that times every callback and names "
    "the handle (the task's coroutine), plus a StatsD lag gauge and stack dumps of long "
    "hangs to files; nothing on uvloop, whose handles do not go through `Handle._run`.",
    "blockbuster": "stops known blocking calls (`time.sleep`, socket and file I/O, "
    "`sqlite3`, locks, ...) *before* they block, of any length, by raising "
    "`BlockingError` on the loop thread: a test-time guard that finds short blocking calls "
    "no threshold-based tool sees; CPU-bound code is not its business.",
    "asyncio-event-loop-monitor": "`sys.setprofile` times every Python and C call made on "
    "the loop and reports each one over the threshold by name, C calls included "
    "(`list.sort`, `re.Pattern.match`): it names GIL-holding C calls loopwatch cannot "
    "sample. It also times the loop's idle `epoll.poll` like any call (counted below, not "
    "taken as detections). Its own docstring says it is not for always-on production use.",
    "asyncio debug mode": "built in: logs every callback slower than "
    "`slow_callback_duration` after it ends (naming the handle), and in the same mode "
    "warns about never-awaited coroutines, non-thread-safe calls and unclosed resources.",
}


def _cases(run: dict[str, Any]) -> list[dict[str, Any]]:
    return list(run.get("cases", []))


def _count(cases: Sequence[dict[str, Any]], key: str) -> str:
    return f"{sum(1 for c in cases if c[key])}/{len(cases)}"


def _error_ms(cases: Sequence[dict[str, Any]]) -> str:
    errors = [abs(c["error"]) * 1000 for c in cases if c["error"] is not None]
    if not errors:
        return "—"
    return f"{statistics.median(errors):.0f} (max {max(errors):.0f})"


def _cell(case: dict[str, Any]) -> str:
    if case["stopped"]:
        return "stopped"
    if not case["detected"]:
        return "no"
    text = "named" if case["named"] else "found"
    return text + (" (live)" if case["while_ongoing"] else "")


def summary_rows(data: dict[str, Any]) -> list[str]:
    out = [
        "| tool | version | loop | detected | stopped before blocking | function named "
        "| reported while ongoing | \\|duration error\\| ms, median (max) | cause given |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in data["runs"]:
        version = data["versions"].get(run["tool"], "")
        if "failed" in run:
            reason = run["failed"].strip().splitlines()[-1][:120] if run["failed"] else ""
            out.append(f"| {run['tool']} | {version} | {run['loop']} | failed: `{reason}` "
                       "| | | | | |")  # fmt: skip
            continue
        cases = _cases(run)
        causes = sorted({str(c["cause"])[:40] for c in cases if c["cause"]})
        out.append(
            f"| {run['tool']} | {version} | {run['loop']} | {_count(cases, 'detected')} | "
            f"{_count(cases, 'stopped')} | {_count(cases, 'named')} | "
            f"{_count(cases, 'while_ongoing')} | {_error_ms(cases)} | "
            f"{_count(cases, 'cause')}{' (' + ', '.join(causes[:3]) + ')' if causes else ''} |"
        )
    return out


def matrix_rows(data: dict[str, Any], loop: str) -> list[str]:
    runs = [r for r in data["runs"] if r["loop"] == loop and "cases" in r]
    if not runs:
        return []
    out = ["| pattern | " + " | ".join(r["tool"] for r in runs) + " |",
           "|---" * (len(runs) + 1) + "|"]  # fmt: skip
    for index, pattern in enumerate(data["patterns"]):
        cells = [_cell(r["cases"][index]) for r in runs]
        out.append(f"| {pattern} | " + " | ".join(cells) + " |")
    return out


def overhead_rows(data: dict[str, Any]) -> list[str]:
    rows = {row["tool"]: row for row in data["overhead"]}
    base = rows.get("none")
    if base is None:
        return []
    out = ["| tool | instructions per switch | added | valgrind seconds (short, long run) |",
           "|---|---|---|---|"]  # fmt: skip
    for name, row in rows.items():
        added = row["per_switch"] - base["per_switch"]
        share = added / base["per_switch"] * 100
        seconds = ", ".join(f"{s:.0f}" for s in row.get("seconds", []))
        added_text = "—" if name == "none" else f"{added:+,.0f} ({share:+.1f} %)"
        out.append(f"| {name} | {row['per_switch']:,.0f} | {added_text} | {seconds} |")
    return out


def request_rows(data: dict[str, Any]) -> list[str]:
    """Instructions per request of the ASGI middlewares, against the bare app."""
    row = data.get("requests")
    if not row:
        return []
    bare = row["bare"]
    out = ["| middleware | instructions per request | added | runs |", "|---|---|---|---|"]
    for name, runs in row["runs"].items():
        extra = row[name] - bare
        added = "—" if name == "bare" else f"{extra:+,.0f} ({extra / bare * 100:+.2f} %)"
        counts = ", ".join(f"{count:,.0f}" for count in runs)
        label = "none (bare app)" if name == "bare" else name
        out.append(f"| {label} | {row[name]:,.0f} | {added} | {counts} |")
    return out


def plot(results: Results, path: Path, finish: Callable[..., None]) -> None:
    """Detection counts per tool (asyncio loop) and instructions added per switch."""
    data = results["peers"]
    runs = [r for r in data["runs"] if r["loop"] == "asyncio" and "cases" in r]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    keys = (("detected", "detected"), ("stopped", "stopped before blocking"),
            ("named", "function named"), ("while_ongoing", "reported while ongoing"))  # fmt: skip
    width = 0.2
    for offset, (key, label) in enumerate(keys):
        counts = [sum(1 for c in r["cases"] if c[key]) for r in runs]
        left.bar([i + offset * width for i in range(len(runs))], counts, width, label=label)
    left.set_xticks([i + 1.5 * width for i in range(len(runs))])
    left.set_xticklabels([r["tool"] for r in runs], rotation=30, ha="right", fontsize=8)
    left.set_ylabel(f"stalls of {len(data['patterns'])} (~300 ms each)")
    left.set_title("asyncio loop, threshold 100 ms", fontsize=9)
    left.set_ylim(0, len(data["patterns"]) + 4)
    left.legend(fontsize=7, loc="upper center", ncol=2)
    rows = {row["tool"]: row for row in data["overhead"]}
    if "none" in rows:
        base = rows["none"]["per_switch"]
        names = [n for n in rows if n != "none"]
        right.bar(names, [(rows[n]["per_switch"] - base) / base * 100 for n in names])
        right.set_yscale("symlog", linthresh=1)
        right.set_ylabel("instructions added per task switch, % (symlog)")
        right.set_title(f"{data['switches']['tasks']} tasks, `await asyncio.sleep(0)`, "
                        "valgrind cachegrind", fontsize=9)  # fmt: skip
        right.tick_params(axis="x", labelrotation=30, labelsize=8)
        for label in right.get_xticklabels():
            label.set_horizontalalignment("right")
    fig.suptitle("Peers side by side: the stall corpus and the cost per task switch",
                 fontsize=10)  # fmt: skip
    finish(fig, results, "bench/peers.py", path, (0, 0.05, 1, 0.95))


def section(results: Results, figures: dict[str, str]) -> list[str]:
    data = results["peers"]
    sw = data["switches"]
    out = [
        "",
        "## Peers side by side",
        "",
        f"`python -m bench --only peers`. Each tool is set up as its README shows, in its "
        f"production mode, with a {data['threshold'] * 1000:.0f} ms threshold where it has "
        "one, in a fresh interpreter per tool and loop, and runs the stall corpus of the "
        f"accuracy section once at ~{data['nominal'] * 1000:.0f} ms per pattern, plus "
        "`lock` (waiting on a `threading.Lock` another thread holds). The *http* pattern is "
        "a synchronous httpx call to a local server on 127.0.0.1 that answers after "
        "~300 ms. After each stall (0.3 s of idle loop) the tool's reports are judged: "
        "*detected* (any report), *function named* (the `stall_*` function appears in what "
        "the tool reports: its name, handle, trace or stack), *live* (a report came at least "
        "50 ms before the stall ended), the duration error of its longest report against "
        "`time.perf_counter()` around the call, and whether it gives a cause. Work-sized "
        "patterns are calibrated before the tool is switched on, so a tool that slows "
        "Python code (profilers) lengthens them; the error is against the true duration.",
        "",
    ]
    if "peers" in figures:
        out += [f"![peers]({figures['peers']})", ""]
    out += summary_rows(data)
    for loop in ("asyncio", "uvloop"):
        matrix = matrix_rows(data, loop)
        if matrix:
            out += ["", f"Per pattern on {loop} (*named*: function named; *found*: reported "
                    "without naming it; *live*: reported while it lasted; *stopped*: raised "
                    "before blocking; *no*: not reported):", "", *matrix]  # fmt: skip
    idle = sum(c.get("idle_waits", 0) for r in data["runs"] for c in _cases(r))
    if idle:
        out += ["", "asyncio-event-loop-monitor also reported the idle loop's selector "
                f"wait (`select.epoll.poll` over 100 ms) {idle} times during the corpus; "
                "those are not counted as detections above."]  # fmt: skip
    overhead = overhead_rows(data)
    if overhead:
        out += [
            "",
            "### Cost per task switch, in instructions",
            "",
            f"{sw['tasks']} tasks each switch {sw['short']} and then, in a new process, "
            f"{sw['long']} times (`await asyncio.sleep(0)`, stdlib loop) with the tool on, "
            "under `valgrind --tool=cachegrind`; the difference divided by the extra "
            f"{sw['tasks'] * (sw['long'] - sw['short']):,} switches is the cost per switch, "
            "start-up cancelled out. Valgrind slows Python ~50 times, so work done per unit "
            "of time (loopwatch's heartbeat every 5 ms and its watchdog thread, pyleak's "
            "10 ms watchdog thread, fastapi-loopguard's 10 ms sentinel) would be charged to the "
            "switches ~50 times more than in a real run; so their periods (and thresholds) "
            "are multiplied by 50 here, to tick as often per switch as at full speed. That "
            "factor is approximate (valgrind's slowdown varies with the code and the load). "
            "The per-call tools (aiocop, aiodebug, asyncio-event-loop-monitor, debug mode, "
            "blockbuster) cost per switch whatever the speed. The wall-time cost of "
            "loopwatch without valgrind is in the switching section above.",
            "",
            *overhead,
        ]
    requests = request_rows(data)
    if requests:
        row = data["requests"]
        short, long = row["requests"]
        out += [
            "",
            "### Cost per request of the ASGI middlewares, in instructions",
            "",
            "The FastAPI hello app of the performance guard (`python -m bench.guard`), called "
            "directly as an ASGI app (no server, no socket; lifespan started), bare and with "
            "each tool that comes as ASGI middleware: loopwatch's `LoopWatchMiddleware` "
            "(untraced) and fastapi-loopguard's `LoopGuardMiddleware` in its production mode "
            f'(`enforcement_mode="log"`). {short:,} and then {long:,} requests in two '
            "fresh processes under `valgrind --tool=cachegrind`, the difference divided by "
            f"the {long - short:,} extra requests; {len(row['runs']['bare'])} such pairs each "
            "way, medians (each run's figure is listed). Both tools' clocks (loopwatch's "
            "heartbeat, loopguard's 10 ms sentinel) are slowed by valgrind's measured "
            f"slowdown ({row['valgrind_slowdown']}x here), so they tick as often per request "
            "as at full speed." + (f" Measured {row['measured']}." if "measured" in row else ""),
            "",
            *requests,
        ]
    out += ["", "### What each peer does that loopwatch does not", ""]
    out += [f"- **{name}**: {text}" for name, text in NOTES.items()]
    return out
