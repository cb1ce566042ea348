"""Overhead under load: uvicorn apps with and without loopwatch, loaded by wrk.

For every group (app, loop, FastAPIInstrumentor on/off) the configurations are run in
turn, the order rotating every round (A B, B A, ...), each run in a fresh server process
with a warm-up load that is not measured. Medians of throughput, p99 latency and server
CPU per request are compared; the spread of the paired ratios shows the noise.

Configurations: ``off`` (no loopwatch at all), ``middleware`` (``LoopWatchMiddleware``,
default configuration: what the example app ships) and, for both apps without
OpenTelemetry, ``watch`` (``loopwatch.watch()`` only: heartbeat, watchdog, no middleware),
which splits the cost between the watcher and the per-request middleware. The verdict's
CPU figures come from servers that alternate between configurations instead
(:func:`alternate`, :mod:`bench.alternating`): separate servers cannot resolve 1 %.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil
from scipy.stats import mannwhitneyu

from . import alternating
from .common import (
    busy_cpu_seconds,
    median,
    median_interval,
    run_wrk,
    spread,
    uvicorn_server,
)

OFF, MIDDLEWARE, WATCH = "off", "middleware", "watch"
EMPTY = "empty"
SAME = "same"
"""Same-process A/B only: an empty ASGI middleware instead of ``LoopWatchMiddleware``."""
_ENV = {OFF: "0", MIDDLEWARE: "1", WATCH: "watch"}


@dataclass(frozen=True)
class Group:
    """What stays fixed while loopwatch is switched on and off."""

    app: str  # "hello" or "example"
    loop: str  # "asyncio" or "uvloop"
    otel: bool

    @property
    def label(self) -> str:
        return f"{self.app} / {self.loop} / {'FastAPIInstrumentor' if self.otel else 'no OTel'}"

    @property
    def path(self) -> str:
        return "/" if self.app == "hello" else "/items/7"

    @property
    def connections(self) -> int:
        return 32 if self.app == "hello" else 64

    @property
    def ready_path(self) -> str:
        return "/" if self.app == "hello" else "/health"

    def env(self, **extra: str) -> dict[str, str]:
        """The server's environment for this group, plus ``extra``."""
        return {
            "BENCH_OTEL": "1" if self.otel else "0",
            "DEMO_MODE": "optimized",
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_METRICS_EXPORTER": "none",
            **extra,
        }

    @property
    def configs(self) -> tuple[str, ...]:
        if not self.otel:
            return (OFF, MIDDLEWARE, WATCH)
        return (OFF, MIDDLEWARE)


@dataclass
class Run:
    """One measured wrk run against one server process."""

    config: str
    round: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us_per_request: float
    """Server CPU (all threads) per request: insensitive to other load on the machine."""
    stalls: int
    stall_lines: list[str]
    lags: int
    """Loop lags of 70 ms or more seen by the independent probe during the run."""
    foreign_cpu: float
    """CPU used by other processes during the run, in cores (0 to 2 on two cores)."""


@dataclass
class GroupResult:
    group: Group
    runs: list[Run] = field(default_factory=list)

    def values(self, config: str, name: str) -> list[float]:
        return [getattr(run, name) for run in self.runs if run.config == config]

    def paired_ratios(self, name: str, config: str = MIDDLEWARE) -> list[float]:
        """``config`` / off for each round (the runs of a round are adjacent in time)."""
        ratios = []
        for index in sorted({run.round for run in self.runs}):
            pair = {run.config: getattr(run, name) for run in self.runs if run.round == index}
            if config in pair and OFF in pair and pair[OFF] > 0:
                ratios.append(pair[config] / pair[OFF])
        return ratios

    def summary(self) -> dict[str, object]:
        rps_off, rps_on = self.values(OFF, "rps"), self.values(MIDDLEWARE, "rps")
        p99_off, p99_on = self.values(OFF, "p99_ms"), self.values(MIDDLEWARE, "p99_ms")
        cpu_off, cpu_on = (
            self.values(OFF, "cpu_us_per_request"),
            self.values(MIDDLEWARE, "cpu_us_per_request"),
        )
        low, high = spread(p99_off)
        result: dict[str, object] = {
            "group": self.group.label,
            "app": self.group.app,
            "loop": self.group.loop,
            "otel": self.group.otel,
            "runs_per_config": len(rps_on),
            "rps_off": median(rps_off),
            "rps_on": median(rps_on),
            "rps_ratio": median(rps_on) / median(rps_off),
            "rps_paired_ratio_median": median(self.paired_ratios("rps")),
            "rps_paired_ratio_spread": spread(self.paired_ratios("rps")),
            "rps_off_spread": spread(rps_off),
            "rps_on_spread": spread(rps_on),
            "p99_off": median(p99_off),
            "p99_on": median(p99_on),
            "p99_ratio": median(p99_on) / median(p99_off),
            "p99_paired_ratio_spread": spread(self.paired_ratios("p99_ms")),
            "p99_off_spread": (low, high),
            "p99_on_spread": spread(p99_on),
            "p99_higher_p": higher_p_value(p99_on, p99_off),
            "cpu_off": median(cpu_off),
            "cpu_on": median(cpu_on),
            "cpu_ratio": median(cpu_on) / median(cpu_off),
            "cpu_paired_ratio_spread": spread(self.paired_ratios("cpu_us_per_request")),
            "cpu_off_spread": spread(cpu_off),
            "cpu_on_spread": spread(cpu_on),
            "stalls_reported": sum(self.values(MIDDLEWARE, "stalls"))
            + sum(self.values(WATCH, "stalls")),
            "lags_seen": sum(run.lags for run in self.runs),
            "lags_seen_with_loopwatch": sum(self.values(MIDDLEWARE, "lags"))
            + sum(self.values(WATCH, "lags")),
            "errors": sum(run.errors for run in self.runs),
            "foreign_cpu_median": median([run.foreign_cpu for run in self.runs]),
        }
        if WATCH in self.group.configs:
            cpu_watch = self.values(WATCH, "cpu_us_per_request")
            result.update(
                cpu_watch=median(cpu_watch),
                cpu_watch_spread=spread(cpu_watch),
                cpu_watch_ratio=median(cpu_watch) / median(cpu_off),
                rps_watch=median(self.values(WATCH, "rps")),
                p99_watch=median(self.values(WATCH, "p99_ms")),
            )
        return result


