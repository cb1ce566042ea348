"""Offline checks of the Kubernetes demo: Dockerfile, k8s/, skaffold.yaml, the Prometheus
configuration and alert rules, and the Grafana dashboard.

No cluster or Docker engine is needed. The manifests are validated against the strict
Kubernetes schemas, skaffold.yaml against its JSON schema, Prometheus files with promtool,
and every metric the dashboard and the rules use against a live scrape of the example app.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import importlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from .k8s_checks import (
    K8S_DIR,
    REPO,
    Manifest,
    command_of,
    config_map_data,
    container_env,
    dashboard_expressions,
    dashboard_legends,
    dashboard_links,
    dockerignore_patterns,
    dockerignored,
    env_of,
    final_stage,
    healthcheck_command,
    is_pinned_image,
    load_dashboard,
    load_manifests,
    option,
    parse_dockerfile,
    pod_spec,
    promql_refs,
    template_labels,
    validate_strict,
)

# Kubernetes release the manifests must validate against (strict); the newest release
# kubernetes-validate knows is checked as well, so removed APIs show up early.
K8S_VERSION = "1.34.0"
K8S_VERSIONS = sorted({K8S_VERSION, kubernetes_validate.latest_version()})
SKAFFOLD_VERSIONS = ("v4beta11", "v4beta13", "v4beta14")
SCHEMA_DIR = REPO.parent / "shared" / "schemas" / "skaffold"

APPS = {"fastapi-slow": "bottlenecks", "fastapi-fast": "optimized"}
APP_PORT = 8000
METRICS_PORT = 9464
EXPECTED_FORWARDS = {  # (Service, Service port) -> local port
    ("jaeger", 16686): 16686,
    ("fastapi-slow", 8000): 8000,
    ("fastapi-fast", 8000): 8001,
    ("prometheus", 9090): 9090,
    ("grafana", 3000): 3000,
}
# Series Prometheus makes itself for every target, and labels it attaches.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
PROMETHEUS_LABELS = {"job", "instance"}

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
SKAFFOLD = REPO / "skaffold.yaml"
RULES_TEST = Path(__file__).with_name("k8s_rules_test.yml")


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def manifests() -> list[Manifest]:
    """Every document under k8s/."""
    found = load_manifests()
    assert found, f"no manifests in {K8S_DIR}"
    return found


def _by_kind(manifests: list[Manifest], kind: str) -> dict[str, Manifest]:
    return {m.name: m for m in manifests if m.kind == kind}


@pytest.fixture(scope="module")
def deployments(manifests: list[Manifest]) -> dict[str, Manifest]:
    """Deployments by name."""
    return _by_kind(manifests, "Deployment")


@pytest.fixture(scope="module")
def services(manifests: list[Manifest]) -> dict[str, Manifest]:
    """Services by name."""
    return _by_kind(manifests, "Service")


@pytest.fixture(scope="module")
def skaffold() -> dict[str, Any]:
    """skaffold.yaml."""
    data: dict[str, Any] = yaml.safe_load(SKAFFOLD.read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="module")
def prometheus_files(manifests: list[Manifest]) -> dict[str, str]:
    """The files of the prometheus-config ConfigMap (mounted in /etc/prometheus)."""
    return config_map_data(manifests, "prometheus-config")


@pytest.fixture(scope="module")
def prometheus_config(prometheus_files: dict[str, str]) -> dict[str, Any]:
    """prometheus.yml, parsed."""
    data: dict[str, Any] = yaml.safe_load(prometheus_files["prometheus.yml"])
    return data


@pytest.fixture(scope="module")
def alert_rules(prometheus_files: dict[str, str], prometheus_config: dict[str, Any]) -> list[Any]:
    """Every rule of every rule file the Prometheus configuration loads."""
    rules: list[Any] = []
    for name in prometheus_config.get("rule_files", []):
        assert name in prometheus_files, (
            f"rule_files names {name!r}, which is not a key of ConfigMap prometheus-config "
            f"(keys: {sorted(prometheus_files)})"
        )
        for group in yaml.safe_load(prometheus_files[name])["groups"]:
            rules.extend(group["rules"])
    assert rules, "the Prometheus configuration loads no rules"
    return rules


@pytest.fixture(scope="module")
def dashboard(manifests: list[Manifest]) -> dict[str, Any]:
    """The loopwatch Grafana dashboard."""
    return load_dashboard(manifests)


@pytest.fixture(scope="module")
def dockerfile() -> list[Any]:
    """Instructions of the final stage of the Dockerfile."""
    return final_stage(parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8")))


def _containers(m: Manifest) -> list[dict[str, Any]]:
    containers: list[dict[str, Any]] = pod_spec(m)["containers"]
    return containers


def _app_container(deployments: dict[str, Manifest], name: str) -> dict[str, Any]:
    assert name in deployments, f"no Deployment {name!r} in k8s/"
    containers = _containers(deployments[name])
    assert len(containers) == 1, f"Deployment {name} should run one container"
    return containers[0]


def _container_port(container: dict[str, Any], port: int | str) -> int | None:
    """The containerPort a Service targetPort (number or name) refers to."""
    for p in container.get("ports", []):
        if port in (p["containerPort"], p.get("name")):
            return int(p["containerPort"])
    return None


def _service_port(service: Manifest, port: int | str) -> dict[str, Any] | None:
    for p in service.doc["spec"]["ports"]:
        if port in (p["port"], p.get("name")):
            return dict(p)
    return None


def _backing_deployment(service: Manifest, deployments: dict[str, Manifest]) -> Manifest:
    selector = service.doc["spec"].get("selector") or {}
    assert selector, f"{service.where}: Service without a selector"
    matches = [
        d
        for d in deployments.values()
        if selector.items() <= d.doc["spec"]["template"]["metadata"]["labels"].items()
    ]
    assert len(matches) == 1, (
        f"{service.where}: selector {selector} matches {len(matches)} Deployments "
        f"({[d.name for d in matches]}); it must select exactly one"
    )
    return matches[0]


def _resolve(
    services: dict[str, Manifest], deployments: dict[str, Manifest], host: str, port: int
) -> tuple[Manifest, dict[str, Any], int]:
    """Follow ``host:port`` to (Deployment, container, containerPort)."""
    assert host in services, f"{host!r} is not a Service in k8s/ (Services: {sorted(services)})"
    service = services[host]
    sport = _service_port(service, port)
    assert sport, f"Service {host} has no port {port}"
    deployment = _backing_deployment(service, deployments)
    target = sport.get("targetPort", sport["port"])
    for container in _containers(deployment):
        cport = _container_port(container, target)
        if cport is not None:
            return deployment, container, cport
    raise AssertionError(f"Service {host} port {port} targets {target!r}, no container has it")


# ---------------------------------------------------------------------------- schemas


def _manifest_params() -> list[Any]:
    try:
        found = load_manifests()
    except (yaml.YAMLError, AssertionError) as e:
        return [
            pytest.param(
                None, id="k8s-yaml-unparsable", marks=pytest.mark.xfail(reason=str(e), strict=True)
            )
        ]
    return [pytest.param(m, id=f"{m.path.name}#{m.index}-{m.kind}-{m.name}") for m in found]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("manifest", _manifest_params())
def test_manifest_validates_strict(manifest: Manifest, version: str) -> None:
    """Each document is valid for the Kubernetes version, strict (no unknown fields),
    and its kind/apiVersion exists there."""
    try:
        validate_strict(manifest.doc, version)
    except AssertionError as e:
        raise AssertionError(f"{manifest.where}: {e}") from None


def _base_deployment() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x", "labels": {"a": "b"}},
        "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "c", "image": "i:1.0"}]},
            },
        },
    }


def _mutate(path: str, value: Any) -> dict[str, Any]:
    doc = _base_deployment()
    *parents, last = path.split(".")
    node: Any = doc
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    node[last] = value
    return doc


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (_mutate("spec.template.spec.containers.0.imagePullPolicyy", "Always"), "imagePullPolicyy"),
        (_mutate("metadata.lables", {"a": "b"}), "lables"),
        (_mutate("spec.replicas", "1"), "replicas"),
        (_mutate("kind", "Deploymnet"), "unknown kind"),
        (_mutate("apiVersion", "apps/v2"), "unknown kind"),
        (_mutate("apiVersion", "extensions/v1beta1"), "unknown kind"),
        ({"apiVersion": "v1", "metadata": {"name": "x"}}, "no 'kind'"),
    ],
    ids=[
        "typo-container-field",
        "typo-metadata",
        "wrong-type",
        "unknown-kind",
        "unknown-apiversion",
        "removed-api",
        "missing-kind",
    ],
)
def test_strict_validation_rejects(doc: dict[str, Any], message: str) -> None:
    """A typo'd field, a wrong type or an unknown kind fails (not just warns)."""
    validate_strict(_base_deployment(), K8S_VERSION)  # the unmodified document passes
    with pytest.raises(AssertionError, match=re.escape(message)):
        validate_strict(doc, K8S_VERSION)


