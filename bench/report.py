"""Render the results as Markdown tables and PNG figures (matplotlib, Agg backend)."""

from __future__ import annotations

import itertools
import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from . import busy, hostile, peers_report, switching
from .accuracy import THRESHOLD, CaseResult, case_results, tolerance
from .common import median_interval
from .micro import IDLE_THREAD, LOOPWATCH_NO_CLOCK, PENDING_TIMER, SHAPES, TIMER_AND_THREAD

Results = dict[str, Any]

THROUGHPUT_GOAL = 0.01
MICRO_GOAL = 0.02
SAMPLE_GOAL_US = 50.0
LEAK_BYTES_PER_REQUEST = 8.0
"""Growth below one pointer per request: no object is kept per request (the smallest
Python object is 16 bytes, a dict entry about 50)."""


def _pct(value: float, digits: int = 1) -> str:
    return f"{value * 100:+.{digits}f} %"


def _machine_line(results: Results) -> str:
    m = results["machine"]
    return f"{m['cpu']}, {m['cores']} cores, {m['python']}"


def _finish(
    fig: plt.Figure, results: Results, config: str, path: Path, rect: tuple[float, ...]
) -> None:
    """Add the footer (machine, configuration, run), lay out within ``rect``, save, close."""
    m = results["machine"]
    fig.text(
        0.01, 0.01,
        f"{m['cpu']} ({m['cores']} cores, {m['memory']}), Linux {m['kernel']}, {m['python']}\n"
        f"{config}; {results['mode']} run {results['date']}",
        fontsize=7, color="#444444",
    )  # fmt: skip
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- verdicts -------------------------------------------------------------------------


def overhead_verdicts(groups: Sequence[dict[str, Any]]) -> tuple[str, str]:
    """Throughput and p99 verdicts over all groups.

    On a shared machine the measured throughput moves with other processes' load, so the
    verdict rests on the server's CPU time per request (what throughput is on a dedicated
    core), from the same-process A/B where it was measured (its 95 % interval decides:
    met if within the goal, missed if above it, else not resolved), else from the separate
    servers; the measured throughput change is given next to it.
    """
    summaries = [g["summary"] for g in groups]
    worst_rps = min(summaries, key=lambda s: s["rps_ratio"])
    low, high = worst_rps["rps_paired_ratio_spread"]
    measured = (
        f"Measured throughput: worst median change {_pct(worst_rps['rps_ratio'] - 1)} "
        f"({worst_rps['group']}; paired runs {_pct(low - 1)} to {_pct(high - 1)}: "
        "other load dominates)"
    )
    estimates = alternating_estimates(groups)
    if estimates:
        worst = max(estimates, key=lambda e: e["total"])
        if all(e["total_interval"][1] <= THROUGHPUT_GOAL for e in estimates):
            verdict = "met"
        elif any(e["total_interval"][0] > THROUGHPUT_GOAL for e in estimates):
            verdict = "MISSED"
        else:
            verdict = "not resolved (the 95 % interval spans the goal)"
        over = [e["group"] for e in estimates if e["total_interval"][0] > THROUGHPUT_GOAL]
        rps = (
            f"{verdict} by server CPU per request, same-process A/B: worst "
            f"{_pct(worst['total'])} (95 % interval {_pct(worst['total_interval'][0])} to "
            f"{_pct(worst['total_interval'][1])}; {worst['group']})"
            + (f"; above 1 % in: {', '.join(over)}" if over else "")
            + f". {measured}"
        )
    else:
        worst_cpu = max(summaries, key=lambda s: s["cpu_ratio"])
        cpu_change = worst_cpu["cpu_ratio"] - 1
        verdict = "met" if cpu_change <= THROUGHPUT_GOAL else "MISSED"
        rps = (
            f"{verdict} by server CPU per request: worst {_pct(cpu_change)} "
            f"({worst_cpu['group']}). {measured}"
        )
    return rps, _p99_verdict(summaries)


def _p99_verdict(summaries: Sequence[dict[str, Any]]) -> str:
    tested = [s for s in summaries if "p99_higher_p" in s]
    if not tested:
        return "not resolved: these results have no rank test (rendered from an older run)"
    method = (
        f"one-sided exact Mann-Whitney test per row on "
        f"{min(s['runs_per_config'] for s in tested)} runs "
        f"each, Holm-corrected over the {len(tested)} rows at {P99_FAMILY_ALPHA * 100:.0f} %"
    )
    higher = p99_higher_groups(tested)
    if not higher:
        return f"met: no row's p99 with loopwatch is higher beyond noise ({method})"
    return (
        f"MISSED: p99 with loopwatch higher beyond noise in: {', '.join(higher)} "
        f"({method}; see table)"
    )


