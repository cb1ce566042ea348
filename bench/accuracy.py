"""Accuracy: run the stall corpus on a watched loop and compare loopwatch's reports with
the truth (``time.perf_counter`` around the blocking call); then check for false
positives under a heavy async load with no blocking at all.

Each loop kind runs in its own interpreter (``python -m bench.accuracy LOOP REPS
DURATIONS FP_SECONDS``, JSON on stdout); :func:`run` drives that.
"""

from __future__ import annotations

import asyncio
import gc
import json
import random
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass

from loopwatch import BlockEvent, LoopWatch

from .stalls import PATTERNS, Calibration, Fixtures, Pattern, calibrate

THRESHOLD = 0.1
DURATIONS = (0.075, 0.1, 0.15, 0.2, 0.3, 0.5)
QUICK_DURATIONS = (0.075, 0.15, 0.3)
SETTLE = 0.1
"""Idle time before each stall."""
AFTER = 0.3
"""Idle time after each stall, for the watchdog to close and report it."""


def tolerance(true_duration: float) -> float:
    """The goal for the duration error: max(5 ms, 5 %)."""
    return max(0.005, 0.05 * true_duration)


class Collector:
    """``on_block`` hook keeping every finished stall (called on the watchdog thread)."""

    def __init__(self) -> None:
        self.events: list[BlockEvent] = []
        self._lock = threading.Lock()

    def __call__(self, event: BlockEvent) -> None:
        if event.end is not None:
            with self._lock:
                self.events.append(event)

    def between(self, start: float, end: float) -> list[BlockEvent]:
        """Finished stalls overlapping the epoch interval [start, end]."""
        with self._lock:
            return [e for e in self.events if e.end is not None and e.start < end and e.end > start]


@dataclass
class CaseResult:
    """loopwatch's verdict on one stall next to the truth."""

    loop: str
    pattern: str
    nominal: float
    true: float
    detected: bool
    reports: int
    duration: float | None
    error: float | None
    cause: str | None
    expected_cause: str
    culprit: str | None
    expected_culprit: str
    offender: str | None
    sampled: bool
    samples: int

    @property
    def must_detect(self) -> bool:
        return self.true >= 1.5 * THRESHOLD

    @property
    def cause_ok(self) -> bool:
        return self.cause == self.expected_cause

    @property
    def culprit_ok(self) -> bool:
        """Right culprit; for stalls no sample can see, no culprit at all is also right."""
        if self.sampled:
            return self.culprit == self.expected_culprit
        return self.culprit in (None, self.expected_culprit)

    @property
    def culprit_verdict(self) -> str:
        """``right``; ``none`` (a sampleable stall reported without a culprit: it ended
        before the watchdog's first sample, or the only sample came too late to show it);
        or ``wrong`` (a culprit that is not the stall's)."""
        if self.culprit_ok:
            return "right"
        return "none" if self.culprit is None else "wrong"

    @property
    def error_ok(self) -> bool:
        return self.error is not None and abs(self.error) <= tolerance(self.true)


def _dispose(box: list[tuple[object, ...]]) -> None:
    """Free a case's (possibly huge) arguments in small pieces, off the loop thread.

    Freeing a list of a million objects is one long C call that holds the GIL; done on
    the loop it would lengthen the stall, done in one piece in a thread it would cause one.
    """
    args = box.pop()
    for arg in args:
        if isinstance(arg, list):
            while arg:
                del arg[-2000:]