def _skaffold_validator(api_version: str) -> jsonschema.Draft7Validator:
    if not SCHEMA_DIR.is_dir():
        message = f"skaffold schemas not found at {SCHEMA_DIR} (shared/ beside the repo)"
        if _truthy("CI"):
            pytest.fail(message + "; CI is set, so this is an error")
        pytest.skip(message)
    version = api_version.removeprefix("skaffold/")
    schema_file = SCHEMA_DIR / f"{version}.json"
    assert schema_file.is_file(), f"no schema {schema_file} for apiVersion {api_version}"
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def _schema_errors(validator: jsonschema.Draft7Validator, doc: Any) -> list[str]:
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    out = []
    for e in errors:
        # anyOf/oneOf errors say little by themselves: show the closest sub-error.
        best = jsonschema.exceptions.best_match([e, *e.context]) if e.context else e
        path = "/".join(str(p) for p in best.absolute_path) or "<root>"
        out.append(f"{path}: {best.message}")
    return out


def test_skaffold_validates_against_schema(skaffold: dict[str, Any]) -> None:
    """skaffold.yaml is valid for the JSON schema of its apiVersion."""
    api_version = skaffold.get("apiVersion", "")
    assert api_version.removeprefix("skaffold/") in SKAFFOLD_VERSIONS, (
        f"skaffold.yaml apiVersion {api_version!r}; use one of "
        f"{['skaffold/' + v for v in SKAFFOLD_VERSIONS]}"
    )
    assert skaffold.get("kind") == "Config"
    errors = _schema_errors(_skaffold_validator(api_version), skaffold)
    assert not errors, "skaffold.yaml does not match its schema:\n" + "\n".join(errors)


@pytest.mark.parametrize(
    "change",
    ["portForwards", "artifact-typo", "port-forward-typo", "rawYaml-type"],
)
def test_skaffold_schema_rejects(skaffold: dict[str, Any], change: str) -> None:
    """The schema check catches typos (so a passing check means something)."""
    doc = copy.deepcopy(skaffold)
    if change == "portForwards":
        doc["portForwards"] = doc.pop("portForward")
    elif change == "artifact-typo":
        doc["build"]["artifacts"][0]["dockerfle"] = "Dockerfile"
    elif change == "port-forward-typo":
        doc["portForward"][0]["localport"] = 1
    else:
        doc["manifests"]["rawYaml"] = "k8s/*.yaml"
    assert _schema_errors(_skaffold_validator(doc["apiVersion"]), doc), (
        f"schema accepted skaffold.yaml with {change}"
    )


# ---------------------------------------------------------------------------- cross-references


def test_expected_workloads_exist(
    deployments: dict[str, Manifest], services: dict[str, Manifest]
) -> None:
    """jaeger, both apps, prometheus and grafana each have a Deployment and a Service."""
    expected = {"jaeger", "prometheus", "grafana", *APPS}
    assert expected <= deployments.keys(), f"missing Deployments: {expected - deployments.keys()}"
    assert expected <= services.keys(), f"missing Services: {expected - services.keys()}"


def test_names_unique(manifests: list[Manifest]) -> None:
    """No two documents share kind and name."""
    seen: dict[tuple[str, str], str] = {}
    for m in manifests:
        key = (m.kind, m.name)
        assert key not in seen, f"{m.where} duplicates {seen[key]}"
        seen[key] = m.where


def test_deployment_selectors_match_templates(deployments: dict[str, Manifest]) -> None:
    """spec.selector selects the Deployment's own pods (the API server rejects it else)."""
    for d in deployments.values():
        match = d.doc["spec"]["selector"]["matchLabels"]
        labels = d.doc["spec"]["template"]["metadata"]["labels"]
        assert match.items() <= labels.items(), (
            f"{d.where}: selector {match} does not match pod labels {labels}"
        )


def test_service_selectors_and_ports(
    services: dict[str, Manifest], deployments: dict[str, Manifest]
) -> None:
    """Each Service selects exactly one Deployment's pods and each of its ports targets a
    container port of those pods."""
    for service in services.values():
        for p in service.doc["spec"]["ports"]:
            _resolve(services, deployments, service.name, p["port"])


def test_app_services_expose_http_and_metrics(
    services: dict[str, Manifest], deployments: dict[str, Manifest]
) -> None:
    """Both app Services expose 8000 (HTTP) and 9464 (off-loop metrics), and 9464 reaches
    the port the app's off-loop metrics server listens on, on all interfaces."""
    for name in APPS:
        _, _, http = _resolve(services, deployments, name, APP_PORT)
        assert http == APP_PORT
        _, container, cport = _resolve(services, deployments, name, METRICS_PORT)
        env = container_env(container)
        assert env.get("LOOPWATCH_METRICS_PORT") == str(cport), (
            f"{name}: Service port {METRICS_PORT} reaches containerPort {cport} but "
            f"LOOPWATCH_METRICS_PORT={env.get('LOOPWATCH_METRICS_PORT')!r}"
        )
        assert env.get("LOOPWATCH_METRICS_ADDR") == "0.0.0.0", (
            f"{name}: LOOPWATCH_METRICS_ADDR must be 0.0.0.0 (default 127.0.0.1 is not "
            "reachable from Prometheus)"
        )


