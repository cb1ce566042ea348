"""End to end: the demo cluster's tail sampling (k8s/jaeger.yaml) in a real Jaeger v2.

Jaeger runs the very ``config.yaml`` of the ``jaeger-config`` ConfigMap, only moved to
127.0.0.1 and free ports. The example app (``DEMO_MODE=bottlenecks``) sends every trace:
three ``GET /items/1`` that stall the loop among healthy requests. Every stalled request
must be kept whole, and the healthy ones at about the configured percentage.
"""

from __future__ import annotations

import math
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from ..k8s_checks import config_map_data, load_manifests
from .conftest import start_jaeger
from .support import HTTP_TIMEOUT_S, ExampleAppFactory, JaegerServer, Span

pytestmark = pytest.mark.e2e

SERVICE = "fastapi-demo-bottlenecks"
STALLED_REQUESTS = 3
HEALTHY_REQUESTS = 300
HEALTHY_ROUTE = "/debug/block"
"""With ``seconds=0`` it does not block: a healthy trace of one server span."""
DECISION_MARGIN_S = 3.0
"""After ``decision_wait``: the processor decides on a 1 s tick."""

#: Where the k8s config listens -> the free-port variable of tests/e2e/conftest.py.
#: ``None``: left out (the tests send OTLP over HTTP only).
LISTENERS: dict[tuple[str, ...], str | None] = {
    ("receivers", "otlp", "protocols", "http"): "LOOPWATCH_E2E_OTLP_HTTP_PORT",
    ("receivers", "otlp", "protocols", "grpc"): None,
    ("extensions", "jaeger_query", "http"): "LOOPWATCH_E2E_QUERY_HTTP_PORT",
    ("extensions", "jaeger_query", "grpc"): "LOOPWATCH_E2E_QUERY_GRPC_PORT",
    ("extensions", "healthcheckv2", "http"): "LOOPWATCH_E2E_HEALTH_PORT",
}


def cluster_config() -> dict[str, Any]:
    """config.yaml of the jaeger-config ConfigMap in k8s/, parsed."""
    config: dict[str, Any] = yaml.safe_load(
        config_map_data(load_manifests(), "jaeger-config")["config.yaml"]
    )
    return config


def listeners(node: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Paths of the mappings that have an ``endpoint``: where the config listens."""
    if isinstance(node, dict):
        if "endpoint" in node:
            yield path
        for key, value in node.items():
            yield from listeners(value, (*path, str(key)))


def on_free_local_ports(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` listening on 127.0.0.1 at the ports the e2e harness picks."""
    found = set(listeners(config))
    assert found == set(LISTENERS), (
        f"k8s/jaeger.yaml listens at {sorted(found)}; map each to a free port in LISTENERS"
    )
    for path, variable in LISTENERS.items():
        *parents, last = path
        parent = config
        for key in parents:
            parent = parent[key]
        if variable is None:
            del parent[last]
        else:
            parent[last]["endpoint"] = f"127.0.0.1:${{env:{variable}}}"
    return config


@dataclass(frozen=True)
class Policy:
    """The numbers of the cluster's tail-sampling processor the test checks against."""

    decision_wait_s: float
    healthy_percentage: float

    @classmethod
    def of(cls, config: dict[str, Any]) -> Policy:
        processor = config["processors"]["tail_sampling"]
        wait = re.fullmatch(r"(\d+)s", str(processor["decision_wait"]))
        assert wait, f"decision_wait {processor['decision_wait']!r}: want whole seconds"
        [probabilistic] = [p for p in processor["policies"] if p["type"] == "probabilistic"]
        percentage = float(probabilistic["probabilistic"]["sampling_percentage"])
        return cls(float(wait.group(1)), percentage)


@pytest.fixture(scope="module")
def policy() -> Policy:
    return Policy.of(cluster_config())


@pytest.fixture(scope="module")
def tail_sampling_jaeger(
    jaeger_bin: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[JaegerServer]:
    """A Jaeger v2 running the cluster's config (tail sampling included)."""
    workdir = tmp_path_factory.mktemp("jaeger-tail-sampling")
    config = Path(workdir / "config.yaml")
    config.write_text(yaml.safe_dump(on_free_local_ports(cluster_config())), encoding="utf-8")
    server = start_jaeger(jaeger_bin, config, workdir, name="jaeger (k8s config)")
    try:
        yield server
    finally:
        server.process.stop()


@pytest.fixture(scope="module")
def kept(
    tail_sampling_jaeger: JaegerServer, example_app: ExampleAppFactory, policy: Policy
) -> list[Span]:
    """The spans Jaeger kept of the app's traffic, once every trace is decided."""
    since = datetime.now(timezone.utc)
    app = example_app("bottlenecks", otlp_traces_url=tail_sampling_jaeger.otlp_traces_url)
    try:
        with httpx.Client(base_url=app.base_url, timeout=HTTP_TIMEOUT_S) as client:
            per_stall = HEALTHY_REQUESTS // STALLED_REQUESTS
            for _ in range(STALLED_REQUESTS):
                for _ in range(per_stall):
                    client.get(HEALTHY_ROUTE, params={"seconds": 0}).raise_for_status()
                client.get("/items/1").raise_for_status()
    finally:
        exit_code = app.stop()  # flushes the app's spans: the last ones arrive now
    assert exit_code in (0, -signal.SIGTERM), f"app exit {exit_code}"
    time.sleep(policy.decision_wait_s + DECISION_MARGIN_S)
    return tail_sampling_jaeger.wait_for_spans(
        SERVICE,
        since,
        lambda spans: len(traces_with(spans, "loop.blocked")) >= STALLED_REQUESTS,
        what=f"{STALLED_REQUESTS} traces with a loop.blocked span",
    )


def traces_with(spans: list[Span], name: str) -> set[str]:
    return {span.trace_id for span in spans if span.name == name}


def test_every_stalled_request_is_kept_whole(kept: list[Span]) -> None:
    """Each ``GET /items/1`` trace is there with its stall, its handler's spans and the
    request's server span: the whole request that stalled, not just the stall."""
    requests = traces_with(kept, "GET /items/{item_id}")
    assert len(requests) == STALLED_REQUESTS
    stalled = traces_with(kept, "loop.blocked")
    # A healthy request may stall too on a loaded machine (and is then kept).
    assert requests <= stalled, [(s.name, s.attributes) for s in kept if s.trace_id in stalled]
    for name in ("handler.get_item", "cpu.work.blocking"):
        assert traces_with(kept, name) == requests, f"{name} missing from a stalled trace"


def test_healthy_traces_are_kept_at_the_configured_fraction(
    kept: list[Span], policy: Policy
) -> None:
    """Healthy traces are kept at ``sampling_percentage``, within 4.5 standard deviations
    of the binomial count (for 25 % of 300: 75 expected, 41 to 109 accepted)."""
    healthy = traces_with(kept, f"GET {HEALTHY_ROUTE}") - traces_with(kept, "loop.blocked")
    ratio = policy.healthy_percentage / 100
    mean = HEALTHY_REQUESTS * ratio
    spread = 4.5 * math.sqrt(HEALTHY_REQUESTS * ratio * (1 - ratio))
    print(
        f"tail sampling kept {len(healthy)}/{HEALTHY_REQUESTS} healthy traces "
        f"({len(healthy) / HEALTHY_REQUESTS:.1%}, configured {policy.healthy_percentage:g} %)"
    )
    assert mean - spread <= len(healthy) <= mean + spread
