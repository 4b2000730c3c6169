"""kwok Stage configuration: which pods kwok fakes and which the pod runner really runs.

kwok's default "fast" pod stages make every pod Running and Ready the moment it has an IP.
Here those stages exclude pods the pod runner owns (``roost.dev/serving=true`` or
``app.kubernetes.io/component=operator``): for those kwok only assigns the pod IP from the
node's podCIDR and sets phase Pending with ``ContainerCreating``; the pod runner then starts
the real processes, reports readiness from real probes and finishes deletions itself.
With ``ready_all`` (the 500-object benchmark) kwok fakes every pod, and no runner runs.
Node stages are kwok's defaults (initialise + lease heartbeat), used when none are given.
"""

from __future__ import annotations

from typing import Any

import yaml

RUNNER_LABELS: dict[str, str] = {
    "roost.dev/serving": "true",
    "app.kubernetes.io/component": "operator",
}

_POD_REF = {"apiGroup": "v1", "kind": "Pod"}

_CONTAINERS_RUNNING = """
      containerStatuses:
      {{ range .spec.containers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: true
        restartCount: 0
        started: true
        state:
          running:
            startedAt: {{ $now | Quote }}
      {{ end }}
"""

_POD_IP = (
    "      hostIP: {{ NodeIPWith .spec.nodeName | Quote }}\n"
    "      podIP: {{ PodIPWith .spec.nodeName ( or .spec.hostNetwork false ) "
    '( or .metadata.uid "" ) ( or .metadata.name "" ) ( or .metadata.namespace "" ) | Quote }}\n'
)

_READY_TEMPLATE = (
    """{{ $now := Now }}
      conditions:
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: Initialized
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: Ready
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: ContainersReady
      {{ range .spec.readinessGates }}
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: {{ .conditionType | Quote }}
      {{ end }}
"""
    + _CONTAINERS_RUNNING
    + _POD_IP
    + "      phase: Running\n      startTime: {{ $now | Quote }}\n"
)

# Runner pods: an IP and "ContainerCreating" only; the pod runner reports everything after.
_CREATE_TEMPLATE = (
    """{{ $now := Now }}
      conditions:
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: Initialized
      - lastTransitionTime: {{ $now | Quote }}
        reason: ContainersNotReady
        status: "False"
        type: Ready
      - lastTransitionTime: {{ $now | Quote }}
        reason: ContainersNotReady
        status: "False"
        type: ContainersReady
      containerStatuses:
      {{ range .spec.containers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: false
        restartCount: 0
        started: false
        state:
          waiting:
            reason: ContainerCreating
      {{ end }}
"""
    + _POD_IP
    + "      phase: Pending\n      startTime: {{ $now | Quote }}\n"
)

_COMPLETE_TEMPLATE = """{{ $now := Now }}
      containerStatuses:
      {{ range .spec.containers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: false
        restartCount: 0
        started: false
        state:
          terminated:
            exitCode: 0
            finishedAt: {{ $now | Quote }}
            reason: Completed
            startedAt: {{ $now | Quote }}
      {{ end }}
      phase: Succeeded
"""


def _label(key: str) -> str:
    return f'.metadata.labels["{key}"]'


def _not_runner() -> list[dict[str, Any]]:
    return [
        {"key": _label(k), "operator": "NotIn", "values": [v]} for k, v in RUNNER_LABELS.items()
    ]


def _stage(name: str, expressions: list[dict[str, Any]], nxt: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "Stage",
        "metadata": {"name": name},
        "spec": {
            "resourceRef": _POD_REF,
            "selector": {"matchExpressions": expressions},
            "next": nxt,
        },
    }


def stages(ready_all: bool) -> list[dict[str, Any]]:
    """The pod Stage objects for kwok's ``--config``."""
    alive = {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"}
    no_ip = {"key": ".status.podIP", "operator": "DoesNotExist"}
    exclude = [] if ready_all else _not_runner()
    result = [
        _stage("pod-ready", [alive, no_ip, *exclude], {"statusTemplate": _READY_TEMPLATE}),
        _stage(
            "pod-complete",
            [
                alive,
                {"key": ".status.phase", "operator": "In", "values": ["Running"]},
                {"key": ".metadata.ownerReferences.[].kind", "operator": "In", "values": ["Job"]},
                *exclude,
            ],
            {"statusTemplate": _COMPLETE_TEMPLATE},
        ),
        _stage(
            "pod-delete",
            [{"key": ".metadata.deletionTimestamp", "operator": "Exists"}, *exclude],
            {"finalizers": {"empty": True}, "delete": True},
        ),
    ]
    if not ready_all:
        # One create stage per runner label: matchExpressions are ANDed, the labels are ORed.
        seen: list[dict[str, Any]] = []
        for key, value in RUNNER_LABELS.items():
            match = {"key": _label(key), "operator": "In", "values": [value]}
            result.append(
                _stage(
                    f"roost-runner-create-{key.rsplit('/', 1)[-1]}",
                    [alive, no_ip, match, *seen],
                    {"statusTemplate": _CREATE_TEMPLATE},
                )
            )
            seen.append({"key": _label(key), "operator": "NotIn", "values": [value]})
    return result


def render(ready_all: bool) -> str:
    """The multi-document YAML written to ``<state dir>/kwok.yaml``."""
    return yaml.safe_dump_all(stages(ready_all), sort_keys=False)