def alternating_estimates(groups: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per group, loopwatch's cost from the same-process A/B: the middleware's (per
    request) plus the watcher's, measured without OpenTelemetry on the same app and loop
    (its cost is per second: heartbeat ticks). Intervals add up (conservative)."""
    watch = {
        (g["summary"]["app"], g["summary"]["loop"]): g["alternating"]["watch"]
        for g in groups
        if "watch" in g.get("alternating", {})
    }
    found = []
    for g in groups:
        s = g["summary"]
        middleware = g.get("alternating", {}).get("middleware")
        watcher = watch.get((s["app"], s["loop"]))
        if middleware is None or watcher is None:
            continue
        parts = (middleware, watcher)
        found.append({
            "group": s["group"],
            "summary": s,
            "middleware": middleware,
            "watch": watcher,
            "empty": g["alternating"].get("empty"),
            "same": g["alternating"].get("same"),
            "total": sum(p["ratio"] - 1 for p in parts),
            "total_interval": (
                sum(p["ratio_interval"][0] - 1 for p in parts),
                sum(p["ratio_interval"][1] - 1 for p in parts),
            ),
        })  # fmt: skip
    return found


P99_FAMILY_ALPHA = 0.05
"""Chance, over all rows together, of calling a p99 higher when loopwatch changed none."""


def p99_higher_groups(summaries: Sequence[dict[str, Any]]) -> list[str]:
    """The groups whose p99 is higher with loopwatch beyond noise: Holm's step-down over
    the rows' one-sided p-values (``p99_higher_p``), family-wise error
    :data:`P99_FAMILY_ALPHA`. Closed-loop load (wrk) turns any per-request cost into
    latency, so a real throughput loss shows here too; runs are separate server processes,
    which differ by a few per cent on their own."""
    tested = sorted((s["p99_higher_p"], s["group"]) for s in summaries if "p99_higher_p" in s)
    higher = []
    for rank, (p_value, group) in enumerate(tested):
        if not p_value <= P99_FAMILY_ALPHA / (len(tested) - rank):
            break
        higher.append(group)
    return higher


def _p99_cell(summary: dict[str, Any]) -> str:
    """The p99 change with its one-sided p-value (``?`` for results without it)."""
    change = _pct(summary["p99_on"] / summary["p99_off"] - 1)
    p_value = summary.get("p99_higher_p")
    return f"{change} (p = {p_value:.3f})" if p_value is not None else f"{change} (p = ?)"


def micro_verdict(rows: Sequence[dict[str, Any]]) -> str:
    """Verdict on process CPU time (wall time moves with other load): the median of the
    per-round ratios, met if its 95 % interval is within the goal, missed if above it.
    Against no monitor at all, and against a loop with one idle timer and one idle thread
    (what a server has anyway), where measured."""
    parts = []
    for row in rows:
        if row["monitor"] == "loopwatch":
            text = f"{row['loop']} {row['shape']}: " + _micro_goal_text(
                row["cpu_paired_overhead"], row["cpu_paired_interval"]
            )
            if "cpu_vs_baseline" in row:
                text += ", against one timer and one idle thread: " + _micro_goal_text(
                    row["cpu_vs_baseline"], row["cpu_vs_baseline_interval"]
                )
            parts.append(text)
    return "; ".join(parts)


def switching_verdict(rows: Sequence[dict[str, Any]]) -> str:
    """loopwatch's cost per task switch in the same-process A/B (met if the 95 % interval
    is within the goal, missed if above it): against no monitor, and beside one idle timer
    and one idle thread that stay on (what a server has anyway)."""
    return "; ".join(
        f"{row['loop']} {_tasks(row)}, against {row['held'] or 'no monitor'}: "
        + _micro_goal_text(row["change"], row["interval"])
        for row in rows
        if row["toggle"] == switching.LOOPWATCH
    )


def _tasks(row: dict[str, Any]) -> str:
    return f"{row['tasks']} task{'s' if row['tasks'] > 1 else ''}"


def _micro_goal_text(change: float, interval: Sequence[float]) -> str:
    low, high = interval
    verdict = (
        "met" if high <= MICRO_GOAL
        else "MISSED" if low > MICRO_GOAL
        else "not resolved: the interval spans the goal"
    )  # fmt: skip
    return f"{_pct(change)} CPU (95 % interval {_pct(low)} to {_pct(high)}; {verdict})"


def accuracy_summary(cases: Sequence[CaseResult]) -> dict[str, Any]:
    """Counts for the goals. Cause and culprit are judged on every reported stall, the
    ones between 1 and 1.5 x threshold included."""
    must = [c for c in cases if c.must_detect]
    reported = [c for c in cases if c.detected]
    verdicts = Counter(c.culprit_verdict for c in reported)
    return {
        "must": len(must),
        "detected": sum(c.detected for c in must),
        "reported": len(reported),
        "cause_ok": sum(c.cause_ok for c in reported),
        "culprit_right": verdicts["right"],
        "culprit_none": verdicts["none"],
        "culprit_wrong": verdicts["wrong"],
        "must_cause_ok": sum(c.cause_ok for c in must if c.detected),
        "must_culprit_right": sum(c.culprit_verdict == "right" for c in must if c.detected),
        "error_ok": sum(c.error_ok for c in reported),
        "max_error_ms": max((abs(c.error or 0) * 1000 for c in reported), default=0.0),
        "below_detected": sum(c.detected for c in cases if c.true < THRESHOLD),
        "below": sum(c.true < THRESHOLD for c in cases),
    }


# --- figures --------------------------------------------------------------------------


def _rounds_text(rounds: Any) -> str:
    values = sorted(set(rounds.values())) if isinstance(rounds, dict) else [rounds]
    return f"{'-'.join(str(v) for v in values)} rounds"


def plot_overhead(results: Results, path: Path) -> None:
    groups = results["overhead"]["groups"]
    labels = [
        g["summary"]["group"].replace("FastAPIInstrumentor", "OTel").replace(" / ", "\n")
        for g in groups
    ]
    fig, (ax_cpu, ax_rps, ax_p99) = plt.subplots(1, 3, figsize=(17, 5.6))
    summaries = [g["summary"] for g in groups]
    estimates = alternating_estimates(groups)
    if len(estimates) == len(groups):  # the same-process A/B, with its 95 % intervals
        summaries = [
            {**e["summary"], "cpu_ratio": 1 + e["total"],
             "cpu_paired_ratio_spread": tuple(1 + x for x in e["total_interval"])}
            for e in estimates
        ]  # fmt: skip
        cpu_title = "Server CPU per request with / without (same-process A/B)"
    else:
        cpu_title = "Server CPU per request with / without"
    for ax, key, spread_key, title in (
        (ax_cpu, "cpu_ratio", "cpu_paired_ratio_spread", cpu_title),
        (ax_rps, "rps_ratio", "rps_paired_ratio_spread", "Throughput with / without loopwatch"),
        (ax_p99, "p99_ratio", "p99_paired_ratio_spread", "p99 latency with / without loopwatch"),
    ):
        values = [summary[key] for summary in summaries]
        lows = [v - m[spread_key][0] for v, m in zip(values, summaries, strict=True)]
        highs = [m[spread_key][1] - v for v, m in zip(values, summaries, strict=True)]
        x = range(len(values))
        colors = ["#4c72b0" if g["summary"]["loop"] == "asyncio" else "#dd8452" for g in groups]
        ax.bar(x, values, color=colors, yerr=[lows, highs], capsize=4)
        ax.axhline(1.0, color="black", linewidth=0.8)
        if key in ("rps_ratio", "cpu_ratio"):
            goal = 1 - THROUGHPUT_GOAL if key == "rps_ratio" else 1 + THROUGHPUT_GOAL
            ax.axhline(goal, color="red", linestyle="--", linewidth=0.8,
                       label="goal: at most 1 % throughput loss")  # fmt: skip
            ax.legend(loc="lower right", fontsize=8)
        ax.set_xticks(list(x), labels, fontsize=7)
        bars = (
            "median of the paired ratios; bars: 95 % interval"
            if key == "cpu_ratio" and len(estimates) == len(groups)
            else "ratio of medians; bars: spread of the paired ratios"
        )
        ax.set_title(f"{title}\n({bars})", fontsize=10)
        ax.set_ylabel("ratio")
        low = min([v - d for v, d in zip(values, lows, strict=True)] + [0.9])
        high = max([v + d for v, d in zip(values, highs, strict=True)] + [1.1])
        ax.set_ylim(max(0.0, low - 0.02), high + 0.02)
    o = results["overhead"]
    fig.suptitle(
        f"Overhead under load: uvicorn (1 worker) + FastAPI, wrk -t1 (hello: -c32 GET /, "
        f"example: -c64 GET /items/7), {_rounds_text(o['rounds'])} x {o['seconds']:g} s; "
        "loopwatch default config (threshold 0.1 s)",
        fontsize=9,
    )
    _finish(
        fig,
        results,
        "blue: stdlib asyncio loop, orange: uvloop; OTel: FastAPIInstrumentor",
        path,
        (0, 0.05, 1, 0.95),
    )


def plot_micro(results: Results, path: Path) -> None:
    rows = results["micro"]["rows"]
    sample = results["micro"]["raw"]["sample"]
    shown = [r for r in rows if r["monitor"] != "none"]
    fig, ax = plt.subplots(figsize=(11, max(6.0, 1.8 + 0.42 * len(shown))))
    labels = [f"{r['loop']} | {r['shape']}\n{r['monitor']}" for r in shown]
    values = [r["cpu_overhead"] * 100 for r in shown]
    palette = {"loopwatch": "#55a868", "aiodebug-style": "#8172b2", "asyncio debug": "#c44e52"}
    colors = [
        "#b0b0b0" if r["monitor"].startswith("none") else palette.get(r["monitor"], "#9ccc9c")
        for r in shown
    ]
    ordinary = [v for r, v in zip(shown, values, strict=True) if r["monitor"] != "asyncio debug"]
    cap = max([*ordinary, 10.0]) * 1.3
    bars = ax.barh(range(len(shown)), [min(v, cap) for v in values], color=colors)
    for bar, row in zip(bars, shown, strict=True):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2,
                f" CPU {row['cpu_overhead'] * 100:+.1f} % (wall {row['overhead'] * 100:+.1f} %)",
                va="center", fontsize=7)  # fmt: skip
    ax.axvline(MICRO_GOAL * 100, color="red", linestyle="--", linewidth=0.8,
               label="goal for loopwatch: at most 2 %")  # fmt: skip
    ax.set_yticks(range(len(shown)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("process CPU time vs. no monitor, % (median of runs; bars clipped at the axis)")
    ax.set_xlim(min(0, *values) - 2, cap * 1.45)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(
        f"400,000 task switches (await asyncio.sleep(0)), {results['micro']['raw']['rounds']} "
        f"rounds; loopwatch default config unless labelled;\n"
        f"take_sample() of a {sample['stack_depth']}-frame stack: {sample['median_us']:.1f} µs",
        fontsize=9,
    )
    _finish(fig, results, "slow-callback threshold 0.1 s for every monitor", path, (0, 0.03, 1, 1))


def plot_switching(results: Results, path: Path) -> None:
    rows = results["switching"]["rows"]
    fig, ax = plt.subplots(figsize=(11, max(6.0, 1.8 + 0.42 * len(rows))))
    labels = [
        f"{r['loop']} | {_tasks(r)}\n{r['toggle']}"
        + (f"\nkept on: {r['held']}" if r["held"] else "")
        for r in rows
    ]
    values = [r["change"] * 100 for r in rows]
    low = [(r["change"] - r["interval"][0]) * 100 for r in rows]
    high = [(r["interval"][1] - r["change"]) * 100 for r in rows]
    colors = ["#55a868" if r["toggle"] == switching.LOOPWATCH else "#b0b0b0" for r in rows]
    ax.barh(range(len(rows)), values, xerr=[low, high], color=colors, capsize=2)
    ax.axvline(MICRO_GOAL * 100, color="red", linestyle="--", linewidth=0.8,
               label="goal for loopwatch: at most 2 %")  # fmt: skip
    ax.axvline(0, color="black", linewidth=0.5)
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("process CPU per task switch, on against off, % (median of window pairs, "
                  "95 % interval)")  # fmt: skip
    ax.legend(loc="lower right", fontsize=8)
    data = results["switching"]
    ax.set_title(
        f"Task switches, same-process A/B: switched on and off every {data['window']:g} s, "
        f"{data['segments']} interpreter(s) x {data['segment_seconds']:g} s per row;\n"
        "green: loopwatch (default config), grey: baselines and the A/A control",
        fontsize=9,
    )
    _finish(fig, results, "loopwatch default configuration", path, (0, 0.03, 1, 1))


def plot_accuracy(results: Results, path: Path) -> None:
    cases = case_results(results["accuracy"])
    loops = sorted({c.loop for c in cases})
    fig, axes = plt.subplots(1, len(loops), figsize=(7.5 * len(loops), 5.5), squeeze=False)
    patterns = sorted({c.pattern for c in cases})
    cmap = plt.get_cmap("tab20")
    for ax, loop in zip(axes[0], loops, strict=True):
        mine = [c for c in cases if c.loop == loop]
        top = max(c.true for c in mine) * 1.05
        xs = [top * i / 50 for i in range(51)]
        ax.fill_between(xs, [-tolerance(x) * 1000 for x in xs], [tolerance(x) * 1000 for x in xs],
                        color="#e4e4e4", label="goal: max(5 ms, 5 %)")  # fmt: skip
        for index, pattern in enumerate(patterns):
            hit = [c for c in mine if c.pattern == pattern and c.detected]
            ax.scatter([c.true for c in hit], [(c.error or 0) * 1000 for c in hit], s=20,
                       color=cmap(index), label=pattern)  # fmt: skip
        missed = [c for c in mine if not c.detected]
        ax.scatter([c.true for c in missed], [0] * len(missed), marker="x", color="black",
                   label="not reported")  # fmt: skip
        ax.axvline(THRESHOLD, color="grey", linestyle=":", linewidth=0.8)
        ax.axvline(1.5 * THRESHOLD, color="red", linestyle="--", linewidth=0.8)
        errors = [abs(c.error or 0) * 1000 for c in mine if c.detected]
        limit = max([*errors, tolerance(top) * 1000, 8.0]) * 1.2
        ax.set_ylim(-limit, limit)
        ax.set_xlim(0, top)
        ax.set_xlabel("true stall duration, s (dotted: threshold; dashed: 1.5 x threshold)")
        ax.set_ylabel("reported - true duration, ms")
        ax.set_title(f"{loop} loop, LoopWatch(threshold=0.1), other options default",
                     fontsize=9)  # fmt: skip
        ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle("Accuracy: duration error of each reported stall (x: stall not reported)",
                 fontsize=10)  # fmt: skip
    _finish(fig, results, "stall corpus of bench/stalls.py", path, (0, 0.05, 1, 0.95))


def plot_memory(results: Results, path: Path) -> None:
    mem = results["memory"]
    points = mem["points"]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot([p[0] for p in points], [p[1] for p in points], color="#4c72b0", label="RSS")
    ax.set_xlabel("requests served")
    ax.set_ylabel("RSS, MiB", color="#4c72b0")
    ax.set_ylim(0, max(p[1] for p in points) * 1.3)
    twin = ax.twinx()
    twin.step([p[0] for p in points], [p[2] for p in points], color="#c44e52", where="post")
    twin.set_ylabel("threads", color="#c44e52")
    twin.set_ylim(0, max(p[2] for p in points) + 2)
    ax.set_title(
        f"Server memory and threads over {mem['requests']:,} requests "
        f"(hello-world FastAPI, uvicorn, {mem['loop']} loop, LoopWatchMiddleware default)",
        fontsize=9,
    )
    _finish(fig, results, f"wrk -t1 -c32, {mem['seconds']:.0f} s", path, (0, 0.04, 1, 1))


# --- markdown -------------------------------------------------------------------------


def _ms(value: float) -> str:
    return f"{value:.1f}"


def overhead_table(groups: Sequence[dict[str, Any]]) -> list[str]:
    lines = [
        "| app | loop | FastAPIInstrumentor | req/s without (min-max) | req/s with (min-max) "
        "| throughput change (paired min-max) | p99 ms without (min-max) | p99 ms with "
        "| p99 change (p higher) | server CPU µs/request without → with (change) "
        "| stalls reported / probe lags ≥ 70 ms (runs with loopwatch) | other load (cores) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for g in groups:
        s = g["summary"]
        lo, hi = s["rps_paired_ratio_spread"]
        lines.append(
            f"| {s['app']} | {s['loop']} | {'yes' if s['otel'] else 'no'} "
            f"| {s['rps_off']:.0f} ({s['rps_off_spread'][0]:.0f}-{s['rps_off_spread'][1]:.0f}) "
            f"| {s['rps_on']:.0f} ({s['rps_on_spread'][0]:.0f}-{s['rps_on_spread'][1]:.0f}) "
            f"| {_pct(s['rps_ratio'] - 1)} ({_pct(lo - 1)} to {_pct(hi - 1)}) "
            f"| {_ms(s['p99_off'])} ({_ms(s['p99_off_spread'][0])}-{_ms(s['p99_off_spread'][1])}) "
            f"| {_ms(s['p99_on'])} | {_p99_cell(s)} "
            f"| {s['cpu_off']:.0f} → {s['cpu_on']:.0f} ({_pct(s['cpu_ratio'] - 1)}) "
            f"| {s['stalls_reported']} / {s.get('lags_seen_with_loopwatch', '?')} "
            f"| {s['foreign_cpu_median']:.2f} |"
        )
    return lines


def micro_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    lines = [
        "| loop | shape | monitor | runs | wall median s (min-max) | µs / switch "
        "| vs. no monitor (wall) | vs. no monitor (process CPU: median of per-round ratios, "
        "95 % interval) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        overhead = "—" if r["monitor"] == "none" else _pct(r["overhead"])
        cpu = (
            "—" if r["monitor"] == "none"
            else _interval_text(r["cpu_paired_overhead"], [1 + x for x in r["cpu_paired_interval"]])
        )  # fmt: skip
        lines.append(
            f"| {r['loop']} | {r['shape']} | {r['monitor']} | {r['runs']} "
            f"| {r['median_s']:.3f} ({r['min_s']:.3f}-{r['max_s']:.3f}) "
            f"| {r['per_switch_us']:.2f} | {overhead} | {cpu} |"
        )
    return lines


def accuracy_table(cases: Sequence[CaseResult]) -> list[str]:
    lines = [
        "| loop | pattern | expected cause | reported ≥ 1.5 x threshold | cause right "
        "| culprit right | duration error ≤ max(5 ms, 5 %) | max abs. error ms "
        "| reported below threshold |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    by_key: dict[tuple[str, str], list[CaseResult]] = defaultdict(list)
    for case in cases:
        by_key[(case.loop, case.pattern)].append(case)
    for (loop, pattern), mine in sorted(by_key.items()):
        must = [c for c in mine if c.must_detect]
        hit = [c for c in mine if c.detected]
        below = [c for c in mine if c.true < THRESHOLD]
        culprit_cases = hit
        errs = [abs(c.error or 0) * 1000 for c in hit]
        sampled = mine[0].sampled
        lines.append(
            f"| {loop} | {pattern} | {mine[0].expected_cause} "
            f"| {sum(c.detected for c in must)}/{len(must)} "
            f"| {sum(c.cause_ok for c in hit)}/{len(hit)} "
            f"| {sum(c.culprit_ok for c in culprit_cases)}/{len(culprit_cases)}"
            f"{'' if sampled else ' (not sampleable)'}{_no_sample(culprit_cases)} "
            f"| {sum(c.error_ok for c in hit)}/{len(hit)} "
            f"| {max(errs, default=0):.1f} | {sum(c.detected for c in below)}/{len(below)} |"
        )
    return lines


def _no_sample(cases: Sequence[CaseResult]) -> str:
    count = sum(c.culprit_verdict == "none" for c in cases)
    return f", {count} without culprit" if count else ""


def failures(cases: Sequence[CaseResult]) -> list[str]:
    """One line per case that misses a goal."""
    lines = []
    for c in sorted(cases, key=lambda c: (c.loop, c.pattern, c.true)):
        problems = []
        if c.must_detect and not c.detected:
            problems.append("not reported")
        if c.detected and not c.cause_ok:
            problems.append(f"cause {c.cause} (expected {c.expected_cause})")
        if c.detected and c.culprit_verdict == "wrong":
            problems.append(f"culprit {c.culprit} (expected {c.expected_culprit})")
        if c.detected and c.culprit_verdict == "none":
            problems.append(
                "no culprit named"
                + (" (no sample before the stall ended)" if c.samples == 0 else "")
            )
        if c.detected and not c.error_ok:
            problems.append(f"duration error {(c.error or 0) * 1000:+.1f} ms")
        if problems:
            lines.append(
                f"| {c.loop} | {c.pattern} | {c.true * 1000:.0f} | {'; '.join(problems)} "
                f"| {c.offender or '—'} | {c.samples} |"
            )
    return lines


def case_details(cases: Sequence[CaseResult]) -> list[str]:
    lines = [
        "| loop | pattern | nominal ms | true ms | reported ms | error ms | cause | culprit "
        "| offender | samples |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in sorted(cases, key=lambda c: (c.loop, c.pattern, c.true)):
        reported = f"{c.duration * 1000:.1f}" if c.duration is not None else "—"
        error = f"{(c.error or 0) * 1000:+.1f}" if c.detected else "—"
        lines.append(
            f"| {c.loop} | {c.pattern} | {c.nominal * 1000:.0f} | {c.true * 1000:.1f} "
            f"| {reported} | {error} | {c.cause or '—'} | {c.culprit or '—'} "
            f"| {c.offender or '—'} | {c.samples} |"
        )
    return lines


def render(results: Results, out_dir: Path, md_path: Path) -> None:
    """Write the Markdown report and its figures."""
    out_dir.mkdir(parents=True, exist_ok=True)
    figures: dict[str, str] = {}
    sections = results.get("sections", [])
    plotters = {
        "overhead": plot_overhead, "micro": plot_micro, "switching": plot_switching,
        "accuracy": plot_accuracy, "memory": plot_memory,
        "peers": lambda r, p: peers_report.plot(r, p, _finish),
    }  # fmt: skip
    for name, plotter in plotters.items():
        if name in sections:
            file = out_dir / f"benchmarks-{name}.png"
            plotter(results, file)
            figures[name] = file.name
    md_path.write_text("\n".join(markdown(results, figures)) + "\n")


def markdown(results: Results, figures: dict[str, str]) -> list[str]:
    m = results["machine"]
    sections = results.get("sections", [])
    out = [
        "# loopwatch benchmarks",
        "",
        f"Generated by `{results['command']}` on {results['date']} "
        f"({results['mode']} run, {results['runtime_s'] / 60:.1f} min). "
        "Raw per-run numbers: `bench/results/raw/` (not committed); the summary this page "
        "is rendered from: "
        f"`{results.get('summary_path', 'bench/results/')}`.",
        "",
        "**Machine.** " + "; ".join(_machine_facts(m)),
        "",
        f"**Code.** loopwatch, example and bench at commit `{_code(results)}`.",
        "",
        *_kept_line(results),
        "**loopwatch configuration.** Default everywhere (`threshold=0.1` s, "
        "`interval=threshold/20`, `measure_utilization=True`, `max_frames=64`), except where "
        "a table says otherwise. The `on_block` hook only counts stalls.",
        "",
        "**Noise.** This machine is shared: other processes used a median of "
        f"{results.get('foreign_cpu', float('nan')):.2f} of its {m['cores']} cores during the "
        "load tests (column *other load*; measured per run as system-wide busy CPU minus "
        "the server, wrk and the harness). Every comparison is interleaved (A B B A …) and "
        "reported as medians with their spread; a difference inside the spread is noise.",
        "",
        "## Goals",
        "",
        "| goal | result |",
        "|---|---|",
    ]
    out += goals(results)
    for name, error in results.get("failed", {}).items():
        out += ["", f"**Section `{name}` failed** in this run:", "", "```", error, "```"]
    out += findings(results)
    if "overhead" in sections:
        out += overhead_section(results, figures)
    if "inserver" in sections:
        out += inserver_section(results["inserver"])
    if "micro" in sections:
        out += micro_section(results, figures)
    if "switching" in sections:
        out += switching_section(results["switching"], figures)
    if "accuracy" in sections:
        out += accuracy_section(results, figures)
    if "memory" in sections:
        out += memory_section(results, figures)
    if "instructions" in sections:
        out += instructions_section(results)
    if "trio" in sections:
        out += trio_section(results["trio"])
    if "peers" in sections:
        out += peers_report.section(results, figures)
    if "hostile" in sections:
        out += hostile.section(results["hostile"])
    if "busy" in sections:
        out += busy.section(results)
    return out


def _kept_line(results: Results) -> list[str]:
    """Which sections an ``--only`` run carried over from an earlier run."""
    kept = results.get("kept_from")
    if not kept:
        return []
    code = kept.get("code") or {}
    return [
        f"**Earlier run.** Sections {', '.join(kept['sections'])} come from `{kept['command']}` "
        f"on {kept['date']} ({(kept.get('runtime_s') or 0) / 60:.1f} min, code at "
        f"`{code.get('commit', '?')}`); this run added the others.",
        "",
    ]


def _code(results: Results) -> str:
    code = results.get("code", {})
    dirty = (
        " (with uncommitted changes to loopwatch/ or example/)"
        if code.get("dirty") == "yes"
        else ""
    )
    return f"{code.get('commit', '?')}{dirty}"


def _machine_facts(m: dict[str, str]) -> list[str]:
    return [
        f"CPU: {m['cpu']}", f"{m['cores']} cores", f"RAM: {m['memory']}",
        f"Linux {m['kernel']}", f"Python: {m['python']}", m["packages"],
        f"load generator: {m['wrk']}", m["pinning"],
    ]  # fmt: skip


def _whose_cost(watcher_change: float, middleware_change: float) -> str:
    """How a finding ends: whether the middleware, rather than the watcher, costs more."""
    if middleware_change > 0 and watcher_change <= middleware_change / 2:
        return ": most of the cost is the middleware's, not the watcher's."
    return "."


def _empty_reference(empty: dict[str, Any] | None) -> str:
    """How a finding compares the middleware with an empty one, where that was measured."""
    if empty is None:
        return ""
    return f" (an empty ASGI middleware in its place: {_pct(empty['ratio'] - 1)})"


def _same_reference(same: dict[str, Any] | None) -> str:
    """How a finding compares the A/B with the A/A control, where that was measured."""
    if same is None:
        return ""
    low, high = same["ratio_interval"]
    return (
        f"; the same app twice (A/A) reads {_pct(same['ratio'] - 1)} "
        f"({_pct(low - 1)} to {_pct(high - 1)})"
    )


def findings(results: Results) -> list[str]:
    """Where the missed goals come from, in numbers taken from this run."""
    sections = results.get("sections", [])
    items: list[str] = []
    if "overhead" in sections:
        for e in alternating_estimates(results["overhead"]["groups"]):
            middleware, watcher = e["middleware"], e["watch"]
            added = middleware["cpu_on"] - middleware["cpu_off"]
            items.append(
                f"Same-process A/B, {e['group']}: `LoopWatchMiddleware` adds "
                f"{_pct(middleware['ratio'] - 1)} server CPU per request ({added:+.1f} µs on "
                f"{middleware['cpu_off']:.0f}), the watcher {_pct(watcher['ratio'] - 1)} "
                f"(measured without OpenTelemetry): {_pct(e['total'])} in all"
                + _empty_reference(e["empty"])
                + _same_reference(e["same"])
                + _whose_cost(watcher["ratio"] - 1, middleware["ratio"] - 1)
            )
    if "micro" in sections:
        raw = results["micro"]["raw"]
        middleware = raw.get("middleware")
        if middleware:
            added = (middleware["LoopWatchMiddleware (default)"]["median_us"]
                     - middleware["bare app"]["median_us"])  # fmt: skip
            text = f"In a hot in-process loop the middleware adds {added:.1f} µs per request."
            untraced = [
                row for row in results.get("inserver", {}).get("rows", []) if not row["otel"]
            ]
            if "inserver" in sections and untraced:
                timed = ", ".join(
                    f"{row['middleware_ns'] / 1e3:.1f} µs ({row['loop']})" for row in untraced
                )
                text += (
                    f" Timed inside a server under load it takes {timed} untraced: code that "
                    "runs once per request runs there with its code and data out of the CPU "
                    "caches (see *Timed inside the server*)."
                )
            items.append(
                text + " Whatever a request leaves alive after it ends costs every request "
                "(docs/design.md, *Per-request work*)."
            )
        rows = (
            {}  # the same-process A/B tells these costs apart: switching_findings
            if "switching" in sections
            else {(r["loop"], r["shape"], r["monitor"]): r for r in results["micro"]["rows"]}
        )
        for shape, loop in itertools.product(SHAPES, LOOP_NAMES):
            full = rows.get((loop, shape, "loopwatch"))
            thread = rows.get((loop, shape, IDLE_THREAD))
            both = rows.get((loop, shape, TIMER_AND_THREAD))
            if not (full and thread and both):
                continue
            text = (
                f"Task switches, {loop}, {shape}: loopwatch {_pct(full['cpu_overhead'])} CPU "
                f"against no monitor; one idle thread and no monitor: "
                f"{_pct(thread['cpu_overhead'])}; one idle timer and one idle thread: "
                f"{_pct(both['cpu_overhead'])}, and loopwatch against that: "
                f"{_pct(full['cpu_vs_baseline'])}"
            )
            timer = rows.get((loop, shape, PENDING_TIMER))
            bare = rows.get((loop, shape, LOOPWATCH_NO_CLOCK))
            notes = [f"one idle timer alone: {_pct(timer['cpu_overhead'])}"] if timer else []
            if bare:
                notes.append(f"`measure_utilization=False`: {_pct(bare['cpu_overhead'])}")
            if notes:
                text += f" ({'; '.join(notes)})"
            items.append(text + ".")
    if "switching" in sections:
        items += switching_findings(results["switching"]["rows"])
    if "accuracy" in sections:
        cases = case_results(results["accuracy"])
        near = [c for c in cases if c.detected and not c.must_detect]
        wrong = [c for c in cases if c.detected and c.culprit_verdict == "wrong"]
        outer_culprits = sorted({c.culprit or "" for c in wrong})
        none = [c for c in cases if c.detected and c.culprit_verdict == "none"]
        bad_cause = [c for c in cases if c.detected and not c.cause_ok]
        problems = [*wrong, *none, *bad_cause]
        if problems:
            worst = max(c.true for c in problems) * 1000
            where = (
                "every problem is in a stall shorter than 1.5 x threshold "
                f"({len(near)} such stalls reported; the longest with a problem lasted "
                f"{worst:.0f} ms)"
                if all(not c.must_detect for c in problems)
                else "some problems are in stalls of 1.5 x threshold or more"
            )
            offenders = sorted({c.offender or "—" for c in wrong})
            text = f"Accuracy: {where}."
            if wrong:
                text += (
                    f" {len(wrong)} named a wrong culprit "
                    f"({', '.join(f'`{name}`' for name in outer_culprits)}; innermost frames "
                    f"{', '.join(f'`{o}`' for o in offenders)}): the watchdog's sample showed "
                    "the loop thread back in the loop's own code, i.e. it was taken as the "
                    "stall ended."
                )
            if bad_cause:
                text += (
                    f" {len(bad_cause)} got a wrong cause "
                    f"({', '.join(sorted({f'{c.pattern}: {c.cause}' for c in bad_cause}))}): "
                    "GIL-holding C calls that lasted about the threshold."
                )
            if none:
                text += f" {len(none)} named no culprit (no sample before the stall ended)."
            items.append(text)
    lines = _stall_lines(results)
    if lines:
        causes = Counter(line.split("cause=")[1].split()[0] for line in lines)
        by_cause = ", ".join(f"{n} {cause}" for cause, n in causes.most_common())
        items.append(
            f"{len(lines)} stalls were reported while no app blocked its loop on purpose "
            f"(load tests and memory run), by cause: {by_cause}. In the same runs the "
            f"independent probe saw {_probe_lags(results)} loop lags of 70 ms or more."
        )
    if not items:
        return []
    return ["", "## Findings", "", *[f"- {item}" for item in items]]


LOOP_NAMES = ("asyncio", "uvloop")


def switching_findings(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Per loop and task count: loopwatch against no monitor, and what the baselines
    alone (a timer, a thread) cost the same loop."""
    by_key = {(r["loop"], r["tasks"], r["toggle"], r["held"]): r for r in rows}
    items = []
    for loop, tasks in itertools.product(LOOP_NAMES, (100, 1)):
        full = by_key.get((loop, tasks, switching.LOOPWATCH, None))
        if full is None:
            continue
        text = f"Task switches, {loop}, {_tasks(full)}: loopwatch {_pct(full['change'])} CPU"
        parts = [
            f"{toggle} alone: {_pct(row['change'])}"
            for toggle in (
                switching.TIMER_AND_THREAD,
                switching.PENDING_TIMER,
                switching.IDLE_THREAD,
            )
            if (row := by_key.get((loop, tasks, toggle, None)))
        ]
        beside = by_key.get((loop, tasks, switching.LOOPWATCH, switching.TIMER_AND_THREAD))
        if beside:
            parts.append(f"loopwatch beside those two: {_pct(beside['change'])}")
        control = by_key.get((loop, tasks, switching.NOTHING, None))
        if control:
            parts.append(f"A/A control: {_pct(control['change'])}")
        items.append(text + (f" against no monitor; {'; '.join(parts)}." if parts else "."))
    return items