async def _one_case(
    pattern: Pattern, nominal: float, fx: Fixtures, cal: Calibration
) -> tuple[float, float]:
    """Prepare off the loop, stall the loop, wait for the report.

    Returns the epoch time the stall began and its true duration.
    """
    box: list[tuple[object, ...]] = []

    def prepare() -> tuple[object, ...]:
        function, args, go = pattern.prepare(fx, nominal, cal)
        box.append(args)
        return function, go

    function, go = await asyncio.to_thread(prepare)
    await asyncio.sleep(SETTLE)
    # No automatic collection may lengthen the stall past the measured call (the gc
    # pattern collects explicitly and re-enables the collector itself).
    gc.disable()
    try:
        go()
        wall = time.time()
        started = time.perf_counter()
        function(*box[0])
        true = time.perf_counter() - started
        await asyncio.sleep(AFTER)
    finally:
        gc.enable()
    await asyncio.to_thread(_dispose, box)
    await asyncio.to_thread(LoopWatch.flush)  # hooks run on their own thread: all delivered
    return wall, true


async def corpus(
    loop_name: str,
    reps: int,
    durations: tuple[float, ...],
    collector: Collector,
    fx: Fixtures,
    cal: Calibration,
) -> tuple[list[CaseResult], list[BlockEvent]]:
    """Every pattern at every duration, ``reps`` times, in a shuffled order; also the
    stalls reported outside every pattern's window."""
    first_event = len(collector.events)
    rng = random.Random(11)
    plan = [(p, d) for _ in range(reps) for p in PATTERNS for d in durations]
    rng.shuffle(plan)
    results: list[CaseResult] = []
    matched: set[int] = set()
    for pattern, nominal in plan:
        wall, true = await _one_case(pattern, nominal, fx, cal)
        found = collector.between(wall, wall + true)
        matched.update(id(e) for e in found)
        best = max(
            found,
            key=lambda e: min(e.end or 0, wall + true) - max(e.start, wall),
            default=None,
        )
        results.append(
            CaseResult(
                loop=loop_name,
                pattern=pattern.name,
                nominal=nominal,
                true=true,
                detected=best is not None,
                reports=len(found),
                duration=best.duration if best else None,
                error=(best.duration - true) if best else None,
                cause=best.cause if best else None,
                expected_cause=pattern.expected_cause,
                culprit=best.culprit.function if best and best.culprit else None,
                expected_culprit=pattern.culprit,
                offender=best.offender.function if best and best.offender else None,
                sampled=pattern.sampled,
                samples=best.samples if best else 0,
            )
        )
    unmatched = [e for e in collector.events[first_event:] if id(e) not in matched]
    return results, unmatched


