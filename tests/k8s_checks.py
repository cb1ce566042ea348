"""Helpers for tests/test_k8s.py: manifest loading, strict schema validation, PromQL and
Dockerfile parsing. Plain functions, no pytest; every failure is an AssertionError that
says which file and field is wrong.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml
from kubernetes_validate.utils import VersionNotSupportedError

REPO = Path(__file__).resolve().parent.parent
K8S_DIR = REPO / "k8s"

# ---------------------------------------------------------------------------- manifests


@dataclass(frozen=True)
class Manifest:
    """One YAML document of a file under k8s/."""

    path: Path
    index: int
    doc: dict[str, Any]

    @property
    def kind(self) -> str:
        """The document's ``kind`` (empty if missing)."""
        return str(self.doc.get("kind", ""))

    @property
    def name(self) -> str:
        """``metadata.name`` (empty if missing)."""
        return str((self.doc.get("metadata") or {}).get("name", ""))

    @property
    def where(self) -> str:
        """``k8s/file.yaml#index (Kind/name)`` for messages."""
        return f"{self.path.relative_to(REPO)}#{self.index} ({self.kind}/{self.name})"


def load_manifests(directory: Path = K8S_DIR) -> list[Manifest]:
    """Every non-empty YAML document of ``directory/*.yaml``, in file order."""
    out: list[Manifest] = []
    for path in sorted(directory.glob("*.yaml")) + sorted(directory.glob("*.yml")):
        with path.open(encoding="utf-8") as f:
            for index, doc in enumerate(yaml.safe_load_all(f)):
                if doc is None:
                    continue
                assert isinstance(doc, dict), f"{path}#{index}: a manifest must be a mapping"
                out.append(Manifest(path, index, doc))
    return out


def validate_strict(doc: dict[str, Any], version: str) -> str:
    """Validate ``doc`` against the strict Kubernetes ``version`` schema; return the
    schema version used.

    kubernetes_validate raises ``SchemaNotFoundError`` for an unknown kind/apiVersion,
    which its command line only *warns* about; here it is a failure, like a schema error.
    """
    for key in ("apiVersion", "kind"):
        if not isinstance(doc.get(key), str) or not doc[key]:
            raise AssertionError(f"manifest has no {key!r}")
    try:
        return kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in e.path) or "<root>"
        raise AssertionError(
            f"{doc['kind']}/{doc.get('metadata', {}).get('name')}: invalid for Kubernetes "
            f"{e.version} (strict) at {path}: {e.message}"
        ) from None
    except kubernetes_validate.SchemaNotFoundError as e:
        raise AssertionError(
            f"unknown kind/apiVersion: {e.message} (a typo, or an API removed in {version})"
        ) from None
    except kubernetes_validate.InvalidSchemaError as e:
        raise AssertionError(f"kubernetes_validate schema problem: {e.message}") from None
    except VersionNotSupportedError as e:
        raise AssertionError(
            f"kubernetes-validate {kubernetes_validate.__version__} has no schemas for "
            f"Kubernetes {e.version}: upgrade it"
        ) from None


def pod_spec(m: Manifest) -> dict[str, Any]:
    """The pod spec of a Deployment."""
    spec: dict[str, Any] = m.doc["spec"]["template"]["spec"]
    return spec


def container_env(container: dict[str, Any]) -> dict[str, str]:
    """A container's literal ``env`` values (``valueFrom`` entries are left out)."""
    return {e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e}


def config_map_data(manifests: Iterable[Manifest], name: str) -> dict[str, str]:
    """The ``data`` of ConfigMap ``name``."""
    for m in manifests:
        if m.kind == "ConfigMap" and m.name == name:
            data: dict[str, str] = m.doc.get("data", {})
            return data
    raise AssertionError(f"no ConfigMap named {name!r} in k8s/")


def is_pinned_image(image: str) -> bool:
    """True for ``repo:tag`` (or a digest) with a numeric version tag, not ``latest``."""
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:
        return False
    return tag != "latest" and re.match(r"v?\d+\.\d+(\.\d+)?", tag) is not None


# ---------------------------------------------------------------------------- PromQL