def _probe_lags(results: Results) -> int:
    """Probe lags in the runs where loopwatch was on (load tests and memory run)."""
    total = sum(
        g["summary"].get("lags_seen_with_loopwatch", 0)
        for g in results.get("overhead", {}).get("groups", [])
    )
    return int(total + results.get("memory", {}).get("lags_seen", 0))


def _stall_lines(results: Results) -> list[str]:
    """Stalls reported in the load tests and the memory run."""
    overhead = results.get("overhead", {"groups": []})
    return _load_test_stall_lines(overhead) + results.get("memory", {}).get("stall_lines", [])


def _load_test_stall_lines(overhead: dict[str, Any]) -> list[str]:
    return [line for g in overhead["groups"] for run in g["runs"] for line in run["stall_lines"]]


def goals(results: Results) -> list[str]:
    sections = results.get("sections", [])
    rows = []
    if "overhead" in sections:
        rps, p99 = overhead_verdicts(results["overhead"]["groups"])
        rows.append(f"| Overhead under load: at most 1 % throughput loss | {rps} |")
        rows.append(f"| Overhead under load: no p99 change beyond noise | {p99} |")
    if "inserver" in sections:
        rows.append(
            "| Overhead under load: at most 1 % (loopwatch's own time, timed inside the "
            f"server) | {inserver_verdict(results['inserver']['rows'])} |"
        )
    if "instructions" in sections:
        rows.append(
            "| Overhead under load: at most 1 % (server instructions per request, counted by "
            f"valgrind) | {instructions_verdict(results['instructions']['rows'])} |"
        )
    if "switching" in sections:
        verdict = switching_verdict(results["switching"]["rows"])
        rows.append(
            "| Task switches: loopwatch at most 2 % (process CPU per switch, same-process "
            f"A/B) | {verdict} |"
        )
    elif "micro" in sections:
        verdict = micro_verdict(results["micro"]["rows"])
        rows.append(f"| 400k task switches: loopwatch at most 2 % (process CPU) | {verdict} |")
    if "micro" in sections:
        sample = results["micro"]["raw"]["sample"]
        ok = sample["median_us"] < SAMPLE_GOAL_US
        rows.append(
            f"| One stack sample of a 50-frame stack under 50 µs | {sample['median_us']:.1f} µs "
            f"({'met' if ok else 'MISSED'}) |"
        )
    if "accuracy" in sections:
        cases = case_results(results["accuracy"])
        s = accuracy_summary(cases)
        fp = sum(len(loop["false_positives"]) for loop in results["accuracy"]["loops"])
        rows += [
            f"| Every stall ≥ 1.5 x threshold reported | {s['detected']}/{s['must']} "
            f"({'met' if s['detected'] == s['must'] else 'MISSED'}) |",
            f"| Cause right, every reported stall | {s['cause_ok']}/{s['reported']} "
            f"({'met' if s['cause_ok'] == s['reported'] else 'MISSED'}; stalls ≥ 1.5 x "
            f"threshold: {s['must_cause_ok']}/{s['detected']}) |",
            "| Culprit right for every stall ≥ 1.5 x threshold, GIL-held and GC included | "
            f"{s['must_culprit_right']}/{s['detected']} "
            f"({'met' if s['must_culprit_right'] == s['detected'] else 'MISSED'}; all "
            f"{s['reported']} reported stalls: right {s['culprit_right']}, wrong "
            f"{s['culprit_wrong']}, none named {s['culprit_none']}) |",
            f"| Duration error within max(5 ms, 5 %) | {s['error_ok']}/{s['reported']} "
            f"(max {s['max_error_ms']:.1f} ms; "
            f"{'met' if s['error_ok'] == s['reported'] else 'MISSED'}) |",
            f"| No false positive under heavy async load | {fp} reported "
            f"({'met' if fp == 0 else 'MISSED'}) |",
        ]
    if "memory" in sections:
        mem = results["memory"]
        per_request = _growth_per_request(mem)
        flat = per_request < LEAK_BYTES_PER_REQUEST and mem["threads_min"] == mem["threads_max"]
        short = (
            ""
            if mem["requests"] >= mem["target"]
            else (f" (time cap of {mem['time_cap_s']:.0f} s reached before {mem['target']:,})")
        )
        rows.append(
            f"| Memory flat over {mem['target']:,} requests (goal: one million) "
            f"| {mem['requests']:,} requests{short}: "
            f"RSS {mem['rss_warm_mib']:.1f} → {mem['rss_end_mib']:.1f} MiB after warm-up "
            f"(max {mem['rss_max_mib']:.1f}), {per_request:.1f} bytes per request; threads "
            f"{mem['threads_min']}-{mem['threads_max']} ({_memory_verdict(mem, flat)}) |"
        )
    if "hostile" in sections:
        rows.append(hostile.goal_row(results["hostile"]))
    return rows


