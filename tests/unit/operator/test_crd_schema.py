"""The ModelDeployment CRD carries every field of the contract (docs/architecture.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

CRD_PATH = Path(__file__).resolve().parents[3] / "crds" / "modeldeployment.yaml"


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    with CRD_PATH.open() as f:
        doc = yaml.safe_load(f)
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(scope="module")
def version(crd: dict[str, Any]) -> dict[str, Any]:
    versions = crd["spec"]["versions"]
    assert [v["name"] for v in versions] == ["v1alpha1"]
    v: dict[str, Any] = versions[0]
    return v


def _at(schema: dict[str, Any], dotted: str) -> dict[str, Any]:
    """Walk `a.b[].c` through properties/items of an OpenAPI schema."""
    node = schema
    for part in dotted.split("."):
        is_list = part.endswith("[]")
        node = node["properties"][part.removesuffix("[]")]
        if is_list:
            assert node["type"] == "array", dotted
            node = node["items"]
    return node


def _walk(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, node)]
    for key, child in node.get("properties", {}).items():
        out += _walk(child, f"{path}.{key}")
    if "items" in node:
        out += _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        out += _walk(node["additionalProperties"], f"{path}{{}}")
    return out


def test_names(crd: dict[str, Any]) -> None:
    assert crd["metadata"]["name"] == "modeldeployments.roost.dev"
    spec = crd["spec"]
    assert spec["group"] == "roost.dev"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "ModelDeployment"
    assert spec["names"]["plural"] == "modeldeployments"
    assert spec["names"]["singular"] == "modeldeployment"
    assert spec["names"]["shortNames"] == ["md", "mdep"]
    assert spec["names"]["categories"] == ["roost", "all"]


SPEC_FIELDS = [
    "model.uri",
    "model.sha256",
    "model.profileUri",
    "model.credentials.secretName",
    "replicas",
    "resources.requests",
    "resources.limits",
    "server.image",
    "server.port",
    "server.maxBatchSize",
    "server.maxDelayMs",
    "server.threads",
    "server.driftWindow",
    "server.env[].name",
    "server.env[].value",
    "autoscaling.minReplicas",
    "autoscaling.maxReplicas",
    "autoscaling.targetCPUUtilizationPercentage",
    "autoscaling.targetInflightRequests",
    "rollout.steps[].weight",
    "rollout.steps[].pause",
    "rollout.analysis.source",
    "rollout.analysis.prometheusUrl",
    "rollout.analysis.interval",
    "rollout.analysis.minRequests",
    "rollout.analysis.failureLimit",
    "rollout.analysis.gates.errorRate.max",
    "rollout.analysis.gates.latency.maxP99Seconds",
    "rollout.analysis.gates.latency.maxP99Ratio",
    "rollout.analysis.gates.drift.maxPSI",
    "rollout.analysis.gates.divergence.maxJSDistance",
    "traffic.httpRoute.name",
    "traffic.httpRoute.parentRefs[].name",
    "traffic.httpRoute.parentRefs[].namespace",
    "traffic.httpRoute.hostnames",
    "paused",
]

STATUS_FIELDS = [
    "observedGeneration",
    "replicas",
    "readyReplicas",
    "selector",
    "stable.revision",
    "stable.modelUri",
    "stable.readyReplicas",
    "canary.revision",
    "canary.modelUri",
    "canary.step",
    "canary.weight",
    "canary.stepStartedAt",
    "canary.readyReplicas",
    "canary.consecutiveFailures",
    "canary.analysisCount",
    "canary.lastAnalysis.time",
    "canary.lastAnalysis.verdict",
    "canary.lastAnalysis.gates[].name",
    "canary.lastAnalysis.gates[].value",
    "canary.lastAnalysis.gates[].threshold",
    "canary.lastAnalysis.gates[].verdict",
    "failedRevision",
    "history[].revision",
    "history[].modelUri",
    "history[].outcome",
    "history[].reason",
    "history[].startedAt",
    "history[].finishedAt",
    "handledRequests.promote",
    "handledRequests.abort",
    "handledRequests.retry",
    "conditions[].type",
    "conditions[].status",
    "conditions[].reason",
    "conditions[].message",
    "conditions[].lastTransitionTime",
    "conditions[].observedGeneration",
]


@pytest.mark.parametrize("field", SPEC_FIELDS)
def test_spec_field_exists(version: dict[str, Any], field: str) -> None:
    spec = _at(version["schema"]["openAPIV3Schema"], "spec")
    assert _at(spec, field)["type"]


@pytest.mark.parametrize("field", STATUS_FIELDS)
def test_status_field_exists(version: dict[str, Any], field: str) -> None:
    status = _at(version["schema"]["openAPIV3Schema"], "status")
    assert _at(status, field)["type"]


@pytest.mark.parametrize(
    ("field", "default"),
    [
        ("replicas", 1),
        ("server.port", 8080),
        ("server.maxBatchSize", 32),
        ("server.maxDelayMs", 2),
        ("server.threads", 1),
        ("server.driftWindow", 2000),
        ("rollout.analysis.source", "pods"),
        ("rollout.analysis.interval", "10s"),
        ("rollout.analysis.minRequests", 50),
        ("rollout.analysis.failureLimit", 2),
        ("paused", False),
        # Parents default to {} so the API server fills their children's defaults in too.
        ("server", {}),
        ("rollout", {}),
        ("rollout.analysis", {}),
    ],
)
def test_defaults(version: dict[str, Any], field: str, default: object) -> None:
    spec = _at(version["schema"]["openAPIV3Schema"], "spec")
    assert _at(spec, field)["default"] == default


def test_resources_are_quantity_maps(version: dict[str, Any]) -> None:
    spec = _at(version["schema"]["openAPIV3Schema"], "spec")
    for key in ("requests", "limits"):
        values = _at(spec, f"resources.{key}")["additionalProperties"]
        assert values["x-kubernetes-int-or-string"] is True
        assert {t["type"] for t in values["anyOf"]} == {"integer", "string"}


def test_every_list_and_string_in_spec_is_bounded(version: dict[str, Any]) -> None:
    # The API server's CEL cost estimate needs these bounds; unbounded ones make it refuse rules.
    spec = _at(version["schema"]["openAPIV3Schema"], "spec")
    unbounded = [
        path
        for path, node in _walk(spec)
        if (node.get("type") == "array" and "maxItems" not in node)
        or (node.get("type") == "string" and "maxLength" not in node and "enum" not in node)
        or (
            node.get("type") == "object"
            and "additionalProperties" in node
            and "maxProperties" not in node
        )
    ]
    assert unbounded == []


def _rules(version: dict[str, Any]) -> list[dict[str, str]]:
    return [
        rule
        for _, node in _walk(version["schema"]["openAPIV3Schema"])
        for rule in node.get("x-kubernetes-validations", [])
    ]


@pytest.mark.parametrize(
    "needle",
    [
        "self.metadata.name.size() <= 52",
        "isSorted()",
        "s.weight >= 1 && s.weight <= 100",
        "self.minReplicas <= self.maxReplicas",
        "(file|http|https|s3|gs)://",
        "^[0-9a-f]{64}$",
        "^([0-9]+(ms|s|m|h))+$",
        "prometheusUrl",
    ],
)
def test_cel_rules_present_with_messages(version: dict[str, Any], needle: str) -> None:
    matching = [r for r in _rules(version) if needle in r["rule"]]
    assert matching, needle
    assert all(len(r["message"]) > 20 for r in matching)


def test_printer_columns(version: dict[str, Any]) -> None:
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns == {
        "Ready": '.status.conditions[?(@.type=="Ready")].status',
        "Stable": ".status.stable.revision",
        "Canary": ".status.canary.revision",
        "Weight": ".status.canary.weight",
        "Replicas": ".status.replicas",
        "Available": ".status.readyReplicas",
        "Age": ".metadata.creationTimestamp",
    }


def test_subresources(version: dict[str, Any]) -> None:
    assert version["subresources"]["status"] == {}
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }


def test_conditions_are_a_map_keyed_by_type(version: dict[str, Any]) -> None:
    conditions = _at(version["schema"]["openAPIV3Schema"], "status.conditions")
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert set(conditions["items"]["required"]) == {
        "type",
        "status",
        "lastTransitionTime",
        "reason",
        "message",
    }


def test_no_preserve_unknown_fields(version: dict[str, Any]) -> None:
    # A full schema prunes typos instead of storing them silently.
    nodes = _walk(version["schema"]["openAPIV3Schema"])
    assert [p for p, n in nodes if n.get("x-kubernetes-preserve-unknown-fields")] == []


def _prune(value: Any, schema: dict[str, Any]) -> Any:
    """What the API server stores of `value` under a structural schema: unknown keys dropped."""
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        if props is None and isinstance(extra, dict):
            return {k: _prune(v, extra) for k, v in value.items()}
        return {k: _prune(v, props[k]) for k, v in value.items() if k in (props or {})}
    if isinstance(value, list):
        return [_prune(v, schema.get("items", {})) for v in value]
    return value


@pytest.mark.parametrize("retrained", [False, True])
def test_every_evidence_key_the_gates_write_is_stored(
    version: dict[str, Any], retrained: bool
) -> None:
    # A key missing from the schema is pruned on every status write: the test it holds would
    # restart from nothing at each analysis and never reach a verdict (the routing check did).
    from roost_operator import compare
    from roost_operator.spec import parse_spec
    from roost_operator.verdicts import Counts, judge_interval

    gates = {
        "errorRate": {"margin": 0.02, "clientErrorMargin": 0.05},
        "latency": {"maxRatio": 1.3},
        "divergence": {"margin": 0.1},
        "drift": {"margin": 0.1},
    }
    spec = parse_spec(
        {"model": {"uri": "file:///m.onnx"}, "rollout": {"analysis": {"gates": gates}}}
    ).rollout.analysis
    edges = {"0": 1.0, "1": float("inf")}
    stable_v = compare.section([1.0])["version"]

    def counts(own_edge: float) -> Counts:
        return Counts(
            requests={"200": 900.0, "400": 50.0, "500": 50.0},
            buckets={0.1: 500.0, 1.0: 900.0, float("inf"): 1000.0},
            predictions={"0": 400.0, "1": 500.0},
            feature_bins={"f0": {"0": 450.0, "1": 450.0, "missing": 0.0}},
            reference={"f0": {"0": 0.5, "1": 0.5}},
            prediction_edges={"0": own_edge, "1": float("inf")},
            compare={stable_v: {"0": 400.0, "1": 500.0}},
        )

    stable = counts(1.0)
    canary = counts(2.0 if retrained else 1.0)
    assert edges == stable.prediction_edges
    evidence: Any = None
    for _ in range(3):
        evidence = judge_interval(spec, evidence, canary, stable).evidence
    assert {"routing", "compare" if retrained else "divergence"} <= set(evidence)
    schema = _at(version["schema"]["openAPIV3Schema"], "status.canary.evidence")
    assert _prune(evidence, schema) == evidence