PROMQL_FUNCTIONS = frozenset(
    [
        "abs",
        "absent",
        "absent_over_time",
        "acos",
        "acosh",
        "asin",
        "asinh",
        "atan",
        "atanh",
        "avg_over_time",
        "ceil",
        "changes",
        "clamp",
        "clamp_max",
        "clamp_min",
        "cos",
        "cosh",
        "count_over_time",
        "day_of_month",
        "day_of_week",
        "day_of_year",
        "days_in_month",
        "deg",
        "delta",
        "deriv",
        "double_exponential_smoothing",
        "exp",
        "floor",
        "histogram_avg",
        "histogram_count",
        "histogram_fraction",
        "histogram_quantile",
        "histogram_stddev",
        "histogram_stdvar",
        "histogram_sum",
        "holt_winters",
        "hour",
        "idelta",
        "increase",
        "info",
        "irate",
        "label_join",
        "label_replace",
        "last_over_time",
        "ln",
        "log10",
        "log2",
        "mad_over_time",
        "max_over_time",
        "min_over_time",
        "minute",
        "month",
        "pi",
        "predict_linear",
        "present_over_time",
        "quantile_over_time",
        "rad",
        "rate",
        "resets",
        "round",
        "scalar",
        "sgn",
        "sin",
        "sinh",
        "sort",
        "sort_by_label",
        "sort_by_label_desc",
        "sort_desc",
        "sqrt",
        "stddev_over_time",
        "stdvar_over_time",
        "sum_over_time",
        "tan",
        "tanh",
        "time",
        "timestamp",
        "vector",
        "year",
        "start",
        "end",
    ]
)
PROMQL_AGGREGATIONS = frozenset(
    [
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ]
)
PROMQL_KEYWORDS = frozenset(
    [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "offset",
        "and",
        "or",
        "unless",
        "atan2",
        "inf",
        "nan",
    ]
)
GROUPING = re.compile(
    r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)", re.IGNORECASE
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_TOKEN = re.compile(
    r"(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?:[a-zA-Z]+\d*)*)"
    r"|(?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)"
)
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(.*),\s*)?([a-zA-Z_]\w*)\s*\)\s*$", re.S)


@dataclass
class PromQLRefs:
    """Metric and label names an expression refers to."""

    metrics: set[str] = field(default_factory=set)
    labels: set[str] = field(default_factory=set)
    # (function, metric) for metrics read by rate/irate/increase: must be counters.
    counter_reads: set[tuple[str, str]] = field(default_factory=set)


