"""Issue #29 measured again: the eight ways an adversary broke loopwatch (hostile clients,
bad configuration), re-run the way the issue ran them.

``python -m bench --only hostile`` runs every point in a process of its own (``python -m
bench.hostile POINT``: reporting channels, the GC clock and descriptors are per process,
so one point's stuck exporter or leaked descriptor cannot change another's figures) and
prints one table: what the issue measured at b84f1c8, what each point measures now, and
whether it holds. Servers are uvicorn in a thread of the point's process on 127.0.0.1,
read back through the SDK's in-memory span exporter and metric reader (the test suite's
helpers: ``tests/conftest.py``, ``tests/middleware/``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gc
import json
import os
import random
import resource
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .common import ROOT, busy_cpu_seconds

POINT_TIMEOUT_S = 150.0
RESULT_PREFIX = "HOSTILE_JSON "
BLOCK_DURATION = "asyncio.eventloop.block.duration"

Result = dict[str, Any]


@dataclass(frozen=True)
class Point:
    """One of the issue's eight points: what was measured then, and how to measure it now."""

    number: int
    title: str
    before: str
    measure: Callable[[bool], Result]


# --- the eight points, each run in its own process ---------------------------------------


def _otel(sampler: Any = None) -> contextlib.AbstractContextManager[Any]:
    """In-memory span exporter and metric reader (``tests.middleware.conftest.Otel``)."""
    from tests.middleware.conftest import otel_sampled_by

    return contextlib.contextmanager(otel_sampled_by)(sampler)


