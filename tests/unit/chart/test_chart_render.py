"""The chart renders what a cluster admin expects: lint-clean in both RBAC modes, restricted pods,
least-privilege RBAC, a schema that refuses bad values, and contract metric names in the
dashboard and alerts."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "roost"
Render = Callable[..., list[dict[str, Any]]]

Helm = Callable[[Sequence[str]], subprocess.CompletedProcess[str]]
ALL_OPTIONAL = (
    "serviceMonitor.enabled=true",
    "servingPodMonitor.enabled=true",
    "prometheusRule.enabled=true",
    "argocd.healthCheckConfigMap=true",
    "rbac.gatewayAPI=true",
)


@pytest.mark.parametrize(
    "sets",
    [
        [],
        ["rbac.scope=namespaced"],
        ["rbac.scope=namespaced", "watchNamespaces={a,b}", *ALL_OPTIONAL],
    ],
    ids=["defaults", "namespaced", "namespaced-everything"],
)
def test_helm_lint_strict_passes(helm: Helm, sets: list[str]) -> None:
    args = ["lint", "--strict", str(CHART)]
    for s in sets:
        args += ["--set", s]
    done = helm(args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The rendered objects of one kind."""
    return [o for o in objects if o["kind"] == kind]


def _election(obj: dict[str, Any]) -> bool:
    """The leader election Role/RoleBinding (release namespace, the Lease only)."""
    return bool(obj["metadata"]["name"].endswith("-leader-election"))


def _rules(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for o in objects if o["kind"] in ("Role", "ClusterRole") for r in o["rules"]]


@pytest.mark.parametrize("sets", [[], ["rbac.scope=namespaced"], list(ALL_OPTIONAL)])
def test_rbac_has_no_wildcards(render: Render, sets: list[str]) -> None:
    rules = _rules(render(*sets))
    assert rules
    for rule in rules:
        for field in ("apiGroups", "resources", "verbs"):
            assert all("*" not in value for value in rule[field]), rule
        assert "nonResourceURLs" not in rule
        # Only the leader election Lease is named: the operator reads and renews just that one.
        assert "resourceNames" not in rule or rule["resources"] == ["leases"], rule


def test_registry_credentials_grant_only_get_on_secrets(render: Render) -> None:
    plain = _rules(render())
    rules = _rules(render("rbac.registryCredentials=true"))
    secrets = [r for r in rules if "secrets" in r["resources"] and r not in plain]
    assert [(r["resources"], r["verbs"]) for r in secrets] == [(["secrets"], ["get"])]


def test_secrets_are_only_created_and_read_by_name(render: Render) -> None:
    """The runtime token Secret: create once, get by name; never list, watch, update, delete."""
    rules = _rules(render(*ALL_OPTIONAL))
    verbs = {v for r in rules if "secrets" in r["resources"] for v in r["verbs"]}
    assert verbs == {"get", "create"}


def test_rbac_never_touches_secrets_or_cluster_objects(render: Render) -> None:
    granted = {res for rule in _rules(render(*ALL_OPTIONAL)) for res in rule["resources"]}
    assert not granted & {"configmaps", "namespaces", "nodes", "roles", "rolebindings"}
    rules = _rules(render(*ALL_OPTIONAL))
    verbs = {v for rule in rules for v in rule["verbs"]}
    assert not verbs & {"escalate", "bind", "impersonate", "deletecollection"}
    # `update` only renews the one Lease (a PUT carrying the resourceVersion read).
    updates = [rule for rule in rules if "update" in rule["verbs"]]
    assert updates == [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["roost-operator"],
            "verbs": ["get", "update"],
        }
    ]