def test_skaffold_builds_the_app_image(
    skaffold: dict[str, Any], deployments: dict[str, Manifest]
) -> None:
    """The skaffold artifact is the image both app Deployments run, built from the
    Dockerfile; third-party images are pinned."""
    artifacts = {a["image"]: a for a in skaffold["build"]["artifacts"]}
    used: set[str] = set()
    for d in deployments.values():
        for c in _containers(d):
            if d.name in APPS:
                assert c["image"] in artifacts, (
                    f"{d.where}: image {c['image']!r} is not a skaffold artifact "
                    f"({sorted(artifacts)}): skaffold would not replace it with the build"
                )
                used.add(c["image"])
            else:
                assert is_pinned_image(c["image"]), f"{d.where}: image {c['image']!r} not pinned"
    assert used == set(artifacts), f"artifacts never deployed: {set(artifacts) - used}"
    for image, artifact in artifacts.items():
        context = REPO / artifact.get("context", ".")
        dockerfile = context / artifact.get("docker", {}).get("dockerfile", "Dockerfile")
        assert dockerfile.resolve() == DOCKERFILE, f"artifact {image} builds {dockerfile}"


def test_skaffold_deploys_every_manifest(skaffold: dict[str, Any]) -> None:
    """manifests.rawYaml lists every file under k8s/ (and only existing ones); kubectl
    deploys them."""
    patterns = skaffold["manifests"]["rawYaml"]
    listed: set[Path] = set()
    for pattern in patterns:
        hits = set(REPO.glob(pattern))
        assert hits, f"skaffold.yaml rawYaml entry {pattern!r} matches no file"
        listed |= {h.resolve() for h in hits}
    files = {p.resolve() for p in [*K8S_DIR.glob("*.yaml"), *K8S_DIR.glob("*.yml")]}
    assert files <= listed, f"not deployed by skaffold: {sorted(str(f) for f in files - listed)}"
    assert "kubectl" in skaffold.get("deploy", {}), "skaffold.yaml should deploy with kubectl"


def test_port_forwards(
    skaffold: dict[str, Any], services: dict[str, Manifest], deployments: dict[str, Manifest]
) -> None:
    """Each forward names an existing Service and port; together they are the five the
    walkthrough uses, on distinct local ports."""
    got: dict[tuple[str, int], int] = {}
    for fwd in skaffold["portForward"]:
        assert fwd["resourceType"].lower() == "service", f"forward {fwd} is not to a Service"
        _resolve(services, deployments, fwd["resourceName"], fwd["port"])
        got[(fwd["resourceName"], int(fwd["port"]))] = int(fwd.get("localPort", fwd["port"]))
    assert got == EXPECTED_FORWARDS, f"port forwards {got}, expected {EXPECTED_FORWARDS}"
    assert len(set(got.values())) == len(got), "two forwards use the same local port"


def test_otlp_endpoint_reaches_jaeger(
    services: dict[str, Manifest], deployments: dict[str, Manifest]
) -> None:
    """OTEL_EXPORTER_OTLP_TRACES_ENDPOINT names the jaeger Service's OTLP/HTTP port."""
    for name in APPS:
        env = container_env(_app_container(deployments, name))
        url = urlsplit(env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", ""))
        assert url.scheme == "http", f"{name}: OTLP endpoint {url.geturl()!r}"
        assert url.hostname == "jaeger", f"{name}: OTLP endpoint host {url.hostname!r}"
        assert url.path == "/v1/traces", f"{name}: OTLP/HTTP traces path is {url.path!r}"
        assert url.port is not None
        deployment, _, cport = _resolve(services, deployments, url.hostname, url.port)
        assert deployment.name == "jaeger"
        assert cport == 4318, f"{name}: OTLP endpoint reaches jaeger:{cport}, not OTLP/HTTP 4318"


def test_jaeger(deployments: dict[str, Manifest], services: dict[str, Manifest]) -> None:
    """Jaeger v2, pinned, with OTLP gRPC/HTTP and the UI on its Service."""
    container = _app_container(deployments, "jaeger")
    assert re.fullmatch(r"jaegertracing/jaeger:2\.\d+\.\d+", container["image"]), (
        f"jaeger image {container['image']!r}: want jaegertracing/jaeger:2.x.y"
    )
    for port in (4317, 4318, 16686):
        _resolve(services, deployments, "jaeger", port)


@pytest.fixture(scope="module")
def jaeger_config(manifests: list[Manifest]) -> dict[str, Any]:
    """config.yaml of the jaeger-config ConfigMap, parsed."""
    files = config_map_data(manifests, "jaeger-config")
    assert set(files) == {"config.yaml"}, f"jaeger-config keys: {sorted(files)}"
    data: dict[str, Any] = yaml.safe_load(files["config.yaml"])
    return data


def test_jaeger_loads_its_config(deployments: dict[str, Manifest]) -> None:
    """--config names config.yaml in the mounted jaeger-config ConfigMap."""
    d = deployments["jaeger"]
    container = _app_container(deployments, "jaeger")
    location = option(container.get("args", []), "--config")
    assert location, f"jaeger args {container.get('args')}: no --config"
    assert location.startswith("file:"), f"jaeger --config {location}"
    directory, _, key = location.removeprefix("file:").rpartition("/")
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod_spec(d).get("volumes", [])}
    assert directory in mounts, f"{directory} is not a volume mount of jaeger"
    assert volumes[mounts[directory]].get("configMap", {}).get("name") == "jaeger-config"
    assert key == "config.yaml"


def _endpoint_port(section: dict[str, Any], where: str) -> int:
    host, _, port = str(section.get("endpoint", "")).rpartition(":")
    assert host == "0.0.0.0", f"{where} listens on {host!r}: other pods could not reach it"
    return int(port)


def test_jaeger_config_listens_where_the_manifests_say(
    jaeger_config: dict[str, Any], deployments: dict[str, Manifest], services: dict[str, Manifest]
) -> None:
    """OTLP gRPC/HTTP and the UI listen on the ports the Service reaches; the probes ask
    the health check extension."""
    protocols = jaeger_config["receivers"]["otlp"]["protocols"]
    query = jaeger_config["extensions"]["jaeger_query"]
    listening = {
        _endpoint_port(protocols["grpc"], "OTLP gRPC"),
        _endpoint_port(protocols["http"], "OTLP HTTP"),
        _endpoint_port(query["http"], "jaeger_query"),
    }
    container = _app_container(deployments, "jaeger")
    for port in (4317, 4318, 16686):
        _, _, cport = _resolve(services, deployments, "jaeger", port)
        assert cport in listening, f"Service jaeger:{port} reaches {cport}, config: {listening}"
    health = jaeger_config["extensions"]["healthcheckv2"]
    health_port = _endpoint_port(health["http"], "healthcheckv2")
    assert health.get("use_v2") is True, "the probes ask /status, healthcheckv2's v2 path"
    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert _container_port(container, get["port"]) == health_port, f"jaeger {probe}"
        assert get["path"] == "/status", f"jaeger {probe} path"
    assert query.get("enable_tracing") is False, "Jaeger would trace its own queries"


def test_jaeger_tail_samples_keeping_every_stall(
    jaeger_config: dict[str, Any], deployments: dict[str, Manifest]
) -> None:
    """The apps send every trace; Jaeger's only processor is tail sampling, which keeps
    every trace with a span of loopwatch's tracer and a fraction of the others."""
    for name in APPS:
        env = container_env(_app_container(deployments, name))
        assert env.get("OTEL_TRACES_SAMPLER") == "parentbased_always_on", name
    service = jaeger_config["service"]
    assert service["pipelines"]["traces"]["processors"] == ["tail_sampling"]
    assert set(service["extensions"]) <= set(jaeger_config["extensions"])
    processor = jaeger_config["processors"]["tail_sampling"]
    policies = {policy["type"]: policy for policy in processor["policies"]}
    assert set(policies) == {"ottl_condition", "probabilistic"}, f"policies {sorted(policies)}"
    condition = policies["ottl_condition"]["ottl_condition"]
    assert condition["span"] == ['instrumentation_scope.name == "loopwatch"']
    percentage = policies["probabilistic"]["probabilistic"]["sampling_percentage"]
    assert 0 < percentage < 100, f"sampling_percentage {percentage}"
    assert re.fullmatch(r"\d+s", str(processor["decision_wait"])), processor["decision_wait"]
    assert processor["decision_cache"]["sampled_cache_size"] >= processor["num_traces"]
    assert "non_sampled_cache_size" not in processor["decision_cache"], (
        "a cached drop decision would drop a stall that arrives after its trace was decided"
    )