def _method_app(stall_s: float, otel: Any, threshold: float) -> Any:
    """A Starlette app whose every request (routed for any method, or a 404 for any
    path) blocks the loop ``stall_s``, in ``LoopWatchMiddleware``."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    from loopwatch import LoopWatchMiddleware
    from tests.middleware.apps.inprocess import Receive, Scope, Send, blocking_work

    class AnyMethod:  # an ASGI endpoint (an instance): Starlette routes any method to it
        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            blocking_work(stall_s)
            await PlainTextResponse("ok")(scope, receive, send)

    async def not_found(request: Request, exc: Exception) -> Response:
        blocking_work(stall_s)
        return PlainTextResponse("not found", status_code=404)

    app = Starlette(
        routes=[Route("/items/{item_id}", AnyMethod())], exception_handlers={404: not_found}
    )
    return LoopWatchMiddleware(
        app,
        threshold=threshold,
        tracer_provider=otel.providers.tracer_provider,
        meter_provider=otel.providers.meter_provider,
    )


def _send_invented(url: str, count: int, seed: int, clients: int) -> set[str]:
    """``count`` requests with invented methods (one in ten standard), half to routed
    paths, half to invented ones, from ``clients`` keep-alive connections; the methods sent."""
    import httpx

    from tests.middleware.server import HTTP_TIMEOUT_S
    from tests.middleware.test_cardinality import STANDARD, _invented

    rng = random.Random(seed)
    plan = []
    for number in range(count):
        method = _invented(rng) if number % 10 else rng.choice(STANDARD)
        path = (
            f"/items/{rng.getrandbits(64):x}" if number % 2 == 0 else f"/{_invented(rng)}/{number}"
        )
        plan.append((method, path))

    def send(part: list[tuple[str, str]]) -> None:
        with httpx.Client(base_url=url, timeout=HTTP_TIMEOUT_S) as client:
            for method, path in part:
                client.request(method, path)

    threads = [threading.Thread(target=send, args=(plan[n::clients],)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {method for method, _ in plan}


def _series(otel: Any) -> dict[str, Any]:
    from loopwatch.inflight import HTTP_METHODS

    points = otel.metric_points(BLOCK_DURATION)
    methods = {p.attributes.get("http.request.method") for p in points} - {None}
    return {
        "series": len(points),
        "methods": sorted(methods),
        "foreign_methods": sorted(methods - HTTP_METHODS - {"_OTHER"}),
        "routes": sorted({p.attributes.get("http.route") for p in points} - {None}),
        "overflow": sum(p.count for p in points if p.attributes.get("otel.metric.overflow")),
        "stalls_with_method": sum(p.count for p in points if "http.request.method" in p.attributes),
        "stalls_other": sum(
            p.count for p in points if p.attributes.get("http.request.method") == "_OTHER"
        ),
        "causes": len({p.attributes.get("loopwatch.cause") for p in points}),
    }


def point_methods(quick: bool) -> Result:
    """(1) 300 invented methods, then a flood of 8,000 invented methods and paths."""
    import httpx

    from loopwatch.inflight import HTTP_METHODS
    from loopwatch.stall import CAUSES
    from tests.middleware.server import serve_in_thread, wait_until

    out: Result = {}
    # as the issue and tests/middleware/test_cardinality.py: 25 ms stalls, 10 ms threshold
    with (
        _otel() as otel,
        serve_in_thread(_method_app(0.025, otel, 0.01), loop="asyncio", http="h11") as server,
    ):
        sent = _send_invented(server.url, 300, seed=29, clients=1)
        with contextlib.suppress(AssertionError):
            wait_until(lambda: _series(otel)["stalls_with_method"] >= 270, 10, "stalls")
        out["300"] = {**_series(otel), "sent_methods": len(sent)}
    # the flood: 2 ms stalls at the 1 ms threshold, so 8,000 fit in the time budget
    flood = 2000 if quick else 8000
    with (
        _otel() as otel,
        serve_in_thread(_method_app(0.002, otel, 0.001), loop="asyncio", http="h11") as server,
    ):
        began = time.monotonic()
        sent = _send_invented(server.url, flood, seed=8000, clients=4)
        seconds = time.monotonic() - began
        routed_get = {"http.request.method": "GET", "http.route": "/items/{item_id}"}

        def routed_gets() -> int:
            return sum(p.count for p in otel.metric_points(BLOCK_DURATION, **routed_get))

        before_get = routed_gets()
        with httpx.Client(timeout=10) as client:  # a real GET after the flood
            client.get(f"{server.url}/items/after-the-flood")
        with contextlib.suppress(AssertionError):
            wait_until(lambda: routed_gets() > before_get, 5, "the GET stall")
        get_counted = routed_gets() > before_get
        out["flood"] = {
            **_series(otel),
            "requests": flood,
            "sent_methods": len(sent),
            "seconds": seconds,
            "get_counted": get_counted,
        }
    first, flooded = out["300"], out["flood"]
    # (cause, method or none, route or none), whatever the flood: 5 x 11 x 2
    bound = len(CAUSES) * (len(HTTP_METHODS) + 2) * 2
    out["bound"] = bound
    out["now"] = (
        f"300 requests: {len(first['methods'])} method values ({', '.join(first['methods'])}); "
        f"{flood:,} requests ({flooded['sent_methods']:,} methods; {flooded['stalls_other']:,} "
        f"stalls of invented ones): {flooded['series']} series "
        f"(bound {bound}), {flooded['overflow']} in overflow, a later GET "
        + ("counted under GET and its route" if flooded["get_counted"] else "NOT counted")
    )
    out["ok"] = (
        len(first["methods"]) <= 12
        and not first["foreign_methods"]
        and first["stalls_with_method"] >= 200
        and flooded["series"] <= bound
        and not flooded["foreign_methods"]
        and flooded["overflow"] == 0
        and flooded["get_counted"]
    )
    return out


INTEGER_OPTIONS = {"max_stack_chars": 300.5, "max_frames": 1.5, "report_burst": 2.5}


def point_integers(quick: bool) -> Result:
    """(2) Floats for integer options, as keywords and as ``LOOPWATCH_*`` variables."""
    import loopwatch
    from loopwatch.config import ENVIRONMENT_VARIABLES

    cases: list[dict[str, Any]] = []
    for option, value in INTEGER_OPTIONS.items():
        variable = ENVIRONMENT_VARIABLES[option]
        for how, named in (("keyword", option), ("variable", variable)):
            environ = {variable: str(value)} if how == "variable" else {}
            kwargs = {option: value} if how == "keyword" else {}
            with _environ(environ):
                try:
                    loopwatch.LoopWatch(**kwargs)
                    error = None
                except (TypeError, ValueError) as raised:
                    error = raised
            cases.append({
                "given": f"{named}={value}",
                "rejected": error is not None,
                "names_it": error is not None and named in str(error),
                "message": str(error) if error else "accepted",
            })  # fmt: skip
    rejected = sum(c["rejected"] and c["names_it"] for c in cases)
    return {
        "cases": cases,
        "now": f"{rejected}/{len(cases)} rejected at construction naming the option "
        f"(keywords and variables), e.g. `{cases[0]['message']}`",
        "ok": rejected == len(cases),
    }


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def point_failed_starts(quick: bool) -> Result:
    """(3) 200 failed starts: a wrong-typed provider, and a meter provider that fails
    the start half-way (after the dead man's timer was opened)."""
    import loopwatch
    from tests.test_lifecycle import _FailingMeterProvider

    async def attempts() -> Result:
        threads = threading.active_count()
        fds = _fds()
        errors: Counter[str] = Counter()
        for _ in range(200):
            try:
                loopwatch.LoopWatch(tracer_provider=5).start()  # type: ignore[arg-type]
            except Exception as error:
                errors[f"{type(error).__name__}: {error}"] += 1
        wrong_type = {"leaked_fds": _fds() - fds, "errors": dict(errors)}
        fds = _fds()
        errors.clear()
        for _ in range(200):
            watcher = loopwatch.LoopWatch(0.1, meter_provider=_FailingMeterProvider())
            try:
                watcher.start()
            except Exception as error:
                errors[f"{type(error).__name__}: {error}"] += 1
        await asyncio.sleep(0.05)  # the heartbeats' cancelled first ticks run
        failing = {"leaked_fds": _fds() - fds, "errors": dict(errors)}
        return {"tracer_provider=5": wrong_type, "failing get_meter": failing,
                "leaked_threads": threading.active_count() - threads}  # fmt: skip

    out = asyncio.run(attempts())
    wrong, failing = out["tracer_provider=5"], out["failing get_meter"]
    at_construction = any("tracer_provider" in e and "TypeError" in e for e in wrong["errors"])
    out["now"] = (
        f"tracer_provider=5: {sum(wrong['errors'].values())}/200 "
        f"{'TypeError at construction naming tracer_provider' if at_construction else 'failed'}, "
        f"{wrong['leaked_fds']} fds leaked; get_meter raising: "
        f"{sum(failing['errors'].values())}/200 failed starts, {failing['leaked_fds']} fds and "
        f"{out['leaked_threads']} threads leaked"
    )
    out["ok"] = (
        at_construction
        and wrong["leaked_fds"] == 0
        and failing["leaked_fds"] == 0
        and out["leaked_threads"] == 0
        and sum(failing["errors"].values()) == 200
    )
    return out


IDLE_S = 3.0


def _thread_cpu(thread: threading.Thread) -> float:
    """CPU seconds of one thread of this process (its POSIX CPU-time clock)."""
    assert thread.ident is not None
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


def point_idle(quick: bool) -> Result:
    """(4) An idle loop watched at the 1 ms threshold for 3 s, asyncio and uvloop."""
    import loopwatch
    from tests.conftest import LOOP_KINDS, new_loop

    out: Result = {"loops": {}}
    for kind in LOOP_KINDS:
        events: list[loopwatch.BlockEvent] = []

        async def idle(kind: str = kind, events: list[loopwatch.BlockEvent] = events) -> Result:
            watcher = loopwatch.LoopWatch(0.001, on_block=events.append).start()
            watchdog = next(t for t in threading.enumerate() if t.name == "loopwatch-watchdog")
            thread_cpu, process_cpu = _thread_cpu(watchdog), time.process_time()
            began = time.monotonic()
            await asyncio.sleep(IDLE_S)
            elapsed = time.monotonic() - began
            thread_cpu = _thread_cpu(watchdog) - thread_cpu
            process_cpu = time.process_time() - process_cpu
            watcher.stop()
            return {"watchdog_cpu": thread_cpu / elapsed, "process_cpu": process_cpu / elapsed,
                    "interval_ms": watcher.config.interval * 1000}  # fmt: skip

        loop = new_loop(kind)
        gc.disable()  # an idle loop allocates nothing: no collection should be charged to it
        try:
            figures = loop.run_until_complete(idle())
        finally:
            gc.enable()
            loop.close()
        ended = [event for event in events if not event.ongoing]
        by_cause = Counter(event.cause for event in ended)
        held = sum(n for cause, n in by_cause.items() if cause != "unscheduled")
        durations = [round(event.duration * 1000, 1) for event in ended]
        out["loops"][kind] = {**figures, "stalls": dict(by_cause), "held": held,
                              "durations_ms": durations}  # fmt: skip
    parts = []
    for kind, row in out["loops"].items():
        causes = ", ".join(f"{n} {c}" for c, n in sorted(row["stalls"].items())) or "none"
        if row["durations_ms"]:
            causes += f" (longest {max(row['durations_ms']):g} ms)"
        parts.append(
            f"{kind}: stalls {causes}; watchdog thread {row['watchdog_cpu']:.1%} of a core, "
            f"process {row['process_cpu']:.1%} (interval {row['interval_ms']:g} ms)"
        )
    out["now"] = "; ".join(parts)
    # as tests/test_low_threshold.py: at most 2 stalls that are not the machine's
    # (``unscheduled``: the process did not run), and the watchdog well under 16 % of a core
    out["ok"] = all(r["held"] <= 2 and r["watchdog_cpu"] < 0.05 for r in out["loops"].values())
    return out


def point_long_threshold(quick: bool) -> Result:
    """(5) A threshold of 60 s (and 30 s) alone, as a keyword and as a variable."""
    import loopwatch

    cases = []
    for how, seconds in (("keyword", 60.0), ("keyword", 30.0), ("variable", 60.0)):
        environ = {"LOOPWATCH_THRESHOLD_MS": f"{seconds * 1000:g}"} if how == "variable" else {}
        given = (
            f"LOOPWATCH_THRESHOLD_MS={seconds * 1000:g}" if environ else f"threshold={seconds:g}"
        )
        try:
            with _environ(environ):
                watcher = loopwatch.LoopWatch(seconds if how == "keyword" else None)

                async def briefly(watcher: loopwatch.LoopWatch = watcher) -> None:
                    async with watcher:
                        await asyncio.sleep(0.05)

                asyncio.run(briefly())
            cases.append({"given": given, "accepted": True,
                          "dump_after": watcher.config.dump_after})  # fmt: skip
        except (TypeError, ValueError) as error:
            cases.append({"given": given, "accepted": False, "message": str(error)})
    accepted = [c for c in cases if c["accepted"]]
    return {
        "cases": cases,
        "now": f"{len(accepted)}/{len(cases)} accepted and started: "
        + "; ".join(
            f"{c['given']}: dump_after {c['dump_after']:g} s"
            if c["accepted"]
            else f"{c['given']}: {c['message']}"
            for c in cases
        ),
        "ok": len(accepted) == len(cases),
    }


CULPRITS = 1100
ROUNDS = 3


def _culprits(count: int) -> list[Callable[[float], None]]:
    """``count`` distinct blocking functions (``bench.hostile_culprits.culprit_NNNN``)."""
    namespace: dict[str, Any] = {"__name__": "bench.hostile_culprits", "time": time}
    source = "\n".join(
        f"def culprit_{n:04d}(seconds):\n    time.sleep(seconds)\n" for n in range(count)
    )
    exec(compile(source, "<bench.hostile culprits>", "exec"), namespace)
    return [namespace[f"culprit_{n:04d}"] for n in range(count)]


def point_many_culprits(quick: bool) -> Result:
    """(6) 3 rounds of 1,100 culprits, burst 1, no refill: real stalls, real spans."""
    import loopwatch
    from tests.conftest import telemetry_sampled_by

    culprits = _culprits(CULPRITS)
    named: Counter[str] = Counter()

    def seen(event: loopwatch.BlockEvent) -> None:
        if event.end is not None and event.culprit is not None:
            named[event.culprit.function] += 1

    async def storm(telemetry: Any) -> None:
        async with loopwatch.LoopWatch(
            0.001,
            tracer_provider=telemetry.tracer_provider,
            meter_provider=telemetry.meter_provider,
            on_block=seen,
            report_burst=1,
            report_per_minute=0.0,
        ):
            await asyncio.sleep(0.02)
            for _round in range(ROUNDS):
                for culprit in culprits:
                    culprit(0.004)
                    await asyncio.sleep(0.001)
            await asyncio.sleep(0.02)

    with contextlib.contextmanager(telemetry_sampled_by)(None) as telemetry:
        began = time.monotonic()
        gc.disable()
        try:
            asyncio.run(storm(telemetry))
        finally:
            gc.enable()
        loopwatch.LoopWatch.flush(30.0)
        spans = Counter(
            (span.attributes or {}).get("code.function.name", "")
            for span in telemetry.blocked_spans()
        )
        counted = sum(p.count for p in telemetry.metrics().get(BLOCK_DURATION, []))
    seconds = time.monotonic() - began
    ours = {name: n for name, n in spans.items() if name.startswith("bench.hostile_culprits.")}
    named_ours = sum(n for name, n in named.items() if name.startswith("bench.hostile_culprits."))
    total = sum(spans.values())
    most = max(ours.values(), default=0)
    return {
        "stalls_counted": counted,
        "stalls_named": named_ours,
        "culprits_named": len([n for n in named if n.startswith("bench.hostile_culprits.")]),
        "spans": total,
        "spans_of_culprits": sum(ours.values()),
        "most_per_culprit": most,
        "seconds": seconds,
        "now": f"{total:,} spans (limit {CULPRITS:,}), at most {most} per culprit, from "
        f"{counted:,} stalls counted ({named_ours:,} named after "
        f"{len([n for n in named if n.startswith('bench.hostile_culprits.')]):,} culprits)",
        "ok": total <= CULPRITS and most <= 1 and named_ours >= ROUNDS * CULPRITS * 0.8,
    }


SAMPLED_EVERY = 20
SAMPLING_STALLS = 200


def point_sampling(quick: bool) -> Result:
    """(7) 1 % head sampling, 200 blocking requests through FastAPI's instrumentation;
    every 20th request comes in a sampled trace (``traceparent`` ``-01``), so sampled
    requests come only after unsampled ones have stalled (which spent the tokens)."""
    import httpx
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    import loopwatch
    from loopwatch import LoopWatchMiddleware
    from tests.middleware.apps.inprocess import Probe, build_fastapi, culprit_name
    from tests.middleware.server import HTTP_TIMEOUT_S, serve_in_thread

    out: Result = {}
    samplers = {
        "ParentBased(TraceIdRatioBased(0.01))": lambda: ParentBased(TraceIdRatioBased(0.01)),
        "keep_stalls(same)": lambda: loopwatch.keep_stalls(ParentBased(TraceIdRatioBased(0.01))),
    }
    for name, sampler in samplers.items():
        with _otel(sampler()) as otel:
            app = build_fastapi(otel.providers, Probe(), loopwatch=False, instrument="before")
            app.add_middleware(
                LoopWatchMiddleware,
                threshold=0.01,
                tracer_provider=otel.providers.tracer_provider,
                meter_provider=otel.providers.meter_provider,
            )
            rng = random.Random(7)
            began = time.monotonic()
            with (
                serve_in_thread(app, loop="asyncio") as server,
                httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT_S) as client,
            ):
                for number in range(SAMPLING_STALLS):
                    headers = {}
                    if number % SAMPLED_EVERY == SAMPLED_EVERY - 1:
                        trace_id, span_id = rng.getrandbits(128), rng.getrandbits(64)
                        headers["traceparent"] = f"00-{trace_id:032x}-{span_id:016x}-01"
                    client.get(f"/block/{number}", params={"seconds": 0.025}, headers=headers)
                loopwatch.LoopWatch.flush(10.0)
            seconds = time.monotonic() - began
            spans = otel.spans()
            requests = {
                span.context.trace_id
                for span in spans
                if span.kind.name == "SERVER"
                and (span.attributes or {}).get("http.route") == "/block/{item_id}"
            }
            stalls = [
                span
                for span in spans
                if span.name == "loop.blocked"
                and (span.attributes or {}).get("code.function.name") == culprit_name()
            ]
            counted = sum(p.count for p in otel.metric_points(BLOCK_DURATION))
            tokens = 5 + int(seconds / 60 * 6)  # default burst 5, refilled at 6 per minute
            in_sampled = sum(span.context.trace_id in requests for span in stalls)
            out[name] = {
                "sampled_requests": len(requests),
                "stalls_exported": len(stalls),
                "in_sampled_requests": in_sampled,
                "stalls_counted": counted,
                "tokens": tokens,
                "seconds": seconds,
            }
    plain = out["ParentBased(TraceIdRatioBased(0.01))"]
    kept = out["keep_stalls(same)"]
    roots = plain["stalls_exported"] - plain["in_sampled_requests"]
    out["now"] = (
        f"ParentBased(TraceIdRatioBased(0.01)): {plain['stalls_exported']} stalls exported "
        f"for {plain['tokens']} tokens ({plain['in_sampled_requests']} in the traces of the "
        f"{plain['sampled_requests']} sampled requests, {roots} new root(s) the 1 % "
        f"sampler kept), {plain['stalls_counted']} counted; keep_stalls: {kept['stalls_exported']} "
        f"exported for {kept['tokens']} tokens, {kept['stalls_counted']} counted"
    )
    # at least 10 stalls could be recorded (the sampled requests'), more than the tokens:
    # every token must have gone to an exported span
    out["ok"] = all(
        min(row["sampled_requests"], 5) <= row["stalls_exported"] <= row["tokens"]
        and row["stalls_counted"] >= SAMPLING_STALLS
        for row in (plain, kept)
    )
    return out