def test_cluster_scope_is_one_clusterrole(render: Render) -> None:
    objects = render()
    assert [
        o["kind"]
        for o in objects
        if "Role" in o["kind"] and not o["metadata"]["name"].endswith("-leader-election")
    ] == ["ClusterRole", "ClusterRoleBinding"]
    binding = by_kind(objects, "ClusterRoleBinding")[0]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "r-roost", "namespace": "roost-system"}
    ]
    args = by_kind(objects, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert not [a for a in args if a.startswith("--namespace")]  # all namespaces


def test_namespaced_scope_binds_a_role_per_watched_namespace(render: Render) -> None:
    objects = render("rbac.scope=namespaced", "watchNamespaces={team-a,team-b}")
    roles = [r for r in by_kind(objects, "Role") if not _election(r)]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for binding in by_kind(objects, "RoleBinding"):
        assert binding["subjects"][0]["namespace"] == "roost-system"
    # The only cluster-scoped grant left is the read-only CRD watch, and it can be turned off.
    cluster_rules = _rules(by_kind(objects, "ClusterRole"))
    assert cluster_rules == [
        {
            "apiGroups": ["apiextensions.k8s.io"],
            "resources": ["customresourcedefinitions"],
            "verbs": ["list", "watch"],
        }
    ]
    assert not by_kind(render("rbac.scope=namespaced", "rbac.crdWatch=false"), "ClusterRole")
    args = by_kind(objects, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [a for a in args if a.startswith("--namespace")] == [
        "--namespace=team-a",
        "--namespace=team-b",
    ]


def test_namespaced_scope_defaults_to_the_release_namespace(render: Render) -> None:
    objects = render("rbac.scope=namespaced", namespace="ml")
    roles = [r for r in by_kind(objects, "Role") if not _election(r)]
    assert [r["metadata"]["namespace"] for r in roles] == ["ml"]


def test_every_rule_is_justified_in_docs(render: Render) -> None:
    """docs/helm.md's RBAC table names the operation behind each (resource, verb)."""
    table = (REPO / "docs" / "helm.md").read_text()
    rows = {
        (m.group(1), verb.strip())
        for m in re.finditer(r"^\| `([a-z0-9./-]+)` \| ([a-z, ]+) \|", table, re.MULTILINE)
        for verb in m.group(2).split(",")
    }
    for rule in _rules(render(*ALL_OPTIONAL)):
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                name = f"{resource}.{group}" if group else resource
                for verb in rule["verbs"]:
                    assert (name, verb) in rows, f"docs/helm.md has no row for {name} {verb}"


def test_operator_pod_is_restricted_and_runnable(render: Render) -> None:
    deployment = by_kind(render(), "Deployment")[0]
    assert deployment["spec"]["replicas"] == 2
    # Leader election: a surge pod starts as a follower, so the upgrade never stops reconciling.
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "operator"
    spec = pod["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = spec["containers"]
    assert container["command"] == ["roost-operator"]
    assert "--serving-image=ghcr.io/roost-dev/roost-serving:0.1.0" in container["args"]
    assert container["image"] == "ghcr.io/roost-dev/roost-operator:0.1.0"
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert isinstance(sc["runAsUser"], int)
    assert sc["runAsUser"] > 0
    # Two endpoints: kopf's liveness, the operator's own readiness (startup done).
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 9090, "health": 8081}
    assert container["resources"]["requests"]


def test_image_digest_pins_the_image(render: Render) -> None:
    digest = "sha256:" + "ab" * 32
    deployment = by_kind(
        render(f"image.digest={digest}", f"servingImage.digest={digest}"), "Deployment"
    )[0]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"ghcr.io/roost-dev/roost-operator@{digest}"
    assert f"--serving-image=ghcr.io/roost-dev/roost-serving@{digest}" in container["args"]


def test_metrics_service_selects_only_the_operator(render: Render) -> None:
    objects = render()
    service = by_kind(objects, "Service")[0]
    assert service["spec"]["ports"][0]["port"] == 9090
    test_pod = next(
        o for o in by_kind(objects, "Pod") if "helm.sh/hook" in o["metadata"]["annotations"]
    )
    labels = test_pod["metadata"]["labels"]
    assert not all(labels.get(k) == v for k, v in service["spec"]["selector"].items())


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("rbac.scope=everything", "value must be one of"),
        ("bogus=1", "additional properties 'bogus' not allowed"),
        ("metrics.port=70000", "/metrics/port"),
        ("watchNamespaces={Bad_NS}", "/watchNamespaces/0"),
        ("image.digest=latest", "/image/digest"),
        ("serviceMonitor.interval=soon", "/serviceMonitor/interval"),
        ("prometheusRule.errorRateThreshold=2", "/prometheusRule/errorRateThreshold"),
        ("prometheusRule.errorRateThreshold=1.5", "/prometheusRule/errorRateThreshold"),
        ("prometheusRule.driftPSIThreshold=lots", "/prometheusRule/driftPSIThreshold"),
        ("prometheusRule.runbookBaseURL=wiki", "/prometheusRule/runbookBaseURL"),
        ("replicaCount=0", "/replicaCount"),
        ("leaderElection.leaseName=Bad_Name", "/leaderElection/leaseName"),
        ("leaderElection.enabled=false", "replicaCount > 1 needs leaderElection.enabled=true"),
        ("leaderElection.renewDeadline=20", "retryPeriod < renewDeadline < leaseDuration"),
    ],
)
def test_schema_rejects_bad_values(helm: Helm, value: str, message: str) -> None:
    done = helm(["template", "r", str(CHART), "--set", value])
    assert done.returncode != 0
    assert message in done.stderr


def _paths(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict) and node:
        return [p for k, v in node.items() for p in _paths(v, f"{prefix}/{k}")]
    return [prefix]