def _jaeger_binary() -> str:
    explicit = os.environ.get("LOOPWATCH_JAEGER_BIN")
    for candidate in (explicit, shutil.which("jaeger"), str(REPO / ".cache" / "bin" / "jaeger")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    message = "jaeger binary not found (LOOPWATCH_JAEGER_BIN; bash .ci/build-jaeger.sh)"
    if os.environ.get("LOOPWATCH_E2E_REQUIRED") == "1":
        pytest.fail(message + "; LOOPWATCH_E2E_REQUIRED=1")
    pytest.skip(message)


def test_jaeger_validates_its_config(manifests: list[Manifest], tmp_path: Path) -> None:
    """`jaeger validate` (the pinned binary) accepts config.yaml: known components and
    option names. tests/e2e/test_tail_sampling.py runs it, OTTL condition included."""
    config = tmp_path / "config.yaml"
    config.write_text(config_map_data(manifests, "jaeger-config")["config.yaml"])
    proc = subprocess.run(
        [_jaeger_binary(), "validate", "--config", f"file:{config}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"jaeger validate failed:\n{proc.stdout}\n{proc.stderr}"


def test_prometheus_scrapes_the_apps(
    prometheus_config: dict[str, Any],
    services: dict[str, Manifest],
    deployments: dict[str, Manifest],
) -> None:
    """Every scrape target is a Service port that reaches an app's off-loop metrics
    server; both apps are scraped every 5 s."""
    scraped: set[str] = set()
    default_interval = prometheus_config.get("global", {}).get("scrape_interval", "1m")
    for job in prometheus_config["scrape_configs"]:
        interval = job.get("scrape_interval", default_interval)
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, _, port = target.rpartition(":")
                deployment, container, cport = _resolve(services, deployments, host, int(port))
                env = container_env(container)
                assert env.get("LOOPWATCH_METRICS_PORT") == str(cport), (
                    f"job {job['job_name']} target {target} reaches {deployment.name} port "
                    f"{cport}, which is not its LOOPWATCH_METRICS_PORT"
                )
                assert interval == "5s", f"{target} scraped every {interval}, want 5s"
                scraped.add(deployment.name)
    assert scraped == set(APPS), f"apps scraped: {scraped}, want {set(APPS)}"


def test_prometheus_deployment_loads_its_config(deployments: dict[str, Manifest]) -> None:
    """--config.file points into the mounted prometheus-config ConfigMap."""
    d = deployments["prometheus"]
    container = _containers(d)[0]
    config_file = option(container.get("args", []), "--config.file")
    assert config_file, "prometheus container has no --config.file"
    directory, _, key = config_file.rpartition("/")
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod_spec(d).get("volumes", [])}
    assert directory in mounts, f"{directory} is not a volume mount of prometheus"
    assert volumes[mounts[directory]].get("configMap", {}).get("name") == "prometheus-config"
    assert key == "prometheus.yml"


def test_config_map_volumes_exist(
    manifests: list[Manifest], deployments: dict[str, Manifest]
) -> None:
    """Every configMap volume names a ConfigMap in k8s/; every volumeMount a volume."""
    config_maps = {m.name for m in manifests if m.kind == "ConfigMap"}
    for d in deployments.values():
        volumes = {v["name"]: v for v in pod_spec(d).get("volumes", [])}
        for v in volumes.values():
            if "configMap" in v:
                assert v["configMap"]["name"] in config_maps, f"{d.where}: {v}"
        for c in _containers(d):
            for mount in c.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{d.where}: mount of unknown volume {mount}"


def test_grafana_provisioning(
    manifests: list[Manifest], deployments: dict[str, Manifest], services: dict[str, Manifest]
) -> None:
    """Grafana's data sources point at the Prometheus and Jaeger Services, and the
    dashboard provider reads the folder where the dashboard ConfigMap is mounted."""
    d = deployments["grafana"]
    container = _containers(d)[0]
    assert is_pinned_image(container["image"]), container["image"]
    assert container["image"].startswith("grafana/grafana:"), container["image"]
    volumes = {v["name"]: v for v in pod_spec(d).get("volumes", [])}
    mounts = {
        m["mountPath"]: volumes[m["name"]].get("configMap", {}).get("name")
        for m in container["volumeMounts"]
    }
    ds_cm = mounts.get("/etc/grafana/provisioning/datasources")
    prov_cm = mounts.get("/etc/grafana/provisioning/dashboards")
    assert ds_cm, f"grafana datasources provisioning folder not mounted: {mounts}"
    assert prov_cm, f"grafana dashboards provisioning folder not mounted: {mounts}"

    sources = {}
    for text in config_map_data(manifests, ds_cm).values():
        for ds in yaml.safe_load(text)["datasources"]:
            sources[ds["type"]] = ds
    assert {"prometheus", "jaeger"} <= sources.keys(), f"data sources: {sorted(sources)}"
    for kind, service, port in (("prometheus", "prometheus", 9090), ("jaeger", "jaeger", 16686)):
        url = urlsplit(sources[kind]["url"])
        assert (url.hostname, url.port) == (service, port), f"{kind} data source {url.geturl()}"
        _resolve(services, deployments, service, port)

    dashboard_uids = set()
    for text in config_map_data(manifests, prov_cm).values():
        for provider in yaml.safe_load(text)["providers"]:
            path = provider["options"]["path"].rstrip("/")
            assert path in mounts, f"dashboard provider path {path} is not a mount: {mounts}"
            data = config_map_data(manifests, str(mounts[path]))
            dashboard_uids |= {json.loads(v)["uid"] for k, v in data.items() if k.endswith(".json")}
    assert "loopwatch" in dashboard_uids, "the loopwatch dashboard is not provisioned"

    for uid_ref in re.findall(r'"uid":\s*"(\w+)"', json.dumps(load_dashboard(manifests))):
        assert uid_ref == "loopwatch" or uid_ref in {s.get("uid") for s in sources.values()}, (
            f"dashboard references data source uid {uid_ref!r}, not provisioned"
        )
    home = container_env(container).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        folder, _, key = home.rpartition("/")
        assert key in config_map_data(manifests, str(mounts[folder])), home


def test_security_and_resources(deployments: dict[str, Manifest]) -> None:
    """Every container: non-root, no privilege escalation, no capabilities, seccomp
    RuntimeDefault, requests and limits, readiness and liveness probes. The apps (and
    Jaeger, Prometheus) also run with a read-only root filesystem."""
    for d in deployments.values():
        pod = pod_spec(d)
        pod_sc = pod.get("securityContext", {})
        for c in _containers(d):
            sc = c.get("securityContext", {})
            where = f"{d.where} container {c['name']}"
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, where
            assert sc.get("runAsUser", pod_sc.get("runAsUser", 1)) != 0, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not sc.get("capabilities", {}).get("add"), where
            seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
            assert seccomp.get("type") == "RuntimeDefault", where
            assert not sc.get("privileged"), where
            for kind in ("requests", "limits"):
                got = c.get("resources", {}).get(kind, {})
                assert {"cpu", "memory"} <= got.keys(), f"{where}: resources.{kind} {got}"
            assert c.get("readinessProbe"), f"{where}: no readinessProbe"
            assert c.get("livenessProbe"), f"{where}: no livenessProbe"
            if d.name != "grafana":  # Grafana writes under its home; see k8s/grafana.yaml
                assert sc.get("readOnlyRootFilesystem") is True, where
                mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
                assert "/tmp" in mounts or d.name == "prometheus", f"{where}: no /tmp emptyDir"


def test_app_deployments(deployments: dict[str, Manifest]) -> None:
    """The apps run in their modes, probe /health on the HTTP port, and name the Jaeger
    service the walkthrough tells readers to open."""
    for name, mode in APPS.items():
        c = _app_container(deployments, name)
        env = container_env(c)
        assert env.get("DEMO_MODE") == mode, f"{name}: DEMO_MODE={env.get('DEMO_MODE')!r}"
        assert env.get("OTEL_SERVICE_NAME") == f"fastapi-demo-{mode}", name
        for key in ("command", "args"):
            assert key not in c, f"{name}: {key} overrides the image's uvicorn entry point"
        for probe in ("readinessProbe", "livenessProbe"):
            get = c[probe]["httpGet"]
            assert get["path"] == "/health", f"{name} {probe} path {get['path']}"
            assert _container_port(c, get["port"]) == APP_PORT, f"{name} {probe} port"
        assert c.get("imagePullPolicy") != "Always", f"{name}: the image is built locally"


def test_service_names_match_the_app(deployments: dict[str, Manifest]) -> None:
    """OTEL_SERVICE_NAME in the manifests is the service.name the app itself uses."""
    modes_file = REPO / "example" / "modes.py"
    assert modes_file.exists(), f"{modes_file} is missing"
    modes = importlib.import_module("example.modes").MODES
    for name, mode in APPS.items():
        env = container_env(_app_container(deployments, name))
        assert modes[mode].service_name == env["OTEL_SERVICE_NAME"], (
            f"{name}: app names its service {modes[mode].service_name!r}, manifest says "
            f"{env['OTEL_SERVICE_NAME']!r}"
        )


# ---------------------------------------------------------------------------- Dockerfile


def test_dockerfile_base_images_pinned() -> None:
    """Every FROM is a slim Python image (or an earlier stage) with a version tag."""
    instructions = parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))
    stages: set[str] = set()
    for ins in instructions:
        if ins.keyword != "FROM":
            continue
        words = [w for w in ins.args.split() if not w.startswith("--")]
        image = words[0]
        if image not in stages:
            assert is_pinned_image(image), f"Dockerfile line {ins.line}: {image!r} not pinned"
            assert re.match(r"python:3\.\d+\.\d+-slim", image), f"{image}: want python:3.x.y-slim"
        if len(words) >= 3 and words[1].upper() == "AS":
            stages.add(words[2])