async def heavy_load(seconds: float) -> dict[str, int]:
    """Lots of short callbacks and no blocking: tasks yielding, timers, TCP echo traffic."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    counts = {"yields": 0, "timers": 0, "messages": 0}

    async def yielder() -> None:
        while loop.time() < deadline:
            for _ in range(50):
                await asyncio.sleep(0)
            counts["yields"] += 50
            await asyncio.sleep(random.random() * 0.002)

    def timer() -> None:
        counts["timers"] += 1
        if loop.time() < deadline:
            loop.call_later(random.random() * 0.001, timer)

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(4096):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        payload = b"x" * 1024
        while loop.time() < deadline:
            writer.write(payload)
            await reader.readexactly(len(payload))
            counts["messages"] += 1
        writer.close()

    for _ in range(200):
        loop.call_soon(timer)
    async with server:
        await asyncio.gather(*(yielder() for _ in range(300)), *(client() for _ in range(30)))
    return counts


PROBE_PERIOD = 0.01


async def lag_probe(lags: list[tuple[float, float]]) -> None:
    """An independent 10 ms timer: records (epoch end, lag) of every lag of 50 ms or more.

    A stall of duration d delays some tick by at least d - 10 ms, so every stall loopwatch
    reports that matches no pattern can be checked against it.
    """
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + PROBE_PERIOD
        await asyncio.sleep(PROBE_PERIOD)
        lag = loop.time() - due
        if lag >= 0.05:
            lags.append((time.time(), lag))


def confirmed(event: BlockEvent, lags: list[tuple[float, float]]) -> bool:
    """Whether the probe saw a lag of at least ``duration - 2 periods`` overlapping ``event``."""
    end = event.end or event.start
    need = event.duration - 2 * PROBE_PERIOD
    return any(
        lag >= need and seen - lag <= end + 0.005 and seen >= event.start - 0.005
        for seen, lag in lags
    )


async def main(
    loop_name: str, reps: int, durations: tuple[float, ...], fp_seconds: float
) -> dict[str, object]:
    """Calibrate (unwatched), then the corpus and the false-positive load (watched)."""
    fx = Fixtures()
    cal = calibrate()
    collector = Collector()
    lags: list[tuple[float, float]] = []
    probe = asyncio.get_running_loop().create_task(lag_probe(lags))
    try:
        async with LoopWatch(threshold=THRESHOLD, on_block=collector) as watcher:
            config = {k: str(v) for k, v in asdict(watcher.config).items()}
            await asyncio.sleep(AFTER)
            results, unmatched = await corpus(loop_name, reps, durations, collector, fx, cal)
            unmatched_events = [
                {"duration": e.duration, "cause": e.cause, "culprit": str(e.culprit),
                 "confirmed_by_probe": confirmed(e, lags)}
                for e in unmatched
            ]  # fmt: skip
            before = len(collector.events)
            started = time.monotonic()
            load_started_epoch = time.time()
            load = await heavy_load(fp_seconds)
            load_seconds = time.monotonic() - started
            await asyncio.sleep(AFTER)
            await asyncio.to_thread(LoopWatch.flush)
            false_positives = [
                {"duration": e.duration, "cause": e.cause, "culprit": str(e.culprit),
                 "confirmed_by_probe": confirmed(e, lags)}
                for e in collector.events[before:]
            ]  # fmt: skip
            lags_during_load = sum(1 for seen, _ in lags if seen >= load_started_epoch)
    finally:
        probe.cancel()
        fx.close()
    return {
        "loop": loop_name,
        "config": config,
        "cases": [asdict(r) for r in results],
        "unmatched_during_corpus": len(unmatched_events),
        "unmatched_events": unmatched_events,
        "probe_lags_during_load": lags_during_load,
        "false_positive_load": {**load, "seconds": load_seconds},
        "false_positives": false_positives,
    }


def _worker(argv: list[str]) -> None:
    loop_name, reps, durations, fp_seconds = argv
    parsed = tuple(float(d) for d in durations.split(","))
    coroutine = main(loop_name, int(reps), parsed, float(fp_seconds))
    if loop_name == "uvloop":
        import uvloop

        result = uvloop.run(coroutine)
    else:
        result = asyncio.run(coroutine)
    print(json.dumps(result))


def run(quick: bool) -> dict[str, object]:
    """Both loops (asyncio only with ``quick``), each in a fresh interpreter."""
    from .common import ROOT

    loops = ("asyncio",) if quick else ("asyncio", "uvloop")
    durations = QUICK_DURATIONS if quick else DURATIONS
    fp_seconds = 4.0 if quick else 10.0
    per_loop = []
    reps_used = {}
    for loop_name in loops:
        reps = 2 if not quick and loop_name == "asyncio" else 1
        reps_used[loop_name] = reps
        print(f"  accuracy on {loop_name}: {len(PATTERNS)} patterns x {len(durations)} "
              f"durations x {reps}", flush=True)  # fmt: skip
        out = subprocess.run(
            [sys.executable, "-m", "bench.accuracy", loop_name, str(reps),
             ",".join(map(str, durations)), str(fp_seconds)],
            cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
        )  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"accuracy worker failed:\n{out.stderr}")
        per_loop.append({**json.loads(out.stdout), "stderr": out.stderr[-4000:]})
    return {"threshold": THRESHOLD, "durations": durations, "reps": reps_used, "loops": per_loop}


def case_results(raw: dict[str, object]) -> list[CaseResult]:
    """The cases of :func:`run`'s output as :class:`CaseResult` objects."""
    return [CaseResult(**case) for loop in raw["loops"] for case in loop["cases"]]  # type: ignore[index,union-attr]


if __name__ == "__main__":
    _worker(sys.argv[1:])