STUCK_STALLS = 20


@contextlib.contextmanager
def _closed_endpoint() -> Iterator[str]:
    """An OTLP endpoint on 127.0.0.1 where nothing listens (connection refused)."""
    from tests.middleware.server import free_port

    yield f"http://127.0.0.1:{free_port()}/v1/traces"


def point_stuck_exporter(quick: bool) -> Result:
    """(8) A Simple span processor whose OTLP exporter hangs (silent endpoint) or finds
    no endpoint: 20 stalls, all counted in ``block.duration``; ``stop()`` on the loop
    thread is bounded and leaves no watchdog thread."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    import loopwatch
    from tests import workloads
    from tests.conftest import telemetry_sampled_by
    from tests.test_reliability import silent_endpoint, stalls_counted, watchdog_threads

    out: Result = {}
    for name, endpoint_of in (("hanging", silent_endpoint), ("closed", _closed_endpoint)):
        with (
            contextlib.contextmanager(telemetry_sampled_by)(None) as telemetry,
            endpoint_of() as endpoint,
        ):
            provider = TracerProvider()
            provider.add_span_processor(
                SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint, timeout=3))
            )

            async def stalls(
                provider: TracerProvider = provider, telemetry: Any = telemetry
            ) -> Result:
                before = watchdog_threads()
                watcher = loopwatch.LoopWatch(
                    0.05,
                    tracer_provider=provider,
                    meter_provider=telemetry.meter_provider,
                    report_burst=STUCK_STALLS,
                ).start()
                await asyncio.sleep(0.05)
                for _ in range(STUCK_STALLS):
                    workloads.nap(0.12)
                    await asyncio.sleep(0.06)
                began = time.perf_counter()
                watcher.stop()  # on the loop thread, as ``async with`` and lifespan do
                return {"stop_s": time.perf_counter() - began,
                        "watchdogs_left": watchdog_threads() - before}  # fmt: skip

            figures = asyncio.run(stalls())
            out[name] = {**figures, "counted": stalls_counted(telemetry)}
    out["now"] = "; ".join(
        f"{name}: {row['counted']}/{STUCK_STALLS} counted, stop() {row['stop_s']:.2f} s, "
        f"{row['watchdogs_left']} watchdog left"
        for name, row in out.items()
    )
    out["ok"] = all(
        row["counted"] >= STUCK_STALLS and row["stop_s"] <= 1.25 and row["watchdogs_left"] == 0
        for name, row in out.items()
        if isinstance(row, dict)
    )
    return out


POINTS = [
    Point(1, "Invented HTTP methods as metric labels",
          "300 invented methods: 278-289 `http.request.method` values; 8,000: ~2,000 series, "
          "later stalls (a real GET too) in `otel_metric_overflow`", point_methods),
    Point(2, "Floats for integer options",
          "`max_stack_chars=300.5`, `max_frames=1.5`, `report_burst=2.5` accepted; the "
          "watchdog died at the first stall (TypeError)", point_integers),
    Point(3, "Failed starts leak descriptors",
          "200 failed `LoopWatch(tracer_provider=5).start()`: 200 fds leaked", point_failed_starts),
    Point(4, "Idle loop at a 1 ms threshold",
          "50 µs interval: 2,273 false stalls in 3 s, 16 % of a core", point_idle),
    Point(5, "Threshold of 30 s or more",
          "rejected, naming `LOOPWATCH_DUMP_AFTER_MS=30000` (never set)", point_long_threshold),
    Point(6, "Rate limit past 1,024 culprits",
          "3 rounds of 1,100 culprits, burst 1, no refill: 1,239 spans (limit 1,100)",
          point_many_culprits),
    Point(7, "Tokens spent before sampling",
          "1 % head sampling: 0 of 200 stalls exported (tokens went to dropped spans)",
          point_sampling),
    Point(8, "Stuck exporter loses metrics; stop() on the loop",
          "2-3 of 20 stalls counted; `stop()` on the loop thread blocked 5 s, watchdog left "
          "alive", point_stuck_exporter),
]  # fmt: skip


# --- the harness -------------------------------------------------------------------------


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run_point(point: Point, quick: bool) -> Result:
    """Run ``point`` in a new process; its result, or what went wrong."""
    from tests.middleware.server import REPO_ROOT, child_environ

    argv = [sys.executable, "-m", "bench.hostile", str(point.number)] + (
        ["--quick"] if quick else []
    )
    env = child_environ(PYTHONPATH=str(REPO_ROOT))
    began = time.monotonic()
    try:
        done = subprocess.run(
            argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
            timeout=POINT_TIMEOUT_S, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return {
            "ok": False,
            "now": f"did not finish in {POINT_TIMEOUT_S:g} s",
            "seconds": POINT_TIMEOUT_S,
        }
    seconds = time.monotonic() - began
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout)[-1500:]
        return {
            "ok": False,
            "now": f"failed (exit {done.returncode})",
            "error": tail,
            "seconds": seconds,
        }
    result: Result = json.loads(lines[-1].removeprefix(RESULT_PREFIX))
    result["seconds"] = seconds
    return result


def run(quick: bool) -> dict[str, Any]:
    """Every point once per round (two rounds, one if ``quick``), with the machine's load."""
    rounds = []
    for number in range(1 if quick else 2):
        load_before = os.getloadavg()
        busy, own, began = busy_cpu_seconds(), _children_cpu(), time.monotonic()
        results = {}
        for point in POINTS:
            print(f"[hostile] round {number + 1}, point {point.number}: {point.title}", flush=True)
            results[str(point.number)] = result = _run_point(point, quick)
            print(
                f"[hostile]   {'holds' if result['ok'] else 'FAILS'}: {result['now']}", flush=True
            )
        elapsed = time.monotonic() - began
        other = (busy_cpu_seconds() - busy - (_children_cpu() - own)) / elapsed
        rounds.append({
            "points": results,
            "seconds": elapsed,
            "load_before": load_before,
            "load_after": os.getloadavg(),
            "other_cores": max(0.0, other),
        })  # fmt: skip
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "rounds": rounds,
        "python": sys.version.split()[0],
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit or "?",
    }


