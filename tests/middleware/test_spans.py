"""``loop.blocked`` spans and block metrics from real uvicorn servers (asyncio and uvloop).

Each test stalls the loop for 0.4 s against a 0.1 s threshold with a synchronous sleep in
an ``async`` handler, over real HTTP.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind

from loopwatch import LoopWatchMiddleware
from loopwatch.inflight import REQUEST_KEY, Request

from .apps.inprocess import (
    Instrument,
    Probe,
    Receive,
    Scope,
    Send,
    build_raw,
    build_starlette,
    culprit_name,
    loopwatch_options,
    raw_app,
)
from .conftest import SPAN_WAIT_S, Otel, watchdog_threads
from .server import HTTP_TIMEOUT_S, serve_in_thread, wait_until

STALL_S = 0.4
BLOCK_DURATION = "asyncio.eventloop.block.duration"
VICTIMS = 3
VICTIM_SLEEP_S = 1.0
EDGE_TOLERANCE_NS = 200_000_000
"""How far the back-dated span may reach outside its parent (stall start is estimated)."""


def get(url: str) -> httpx.Response:
    return httpx.get(url, timeout=HTTP_TIMEOUT_S)


def server_span(otel: Otel, route: str) -> ReadableSpan:
    """The one SERVER span of ``route``, once it has ended."""
    wait_until(lambda: len(otel.server_spans(route)) >= 1, SPAN_WAIT_S, f"server span {route}")
    [span] = otel.server_spans(route)
    return span


def is_server(span: ReadableSpan) -> bool:
    return span.kind is SpanKind.SERVER


def attrs(span: ReadableSpan) -> dict[str, object]:
    return dict(span.attributes or {})


def assert_names_culprit(blocked: ReadableSpan, route: str | None) -> None:
    """The stall names the blocking function, the cause and the culprit request."""
    attributes = attrs(blocked)
    assert attributes["code.function.name"] == culprit_name()
    assert attributes["loopwatch.cause"] == "blocking"
    assert attributes["http.request.method"] == "GET"
    assert attributes.get("http.route") == route
    assert STALL_S - 0.1 <= float(attributes["loopwatch.duration"]) <= STALL_S + 2.0  # type: ignore[arg-type]
    assert blocked.kind is SpanKind.INTERNAL


def assert_child_of(blocked: ReadableSpan, parent: ReadableSpan) -> None:
    """Same trace, parent id set to ``parent``, back-dated into ``parent``'s time."""
    assert blocked.parent is not None
    assert blocked.context is not None
    assert parent.context is not None
    assert blocked.context.trace_id == parent.context.trace_id
    assert blocked.parent.span_id == parent.context.span_id
    assert blocked.start_time is not None
    assert parent.start_time is not None
    assert blocked.end_time is not None
    assert parent.end_time is not None
    assert blocked.start_time >= parent.start_time - EDGE_TOLERANCE_NS
    assert blocked.end_time <= parent.end_time + EDGE_TOLERANCE_NS
    assert blocked.end_time - blocked.start_time >= (STALL_S - 0.1) * 1e9


@pytest.mark.parametrize("instrument", ["before", "after"])
def test_span_is_child_of_server_span(
    loop_name: str, instrument: Instrument, otel: Otel, fastapi_app: Callable[..., FastAPI]
) -> None:
    """``instrument_app`` before or after ``add_middleware``: parent is the server span."""
    app = fastapi_app(instrument=instrument)
    with serve_in_thread(app, loop=loop_name) as server:
        response = get(f"{server.url}/block/7?seconds={STALL_S}")
        assert response.json() == {"item_id": 7, "blocked": STALL_S}
        [blocked] = otel.blocked_spans()
        parent = server_span(otel, "/block/{item_id}")
    assert_names_culprit(blocked, "/block/{item_id}")
    assert_child_of(blocked, parent)
    assert attrs(blocked)["loopwatch.delayed_requests"] == 0
    assert "loopwatch.delayed_by" not in attrs(parent)