def _uvicorn_app(argv: list[str]) -> str | None:
    """The ``module:attribute`` argument of a uvicorn command line, if it has one."""
    return next((a for a in argv[1:] if re.fullmatch(r"[\w.]+:\w+", a)), None)


def test_dockerfile_runs_uvicorn_like_the_manifests(
    dockerfile: list[Any], deployments: dict[str, Manifest], services: dict[str, Manifest]
) -> None:
    """uvicorn serves example.app:app on 0.0.0.0:8000, the port the manifests use, and
    the module exists."""
    argv = command_of(dockerfile)
    assert Path(argv[0]).name == "uvicorn", f"entry point {argv}"
    app_path = _uvicorn_app(argv)
    assert app_path == "example.app:app", f"uvicorn app {app_path!r} in {argv}"
    assert option(argv, "--host") == "0.0.0.0", f"uvicorn must listen on 0.0.0.0: {argv}"
    port = option(argv, "--port")
    assert port == str(APP_PORT), f"uvicorn --port {port}"
    exposed = {
        int(p.split("/")[0]) for i in dockerfile if i.keyword == "EXPOSE" for p in i.args.split()
    }
    assert {APP_PORT, METRICS_PORT} <= exposed, f"EXPOSE {exposed}"
    for name in APPS:
        _, _, cport = _resolve(services, deployments, name, APP_PORT)
        assert cport == int(port), f"{name}: Service 8000 reaches {cport}, uvicorn uses {port}"
    module_file = REPO / (app_path.split(":")[0].replace(".", "/") + ".py")
    assert module_file.exists(), f"{module_file} (the image's app module) is missing"


def test_dockerfile_environment(dockerfile: list[Any], deployments: dict[str, Manifest]) -> None:
    """DEMO_MODE chooses the mode (default bottlenecks), and the image's defaults agree
    with what the manifests set."""
    env = env_of(dockerfile)
    assert env.get("DEMO_MODE") in APPS.values(), f"Dockerfile DEMO_MODE={env.get('DEMO_MODE')}"
    for name in APPS:
        c_env = container_env(_app_container(deployments, name))
        if "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" in env:
            assert (
                env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
                == c_env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
            )
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1", "read-only root fs: no .pyc writes"


def test_dockerfile_user_is_non_root(
    dockerfile: list[Any], deployments: dict[str, Manifest]
) -> None:
    """The image runs as a numeric non-root user (so runAsNonRoot can verify it), the
    same one the app pods run as."""
    users = [i.args for i in dockerfile if i.keyword == "USER"]
    assert users, "the final stage has no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), f"USER {users[-1]!r}: use a numeric uid (runAsNonRoot checks it)"
    assert int(uid) != 0, f"USER {users[-1]!r} is root"
    for name in APPS:
        pod_uid = pod_spec(deployments[name]).get("securityContext", {}).get("runAsUser")
        assert pod_uid in (None, int(uid)), f"{name}: runAsUser {pod_uid} vs image USER {uid}"


def test_dockerfile_healthcheck(dockerfile: list[Any], deployments: dict[str, Manifest]) -> None:
    """HEALTHCHECK uses the image's own Python (no curl) on /health at uvicorn's port,
    the endpoint the probes use."""
    argv = healthcheck_command(dockerfile)
    text = " ".join(argv)
    assert argv[0] in ("python", "python3") or "python" in argv[:3][-1], f"HEALTHCHECK {argv}"
    assert not re.search(r"\b(curl|wget|requests|httpx)\b", text), f"HEALTHCHECK {argv}"
    url = urlsplit(re.findall(r"https?://[^'\"\s]+", text)[0])
    assert url.path == "/health", f"HEALTHCHECK checks {url.path}, the probes use /health"
    uvicorn_port = int(option(command_of(dockerfile), "--port") or 0)
    assert url.port == uvicorn_port, f"HEALTHCHECK on port {url.port}, uvicorn on {uvicorn_port}"