def measure_once(group: Group, config: str, round_index: int, seconds: float) -> Run:
    """Start a server, warm it up, measure one wrk run, stop the server."""
    env = group.env(BENCH_LOOPWATCH=_ENV[config])
    factory = "hello_app" if group.app == "hello" else "example_app"
    with uvicorn_server(factory, group.loop, env, ready_path=group.ready_path) as server:
        url = server.url(group.path)
        run_wrk(url, 1.0, group.connections)  # warm-up, not measured
        time.sleep(0.15)  # a stall of the warm-up is closed and counted before the mark
        stalls0, lags0 = server.mark()
        me = psutil.Process()
        busy0, server0 = busy_cpu_seconds(), server.cpu_seconds()
        mine0 = sum(me.cpu_times()[:2])
        result = run_wrk(url, seconds, group.connections)
        busy1, server1 = busy_cpu_seconds(), server.cpu_seconds()
        mine1 = sum(me.cpu_times()[:2])
        time.sleep(0.15)  # a stall still being closed reaches the log
        stall_lines = server.stalls()[stalls0:]
        lags = len(server.lags()) - lags0
    foreign = (busy1 - busy0) - (server1 - server0) - result.wrk_cpu_s - (mine1 - mine0)
    return Run(
        config=config,
        round=round_index,
        rps=result.rps,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        errors=result.errors + result.non2xx,
        cpu_us_per_request=(server1 - server0) / max(result.requests, 1) * 1e6,
        stalls=len(stall_lines),
        stall_lines=stall_lines[:10],
        lags=lags,
        foreign_cpu=max(0.0, foreign / result.seconds),
    )


def run_group(group: Group, rounds: int, seconds: float, log: bool = True) -> GroupResult:
    """``rounds`` rounds of every configuration, the order rotating each round."""
    result = GroupResult(group)
    configs = group.configs
    for index in range(rounds):
        shift = index % len(configs)
        order = configs[shift:] + configs[:shift]
        if index % 2:
            order = tuple(reversed(order))
        for config in order:
            run = measure_once(group, config, index, seconds)
            result.runs.append(run)
            if log:
                print(
                    f"  {group.label:40s} {config:10s} {run.rps:6.0f} req/s  "
                    f"p99 {run.p99_ms:6.1f} ms  CPU {run.cpu_us_per_request:6.1f} us/req  "
                    f"other load {run.foreign_cpu:.2f}  stalls {run.stalls} lags {run.lags}",
                    flush=True,
                )
    return result


ALTERNATING_SERVERS = 8
"""Server processes per alternating measurement: a cost differs from one process to the
next (by up to ~1.5 % for the watcher in three servers of the same code), so more short
servers resolve it better than a few long ones."""


