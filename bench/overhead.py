"""Overhead under load: uvicorn apps with and without loopwatch, loaded by wrk.

For every group (app, loop, FastAPIInstrumentor on/off) the two configurations are run
alternately, A B B A A B ..., each run in a fresh server process with a warm-up load
that is not measured. Medians of throughput and p99 latency are compared; the spread of
the paired ratios shows the noise.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field

import psutil

from .common import busy_cpu_seconds, median, run_wrk, spread, uvicorn_server


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


@dataclass
class Run:
    """One measured wrk run against one server process."""

    loopwatch: bool
    round: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us_per_request: float
    """Server CPU (all threads) per request: insensitive to other load on the machine."""
    stalls: int
    stall_lines: list[str]
    foreign_cpu: float
    """CPU used by other processes during the run, in cores (0 to 2 on two cores)."""


@dataclass
class GroupResult:
    group: Group
    runs: list[Run] = field(default_factory=list)

    def values(self, loopwatch: bool, name: str) -> list[float]:
        return [getattr(run, name) for run in self.runs if run.loopwatch is loopwatch]

    def paired_ratios(self, name: str) -> list[float]:
        """on / off for each round (the two runs of a round are adjacent in time)."""
        ratios = []
        for index in sorted({run.round for run in self.runs}):
            pair = {run.loopwatch: getattr(run, name) for run in self.runs if run.round == index}
            if True in pair and False in pair and pair[False] > 0:
                ratios.append(pair[True] / pair[False])
        return ratios

    def summary(self) -> dict[str, object]:
        rps_off, rps_on = self.values(False, "rps"), self.values(True, "rps")
        p99_off, p99_on = self.values(False, "p99_ms"), self.values(True, "p99_ms")
        ratios = self.paired_ratios("rps")
        p99_ratios = self.paired_ratios("p99_ms")
        low, high = spread(p99_off)
        return {
            "group": self.group.label,
            "app": self.group.app,
            "loop": self.group.loop,
            "otel": self.group.otel,
            "runs_per_config": len(rps_on),
            "rps_off": median(rps_off),
            "rps_on": median(rps_on),
            "rps_ratio": median(rps_on) / median(rps_off),
            "rps_paired_ratio_median": median(ratios),
            "rps_paired_ratio_spread": spread(ratios),
            "rps_off_spread": spread(rps_off),
            "rps_on_spread": spread(rps_on),
            "p99_off": median(p99_off),
            "p99_on": median(p99_on),
            "p99_ratio": median(p99_on) / median(p99_off),
            "p99_paired_ratio_spread": spread(p99_ratios),
            "p99_off_spread": (low, high),
            "p99_on_spread": spread(p99_on),
            "p99_within_noise": low <= median(p99_on) <= high,
            "cpu_off": median(self.values(False, "cpu_us_per_request")),
            "cpu_on": median(self.values(True, "cpu_us_per_request")),
            "cpu_ratio": median(self.values(True, "cpu_us_per_request"))
            / median(self.values(False, "cpu_us_per_request")),
            "cpu_paired_ratio_spread": spread(self.paired_ratios("cpu_us_per_request")),
            "stalls_reported": sum(self.values(True, "stalls")),
            "errors": sum(self.values(True, "errors")) + sum(self.values(False, "errors")),
            "foreign_cpu_median": median([run.foreign_cpu for run in self.runs]),
        }


def measure_once(group: Group, loopwatch: bool, round_index: int, seconds: float) -> Run:
    """Start a server, warm it up, measure one wrk run, stop the server."""
    env = {
        "BENCH_LOOPWATCH": "1" if loopwatch else "0",
        "BENCH_OTEL": "1" if group.otel else "0",
        "DEMO_MODE": "optimized",
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
    }
    factory = "hello_app" if group.app == "hello" else "example_app"
    ready = "/" if group.app == "hello" else "/health"
    with uvicorn_server(factory, group.loop, env, ready_path=ready) as server:
        url = server.url(group.path)
        run_wrk(url, 1.0, group.connections)  # warm-up, not measured
        me = psutil.Process()
        busy0, server0 = busy_cpu_seconds(), server.cpu_seconds()
        mine0 = sum(me.cpu_times()[:2])
        result = run_wrk(url, seconds, group.connections)
        busy1, server1 = busy_cpu_seconds(), server.cpu_seconds()
        mine1 = sum(me.cpu_times()[:2])
        time.sleep(0.05)  # let a stall still being closed reach the log
        stall_lines = server.stalls()
    foreign = (busy1 - busy0) - (server1 - server0) - result.wrk_cpu_s - (mine1 - mine0)
    return Run(
        loopwatch=loopwatch,
        round=round_index,
        rps=result.rps,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        errors=result.errors + result.non2xx,
        cpu_us_per_request=(server1 - server0) / max(result.requests, 1) * 1e6,
        stalls=len(stall_lines),
        stall_lines=stall_lines[:10],
        foreign_cpu=max(0.0, foreign / result.seconds),
    )


def run_group(group: Group, rounds: int, seconds: float, log: bool = True) -> GroupResult:
    """``rounds`` pairs, alternating which configuration goes first (ABBA)."""
    result = GroupResult(group)
    for index in range(rounds):
        order = (False, True) if index % 2 == 0 else (True, False)
        for loopwatch in order:
            run = measure_once(group, loopwatch, index, seconds)
            result.runs.append(run)
            if log:
                print(
                    f"  {group.label:45s} loopwatch={'on ' if loopwatch else 'off'} "
                    f"{run.rps:8.0f} req/s  p99 {run.p99_ms:7.1f} ms  "
                    f"CPU {run.cpu_us_per_request:6.1f} us/req  "
                    f"other load {run.foreign_cpu:.2f} cores  stalls {run.stalls}",
                    flush=True,
                )
    return result


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
    rounds, seconds = (3, 2.0) if quick else (5, 3.0)
    results = []
    for group in groups(quick):
        result = run_group(group, rounds, seconds)
        results.append(
            {"summary": result.summary(), "runs": [asdict(run) for run in result.runs]}
        )
    return {
        "rounds": rounds,
        "seconds": seconds,
        "warmup_seconds": 1.0,
        "load_average": os.getloadavg(),
        "groups": results,
    }
