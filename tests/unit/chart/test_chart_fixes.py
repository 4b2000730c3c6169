"""The chart's rough edges, each with the test that shows it fixed.

- `helm template charts/roost` works without `--kube-version` (helm built with upstream's
  Kubernetes-version ldflags, hack/k8s/build.sh);
- the ServiceMonitor keeps the operator's own `namespace` label (`honorLabels`);
- decimals given with `--set` (helm passes them as strings) are accepted and rendered;
- a long release name still gives DNS-label Service names (<= 63 characters);
- liveness and readiness are separate endpoints (test_chart_render);
- an optional NetworkPolicy;
- every alert carries a runbook_url, and the ratio alerts a minimum-traffic guard;
- the dashboard only queries metric names the code exports.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from roost_operator.metrics import OperatorMetrics
from roost_serving.metrics import ServingMetrics
from roost_serving.monitor import DriftMonitor
from roost_serving.profile import ClassificationPrediction, NumericFeature, Profile

Helm = Callable[[Sequence[str]], subprocess.CompletedProcess[str]]
Render = Callable[..., list[dict[str, Any]]]
REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "roost"


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def test_template_needs_no_kube_version(helm: Helm) -> None:
    done = helm(["template", "r", str(CHART)])
    assert done.returncode == 0, done.stderr
    assert "kind: Deployment" in done.stdout
    version = helm(["version", "--template", "{{ .Version }}"])
    assert version.stdout.startswith("v3."), version.stdout


def test_service_monitor_honors_the_operators_namespace_label(render: Render) -> None:
    (monitor,) = by_kind(render("serviceMonitor.enabled=true"), "ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["honorLabels"] is True


def _rule(render: Render, *sets: str) -> dict[str, Any]:
    (rule,) = by_kind(render("prometheusRule.enabled=true", *sets), "PrometheusRule")
    return rule


def _alerts(rule: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}


def test_decimals_given_with_set_are_rendered(render: Render) -> None:
    alerts = _alerts(
        _rule(
            render,
            "prometheusRule.errorRateThreshold=0.1",
            "prometheusRule.driftPSIThreshold=0.3",
            "prometheusRule.minRequestRate=0.5",
        )
    )
    assert ") > 0.1\n" in alerts["RoostHighErrorRate"]["expr"]
    assert "(roost_feature_psi) > 0.3\n" in alerts["RoostFeatureDrift"]["expr"]
    for name in ("RoostHighErrorRate", "RoostFeatureDrift"):
        assert "[5m])) > 0.5" in alerts[name]["expr"], alerts[name]["expr"]


def test_alerts_carry_runbook_urls_that_exist(render: Render) -> None:
    runbooks = (REPO / "docs" / "runbooks.md").read_text()
    anchors = {h.lower() for h in re.findall(r"^## (\w+)$", runbooks, re.MULTILINE)}
    alerts = _alerts(_rule(render))
    for name, alert in alerts.items():
        url = alert["annotations"]["runbook_url"]
        assert url.startswith("https://"), url
        assert url.endswith(f"/docs/runbooks.md#{name.lower()}"), url
        assert name.lower() in anchors, f"docs/runbooks.md has no section for {name}"


def test_ratio_alerts_need_minimum_traffic(render: Render) -> None:
    alerts = _alerts(_rule(render))
    for name in ("RoostHighErrorRate", "RoostFeatureDrift"):
        expr = alerts[name]["expr"]
        assert re.search(r"\band\b.*rate\(roost_requests_total\[5m\]\)\) > 0\.1", expr, re.S), expr


@pytest.mark.parametrize(
    "release", ["a" * 53, "my-very-long-release-name-that-tells-a-story-roost"]
)
def test_service_names_fit_a_dns_label(render: Render, release: str) -> None:
    objects = render(
        *("serviceMonitor.enabled=true", "servingPodMonitor.enabled=true"), release=release
    )
    names = [o["metadata"]["name"] for o in objects if o["kind"] != "Pod"]
    services = [o["metadata"]["name"] for o in by_kind(objects, "Service")]
    assert services
    for name in services:
        assert len(name) <= 63, name
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), name
        assert name.endswith("-metrics"), name
    assert all(len(n) <= 253 for n in names), names  # DNS subdomains: the other kinds
    # The helm test pod finds the metrics Service under the same (shortened) name.
    (test_pod,) = by_kind(objects, "Pod")
    env = {e["name"]: e.get("value") for e in test_pod["spec"]["containers"][0]["env"]}
    assert set(services) & set(env.values()), env


def test_network_policy_is_optional_and_narrow(render: Render) -> None:
    assert not by_kind(render(), "NetworkPolicy")
    (policy,) = by_kind(
        render(
            "networkPolicy.enabled=true",
            "networkPolicy.apiServerCIDRs={10.0.0.1/32}",
            "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.team=monitoring",
        ),
        "NetworkPolicy",
    )
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"
    metrics_rule = spec["ingress"][0]
    assert metrics_rule["ports"] == [{"port": 9090, "protocol": "TCP"}]
    assert metrics_rule["from"] == [{"namespaceSelector": {"matchLabels": {"team": "monitoring"}}}]
    egress_ports = {(p["port"], p["protocol"]) for r in spec["egress"] for p in r["ports"]}
    assert egress_ports == {(53, "UDP"), (53, "TCP"), (443, "TCP"), (6443, "TCP"), (8080, "TCP")}
    api_rule = next(r for r in spec["egress"] if {"port": 443, "protocol": "TCP"} in r["ports"])
    assert api_rule["to"] == [{"ipBlock": {"cidr": "10.0.0.1/32"}}]


def _exported_names() -> set[str]:
    """Every sample name the operator and a serving process export (suffixes included)."""
    registry = CollectorRegistry()
    ServingMetrics(registry, "wine", "abc123")
    profile = Profile(
        rows=100,
        features=(NumericFeature("f0", "X", 0, (0.0, 1.0), (0.25, 0.5, 0.25)),),
        prediction=ClassificationPrediction("label", ("0", "1"), (0.5, 0.5)),
    )
    DriftMonitor(profile, registry, "wine", "abc123", 100)  # registers itself
    operator = OperatorMetrics()
    names: set[str] = set()
    for reg in (registry, operator.registry):
        for family in text_string_to_metric_families(generate_latest(reg).decode()):
            names.add(family.name)
            names.update(s.name for s in family.samples)
            if family.type == "histogram":
                names.update(family.name + s for s in ("_bucket", "_sum", "_count"))
            if family.type == "counter":
                names.add(family.name + "_total")
    return names


def test_dashboard_and_alerts_query_only_exported_metrics(render: Render) -> None:
    exported = _exported_names()
    dashboard = (CHART / "files" / "dashboard.json").read_text()
    queried = set(re.findall(r"\broost_[a-z0-9_]+", dashboard))
    rule = json.dumps(_rule(render)["spec"])
    queried |= set(re.findall(r"\broost_[a-z0-9_]+", rule))
    queried -= {"roost_operator", "roost_serving"}  # words in titles, not series
    assert queried, "no roost metric found in the dashboard"
    missing = sorted(queried - exported)
    assert not missing, f"queried but never exported: {missing}"