def test_span_is_child_of_handler_span(
    loop_name: str, otel: Otel, fastapi_app: Callable[..., FastAPI]
) -> None:
    """A span the handler opened around the blocking call is the parent."""
    app = fastapi_app(instrument="after")
    with serve_in_thread(app, loop=loop_name) as server:
        assert get(f"{server.url}/block-in-span?seconds={STALL_S}").status_code == 200
        [blocked] = otel.blocked_spans()
        outer = server_span(otel, "/block-in-span")
    [handler] = [span for span in otel.spans() if span.name == "handler-work"]
    assert_names_culprit(blocked, "/block-in-span")
    assert_child_of(blocked, handler)
    assert handler.parent is not None
    assert outer.context is not None
    assert handler.parent.span_id == outer.context.span_id


def block_while_victims_wait(
    url: str, pool: ThreadPoolExecutor, probe: Probe, item_id: int
) -> None:
    """Stall the loop with ``/block/{item_id}`` while :data:`VICTIMS` requests wait in
    their handlers (``/sleep``); all of them succeed."""
    victims = [pool.submit(get, f"{url}/sleep?seconds={VICTIM_SLEEP_S}") for _ in range(VICTIMS)]
    wait_until(lambda: probe.sleepers >= VICTIMS, 5.0, "the victims to reach their handler")
    assert get(f"{url}/block/{item_id}?seconds={STALL_S}").status_code == 200
    assert [future.result(HTTP_TIMEOUT_S).status_code for future in victims] == [200] * VICTIMS


def test_victims_are_linked_and_marked(
    loop_name: str, otel: Otel, probe: Probe, fastapi_app: Callable[..., FastAPI]
) -> None:
    """Requests waiting on the loop during the stall are linked and carry ``delayed_by``."""
    app = fastapi_app(instrument="after")
    with serve_in_thread(app, loop=loop_name) as server, ThreadPoolExecutor(VICTIMS) as pool:
        block_while_victims_wait(server.url, pool, probe, item_id=1)
        [blocked] = otel.blocked_spans()
        culprit = server_span(otel, "/block/{item_id}")
        wait_until(lambda: len(otel.server_spans("/sleep")) == VICTIMS, SPAN_WAIT_S, "victim spans")
    assert_victims_linked(blocked, culprit, otel.server_spans("/sleep"))


def assert_victims_linked(
    blocked: ReadableSpan, culprit: ReadableSpan, victim_spans: list[ReadableSpan]
) -> None:
    """``blocked`` is the culprit's stall, linking every victim, which carries
    ``loopwatch.delayed_by``; the culprit is neither linked nor delayed."""
    assert_names_culprit(blocked, "/block/{item_id}")
    assert_child_of(blocked, culprit)
    delayed_links = {
        link.context.span_id: link.context.trace_id
        for link in blocked.links
        if (link.attributes or {}).get("loopwatch.link") == "delayed"
    }
    for victim in victim_spans:
        assert victim.context is not None
        assert delayed_links.get(victim.context.span_id) == victim.context.trace_id
        delayed_by = attrs(victim)["loopwatch.delayed_by"]
        assert isinstance(delayed_by, float)
        assert delayed_by > STALL_S - 0.1
    assert int(attrs(blocked)["loopwatch.delayed_requests"]) >= VICTIMS  # type: ignore[call-overload]
    assert culprit.context is not None
    assert culprit.context.span_id not in delayed_links
    assert "loopwatch.delayed_by" not in attrs(culprit)


def test_requests_of_an_untraced_app_are_found_by_scope(
    loop_name: str, otel: Otel, probe: Probe, fastapi_app: Callable[..., FastAPI]
) -> None:
    """No tracing: the middleware keeps nothing per request. The stall still names its
    request (from the ASGI scope in the stalled stack) and counts the requests waiting on
    the loop (from their tasks' coroutines)."""
    app = fastapi_app(instrument="none")
    with serve_in_thread(app, loop=loop_name) as server, ThreadPoolExecutor(VICTIMS) as pool:
        block_while_victims_wait(server.url, pool, probe, item_id=3)
        [blocked] = otel.blocked_spans()
    assert_names_culprit(blocked, "/block/{item_id}")
    assert attrs(blocked)["loopwatch.delayed_requests"] == VICTIMS
    assert blocked.parent is None
    assert not blocked.links
    [point] = otel.metric_points(BLOCK_DURATION, **{"http.route": "/block/{item_id}"})
    assert point.count == 1