def alternate(group: Group, kind: str, servers: int, seconds: float) -> dict[str, object]:
    """The cost of ``kind`` (``middleware``, ``watch``, ``empty``, or ``same``: the app without
    loopwatch built twice) from servers that alternate between it and no loopwatch (see
    :mod:`bench.alternating`).

    Each pair of adjacent windows (A B or B A) gives one ratio of CPU per request; the
    estimate is the median ratio over all pairs, with a bootstrap 95 % interval that
    resamples servers, then pairs (the cost itself differs between server processes).
    """
    env = group.env(
        BENCH_ALTERNATE=kind,
        BENCH_APP=group.app,
        BENCH_PROBE="0",
        BENCH_WINDOW=str(ALTERNATING_WINDOW[group.app]),
    )
    ratios: list[list[float]] = []  # per server
    cpu: dict[str, list[float]] = {alternating.OFF: [], kind: []}
    stalls = 0
    for number in range(servers):
        target = "bench.alternating:alternating_app"
        env[alternating.OTHER_FIRST] = str(number % 2)
        with uvicorn_server(target, group.loop, env, group.ready_path) as server:
            url = server.url(group.path)
            run_wrk(url, 1.0, group.connections)  # warm-up, not measured
            began = time.monotonic()
            run_wrk(url, seconds, group.connections)
            ended = time.monotonic()
            with urllib.request.urlopen(server.url(alternating.WINDOWS_PATH)) as response:
                windows = json.loads(response.read())
            time.sleep(0.15)  # a stall still being closed reaches the log
            stalls += len(server.stalls())
        measured = [w for w in windows if w["began"] >= began and w["ended"] <= ended]
        ratios.append([])
        for first, second in _pairs(measured):
            per_request = {w["state"]: w["cpu_s"] / w["requests"] * 1e6 for w in (first, second)}
            ratios[-1].append(per_request[kind] / per_request[alternating.OFF])
            for state, value in per_request.items():
                cpu[state].append(value)
    low, high = median_interval(ratios)
    pooled = [ratio for server_ratios in ratios for ratio in server_ratios]
    return {
        "kind": kind,
        "servers": servers,
        "seconds": seconds,
        "pairs": len(pooled),
        "ratio": median(pooled),
        "ratio_interval": (low, high),
        "ratio_by_server": [median(server_ratios) for server_ratios in ratios],
        "cpu_off": median(cpu[alternating.OFF]),
        "cpu_on": median(cpu[kind]),
        "stalls_reported": stalls,
    }


def _pairs(windows: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Adjacent windows in different states with requests served, each window in at most
    one pair."""
    found = []
    index = 0
    while index + 1 < len(windows):
        first, second = windows[index], windows[index + 1]
        if first["state"] != second["state"] and first["requests"] and second["requests"]:
            found.append((first, second))
            index += 2
        else:
            index += 1
    return found


def groups(quick: bool) -> list[Group]:
    """The matrix: both apps, both loops, with and without FastAPIInstrumentor."""
    loops = ["asyncio", "uvloop"]
    if quick:
        return [Group("hello", loop, False) for loop in loops]
    return [
        Group(app, loop, otel)
        for app in ("hello", "example")
        for otel in (False, True)
        for loop in loops
    ]


def run(quick: bool) -> dict[str, object]:
    """The whole overhead benchmark; returns JSON-able results."""
    seconds = 2.0 if quick else 3.0
    results = []
    rounds_used = {}
    servers = 1 if quick else ALTERNATING_SERVERS
    loads = {app: load / (3 if quick else 1) for app, load in ALTERNATING_SECONDS.items()}
    for group in groups(quick):
        rounds = 3 if quick else ROUNDS
        rounds_used[group.label] = rounds
        result = run_group(group, rounds, seconds)
        entry: dict[str, object] = {
            "summary": result.summary(),
            "runs": [asdict(run) for run in result.runs],
        }
        kinds = [MIDDLEWARE] + ([WATCH] if not group.otel else [])
        if group.app == "hello" and not group.otel:
            kinds.append(EMPTY)  # the reference: what any middleware costs a request
        if group.app == "hello":
            kinds.append(SAME)  # the control: what the method reads with nothing to find
        entry["alternating"] = {
            kind: alternate(group, kind, servers, loads[group.app]) for kind in kinds
        }
        _log_alternating(group, entry["alternating"])
        results.append(entry)
    return {
        "rounds": rounds_used,
        "seconds": seconds,
        "warmup_seconds": 1.0,
        "load_average": os.getloadavg(),
        "groups": results,
        "alternating_window_s": ALTERNATING_WINDOW,
        "alternating_seconds": loads,
        "alternating_servers": servers,
    }


ROUNDS = 5
"""Separate-server runs per configuration and group: the throughput verdict rests on the
same-process A/B, the p99 verdict on these (with 5 runs each, an exact rank test can
reach p = 0.004: see :func:`higher_p_value`)."""


def higher_p_value(with_values: Sequence[float], without_values: Sequence[float]) -> float:
    """One-sided exact Mann-Whitney p-value that ``with_values`` tend to be higher: the
    chance that runs without loopwatch would rank this far below by luck alone."""
    if len(with_values) < 2 or len(without_values) < 2:
        return float("nan")
    test = mannwhitneyu(with_values, without_values, alternative="greater", method="exact")
    return float(test.pvalue)


ALTERNATING_WINDOW = {"hello": alternating.WINDOW, "example": 1.0}
"""Seconds per window: the example's requests take ~150 ms, so about 15 % of a window's
requests straddle its edges (which pulls its measured difference toward zero by up to
that share); the hello app's take ~7 ms."""

ALTERNATING_SECONDS = {"hello": 6.0, "example": 10.0}
"""Measured load per alternating server in a full run (a quick run: a third of it)."""


def _log_alternating(group: Group, measured: dict[str, dict[str, Any]]) -> None:
    for kind, found in measured.items():
        low, high = found["ratio_interval"]
        print(
            f"  {group.label:40s} alternating {kind:10s} {100 * (found['ratio'] - 1):+.2f} % "
            f"(95 % interval {100 * (low - 1):+.2f} to {100 * (high - 1):+.2f}, "
            f"{found['pairs']} pairs)",
            flush=True,
        )