def _memory_verdict(mem: dict[str, Any], flat: bool) -> str:
    if not flat:
        return "MISSED"
    if mem["requests"] < mem["target"]:
        return "flat, but short of the target: not resolved"
    return "met"


def _growth_per_request(mem: dict[str, Any]) -> float:
    """RSS growth from the warm point to the end, in bytes per request served meanwhile."""
    warm = next((p for p in mem["points"] if p[0] >= 50_000), mem["points"][0])
    served = max(mem["requests"] - warm[0], 1)
    return (mem["rss_end_mib"] - mem["rss_warm_mib"]) * 2**20 / served


def overhead_section(results: Results, figures: dict[str, str]) -> list[str]:
    o = results["overhead"]
    runs = min(g["summary"]["runs_per_config"] for g in o["groups"])
    out = [
        "",
        "## Overhead under load",
        "",
        "uvicorn (one worker, `--no-access-log`, h11) serving FastAPI on 127.0.0.1, loaded by "
        f"`wrk -t1` for {o['seconds']:g} s per run after a 1 s warm-up that is not measured; "
        "each run in a fresh server process. *hello*: `GET /` returning a constant JSON "
        "body, 32 connections. *example*: the example app (`example.factory.create_app`, "
        "`DEMO_MODE=optimized`: 80 ms + 20 ms of `asyncio.sleep`, five spans, CPU work in a "
        "thread scaled down from 7,000,000 to 20,000 iterations, since the shipped 0.17 s "
        "per request caps it at a few requests per second), `GET /items/7`, 64 connections. "
        "*With loopwatch*: `LoopWatchMiddleware` with the default configuration (as the "
        "example app ships it); *without*: no middleware at all. *FastAPIInstrumentor*: "
        "spans through a `BatchSpanProcessor` to an exporter that drops them. "
        f"{_rounds_text(o['rounds'])} per row, the order of the "
        "configurations rotating every round. Every server also runs an independent lag "
        "probe (a 20 ms `asyncio.sleep` loop that logs every lag of 70 ms or more): a "
        "stall loopwatch reports is real if the probe saw it too.",
        "",
        "*Server CPU per request* is the server process's CPU time (every thread, so "
        "loopwatch's watchdog included) divided by the requests served. Unlike throughput "
        "and latency it does not move when other processes take CPU away from the server, "
        "and on a dedicated core throughput is its inverse: it is the estimate the "
        "throughput verdict rests on. Throughput and p99 are reported as measured.",
        "",
        "*p99 change (p higher)*: median p99 with against without, and the one-sided exact "
        "Mann-Whitney p-value that the runs with loopwatch have the higher p99 (separate "
        "server processes differ by a few per cent on their own). A row is higher beyond "
        "noise when Holm's correction over all rows still rejects at "
        f"{P99_FAMILY_ALPHA * 100:.0f} %: with {runs} runs each (smallest possible p: "
        f"{1 / math.comb(2 * runs, runs):.3f}) only a complete separation can, so the test "
        "misses shifts smaller than the spread between servers; the same-process A/B below "
        "resolves those in CPU per request, and closed-loop load turns that cost into "
        "latency one for one.",
        "",
    ]
    if "overhead" in figures:
        out += [f"![overhead]({figures['overhead']})", ""]
    out += overhead_table(o["groups"])
    stalls = _load_test_stall_lines(o)
    out += [
        "",
        "*stalls reported / probe lags*: stalls loopwatch reported during the measured runs "
        "with it, and loop lags of 70 ms or more the independent probe saw in the same "
        "runs (none of these apps blocks its loop on purpose: lags come from garbage "
        "collection and from other processes taking the CPU).",
    ]
    out += alternating_section(o)
    watch = [g["summary"] for g in o["groups"] if "cpu_watch" in g["summary"]]
    if watch:
        out += [
            "",
            "### Where the cost is, between separate servers",
            "",
            "Both apps without OpenTelemetry, a third configuration in the same rotation: "
            "`loopwatch.watch()` started on the serving loop (heartbeat and watchdog, with "
            "the default configuration) without `LoopWatchMiddleware`. Server "
            "CPU per request in µs, median (min-max):",
            "",
            "| app | loop | no loopwatch | watcher only | LoopWatchMiddleware (default) |",
            "|---|---|---|---|---|",
        ]
        for s in watch:
            out.append(
                f"| {s['app']} | {s['loop']} | {s['cpu_off']:.1f} ({s['cpu_off_spread'][0]:.0f}-"
                f"{s['cpu_off_spread'][1]:.0f}) | {s['cpu_watch']:.1f} "
                f"({s['cpu_watch_spread'][0]:.0f}-{s['cpu_watch_spread'][1]:.0f}; "
                f"{_pct(s['cpu_watch_ratio'] - 1)}) | {s['cpu_on']:.1f} "
                f"({s['cpu_on_spread'][0]:.0f}-{s['cpu_on_spread'][1]:.0f}; "
                f"{_pct(s['cpu_ratio'] - 1)}) |"
            )
    if stalls:
        out += ["", "Stalls reported under load:", "", "```", *stalls[:20], "```"]
    return out