def _holds(data: dict[str, Any], point: Point) -> bool:
    return all(r["points"][str(point.number)]["ok"] for r in data["rounds"])


def goal_row(data: dict[str, Any]) -> str:
    """The line of the page's goals table."""
    held = [point.number for point in POINTS if _holds(data, point)]
    failing = [str(point.number) for point in POINTS if point.number not in held]
    verdict = "met" if not failing else f"MISSED: point(s) {', '.join(failing)}"
    return (
        f"| Issue #29's eight hostile inputs hold (every run) | {len(held)}/{len(POINTS)} "
        f"in {len(data['rounds'])} run(s) ({verdict}) |"
    )


def section(data: dict[str, Any]) -> list[str]:
    """The *Hostile input (issue #29)* part of the benchmark page."""
    rounds = data["rounds"]
    header = (
        "| # | point | before (issue #29, at b84f1c8) | "
        + " | ".join(f"now, run {n + 1}" for n in range(len(rounds)))
        + " | verdict |"
    )
    out = [
        "",
        "## Hostile input (issue #29)",
        "",
        "The eight ways an adversary broke loopwatch in issue #29, re-run the way the issue "
        f"describes them (`python -m bench --only hostile`, `bench/hostile.py`, on "
        f"{data['date']} at commit `{data['commit']}`; Python {data['python']}; each point "
        "in a process of its own; uvicorn servers on 127.0.0.1 in the point's process, "
        "spans and metrics read back from the SDK's in-memory exporter and reader). "
        "*Before* is the issue's figure; each run measures all eight again.",
        "",
        header,
        "|---|---|---|" + "---|" * len(rounds) + "---|",
    ]
    for point in POINTS:
        key = str(point.number)
        cells = [r["points"][key]["now"].replace("|", "\\|") for r in rounds]
        held = _holds(data, point)
        out.append(
            f"| {point.number} | {point.title} | {point.before} | "
            + " | ".join(cells)
            + f" | {'holds' if held else '**FAILS**'} |"
        )
    out += ["", "**Machine load.** " + "; ".join(
        f"run {n + 1}: {r['seconds']:.0f} s, load average {r['load_before'][0]:.1f} before and "
        f"{r['load_after'][0]:.1f} after, other processes {r['other_cores']:.2f} of the cores"
        for n, r in enumerate(rounds)
    ) + ". Point 4 holds with at most 2 stalls per loop in 3 s (the bound of "
        "`tests/test_low_threshold.py`; the issue asks for none), `unscheduled` ones apart: "
        "the process was not run (a busy machine), which is real lag but not the loop's; "
        "its watchdog must stay under 5 % of a core."]  # fmt: skip
    failed = [
        (n + 1, key, r["points"][key]) for n, r in enumerate(rounds)
        for key in r["points"] if not r["points"][key]["ok"] and "error" in r["points"][key]
    ]  # fmt: skip
    for number, key, result in failed:
        out += ["", f"Point {key} failed in run {number}:", "", "```", result["error"], "```"]
    return out


def main(argv: list[str]) -> int:
    """Run one point in this process and print its result as one JSON line."""
    number, quick = int(argv[0]), "--quick" in argv
    point = next(p for p in POINTS if p.number == number)
    result = point.measure(quick)
    print(RESULT_PREFIX + json.dumps(result, default=str), flush=True)
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    os._exit(code)  # a stuck exporter's thread (point 8) must not hold the exit