def test_tracing_inside_loopwatch_still_parents_and_links_the_stall(
    loop_name: str, otel: Otel, probe: Probe, fastapi_app: Callable[..., FastAPI]
) -> None:
    """The OpenTelemetry ASGI middleware inside loopwatch's: no span is recording when a
    request reaches loopwatch, so it keeps nothing per request. The stall is still the
    child of the culprit's server span (current in the stalled task) and links the spans
    current in the tasks it held up (their server spans); ``loopwatch.delayed_by`` needs
    tracing outside loopwatch."""
    app = fastapi_app(instrument="asgi-inside")
    with serve_in_thread(app, loop=loop_name) as server, ThreadPoolExecutor(VICTIMS) as pool:
        block_while_victims_wait(server.url, pool, probe, item_id=4)
        [blocked] = otel.blocked_spans()
        wait_until(
            lambda: sum(map(is_server, otel.spans())) == VICTIMS + 1, SPAN_WAIT_S, "server spans"
        )
    servers = [span for span in otel.spans() if is_server(span)]
    assert blocked.context is not None
    [culprit] = [s for s in servers if s.context and s.context.trace_id == blocked.context.trace_id]
    victims = [span for span in servers if span is not culprit]
    assert_names_culprit(blocked, "/block/{item_id}")
    assert_child_of(blocked, culprit)
    assert attrs(blocked)["loopwatch.delayed_requests"] == VICTIMS
    assert {link.context.span_id for link in blocked.links} == {
        span.context.span_id for span in victims if span.context
    }
    assert all("loopwatch.delayed_by" not in attrs(span) for span in victims)


def test_block_metric_carries_culprit_route(
    loop_name: str, otel: Otel, fastapi_app: Callable[..., FastAPI]
) -> None:
    """``asyncio.eventloop.block.duration`` records the stall under the culprit's route."""
    app = fastapi_app(instrument="after")
    with serve_in_thread(app, loop=loop_name) as server:
        assert get(f"{server.url}/health").status_code == 200
        assert get(f"{server.url}/block/3?seconds={STALL_S}").status_code == 200
        otel.blocked_spans()
    [point] = otel.metric_points(BLOCK_DURATION, **{"http.route": "/block/{item_id}"})
    assert dict(point.attributes) == {
        "loopwatch.cause": "blocking",
        "http.route": "/block/{item_id}",
        "http.request.method": "GET",
    }
    assert point.count == 1
    assert STALL_S - 0.1 <= point.sum <= STALL_S + 2.0
    [delay] = otel.metric_points("asyncio.eventloop.delay")
    assert delay.count > 0
    assert delay.max >= STALL_S - 0.1


def test_without_tracing_instrumentation(
    loop_name: str, otel: Otel, fastapi_app: Callable[..., FastAPI]
) -> None:
    """No server span to join: the stall is a root span that still names its request."""
    app = fastapi_app(instrument="none")
    with serve_in_thread(app, loop=loop_name) as server:
        assert get(f"{server.url}/block/5?seconds={STALL_S}").status_code == 200
        [blocked] = otel.blocked_spans()
    assert blocked.parent is None
    assert_names_culprit(blocked, "/block/{item_id}")
    assert {span.name for span in otel.spans()} == {"loop.blocked"}