def test_schema_covers_every_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for path in _paths(values):
        node = schema
        for key in path.strip("/").split("/"):
            props = node.get("properties")
            if props is None:  # a free-form Kubernetes object (resources, securityContext)
                assert node.get("type") == "object", path
                break
            assert key in props, f"values.schema.json does not describe {path}"
            node = props[key]


def test_dashboard_uses_contract_metrics(render: Render) -> None:
    cm = next(
        o for o in by_kind(render(), "ConfigMap") if o["metadata"]["name"].endswith("dashboard")
    )
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(cm["data"]["roost.json"])
    exprs = " ".join(
        t["expr"] for p in dashboard["panels"] if p["type"] != "row" for t in p["targets"]
    )
    for metric in (
        "roost_requests_total",
        "roost_request_duration_seconds_bucket",
        "roost_feature_psi",
        "roost_operator_canary_weight",
        "roost_operator_gate_value",
        "roost_operator_gate_threshold",
    ):
        assert metric in exprs, metric
    titles = {p["title"] for p in dashboard["panels"]}
    assert {"Throughput (requests/s)", "Error rate (non-2xx share)", "Canary weight (%)"} <= titles
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


def test_prometheus_objects_carry_additional_labels(render: Render) -> None:
    objects = render(
        *ALL_OPTIONAL,
        "serviceMonitor.additionalLabels.release=kps",
        "servingPodMonitor.additionalLabels.release=kps",
        "prometheusRule.additionalLabels.release=kps",
    )
    for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule"):
        (obj,) = by_kind(objects, kind)
        assert obj["metadata"]["labels"]["release"] == "kps", kind
    (pod_monitor,) = by_kind(objects, "PodMonitor")
    assert pod_monitor["spec"]["selector"] == {"matchLabels": {"roost.dev/serving": "true"}}
    assert pod_monitor["spec"]["podMetricsEndpoints"][0]["port"] == "http"
    (rule,) = by_kind(objects, "PrometheusRule")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {
        "RoostCanaryRolledBack",
        "RoostFeatureDrift",
        "RoostHighErrorRate",
        "RoostModelDeploymentNotReady",
    } <= set(alerts)
    assert 'outcome="RolledBack"' in alerts["RoostCanaryRolledBack"]["expr"]
    assert "roost_feature_psi" in alerts["RoostFeatureDrift"]["expr"]
    # Alert templates reach Prometheus unrendered by Helm.
    assert "{{ $labels.feature }}" in alerts["RoostFeatureDrift"]["annotations"]["description"]


def test_monitoring_objects_are_off_by_default(render: Render) -> None:
    kinds = {o["kind"] for o in render()}
    assert not kinds & {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


def test_argocd_configmap_carries_the_lua_script(render: Render) -> None:
    cm = next(
        o
        for o in by_kind(render("argocd.healthCheckConfigMap=true"), "ConfigMap")
        if o["metadata"]["name"].endswith("argocd-health")
    )
    script = (CHART / "files" / "argocd-health.lua").read_text()
    assert (
        cm["data"]["resource.customizations.health.roost.dev_ModelDeployment"].strip()
        == script.strip()
    )


def test_crd_is_installed_from_the_chart_crds_dir(render: Render) -> None:
    # Helm installs crds/ before templates and never templates them: no CRD among templates.
    assert not by_kind(render(), "CustomResourceDefinition")
    assert yaml.safe_load((CHART / "crds" / "modeldeployment.yaml").read_text())["kind"] == (
        "CustomResourceDefinition"
    )


def test_two_replicas_elect_a_leader_on_one_lease(render: Render) -> None:
    objects = render()
    container = by_kind(objects, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    assert "--leader-elect" in container["args"]
    assert "--leader-election-lease-name=roost-operator" in container["args"]
    assert "--leader-election-renew-deadline=10" in container["args"]
    env = {e["name"]: e.get("valueFrom") for e in container["env"]}
    assert env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    (role,) = [o for o in by_kind(objects, "Role") if o["metadata"]["name"].endswith("-election")]
    assert role["metadata"]["namespace"] == "roost-system"
    (binding,) = [
        o
        for o in by_kind(objects, "RoleBinding")
        if o["metadata"]["name"] == role["metadata"]["name"]
    ]
    assert binding["subjects"][0]["name"] == "r-roost"
    (pdb,) = by_kind(objects, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"


def test_one_replica_without_election_is_recreated_and_has_no_pdb(render: Render) -> None:
    objects = render("replicaCount=1", "leaderElection.enabled=false")
    deployment = by_kind(objects, "Deployment")[0]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert not by_kind(objects, "PodDisruptionBudget")
    assert not [o for o in by_kind(objects, "Role") if "leader" in o["metadata"]["name"]]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert "--leader-elect" not in container["args"]
