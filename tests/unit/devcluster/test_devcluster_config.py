"""kwok stages, Prometheus discovery targets and configuration, traffic request bodies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from roost_devcluster.controlplane import node_cidrs
from roost_devcluster.kwokstages import render
from roost_devcluster.paths import Layout
from roost_devcluster.prometheus import scrape_config
from roost_devcluster.sdbridge import pod_targets
from roost_devcluster.traffic import Target, infer_body


def _stages(ready_all: bool) -> dict[str, dict[str, Any]]:
    return {s["metadata"]["name"]: s for s in yaml.safe_load_all(render(ready_all))}


def _keys(stage: dict[str, Any]) -> list[tuple[str, str, tuple[str, ...]]]:
    return [
        (e["key"], e["operator"], tuple(e.get("values", [])))
        for e in stage["spec"]["selector"]["matchExpressions"]
    ]


def test_kwok_never_readies_runner_pods() -> None:
    stages = _stages(ready_all=False)
    serving = ('.metadata.labels["roost.dev/serving"]', "NotIn", ("true",))
    operator = ('.metadata.labels["app.kubernetes.io/component"]', "NotIn", ("operator",))
    for name in ("pod-ready", "pod-complete", "pod-delete"):
        assert serving in _keys(stages[name])
        assert operator in _keys(stages[name])
    create = stages["roost-runner-create-serving"]
    assert ('.metadata.labels["roost.dev/serving"]', "In", ("true",)) in _keys(create)
    template = create["spec"]["next"]["statusTemplate"]
    assert "phase: Pending" in template
    assert "podIP: {{ PodIPWith .spec.nodeName" in template  # from the node's podCIDR
    assert "type: Ready" in template


def test_ready_all_fakes_every_pod() -> None:
    stages = _stages(ready_all=True)
    assert set(stages) == {"pod-ready", "pod-complete", "pod-delete"}
    assert not any("labels" in key for key, _, _ in _keys(stages["pod-ready"]))


def test_node_cidrs_are_loopback_and_differ_between_state_dirs() -> None:
    first, second = node_cidrs(Path("/a")), node_cidrs(Path("/b"))
    assert all(c.startswith("127.") and c.endswith(".0/23") for c in first.values())
    assert len(set(first.values())) == 2
    assert first != second


def test_discovery_targets_carry_kubernetes_sd_labels() -> None:
    container = {"name": "server", "ports": [{"name": "http", "containerPort": 8080}]}
    pod = {
        "metadata": {"name": "p", "namespace": "ml", "labels": {"roost.dev/serving": "true"}},
        "spec": {"nodeName": "n", "containers": [container]},
        "status": {
            "podIP": "127.1.2.3",
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }
    (group,) = pod_targets(pod)
    assert group["targets"] == ["127.1.2.3:8080"]
    labels = group["labels"]
    assert labels["__meta_kubernetes_pod_label_roost_dev_serving"] == "true"
    assert labels["__meta_kubernetes_pod_labelpresent_roost_dev_serving"] == "true"
    assert labels["__meta_kubernetes_namespace"] == "ml"
    assert labels["__meta_kubernetes_pod_ready"] == "true"
    assert labels["__meta_kubernetes_pod_container_port_number"] == "8080"
    assert pod_targets({**pod, "status": {}}) == []


def test_scrape_config_keeps_serving_pods_and_labels_targets(tmp_path: Path) -> None:
    config = scrape_config(Layout(tmp_path), "http://127.0.0.1:1/targets")
    (job,) = config["scrape_configs"]
    assert job["http_sd_configs"] == [
        {"url": "http://127.0.0.1:1/targets", "refresh_interval": "2s"}
    ]
    targets = {r.get("target_label") for r in job["relabel_configs"]}
    assert {"namespace", "pod"} <= targets
    kube = scrape_config(Layout(tmp_path), "https://127.0.0.1:6443", kubernetes=True)
    (kjob,) = kube["scrape_configs"]
    assert kjob["kubernetes_sd_configs"][0]["role"] == "pod"
    assert kjob["relabel_configs"] == job["relabel_configs"]


def test_infer_body_and_target_url() -> None:
    assert infer_body([1.0, 2.0]) == {
        "inputs": [{"name": "X", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]
    }
    target = Target(pod="p", ip="127.1.0.4", port=8080, model="wine", revision="r")
    assert target.url == "http://127.1.0.4:8080/v2/models/wine/infer"