def test_instrumentor_without_middleware_has_no_stall_span(
    loop_name: str, otel: Otel, fastapi_app: Callable[..., FastAPI]
) -> None:
    """FastAPIInstrumentor alone: the same spans as with loopwatch, minus ``loop.blocked``."""
    names: dict[bool, list[tuple[str, SpanKind]]] = {}
    for watched in (False, True):
        otel.exporter.clear()
        app = fastapi_app(loopwatch=watched, instrument="after")
        with serve_in_thread(app, loop=loop_name) as server:
            assert get(f"{server.url}/block/2?seconds={STALL_S}").status_code == 200
            if watched:
                otel.blocked_spans()
            server_span(otel, "/block/{item_id}")
        names[watched] = sorted(
            (span.name, span.kind) for span in otel.spans() if span.name != "loop.blocked"
        )
    assert names[True] == names[False]
    assert ("GET /block/{item_id}", SpanKind.SERVER) in names[False]


@pytest.mark.parametrize("traced", [True, False], ids=["otel-asgi", "untraced"])
def test_plain_starlette_app(loop_name: str, traced: bool, otel: Otel) -> None:
    """``loopwatch.instrument_app`` on a Starlette app (inside the generic ASGI middleware)."""
    app = build_starlette(otel.providers, traced=traced)
    with serve_in_thread(app, loop=loop_name) as server:
        assert get(f"{server.url}/block/9?seconds={STALL_S}").json() == {"item_id": "9"}
        [blocked] = otel.blocked_spans()
        if traced:
            wait_until(
                lambda: any(is_server(span) for span in otel.spans()), SPAN_WAIT_S, "server span"
            )
    assert_names_culprit(blocked, "/block/{item_id}")
    if traced:
        [parent] = [span for span in otel.spans() if is_server(span)]
        assert_child_of(blocked, parent)
    else:
        assert blocked.parent is None


@pytest.mark.parametrize("traced", [True, False], ids=["otel-asgi", "untraced"])
def test_raw_asgi_app(loop_name: str, traced: bool, otel: Otel) -> None:
    """A bare ASGI app has no route: method and function are still named."""
    app = build_raw(otel.providers, traced=traced)
    with serve_in_thread(app, loop=loop_name) as server:
        assert get(f"{server.url}/block").text == "ok"
        [blocked] = otel.blocked_spans()
        if traced:
            wait_until(
                lambda: any(is_server(span) for span in otel.spans()), SPAN_WAIT_S, "server span"
            )
    assert_names_culprit(blocked, None)
    if traced:
        [parent] = [span for span in otel.spans() if is_server(span)]
        assert_child_of(blocked, parent)
    else:
        assert blocked.parent is None
    [point] = otel.metric_points(BLOCK_DURATION, **{"http.request.method": "GET"})
    assert dict(point.attributes) == {"loopwatch.cause": "blocking", "http.request.method": "GET"}