def test_dockerfile_installs_demo_extra(dockerfile: list[Any]) -> None:
    """The build installs `.[demo]`, and that extra brings uvicorn and FastAPI."""
    instructions = parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))
    runs = " ".join(i.args for i in instructions if i.keyword == "RUN")
    assert re.search(r"pip install[^&;]*[\"']?\.\[demo\][\"']?", runs), "no pip install .[demo]"
    tomllib = pytest.importorskip("tomllib", reason="needs Python 3.11+ to read pyproject.toml")
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    name = pyproject["project"]["name"]
    extras = pyproject["project"]["optional-dependencies"]

    def resolve(extra: str, seen: set[str]) -> list[str]:
        assert extra in extras, f"pyproject.toml has no extra {extra!r}"
        out = []
        for req in extras[extra]:
            self_ref = re.match(rf"{re.escape(name)}\[([^\]]+)\]", req)
            if self_ref:
                for sub in self_ref.group(1).split(","):
                    if sub.strip() not in seen:
                        seen.add(sub.strip())
                        out += resolve(sub.strip(), seen)
            else:
                out.append(re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].lower())
        return out

    deps = set(resolve("demo", {"demo"}))
    assert {"uvicorn", "fastapi"} <= deps, f".[demo] resolves to {sorted(deps)}"


def test_dockerfile_copies_existing_files() -> None:
    """Every COPY source exists and is not excluded by .dockerignore, which keeps .git
    and the virtualenv out of the context."""
    patterns = dockerignore_patterns(DOCKERIGNORE.read_text(encoding="utf-8"))
    for must in (".git", ".venv"):
        assert dockerignored(must, patterns), f".dockerignore does not exclude {must}"
    for ins in parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8")):
        if ins.keyword not in ("COPY", "ADD"):
            continue
        words = [w for w in ins.args.split() if not w.startswith("--")]
        if any(w.startswith("--from") for w in ins.args.split()):
            continue
        for src in words[:-1]:
            assert (REPO / src).exists(), f"Dockerfile line {ins.line}: COPY {src}: no such file"
            assert not dockerignored(src, patterns), (
                f"Dockerfile line {ins.line}: COPY {src} but .dockerignore excludes it"
            )


def _copy_into(src: Path, dest: Path, patterns: list[str]) -> None:
    """Copy ``src`` (file or folder) to ``dest`` as ``docker build`` would send it."""
    if src.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)
        return
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(REPO).as_posix()
        if path.is_file() and not dockerignored(rel, patterns):
            target = dest / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


def test_image_layout_runs_the_app(tmp_path: Path) -> None:
    """What the Dockerfile copies is enough: loopwatch built into a wheel from the build
    stage's files, and `example.app` imported from a folder holding only the final
    stage's files (as in /app), with nothing taken from the repository."""
    instructions = parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))
    patterns = dockerignore_patterns(DOCKERIGNORE.read_text(encoding="utf-8"))
    last_from = max(i for i, ins in enumerate(instructions) if ins.keyword == "FROM")
    src, app, site = tmp_path / "src", tmp_path / "app", tmp_path / "site"
    for index, ins in enumerate(instructions):
        if ins.keyword != "COPY" or "--from" in ins.args:
            continue
        words = ins.args.split()
        for name in words[:-1]:
            root = app if index > last_from else src
            _copy_into(REPO / name, root / name.rstrip("/"), patterns)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(src), "-w", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert build.returncode == 0, (
        f"building loopwatch from the image's files failed:\n{build.stderr}"
    )
    wheels = list(tmp_path.glob("*.whl"))
    assert len(wheels) == 1, f"expected one wheel, got {wheels}"
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(site),
            str(wheels[0]),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert install.returncode == 0, f"installing the wheel failed:\n{install.stderr}"
    probe = (
        "import json, loopwatch, example.app as m; "
        "print(json.dumps([loopwatch.__file__, m.__file__, type(m.app).__name__]))"
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(site),
        "DEMO_MODE": "optimized",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{_free_port()}/v1/traces",
    }
    run = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=app,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, f"importing example.app in the image layout failed:\n{run.stderr}"
    loopwatch_file, app_file, app_type = json.loads(run.stdout.strip().splitlines()[-1])
    assert Path(loopwatch_file).is_relative_to(site), f"loopwatch came from {loopwatch_file}"
    assert Path(app_file).is_relative_to(app), f"example.app came from {app_file}"
    assert app_type == "FastAPI", f"example.app:app is a {app_type}"


# ---------------------------------------------------------------------------- rules, dashboard


def _rule_expressions(alert_rules: list[Any]) -> Iterator[tuple[str, str]]:
    for rule in alert_rules:
        yield f"rule {rule.get('alert') or rule.get('record')}", rule["expr"]