def promql_refs(expr: str) -> PromQLRefs:
    """The metric names (identifiers that are neither functions nor keywords) and label
    names (in matchers and grouping clauses) of a PromQL expression.

    Understands Grafana's ``label_values(metric, label)`` and ``$variables``. Raises
    AssertionError on a call to an unknown function, which is how a misspelt function
    would otherwise look.
    """
    refs = PromQLRefs()
    lv = _LABEL_VALUES.match(expr)
    if lv:
        refs.labels.add(lv.group(2))
        if lv.group(1):
            inner = promql_refs(lv.group(1))
            refs.metrics |= inner.metrics
            refs.labels |= inner.labels
        return refs
    text = _STRING.sub('""', expr)
    for m in _MATCHERS.finditer(text):
        for matcher in m.group(1).split(","):
            lm = re.match(r"\s*([a-zA-Z_]\w*)\s*(=~|!~|!=|=)", matcher)
            if lm:
                if lm.group(1) == "__name__":
                    raise AssertionError(f"use the metric name, not __name__, in {expr!r}")
                refs.labels.add(lm.group(1))
    text = _MATCHERS.sub("{}", text)
    text = _RANGE.sub("[]", text)
    for g in GROUPING.finditer(text):
        refs.labels.update(x.strip() for x in g.group(2).split(",") if x.strip())
    text = GROUPING.sub(lambda g: f" {g.group(1)} ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables left outside strings

    tokens = [(t.group("ident"), t.end()) for t in _TOKEN.finditer(text) if t.group("ident")]
    for i, (ident, end) in enumerate(tokens):
        rest = text[end:].lstrip()
        nxt = rest[:1]
        following = tokens[i + 1][0] if i + 1 < len(tokens) else ""
        if ident in PROMQL_KEYWORDS:
            continue
        if ident in PROMQL_AGGREGATIONS and (nxt == "(" or following in ("by", "without")):
            continue
        if nxt == "(":
            if ident not in PROMQL_FUNCTIONS:
                raise AssertionError(f"unknown PromQL function {ident!r} in {expr!r}")
            continue
        refs.metrics.add(ident)
    for fn, metric in re.findall(r"\b(rate|irate|increase)\(\s*([a-zA-Z_:][\w:]*)", text):
        refs.counter_reads.add((fn, metric))
    return refs


def template_labels(text: str) -> set[str]:
    """Label names used in alert templates (``{{ $labels.x }}``) and Grafana legends
    (``{{x}}``)."""
    found = set(re.findall(r"\{\{\s*\$labels\.(\w+)\s*\}\}", text))
    found |= set(re.findall(r"\{\{\s*(\w+)\s*\}\}", text))
    return found


def dashboard_expressions(dashboard: Any) -> Iterator[tuple[str, str]]:
    """(where, expression) for every PromQL expression of a Grafana dashboard: panel
    targets and templating queries."""
    for panel in _walk_panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if "expr" in target:
                yield f"panel {panel.get('title')!r} target {target.get('refId')}", target["expr"]
    for var in dashboard.get("templating", {}).get("list", []):
        query = var.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if var.get("type") == "query" and isinstance(query, str):
            yield f"variable ${var.get('name')}", query


def dashboard_legends(dashboard: Any) -> Iterator[tuple[str, str]]:
    """(where, legendFormat) of every panel target."""
    for panel in _walk_panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("legendFormat"):
                yield f"panel {panel.get('title')!r}", target["legendFormat"]


def dashboard_links(dashboard: Any) -> Iterator[tuple[str, str]]:
    """(where, url) of every dashboard link, panel link and markdown link."""
    for link in dashboard.get("links", []):
        yield "dashboard links", link.get("url", "")
    for panel in _walk_panels(dashboard.get("panels", [])):
        for link in panel.get("links", []):
            yield f"panel {panel.get('title')!r} links", link.get("url", "")
        content = (panel.get("options") or {}).get("content", "")
        for url in re.findall(r"\]\((https?://[^)\s]+)\)", content):
            yield f"panel {panel.get('title')!r} text", url


def _walk_panels(panels: list[Any]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _walk_panels(panel.get("panels", []))


def load_dashboard(manifests: Iterable[Manifest]) -> dict[str, Any]:
    """The loopwatch dashboard JSON from its ConfigMap."""
    data = config_map_data(manifests, "grafana-dashboard-loopwatch")
    assert "loopwatch.json" in data, "ConfigMap grafana-dashboard-loopwatch has no loopwatch.json"
    try:
        dashboard: dict[str, Any] = json.loads(data["loopwatch.json"])
    except json.JSONDecodeError as e:
        raise AssertionError(f"loopwatch.json in grafana-dashboard-loopwatch: {e}") from None
    return dashboard


# ---------------------------------------------------------------------------- Dockerfile


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction with its (continuation-joined) argument text."""

    keyword: str
    args: str
    line: int


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions of a Dockerfile: comments dropped, ``\\`` continuations joined."""
    out: list[Instruction] = []
    buf: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if not buf:
            start = number
        if line.endswith("\\"):
            buf.append(line[:-1].strip())
            continue
        buf.append(line)
        joined = " ".join(p for p in buf if p)
        buf = []
        keyword, _, args = joined.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
    assert not buf, "Dockerfile ends in a line continuation"
    return out


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    """The instructions from the last ``FROM`` on (the image that is shipped)."""
    froms = [i for i, ins in enumerate(instructions) if ins.keyword == "FROM"]
    assert froms, "Dockerfile has no FROM"
    return instructions[froms[-1] :]


def exec_form(ins: Instruction) -> list[str]:
    """The JSON (exec form) argument list of CMD/ENTRYPOINT; shell form is an error."""
    try:
        value = json.loads(ins.args)
    except json.JSONDecodeError:
        raise AssertionError(
            f"Dockerfile line {ins.line}: {ins.keyword} must use the exec (JSON) form so "
            "uvicorn is PID 1 and gets SIGTERM"
        ) from None
    assert isinstance(value, list), f"Dockerfile line {ins.line}: {ins.keyword} is not a list"
    assert all(isinstance(v, str) for v in value), f"Dockerfile line {ins.line}: non-string"
    return value


def env_of(instructions: Iterable[Instruction]) -> dict[str, str]:
    """Variables set by ``ENV`` (both ``K=V ...`` and legacy ``K V`` forms)."""
    env: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword != "ENV":
            continue
        parts = shlex.split(ins.args)
        if parts and "=" not in parts[0]:
            env[parts[0]] = " ".join(parts[1:])
            continue
        for part in parts:
            key, _, value = part.partition("=")
            env[key] = value
    return env


def command_of(stage: list[Instruction]) -> list[str]:
    """The container's argv: last ENTRYPOINT followed by last CMD (exec forms)."""
    entry = [i for i in stage if i.keyword == "ENTRYPOINT"]
    cmd = [i for i in stage if i.keyword == "CMD"]
    argv = (exec_form(entry[-1]) if entry else []) + (exec_form(cmd[-1]) if cmd else [])
    assert argv, "the final stage has neither ENTRYPOINT nor CMD"
    return argv


def option(argv: list[str], name: str) -> str | None:
    """Value of ``--name value`` or ``--name=value`` in ``argv``."""
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def healthcheck_command(stage: list[Instruction]) -> list[str]:
    """The argv of the final stage's ``HEALTHCHECK CMD`` (exec or shell form)."""
    checks = [i for i in stage if i.keyword == "HEALTHCHECK"]
    assert checks, "the final stage has no HEALTHCHECK"
    args = checks[-1].args
    assert args.upper() != "NONE", "HEALTHCHECK NONE disables the health check"
    match = re.search(r"(?:^|\s)CMD\s+(.*)$", args, re.S)
    assert match, f"HEALTHCHECK without CMD: {args!r}"
    body = match.group(1).strip()
    if body.startswith("["):
        parsed: list[str] = json.loads(body)
        return parsed
    return ["/bin/sh", "-c", body]


def dockerignore_patterns(text: str) -> list[str]:
    """Patterns of a .dockerignore (comments and blank lines dropped)."""
    return [
        line.strip().rstrip("/")
        for line in text.splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether the context path ``path`` (or a parent folder) is excluded.

    Follows the last matching pattern, with ``!`` exceptions, like Docker does.
    """
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pats = [pat, pat[3:]] if pat.startswith("**/") else [pat]
        hit = any(fnmatch.fnmatchcase(p, q) for p in prefixes for q in pats) or (
            pat.startswith("**/") and any(fnmatch.fnmatchcase(s, pat[3:]) for s in parts)
        )
        if hit:
            excluded = not negate
    return excluded