def alternating_section(o: dict[str, Any]) -> list[str]:
    """The same-process A/B: the table the throughput verdict rests on."""
    estimates = alternating_estimates(o["groups"])
    if not estimates:
        return []
    windows = o["alternating_window_s"]
    seconds = o["alternating_seconds"]
    out = [
        "",
        "### Same-process A/B: what the throughput verdict rests on",
        "",
        "Separate server processes differ by several per cent even with the same code (hash "
        "seeds, memory layout), and this machine's speed drifts as much within minutes: the "
        "runs above cannot resolve 1 %. Here one server (`bench/alternating.py`) serves "
        "every request with the app built without or with `LoopWatchMiddleware`, switching "
        f"every {windows['hello']:g} s (hello) or {windows['example']:g} s (example) under "
        "constant wrk load, in the order A B B A A B ..., and records per window its "
        "process CPU time (every thread) and the requests begun. Both apps are started "
        "(the watcher runs in every window), so this is the middleware's cost per request. "
        "The watcher's own cost comes from a second server that starts and stops "
        "`LoopWatch()` (default configuration) every other window on the app without "
        "loopwatch (no OpenTelemetry; its cost is per second, the heartbeat's ticks). "
        f"{o['alternating_servers']} server(s) per measurement, {seconds['hello']:g} s "
        f"(hello) or {seconds['example']:g} s (example) of load each after a 1 s warm-up; "
        "a window begins 0.05 s after its switch (a started watcher's thread is up by "
        "then). Each adjacent pair of windows gives one ratio; the estimate is the median "
        "ratio, with a bootstrap 95 % interval that resamples servers, then pairs: the "
        "cost itself differs from one server process to the next (column *by server*). "
        "*All*: the two added (intervals too). *Empty middleware*, for reference: a third "
        "server alternates as for the middleware, with an ASGI middleware that only calls "
        "the app in its place: what being a middleware at all costs a request (hello app, "
        "no OpenTelemetry). *A/A*, the control: a fourth server alternates between two "
        "copies of the app without loopwatch, built the same way (hello app): what this "
        "method reads as a cost when there is none; an A/B row means little beyond its "
        "A/A. A request "
        "begun in one window may finish in the next: with the example's ~150 ms requests "
        "that pulls its differences toward zero by up to ~15 %.",
        "",
        "| app | loop | FastAPIInstrumentor | CPU µs/request without → with middleware "
        "| middleware (95 % interval) | watcher (95 % interval) | all (95 % interval) "
        "| empty middleware (95 % interval) | A/A: the same app twice (95 % interval) "
        "| middleware by server | pairs |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in estimates:
        s, middleware, watcher, empty = e["summary"], e["middleware"], e["watch"], e["empty"]
        empty_text, same_text = (
            "—" if part is None else _interval_text(part["ratio"] - 1, part["ratio_interval"])
            for part in (empty, e["same"])
        )
        out.append(
            f"| {s['app']} | {s['loop']} | {'yes' if s['otel'] else 'no'} "
            f"| {middleware['cpu_off']:.1f} → {middleware['cpu_on']:.1f} "
            f"| {_interval_text(middleware['ratio'] - 1, middleware['ratio_interval'])} "
            f"| {_interval_text(watcher['ratio'] - 1, watcher['ratio_interval'])} "
            f"| {_interval_text(e['total'], tuple(1 + x for x in e['total_interval']))} "
            f"| {empty_text} | {same_text} "
            f"| {', '.join(_pct(r - 1) for r in middleware.get('ratio_by_server', []))} "
            f"| {middleware['pairs']} + {watcher['pairs']} |"
        )
    return out


def _interval_text(change: float, interval: Sequence[float]) -> str:
    return f"{_pct(change, 2)} ({_pct(interval[0] - 1, 2)} to {_pct(interval[1] - 1, 2)})"


def beside_idle_loop_cost(raw: dict[str, Any]) -> tuple[float, float, float] | None:
    """The share of its work a thread running Python code beside an idle loop loses to
    loopwatch: the median of paired ratios and its 95 % interval (``None`` if not run)."""
    rates = raw.get("beside_idle_loop")
    if not rates:
        return None
    paired = [n / w for n, w in zip(rates["none"], rates["loopwatch"], strict=True)]
    low, high = median_interval(paired)
    return statistics.median(paired) - 1, low - 1, high - 1


def beside_idle_loop_lines(raw: dict[str, Any]) -> list[str]:
    cost = beside_idle_loop_cost(raw)
    if cost is None:
        return []
    rates = raw["beside_idle_loop"]
    return [
        "",
        "### A thread running Python beside an idle loop",
        "",
        "Apps that hand CPU work to threads (`asyncio.to_thread`, as the example app's fix "
        "does) pay for each heartbeat tick that wakes the idle loop: the loop thread takes "
        "the GIL from the thread doing the work. Here a thread calls `sum(range(1000))` "
        "for 2 s while the loop waits, without and with `LoopWatch()` (default "
        f"configuration), {len(rates['none'])} shuffled pairs: "
        f"{statistics.median(rates['none']):,.0f} calls/s without, "
        f"{statistics.median(rates['loopwatch']):,.0f} with; the thread takes "
        f"{_pct(cost[0], 2)} longer for the same work (95 % interval {_pct(cost[1], 2)} "
        f"to {_pct(cost[2], 2)}). While ticks wait for the GIL and the loop is idle, the "
        "heartbeat ticks 4 times less often (`loopwatch/heartbeat.py`). This figure moves "
        "a lot between runs on this shared machine: docs/design.md (*Heartbeat pace*) "
        "gives runs with and without that stretch.",
    ]


def micro_section(results: Results, figures: dict[str, str]) -> list[str]:
    micro = results["micro"]
    raw = micro["raw"]
    sample = raw["sample"]
    out = [
        "",
        "## Microbenchmark: 400,000 task switches",
        "",
        "A loop doing nothing but `await asyncio.sleep(0)`: *100 tasks x 4000* (many ready "
        "callbacks per loop iteration) and *1 task x 400000* (one callback per iteration: "
        "the worst case for anything that costs per loop iteration). Monitors: none; "
        "loopwatch (`LoopWatch()`, default configuration); asyncio debug mode "
        "(`loop.set_debug(True)`); an "
        "aiodebug-style slow-callback logger that patches `asyncio.events.Handle._run` "
        "(stdlib loop only: uvloop's handles are not Python objects). All in one fresh "
        f"interpreter, a new loop per run, {raw['rounds']} rounds in shuffled order after a "
        "warm-up round (asyncio debug mode, ~20x slower, runs one round, none with --quick). "
        "*process CPU* (`time.process_time()`) counts every thread, loopwatch's watchdog "
        "included. Wall time moves with other processes' load (on this shared machine it "
        "has been up to twice the CPU time), so the verdict uses process CPU time; wall "
        "time is shown too. The *measure_utilization=False* row switches off loopwatch's loop "
        "utilization measurement, to show what that part costs. Baselines with no monitor: "
        "*one timer pending* (a task in a long `asyncio.sleep`: the stdlib loop then reads "
        "the clock at every iteration), *one idle thread* (a thread blocked for the whole "
        "run, as loopwatch's watchdog is while the loop runs: on Linux, once a second "
        "thread shares the file table, each system call on a file descriptor, such as the "
        "`epoll_wait` of every loop iteration, takes and drops a reference on the file, "
        "which a one-thread process skips; docs/design.md), and both: what a server has "
        "anyway (keep-alive timeouts, a thread pool, an exporter's thread). "
        + (
            "Separate runs differ by 10-30 % here: the goal is judged on the same-process "
            "A/B below (*Same-process A/B of task switches*)."
            if "switching" in results.get("sections", [])
            else "The goal is judged against no monitor, and also against that last baseline."
        ),
        "",
    ]
    if "micro" in figures:
        out += [f"![micro]({figures['micro']})", ""]
    out += micro_table(micro["rows"])
    out += [
        "",
        "### Cost of one stack sample",
        "",
        f"`loopwatch.sampler.take_sample(thread_id, 64)` on a thread parked "
        f"{sample['stack_depth']} frames deep ({sample['threads']} threads in the process), "
        f"{sample['calls']:,} calls in batches: median {sample['median_us']:.1f} µs per "
        f"sample (batch means {sample['min_us']:.1f}-{sample['max_us']:.1f} µs).",
    ]
    out += beside_idle_loop_lines(raw)
    middleware = raw.get("middleware")
    if middleware:
        bare = middleware["bare app"]["median_us"]
        out += [
            "",
            "### Per-request cost of the middleware",
            "",
            "A trivial ASGI app called directly in a loop (no server, no socket), with and "
            "without `LoopWatchMiddleware`; process CPU per request, median of rounds of "
            "50,000 requests. This is the part of the overhead under load that grows with "
            "the request rate.",
            "",
            "| app | CPU µs / request (min-max) | added to the bare app |",
            "|---|---|---|",
        ]
        for name, value in middleware.items():
            added = "—" if name == "bare app" else f"{value['median_us'] - bare:+.2f} µs"
            out.append(
                f"| {name} | {value['median_us']:.2f} ({value['min_us']:.2f}-"
                f"{value['max_us']:.2f}) | {added} |"
            )
    return out


def switching_section(data: dict[str, Any], figures: dict[str, str]) -> list[str]:
    out = [
        "",
        "### Same-process A/B of task switches: what the goal is judged on",
        "",
        "Separate runs of the microbenchmark above differ by 10-30 % on this machine, far "
        "more than the 2 % goal. Here one loop switches tasks without pause "
        "(`await asyncio.sleep(0)` in 1 or 100 tasks) while something is switched on and "
        f"off every {data['window']:g} s: loopwatch (`LoopWatch()`, default configuration) "
        "or a baseline. Each pair of windows runs once with it and once without, in a "
        "random order, and gives one ratio of process CPU time per switch (every thread, "
        f"the watchdog included; a window begins {data['settle']:g} s after the switch, so "
        "starting the watchdog's thread is not counted). *Kept on throughout*: loopwatch "
        "against a loop that already has one idle timer and one idle thread, as a server "
        "has. *nothing (A/A)*, the control, switches nothing. Each row ran in "
        f"{data['segments']} fresh interpreter(s) of {data['segment_seconds']:g} s (column "
        "*by segment*), the rows' segments in a shuffled order; the estimate is the median "
        "ratio, with a bootstrap 95 % interval that resamples segments, then pairs.",
        "",
    ]
    if "switching" in figures:
        out += [f"![switching]({figures['switching']})", ""]
    out += [
        "| loop | tasks | switched on and off | kept on throughout | CPU µs per switch "
        "(off) | change (95 % interval) | by segment | pairs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in data["rows"]:
        low, high = row["interval"]
        segments = ", ".join(_pct(x) for x in row["by_segment"])
        out.append(
            f"| {row['loop']} | {row['tasks']} | {row['toggle']} | {row['held'] or '—'} "
            f"| {row['cpu_per_switch_off_us']:.2f} | {_pct(row['change'], 2)} "
            f"({_pct(low, 2)} to {_pct(high, 2)}) | {segments} | {row['pairs']} |"
        )
    out += [
        "",
        "*CPU µs per switch* is per switch of the one task that keeps time: with 100 tasks, "
        "one loop iteration (100 switches).",
    ]
    return out


def _otel_label(row: dict[str, Any]) -> str:
    return "with FastAPIInstrumentor" if row["otel"] else "no OTel"


def inserver_verdict(rows: Sequence[dict[str, Any]]) -> str:
    parts = [
        f"hello / {row['loop']} / {_otel_label(row)}: {_pct(row['total_share'], 2)}" for row in rows
    ]
    worst = max(row["total_share"] for row in rows)
    return "; ".join(parts) + f" ({'met' if worst <= 0.01 else 'MISSED'})"


def inserver_section(data: dict[str, Any]) -> list[str]:
    out = [
        "",
        "## Timed inside the server",
        "",
        "The hello app under wrk (as above, "
        f"{data['connections']} connections, {data['seconds']:.0f} s per run, "
        f"{data['rounds']} run(s) per row and middleware, the order rotating), with two "
        "marker middlewares around the one under test, which read `perf_counter_ns` on "
        "either side of it (on the way in, on the way out, and as each response message "
        "passes through the `send` it hands down): each request's time in the middleware "
        "is summed over the run; the runs with no middleware between the markers measure "
        "the markers themselves, and are subtracted. With loopwatch, each heartbeat tick "
        "is timed as well. These timings include what instruction counts do not: system "
        "calls, and the cache misses of code that runs once per request or per tick in a "
        "busy server (on Python 3.11, `asyncio.get_running_loop()` makes a `getpid()` "
        "system call: it was on every request until the middleware skipped it for "
        "untraced requests). They leave out the app's own code and data that loopwatch's "
        "evict from the caches, which the A/B above includes. Medians over the runs; "
        "*share* is of the CPU time per request of the runs with loopwatch.",
        "",
        "| app / loop / tracing | CPU / request | LoopWatchMiddleware | an empty middleware "
        "| heartbeat | loopwatch's share |",
        "|---|---|---|---|---|---|",
    ]
    for row in data["rows"]:
        out.append(
            f"| hello / {row['loop']} / {_otel_label(row)} | "
            f"{row['cpu_us_per_request']:.0f} µs | {row['middleware_ns'] / 1e3:.2f} µs "
            f"({_pct(row['middleware_share'], 2)}) | {row['empty_ns'] / 1e3:.2f} µs | "
            f"{row['ticks_per_s']:.0f} ticks/s x {row['us_per_tick']:.1f} µs "
            f"({_pct(row['tick_share'], 2)}) | {_pct(row['total_share'], 2)} |"
        )
    return out


def instructions_verdict(rows: Sequence[dict[str, Any]]) -> str:
    parts = [
        f"hello / asyncio / {_otel_label(row)}: {_pct(row['ratio'] - 1, 2)} "
        f"({row['added']:+,.0f} per request; {'met' if row['ratio'] <= 1.01 else 'MISSED'})"
        for row in rows
    ]
    return "; ".join(parts)


def instructions_section(results: Results) -> list[str]:
    data = results["instructions"]
    few, many = data["requests"]
    out = [
        "",
        "## Instructions per request",
        "",
        "The hello app in uvicorn (stdlib loop, h11) under `valgrind --tool=cachegrind`, "
        f"serving {few:,} and then, in a new process, {many:,} keep-alive requests from "
        f"{data['clients']} client thread(s), one request at a time each, without the lag "
        "probe; the difference in instructions executed, divided "
        f"by the {many - few:,} extra requests, is the server's work per request with "
        "start-up and shutdown cancelled out. Unlike CPU time, instruction counts do not "
        "depend on other load. Timers still fire per unit of time while valgrind slows "
        "requests ~50 times (uvicorn's 0.1 s tick; with FastAPIInstrumentor, the span "
        "processor's thread): two runs of the same code differed by 300 instructions per "
        "request without OTel and ~2,000 with it. They do not show cache "
        "misses: under load the same instructions run slower in a busy "
        "server than in a hot loop, which the CPU-per-request figures above include. The "
        "heartbeat ticks once a second here (requests are ~50 times slower under valgrind, "
        "so its time-based ticks would be charged to them); the watcher's own cost is in "
        "the *watcher only* runs above.",
        "",
        "| app | instructions / request without | with LoopWatchMiddleware | added |",
        "|---|---|---|---|",
    ]
    for row in data["rows"]:
        out.append(
            f"| hello / asyncio / {_otel_label(row)} | {row['without']:,.0f} | "
            f"{row['with']:,.0f} | {row['added']:+,.0f} ({_pct(row['ratio'] - 1, 2)}) |"
        )
    return out


def trio_section(data: dict[str, Any]) -> list[str]:
    """The heartbeat's cost on trio, in instructions (:mod:`bench.trio_cost`)."""
    short, long = data["seconds"]
    switches = data["switches"]
    few, many = data["units"]
    run = data.get("run")
    out = [
        "",
        "## trio: the heartbeat's cost in instructions",
        "",
        *([f"`{run['command']}` on {run['date']}, code at `{run['code']}`.", ""] if run else []),
        "Counted by `valgrind --tool=cachegrind` (every thread), so the load of this shared "
        "machine does not move them. *Per tick*: a loop with nothing else to do, watched at "
        f"a {data['interval'] * 1000:g} ms interval for {short:g} s and then, in a new "
        f"process, {long:g} s; the difference in instructions divided by the difference in "
        "ticks is one tick with the loop iteration that runs it, start-up cancelled out. "
        "Trio has no timer callbacks: the heartbeat is a system task that sleeps in a "
        "cancel scope with a deadline, entered and left at every tick (the "
        "deadline wakes it through the abort callback, without raising `Cancelled`). "
        f"*Per task switch*: {data['tasks']} tasks switching with `await trio.sleep(0)`, "
        f"{few:,} and then {many:,} switches, bare and with `LoopWatch()` (as "
        "`python -m bench.guard` counts them, the heartbeat's interval stretched by "
        "valgrind's measured slowdown so that it ticks as often per switch as at full "
        "speed).",
        "",
        "| loop | instructions per tick | ticks (short, long run) |",
        "|---|---|---|",
    ]
    for row in data["ticks"]:
        out.append(
            f"| {row['library']} | {row['per_tick']:,.0f} | "
            f"{row['ticks'][0]:,}, {row['ticks'][1]:,} |"
        )
    out += [
        "",
        "| workload | instructions per switch, bare | with loopwatch | added | valgrind slowdown |",
        "|---|---|---|---|---|",
        f"| {switches['workload']} | {switches['bare']:,} | {switches['loopwatch']:,} | "
        f"{switches['added']:+,} ({_pct(switches['ratio'], 2)}) | "
        f"{switches['valgrind_slowdown']:g}x |",
        "",
        "The stretched interval is only as right as the slowdown measured once: valgrind's "
        "speed moves with the load of the moment, and a trio tick costs ~3.5 times an "
        "asyncio one, so this figure moved from +104 to +771 instructions per switch in "
        "four runs of the same code. Derived instead from the tick's count and the "
        f"switches' native speed ({data['native_cpu_per_switch'] * 1e6:.1f} µs of CPU per "
        "switch, so one tick every "
        f"{data['default_interval'] / data['native_cpu_per_switch']:,.0f} switches at the "
        f"default {data['default_interval'] * 1000:g} ms): "
        f"**{data['derived_per_switch']:+,.0f} instructions per switch "
        f"({_pct(data['derived_per_switch'] / switches['bare'], 2)})**.",
    ]
    return out


def _reps_text(reps: Any) -> str:
    if isinstance(reps, dict):
        return ", ".join(f"{n} time(s) on {loop}" for loop, n in reps.items())
    return f"{reps} time(s)"


def accuracy_section(results: Results, figures: dict[str, str]) -> list[str]:
    acc = results["accuracy"]
    cases = case_results(acc)
    durations = ", ".join(f"{d * 1000:g}" for d in acc["durations"])
    out = [
        "",
        "## Accuracy",
        "",
        f"`LoopWatch(threshold=0.1)` (other options default) watches a loop that runs each "
        f"pattern of `bench/stalls.py` at nominal durations of {durations} ms, "
        f"{_reps_text(acc['reps'])} each, in shuffled order, with 0.1 s of idle loop before and "
        "0.3 s after each stall. The true duration is `time.perf_counter()` around the "
        "blocking call; inputs are built and freed in a worker thread, so only the stall "
        "runs on the loop. Work-sized patterns (JSON, sort, regex, gc, SQLite CPU) are "
        "calibrated on this machine, so their true durations scatter around the nominal "
        "ones; every verdict uses the true duration. A stall counts as *reported* when a "
        "finished `BlockEvent` overlaps it. *Culprit right*: `BlockEvent.culprit.function` "
        "is the pattern's `stall_*` function (the innermost application frame).",
        "",
        "Expected causes, and why:",
        "",
        "- `cpu`: Python code running — the CPU loop, `json.dumps(indent=1)` (the pure-Python "
        "encoder), the library call; and the CPU-bound SQLite query: `sqlite3` releases "
        "the GIL while SQLite computes, so samples are possible and the loop thread is on "
        "CPU.",
        "- `blocking`: the loop thread waits — `time.sleep`, a socket `recv`, a synchronous "
        "HTTP call, an SQLite query waiting for another connection's lock.",
        "- `gil`: a single C call holds the GIL for the whole stall, so the watchdog cannot "
        "run, let alone sample: `json.dumps` with the C encoder, `re.match` with "
        "catastrophic backtracking, `list.sort()` of floats (measured on this machine: a "
        "1 ms ticker thread is starved for the whole call, unlike during the SQLite "
        "query). The culprit is still the function that made the call: the watchdog gets "
        "the GIL at the loop thread's first check after the call returned, still in the "
        "calling frame, and samples at once (`loopwatch.culprit.sampled=after`).",
        "- `gc`: `gc.collect()` with hundreds of thousands of garbage cycles, and an "
        "allocation that triggers a collection of as many: the culprit is the code that "
        "triggered it, noted by loopwatch's gc callback as the collection began "
        "(`loopwatch.culprit.sampled=collection`).",
        "- The *library* pattern calls `slowlib.crunch` from a directory named "
        "`site-packages`: the culprit must be the application frame that called it "
        "(`stall_in_library`), the offender `slowlib.crunch`.",
        "",
    ]
    if "accuracy" in figures:
        out += [f"![accuracy]({figures['accuracy']})", ""]
    out += accuracy_table(cases)
    fails = failures(cases)
    out += ["", "### Cases that miss a goal", ""]
    if fails:
        out += ["| loop | pattern | true ms | problem | offender | on-time samples |",
                "|---|---|---|---|---|---|", *fails]  # fmt: skip
    else:
        out += ["None."]
    out += ["", "### False positives under heavy async load", ""]
    for loop in acc["loops"]:
        load = loop["false_positive_load"]
        out.append(
            f"- {loop['loop']}: {load['seconds']:.1f} s of 300 tasks yielding in bursts, "
            f"200 self-rescheduling timers and 30 TCP echo clients on 127.0.0.1 "
            f"({load['yields']:,} yields, {load['timers']:,} timer callbacks, "
            f"{load['messages']:,} echo round trips): "
            f"**{len(loop['false_positives'])} stalls reported** "
            f"{loop['false_positives'] if loop['false_positives'] else ''} "
            f"(independent probe: {loop.get('probe_lags_during_load', '?')} lags of 50 ms "
            "or more during the load)."
        )
    out += [
        "",
        "Stalls reported during the corpus outside every pattern's window (while worker "
        "threads built or freed inputs of up to millions of objects, and when the "
        "collector, paused during each stall, ran again), checked against an independent "
        "10 ms probe on the same loop (*confirmed*: the probe saw a lag of at least the "
        "reported duration minus 20 ms at that time):",
        "",
    ]
    for loop in acc["loops"]:
        events = loop.get("unmatched_events", [])
        confirmed = sum(1 for e in events if e["confirmed_by_probe"])
        causes = Counter(e["cause"] for e in events)
        unconfirmed = [e for e in events if not e["confirmed_by_probe"]]
        out.append(
            f"- {loop['loop']}: {len(events)} reported, {confirmed} confirmed by the probe; "
            f"causes: {dict(causes) or '—'}"
            + (f"; not confirmed: {unconfirmed}" if unconfirmed else "")
        )
    out += ["", "<details><summary>Every case</summary>", "", *case_details(cases), "",
            "</details>"]  # fmt: skip
    return out


def memory_section(results: Results, figures: dict[str, str]) -> list[str]:
    mem = results["memory"]
    out = [
        "",
        "## Memory",
        "",
        f"The hello-world app with `LoopWatchMiddleware` (default configuration) under uvicorn "
        f"on the {mem['loop']} loop, loaded by `wrk -t1 -c32` in 10 s chunks until "
        f"{mem['target']:,} requests ({mem['requests']:,} served in {mem['seconds']:.0f} s, "
        f"median {mem['rps_median']:.0f} req/s, {mem['errors']} errors). psutil reads the "
        "server's RSS and thread count every 0.5 s.",
        "",
    ]
    if "memory" in figures:
        out += [f"![memory]({figures['memory']})", ""]
    out += [
        "| RSS at start | RSS after 50,000 requests | RSS at end | RSS max | threads "
        "| stalls reported |",
        "|---|---|---|---|---|---|",
        f"| {mem['rss_start_mib']:.1f} MiB | {mem['rss_warm_mib']:.1f} MiB "
        f"| {mem['rss_end_mib']:.1f} MiB | {mem['rss_max_mib']:.1f} MiB "
        f"| {mem['threads_min']}-{mem['threads_max']} | {mem['stalls_reported']} |",
    ]
    out += [
        "",
        f"Growth after warm-up: {_growth_per_request(mem):.1f} bytes per request. Keeping "
        "any object per request would cost at least 16 bytes per request (the smallest "
        "Python object), 50 or more for a dict entry; loopwatch keeps no list of requests "
        "and its one buffer is bounded (the last 256 heartbeat ticks). The verdict is *flat* "
        f"below {LEAK_BYTES_PER_REQUEST:g} bytes per request with a constant thread count.",
    ]
    if mem.get("stall_lines"):
        out += ["", f"Stalls loopwatch reported during the run (independent probe: "
                f"{mem.get('lags_seen', '?')} lags of 70 ms or more):", "",
                "```", *mem["stall_lines"], "```"]  # fmt: skip
    return out


def foreign_cpu(results: Results) -> float:
    """Median CPU (in cores) other processes used during the load tests."""
    values = [run["foreign_cpu"] for g in results.get("overhead", {}).get("groups", [])
              for run in g["runs"]]  # fmt: skip
    return statistics.median(values) if values else float("nan")
