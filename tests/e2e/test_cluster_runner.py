"""The pod runner beyond the smoke test: operator pods run with their service account's token,
downward-API and Secret/ConfigMap environment, exec probes, and kwok leaving other pods alone.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import Any

import pytest
from roost_devcluster.kubeapi import KubeApi, api_path
from roost_devcluster.waiting import condition, container_status, wait_for

pytestmark = pytest.mark.e2e


def _pod(
    namespace: str, name: str, labels: dict[str, str], container: dict[str, Any], **spec: Any
) -> dict[str, Any]:
    meta = {"name": name, "namespace": namespace, "labels": labels, "annotations": {"team": "ml"}}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"containers": [{"name": "main", "image": "local", **container}], **spec},
    }


def _get_pod(api: KubeApi, namespace: str, name: str) -> dict[str, Any]:
    return api.get(api_path("v1", "pods", namespace, name))


def test_operator_pod_gets_its_service_account_token(
    kube_api: KubeApi, namespace: str, pod_log: Callable[[str, str, str], str]
) -> None:
    kubectl = shutil.which("kubectl")
    assert kubectl
    kube_api.create(api_path("v1", "serviceaccounts", namespace), {"metadata": {"name": "op"}})
    whoami = f"{kubectl} auth whoami -o jsonpath='{{.status.userInfo.username}}'"
    script = f"{whoami}; echo; {kubectl} get pods"
    pod = _pod(
        namespace,
        "operator",
        {"app.kubernetes.io/component": "operator"},
        {"command": ["sh", "-c", script]},
        serviceAccountName="op",
        restartPolicy="Never",
    )
    kube_api.create(api_path("v1", "pods", namespace), pod)

    def finished() -> dict[str, Any] | None:
        current = _get_pod(kube_api, namespace, "operator")
        return current if current["status"].get("phase") in ("Succeeded", "Failed") else None

    done = wait_for(finished, 60, "the operator pod to finish")
    output = pod_log(namespace, "operator", "main")
    assert f"system:serviceaccount:{namespace}:op" in output
    # The account has no RBAC grants, so listing pods is forbidden: no admin identity leaked.
    assert "Forbidden" in output
    assert done["status"]["phase"] == "Failed"
    assert container_status(done)["state"]["terminated"]["exitCode"] == 1


def test_environment_and_exec_probe(kube_api: KubeApi, namespace: str) -> None:
    kube_api.create(
        api_path("v1", "secrets", namespace),
        {"metadata": {"name": "creds"}, "stringData": {"token": "s3cret"}},
    )
    kube_api.create(
        api_path("v1", "configmaps", namespace),
        {"metadata": {"name": "cfg"}, "data": {"mode": "fast"}},
    )
    env = [
        {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "TEAM", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['team']"}}},
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
        {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}},
        {"name": "GREETING", "value": "$(NAME)@$(NS)"},
    ]
    # The exec probe passes once the process has written its environment to a file.
    out = f"/tmp/roost-env-{namespace}"
    container = {
        "command": ["sh", "-c", f"env > {out}.tmp && mv {out}.tmp {out} && exec sleep 300"],
        "env": env,
        "readinessProbe": {"exec": {"command": ["test", "-f", out]}, "periodSeconds": 1},
    }
    kube_api.create(
        api_path("v1", "pods", namespace),
        _pod(namespace, "envy", {"roost.dev/serving": "true"}, container),
    )

    def ready() -> dict[str, Any] | None:
        pod = _get_pod(kube_api, namespace, "envy")
        return pod if condition(pod, "Ready") == "True" else None

    pod = wait_for(ready, 60, "the exec probe to pass")
    with open(out) as handle:
        seen = dict(line.split("=", 1) for line in handle.read().splitlines() if "=" in line)
    assert seen["NAME"] == "envy"
    assert seen["NS"] == namespace
    assert seen["IP"] == pod["status"]["podIP"]
    assert seen["NODE"] == pod["spec"]["nodeName"]
    assert seen["TEAM"] == "ml"
    assert seen["TOKEN"] == "s3cret"
    assert seen["MODE"] == "fast"
    assert seen["GREETING"] == f"envy@{namespace}"
    kube_api.delete(api_path("v1", "pods", namespace, "envy"), {"gracePeriodSeconds": 1})
    wait_for(
        lambda: not kube_api.get(api_path("v1", "pods", namespace))["items"],
        30,
        "the pod to be removed",
    )


def test_kwok_readies_other_pods_but_not_runner_pods(kube_api: KubeApi, namespace: str) -> None:
    plain = _pod(namespace, "plain", {"app": "x"}, {"image": "nginx"})
    # A runner pod whose command does not exist: it must stay unready, never faked Ready by kwok.
    broken = _pod(
        namespace, "broken", {"roost.dev/serving": "true"}, {"command": ["no-such-binary-xyz"]}
    )
    kube_api.create(api_path("v1", "pods", namespace), plain)
    kube_api.create(api_path("v1", "pods", namespace), broken)
    wait_for(
        lambda: condition(_get_pod(kube_api, namespace, "plain"), "Ready") == "True",
        60,
        "kwok to ready plain",
    )

    def config_error() -> dict[str, Any] | None:
        status = container_status(_get_pod(kube_api, namespace, "broken"))
        return status if status.get("state", {}).get("waiting", {}).get("message") else None

    status = wait_for(config_error, 60, "the runner to report the broken pod")
    assert status["state"]["waiting"]["reason"] == "CreateContainerConfigError"
    assert "no-such-binary-xyz" in status["state"]["waiting"]["message"]
    assert condition(_get_pod(kube_api, namespace, "broken"), "Ready") == "False"