def test_a_traced_request_is_kept_in_its_scope_only_while_served(
    loop_name: str, otel: Otel
) -> None:
    """The middleware keeps a traced request in its ASGI scope, where a stall finds it,
    with the request's server span, and takes it out when the request ends."""
    seen: dict[str, Any] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            seen["kept"] = scope.get(REQUEST_KEY)
        await raw_app(scope, receive, send)

    traced = OpenTelemetryMiddleware(
        LoopWatchMiddleware(app, **loopwatch_options(otel.providers)),
        tracer_provider=otel.providers.tracer_provider,
    )

    async def server_side(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            seen["scope"] = scope
        await traced(scope, receive, send)

    with serve_in_thread(server_side, loop=loop_name) as server:
        assert get(f"{server.url}/").text == "ok"
        wait_until(lambda: any(map(is_server, otel.spans())), SPAN_WAIT_S, "server span")
    [span] = [span for span in otel.spans() if is_server(span)]
    kept = seen["kept"]
    assert isinstance(kept, Request)
    assert kept.span.get_span_context() == span.context
    assert REQUEST_KEY not in seen["scope"]


def test_victims_that_finish_right_after_the_stall(
    loop_name: str, otel: Otel, probe: Probe, fastapi_app: Callable[..., FastAPI]
) -> None:
    """Victims whose wait ended inside the stall finish right after it, often before the
    watchdog closes it: they are still linked, counted and marked."""
    app = fastapi_app(instrument="after")
    with serve_in_thread(app, loop=loop_name) as server, ThreadPoolExecutor(VICTIMS) as pool:
        victims = [pool.submit(get, f"{server.url}/wait-for-stall") for _ in range(VICTIMS)]
        wait_until(lambda: probe.sleepers >= VICTIMS, 5.0, "the victims to reach their handler")
        response = get(f"{server.url}/stall-releasing-waiters?seconds={STALL_S}")
        assert response.status_code == 200
        assert [future.result(HTTP_TIMEOUT_S).status_code for future in victims] == [200] * 3
        [blocked] = otel.blocked_spans()
        wait_until(
            lambda: len(otel.server_spans("/wait-for-stall")) == VICTIMS,
            SPAN_WAIT_S,
            "victim spans",
        )
    assert_names_culprit(blocked, "/stall-releasing-waiters")
    assert attrs(blocked)["loopwatch.delayed_requests"] == VICTIMS
    linked = {link.context.span_id for link in blocked.links}
    for victim in otel.server_spans("/wait-for-stall"):
        assert victim.context is not None
        assert victim.context.span_id in linked
        assert float(attrs(victim)["loopwatch.delayed_by"]) > STALL_S - 0.1  # type: ignore[arg-type]


def test_stall_merged_with_a_preceding_one(
    loop_name: str, otel: Otel, fastapi_app: Callable[..., FastAPI]
) -> None:
    """A stall that begins outside any request and continues in one is the request's."""
    app = fastapi_app(instrument="after")
    with serve_in_thread(app, loop=loop_name) as server:
        assert get(f"{server.url}/after-outside-stall?outside=0.15&seconds=0.6").text == '"ok"'
        [blocked] = otel.blocked_spans()
        parent = server_span(otel, "/after-outside-stall")
    assert attrs(blocked)["code.function.name"] == culprit_name()
    assert attrs(blocked).get("http.route") == "/after-outside-stall"
    assert_child_of(blocked, parent)
    assert attrs(blocked)["loopwatch.delayed_requests"] == 0
    assert "loopwatch.delayed_by" not in attrs(parent)


def test_mounted_watched_sub_app(
    loop_name: str, otel: Otel, probe: Probe, fastapi_app: Callable[..., FastAPI]
) -> None:
    """A watched app mounted in a watched app: the culprit request is tracked once, so it is
    not its own victim; a real victim in flight is still counted. The sub-app gets no
    lifespan events: its watcher starts with its first request and ends with the loop."""
    baseline = watchdog_threads()
    outer = fastapi_app(instrument="after")
    inner = fastapi_app()
    outer.mount("/inner", inner)
    with serve_in_thread(outer, loop=loop_name) as server, ThreadPoolExecutor(1) as pool:
        victim = pool.submit(get, f"{server.url}/inner/sleep?seconds={VICTIM_SLEEP_S}")
        wait_until(lambda: probe.sleepers >= 1, 5.0, "the victim to reach its handler")
        response = get(f"{server.url}/inner/block-then-wait?seconds={STALL_S}&wait=0.3")
        assert response.status_code == 200
        assert victim.result(HTTP_TIMEOUT_S).status_code == 200
        [blocked] = otel.blocked_spans()
        wait_until(lambda: len(otel.server_spans("/inner")) == 2, SPAN_WAIT_S, "server spans")
    wait_until(lambda: watchdog_threads() == baseline, 5.0, "the sub-app's watchdog to end")
    assert_names_culprit(blocked, "/block-then-wait")
    [culprit] = [
        span for span in otel.server_spans("/inner") if "block" in str(attrs(span)["http.target"])
    ]
    [victim_span] = [span for span in otel.server_spans("/inner") if span is not culprit]
    assert_child_of(blocked, culprit)
    assert attrs(blocked)["loopwatch.delayed_requests"] == 1
    assert victim_span.context is not None
    assert [link.context.span_id for link in blocked.links] == [victim_span.context.span_id]
    assert "loopwatch.delayed_by" not in attrs(culprit)
    assert float(attrs(victim_span)["loopwatch.delayed_by"]) > STALL_S - 0.1  # type: ignore[arg-type]