def _all_expressions(alert_rules: list[Any], dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [*_rule_expressions(alert_rules), *dashboard_expressions(dashboard)]


def test_required_alerts(alert_rules: list[Any]) -> None:
    """The p99-delay (100 ms for 1 minute), stalled-now (> 5 s) and busy (> 50 % for 5
    minutes) alerts exist."""

    def squash(s: str) -> str:
        return re.sub(r"\s+", "", s)

    p99 = [
        r
        for r in alert_rules
        if "histogram_quantile(0.99," in squash(r["expr"])
        and "asyncio_eventloop_delay_seconds_bucket" in r["expr"]
        and re.search(r">\s*0\.1\s*$", r["expr"])
    ]
    assert p99, "need an alert histogram_quantile(0.99, ...delay_seconds_bucket...) > 0.1"
    assert p99[0].get("for") == "1m", f"{p99[0]['alert']}: want `for: 1m`"
    stalled = [
        r
        for r in alert_rules
        if re.search(r"asyncio_eventloop_block_ongoing_seconds\)?\s*>\s*5\s*$", r["expr"])
    ]
    assert stalled, "need an alert on asyncio_eventloop_block_ongoing_seconds > 5"
    busy = [
        r
        for r in alert_rules
        if "rate(asyncio_eventloop_busy_time_seconds_total[" in squash(r["expr"])
        and re.search(r">\s*0\.5\s*$", r["expr"])
    ]
    assert busy, "need an alert on rate(asyncio_eventloop_busy_time_seconds_total) > 0.5"
    assert busy[0].get("for") == "5m", f"{busy[0]['alert']}: want `for: 5m`"
    for rule in alert_rules:
        if "alert" in rule:
            assert rule.get("annotations", {}).get("summary"), f"{rule['alert']}: no summary"
            assert rule.get("labels", {}).get("severity"), f"{rule['alert']}: no severity"


@pytest.mark.parametrize(
    ("expr", "metrics", "labels"),
    [
        (
            'sum by (app, le) (rate(foo_bucket{a="x", b=~"y|z"}[5m]))',
            {"foo_bucket"},
            {"app", "le", "a", "b"},
        ),
        (
            "histogram_quantile(0.99, sum without (instance) (rate(x_bucket[$__rate_interval])))",
            {"x_bucket"},
            {"instance"},
        ),
        (
            "a_total / ignoring(code) group_left(b) b_total offset 5m > bool 1e3",
            {"a_total", "b_total"},
            {"code", "b"},
        ),
        ("max(x_seconds) by (app) * 60", {"x_seconds"}, {"app"}),
        ('foo{job="sum(bar) baz"} == 0', {"foo"}, {"job"}),
        ("rate(y_total[1m:30s]) and on() -(z)", {"y_total", "z"}, set()),
        ('count_values("v", m) or vector(0)', {"m"}, set()),
        ("x @ start()", {"x"}, set()),
        ('label_values(up{job="a"}, instance)', {"up"}, {"job", "instance"}),
        ("label_values(app)", set(), {"app"}),
    ],
)
def test_promql_extraction(expr: str, metrics: set[str], labels: set[str]) -> None:
    """The metric/label extractor used by the checks below gets tricky cases right."""
    refs = promql_refs(expr)
    assert refs.metrics == metrics
    assert refs.labels == labels


def test_promql_extraction_rejects_unknown_functions() -> None:
    """A misspelt function is reported, not mistaken for a metric."""
    with pytest.raises(AssertionError, match="unknown PromQL function 'rat'"):
        promql_refs("rat(x_total[5m])")


def test_promql_is_well_formed(alert_rules: list[Any], dashboard: dict[str, Any]) -> None:
    """Every expression calls known functions only and histogram_quantile keeps `le`."""
    for where, expr in _all_expressions(alert_rules, dashboard):
        refs = promql_refs(expr)  # raises on unknown functions
        assert refs.metrics, f"{where}: no metric in {expr!r}"
        if "histogram_quantile" in expr:
            for grouping in re.findall(r"\bby\s*\(([^)]*)\)", expr):
                assert "le" in [g.strip() for g in grouping.split(",")], (
                    f"{where}: histogram_quantile needs `le` in by(...): {expr!r}"
                )


def test_dashboard_contents(
    dashboard: dict[str, Any], deployments: dict[str, Manifest], skaffold: dict[str, Any]
) -> None:
    """Delay p50/p99/max, stalls per minute by route and cause, time stalled,
    utilization, busy time by function, and links to the apps' loop.blocked traces in Jaeger."""
    exprs = " ".join(re.sub(r"\s+", "", e) for _, e in dashboard_expressions(dashboard))
    for needle in (
        "histogram_quantile(0.5,",
        "histogram_quantile(0.99,",
        "asyncio_eventloop_delay_max_seconds",
        "asyncio_eventloop_block_duration_seconds_count",
        "asyncio_eventloop_block_duration_seconds_sum",
        "asyncio_eventloop_utilization",
        "asyncio_eventloop_busy_time_seconds_total",
    ):
        assert needle in exprs, f"dashboard has no query with {needle}"
    busy = [
        e
        for _, e in dashboard_expressions(dashboard)
        if "asyncio_eventloop_busy_time_seconds_total" in e
    ]
    assert any("code_function_name" in promql_refs(e).labels for e in busy), (
        "busy time must be shown by code_function_name"
    )
    stalls = [
        e
        for _, e in dashboard_expressions(dashboard)
        if "asyncio_eventloop_block_duration_seconds_count" in e
    ]
    assert any({"http_route", "loopwatch_cause"} <= promql_refs(e).labels for e in stalls), (
        "stalls per minute must be grouped by http_route and loopwatch_cause"
    )
    jaeger_local = next(
        f.get("localPort") for f in skaffold["portForward"] if f["resourceName"] == "jaeger"
    )
    services = set()
    for where, url in dashboard_links(dashboard):
        parts = urlsplit(url)
        if parts.path != "/search":
            continue
        query = parse_qs(parts.query)
        assert (parts.hostname, parts.port) == ("localhost", jaeger_local), f"{where}: {url}"
        assert query.get("operation") == ["loop.blocked"], f"{where}: {url}"
        services.update(query.get("service", []))
    expected = {container_env(_app_container(deployments, n))["OTEL_SERVICE_NAME"] for n in APPS}
    assert services == expected, f"Jaeger links for services {services}, apps are {expected}"


def test_dashboard_layout(dashboard: dict[str, Any]) -> None:
    """Panels have unique ids, do not overlap on the 24-column grid, and every query
    panel names a data source."""
    taken: dict[tuple[int, int], str] = {}
    ids = []
    for panel in dashboard["panels"]:
        ids.append(panel["id"])
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, f"panel {panel['title']!r} is wider than the grid"
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                other = taken.setdefault((x, y), panel["title"])
                assert other == panel["title"], f"panels {other!r} and {panel['title']!r} overlap"
        if panel.get("targets"):
            assert panel.get("datasource", {}).get("uid"), f"{panel['title']!r}: no datasource"
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    assert dashboard.get("uid") == "loopwatch"


def test_walkthrough_matches_the_manifests(
    dashboard: dict[str, Any], alert_rules: list[Any]
) -> None:
    """docs/kubernetes.md names the real dashboard, alerts, services and commands."""
    doc_file = REPO / "docs" / "kubernetes.md"
    assert doc_file.exists(), "docs/kubernetes.md is missing"
    doc = doc_file.read_text(encoding="utf-8")
    needles = [
        "minikube start",
        "skaffold dev",
        "curl http://localhost:8000/items/1",
        "curl -X POST http://localhost:8000/process/abc",
        "curl http://localhost:8001/items/1",
        "fastapi-demo-bottlenecks",
        "loop.blocked",
        dashboard["title"],
        "http://localhost:16686",
        "http://localhost:9090",
        "http://localhost:3000",
        *(r["alert"] for r in alert_rules if "alert" in r),
    ]
    missing = [n for n in needles if n not in doc]
    assert not missing, f"docs/kubernetes.md does not mention {missing}"


# ---------------------------------------------------------------------------- promtool


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        message = "promtool not found (Debian package `prometheus`)"
        if os.environ.get("LOOPWATCH_E2E_REQUIRED") == "1":
            pytest.fail(message + "; LOOPWATCH_E2E_REQUIRED=1")
        pytest.skip(message)
    return path


@pytest.fixture
def prometheus_dir(prometheus_files: dict[str, str], tmp_path: Path) -> Path:
    """The ConfigMap's files written out as they are mounted, plus the rule unit tests."""
    for key, text in prometheus_files.items():
        (tmp_path / key).write_text(text, encoding="utf-8")
    shutil.copy(RULES_TEST, tmp_path / RULES_TEST.name)
    return tmp_path


def _run_promtool(*args: str, cwd: Path) -> None:
    proc = subprocess.run(
        [_promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, (
        f"promtool {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    )


def test_promtool_check_config(prometheus_dir: Path) -> None:
    """prometheus.yml (and the rule files it loads) pass `promtool check config`."""
    _run_promtool("check", "config", "prometheus.yml", cwd=prometheus_dir)


def test_promtool_check_rules(prometheus_dir: Path, prometheus_config: dict[str, Any]) -> None:
    """The rule files pass `promtool check rules`."""
    _run_promtool("check", "rules", *prometheus_config["rule_files"], cwd=prometheus_dir)


def test_promtool_rule_unit_tests(prometheus_dir: Path) -> None:
    """The alerts fire (and stay quiet) as tests/k8s_rules_test.yml expects."""
    _run_promtool("test", "rules", RULES_TEST.name, cwd=prometheus_dir)


# ---------------------------------------------------------------------------- live scrape


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _get(url: str, timeout: float = 5.0, method: str = "GET") -> tuple[int, str]:
    request = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return int(response.status), response.read().decode("utf-8")


class LiveApp:
    """The example app started as the image starts it, with a scrape of its off-loop
    metrics once a request has gone through."""

    def __init__(self, port: int, metrics_port: int, log: Path) -> None:
        self.port = port
        self.metrics_port = metrics_port
        self.log = log
        self.families: dict[str, Any] = {}
        self.samples: dict[str, str] = {}  # sample name -> family type
        self.labels: set[str] = set()
        self.bucket_bounds: dict[str, list[float]] = {}

    def output(self) -> str:
        """The app's stdout/stderr so far (for failure messages)."""
        return self.log.read_text(encoding="utf-8", errors="replace")[-4000:]

    def scrape(self) -> str:
        """Fetch and parse the off-loop metrics endpoint."""
        _, text = _get(f"http://127.0.0.1:{self.metrics_port}/metrics")
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples, self.labels, self.bucket_bounds = {}, set(), {}
        for fam in self.families.values():
            for s in fam.samples:
                self.samples[s.name] = fam.type
                self.labels.update(s.labels)
                if s.name.endswith("_bucket") and s.labels.get("le") not in (None, "+Inf"):
                    self.bucket_bounds.setdefault(s.name, []).append(float(s.labels["le"]))
        return text


@pytest.fixture(scope="module")
def referenced_metrics(
    manifests: list[Manifest],
) -> set[str]:
    """Every metric the alert rules and the dashboard use (Prometheus' own excepted)."""
    files = config_map_data(manifests, "prometheus-config")
    config = yaml.safe_load(files["prometheus.yml"])
    exprs = [e for _, e in dashboard_expressions(load_dashboard(manifests))]
    for name in config.get("rule_files", []):
        for group in yaml.safe_load(files[name])["groups"]:
            exprs += [r["expr"] for r in group["rules"]]
    names: set[str] = set()
    for expr in exprs:
        names |= promql_refs(expr).metrics
    return names - PROMETHEUS_SERIES


@pytest.fixture(scope="module")
def live_app(
    tmp_path_factory: pytest.TempPathFactory, referenced_metrics: set[str]
) -> Iterator[LiveApp]:
    """Run `uvicorn <the Dockerfile's app>` with the off-loop metrics server, send
    GET /items/1, and scrape until every referenced metric shows up (or 20 s pass)."""
    argv = command_of(final_stage(parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))))
    # test_dockerfile_runs_uvicorn_like_the_manifests checks the app and its module.
    app_path = _uvicorn_app(argv)
    assert app_path is not None, f"no uvicorn app in {argv}"

    port, metrics_port, otlp_port = _free_port(), _free_port(), _free_port()
    env = {
        **os.environ,
        "DEMO_MODE": "bottlenecks",
        "LOOPWATCH_METRICS_PORT": str(metrics_port),
        "LOOPWATCH_METRICS_ADDR": "127.0.0.1",
        # Nothing listens there: spans are dropped, the app must not care.
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{otlp_port}/v1/traces",
        "PYTHONUNBUFFERED": "1",
    }
    log = tmp_path_factory.mktemp("live-app") / "uvicorn.log"
    # `--loop asyncio`: the image has no uvloop, so its uvicorn runs the stdlib loop.
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        app_path,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--loop",
        "asyncio",
    ]
    app = LiveApp(port, metrics_port, log)
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"uvicorn exited with {proc.returncode}:\n{app.output()}"
            with contextlib.suppress(OSError):
                if _get(f"http://127.0.0.1:{port}/health", timeout=2)[0] == 200:
                    break
            assert time.monotonic() < deadline, f"/health not up in 30 s:\n{app.output()}"
            time.sleep(0.2)
        status, body = _get(f"http://127.0.0.1:{port}/items/1", timeout=60)
        assert status == 200, f"GET /items/1 -> {status} {body}"
        deadline = time.monotonic() + 20
        while True:
            try:
                app.scrape()
            except OSError as e:
                raise AssertionError(
                    f"off-loop metrics port {metrics_port} not answering ({e}); is "
                    f"LOOPWATCH_METRICS_PORT honoured?\n{app.output()}"
                ) from None
            if referenced_metrics <= app.samples.keys() or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        yield app
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def test_live_metrics_exist(live_app: LiveApp, referenced_metrics: set[str]) -> None:
    """Every metric the dashboard and the alert rules query is in the app's scrape."""
    missing = sorted(referenced_metrics - live_app.samples.keys())
    ours = sorted(n for n in live_app.samples if n.startswith(("asyncio_", "loopwatch")))
    hints = {
        name: difflib.get_close_matches(name, list(live_app.samples), n=1, cutoff=0.8)
        for name in missing
    }
    assert not missing, (
        f"used by k8s/ but not exported by the example app: {missing}\n"
        f"closest exported names: {hints}\n"
        f"exported loop metrics: {ours}"
    )


def test_live_labels_exist(
    live_app: LiveApp,
    alert_rules: list[Any],
    dashboard: dict[str, Any],
    prometheus_config: dict[str, Any],
) -> None:
    """Every label the queries filter or group on, and every label the alert templates
    and legends print, is in the scrape or added by Prometheus' scrape config."""
    added = set(PROMETHEUS_LABELS)
    for job in prometheus_config["scrape_configs"]:
        for static in job.get("static_configs", []):
            added |= set(static.get("labels", {}))
    known = live_app.labels | added
    problems = []
    for where, expr in _all_expressions(alert_rules, dashboard):
        for label in promql_refs(expr).labels - known:
            problems.append(f"{where}: label {label!r} in {expr!r}")
    for rule in alert_rules:
        for text in rule.get("annotations", {}).values():
            problems += [
                f"rule {rule.get('alert')}: template label {label!r}"
                for label in template_labels(text) - known
            ]
    for where, legend in dashboard_legends(dashboard):
        problems += [
            f"{where}: legend label {label!r}" for label in template_labels(legend) - known
        ]
    assert not problems, "unknown labels:\n" + "\n".join(problems) + f"\nknown: {sorted(known)}"


def test_live_rate_only_on_counters(
    live_app: LiveApp, alert_rules: list[Any], dashboard: dict[str, Any]
) -> None:
    """rate()/increase() only read counters and histogram series, never gauges."""
    for where, expr in _all_expressions(alert_rules, dashboard):
        for fn, metric in promql_refs(expr).counter_reads:
            kind = live_app.samples.get(metric)
            assert kind in ("counter", "histogram"), f"{where}: {fn}({metric}) on a {kind}"


def test_live_delay_buckets_resolve_100ms(live_app: LiveApp) -> None:
    """The delay histogram has bucket bounds on both sides of the 100 ms alert
    threshold, so the p99 alert can tell 50 ms from 250 ms."""
    bounds = sorted(live_app.bucket_bounds.get("asyncio_eventloop_delay_seconds_bucket", []))
    assert bounds, "no asyncio_eventloop_delay_seconds_bucket samples"
    below = [b for b in bounds if b <= 0.1]
    above = [b for b in bounds if b >= 0.1]
    message = f"delay histogram bounds {bounds} are too coarse around 0.1 s"
    assert below, message
    assert above, message
    assert below[-1] >= 0.025, message
    assert above[0] <= 0.25, message


def test_live_dockerfile_healthcheck_passes(live_app: LiveApp, dockerfile: list[Any]) -> None:
    """The image's HEALTHCHECK command, pointed at the running app, exits 0 (and exits
    non-zero when nothing listens)."""
    argv = healthcheck_command(dockerfile)
    assert argv[0] in ("python", "python3"), f"HEALTHCHECK is not a python command: {argv}"

    def run(port: int) -> int:
        args = [sys.executable, *[a.replace(f":{APP_PORT}/", f":{port}/") for a in argv[1:]]]
        return subprocess.run(args, capture_output=True, timeout=30, check=False).returncode

    assert run(live_app.port) == 0, f"HEALTHCHECK fails against the app:\n{live_app.output()}"
    assert run(_free_port()) != 0, "HEALTHCHECK passes with nothing listening"
