"""Pure builders of the ModelDeployment's children, as plain dicts ready for server-side apply.

Every builder returns the complete object roost manages (apiVersion, kind, metadata with labels
and the owner reference, spec): what is not in the dict is not ours, so the apply never fights
other field managers (an HPA over `replicas` of the ModelDeployment, kubectl annotations).
Names and labels follow docs/architecture.md ("Labels and names").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from roost_operator.api import API_VERSION, KIND, LABEL_MD, LABEL_REVISION, LABEL_SERVING
from roost_operator.spec import HTTPRouteSpec, ModelDeploymentSpec

RUN_AS = 10001  # the serving image's numeric user, so runAsNonRoot can be verified
SERVICE_PORT = 80
GRPC_SERVICE_PORT = 8081  # the Service's gRPC port (KServe's and the container's default)
CONTAINER = "server"

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Owner:
    """The ModelDeployment a child belongs to."""

    name: str
    namespace: str
    uid: str

    def reference(self) -> dict[str, Any]:
        """ownerReference with controller=true, so garbage collection deletes the child."""
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def common_labels(name: str) -> dict[str, str]:
    """Labels every child carries."""
    return {
        "app.kubernetes.io/name": "roost",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/managed-by": "roost-operator",
        LABEL_MD: name,
    }


def revision_labels(name: str, revision: str) -> dict[str, str]:
    """Labels of a revision's Deployment and its pods."""
    return {**common_labels(name), LABEL_REVISION: revision, LABEL_SERVING: "true"}


def selector(name: str) -> str:
    """`status.selector`: every serving pod of the ModelDeployment (scale subresource)."""
    return f"{LABEL_MD}={name}"


def deployment_name(name: str, revision: str) -> str:
    """`<md>-<rev>`."""
    return f"{name}-{revision}"


def runtime_secret_name(name: str) -> str:
    """`<md>-runtime`: the Secret with the token of the pods' runtime endpoint."""
    return f"{name}-runtime"


def _metadata(owner: Owner, name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels,
        "ownerReferences": [owner.reference()],
    }


def _env(owner: Owner, spec: ModelDeploymentSpec, revision: str) -> list[dict[str, Any]]:
    server = spec.server

    def field(path: str) -> dict[str, Any]:
        return {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}

    env: list[dict[str, Any]] = [
        {"name": "POD_NAME", "valueFrom": field("metadata.name")},
        {"name": "POD_NAMESPACE", "valueFrom": field("metadata.namespace")},
        # The pod IP rather than 0.0.0.0: the server answers only on the pod's own address.
        {"name": "ROOST_HOST", "valueFrom": field("status.podIP")},
        {"name": "ROOST_MODEL", "value": spec.model.uri},
        # The bearer token of PUT /v2/roost/runtime (roost_operator.runtime_push); the Secret
        # is created before the first Deployment, and the pod waits for it if it is not.
        {
            "name": "ROOST_RUNTIME_TOKEN",
            "valueFrom": {
                "secretKeyRef": {"name": runtime_secret_name(owner.name), "key": "token"}
            },
        },
    ]
    if spec.model.sha256:
        env.append({"name": "ROOST_SHA256", "value": spec.model.sha256})
    if spec.model.profile_uri:
        env.append({"name": "ROOST_PROFILE", "value": spec.model.profile_uri})
    env += [
        {"name": "ROOST_NAME", "value": owner.name},
        {"name": "ROOST_REVISION", "value": revision},
        {"name": "ROOST_PORT", "value": str(server.port)},
        {"name": "ROOST_GRPC_PORT", "value": str(server.grpc_port)},
        {"name": "ROOST_MAX_BATCH_SIZE", "value": str(server.max_batch_size)},
        {"name": "ROOST_MAX_DELAY_MS", "value": str(server.max_delay_ms)},
        {"name": "ROOST_THREADS", "value": str(server.threads)},
        {"name": "ROOST_DRIFT_WINDOW", "value": str(server.drift_window)},
        # After SIGTERM the server stays up but unready this long, so Services, gateways and
        # clients stop sending before the listener closes; well inside the grace period.
        {"name": "ROOST_DRAIN_SECONDS", "value": str(DRAIN_SECONDS)},
        # The server fits drain + in-flight requests + exit inside this (the pod's own grace).
        {"name": "ROOST_GRACE_SECONDS", "value": str(GRACE_SECONDS)},
    ]
    # spec.server.env comes last and wins: server-side apply keys env by name, so a name
    # given twice would be refused rather than overridden.
    # Sorted by name: a reordered list serves the same, and must neither restart pods nor
    # make a new revision (the revision is the hash of this template).
    extra = dict(server.env)
    env = [e for e in env if e["name"] not in extra]
    env += [{"name": name, "value": value} for name, value in sorted(server.env)]
    return env


DRAIN_SECONDS = 3
GRACE_SECONDS = 30
"""terminationGracePeriodSeconds of serving pods, also told to the server (ROOST_GRACE_SECONDS)."""


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def build_deployment(
    owner: Owner, spec: ModelDeploymentSpec, revision: str, replicas: int, image: str
) -> Manifest:
    """The Deployment `<md>-<rev>` running `roost serve` for one revision."""
    labels = revision_labels(owner.name, revision)
    resources: dict[str, Any] = {}
    if spec.requests:
        resources["requests"] = dict(spec.requests)
    if spec.limits:
        resources["limits"] = dict(spec.limits)
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": image,
        "command": ["roost", "serve"],
        "env": _env(owner, spec, revision),
        "ports": [
            {"name": "http", "containerPort": spec.server.port, "protocol": "TCP"},
            {"name": "grpc", "containerPort": spec.server.grpc_port, "protocol": "TCP"},
        ],
        "readinessProbe": _probe("/v2/health/ready", 5, 3),
        "livenessProbe": _probe("/v2/health/live", 10, 3),
        # Loading a large model from object storage can take minutes; liveness only starts
        # once the process answers at all (up to 2 s x 150 = 5 minutes).
        "startupProbe": _probe("/v2/health/live", 2, 150),
        "resources": resources,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "capabilities": {"drop": ["ALL"]},
        },
        # The serving process writes `roost: error: <reason>` before exiting; with this policy
        # that line becomes the termination message the operator reports in Stalled.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        # fsspec and onnxruntime may need scratch space under a read-only root.
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    if spec.model.credentials_secret:
        container["envFrom"] = [{"secretRef": {"name": spec.model.credentials_secret}}]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(owner, deployment_name(owner.name, revision), labels),
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 2,
            "selector": {"matchLabels": {LABEL_MD: owner.name, LABEL_REVISION: revision}},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(spec.server.port),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": GRACE_SECONDS,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": RUN_AS,
                        "runAsGroup": RUN_AS,
                        "fsGroup": RUN_AS,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                    "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}],
                },
            },
        },
    }


def _service(owner: Owner, name: str, match: dict[str, str], labels: dict[str, str]) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(owner, name, labels),
        "spec": {
            "type": "ClusterIP",
            "selector": match,
            # Named target ports: revisions with different ports share one Service.
            "ports": [
                {"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"},
                {
                    "name": "grpc",
                    "port": GRPC_SERVICE_PORT,
                    "targetPort": "grpc",
                    "protocol": "TCP",
                    # Meshes and gateways route it as HTTP/2 gRPC rather than plain TCP.
                    "appProtocol": "grpc",
                },
            ],
        },
    }


def build_service(owner: Owner) -> Manifest:
    """The Service `<md>` over every revision (traffic splits by replica ratio)."""
    match = {LABEL_MD: owner.name, LABEL_SERVING: "true"}
    return _service(owner, owner.name, match, common_labels(owner.name))


def build_revision_service(owner: Owner, revision: str) -> Manifest:
    """The Service `<md>-<rev>` over one revision: an HTTPRoute / GRPCRoute backend."""
    match = {LABEL_MD: owner.name, LABEL_REVISION: revision, LABEL_SERVING: "true"}
    labels = {**common_labels(owner.name), LABEL_REVISION: revision}
    return _service(owner, deployment_name(owner.name, revision), match, labels)


def wants_pdb(spec: ModelDeploymentSpec) -> bool:
    """A PDB only makes sense with more than one pod: with one it would block every drain."""
    if spec.autoscaling is not None:
        return max(spec.replicas, spec.autoscaling.min_replicas) > 1
    return spec.replicas > 1


def build_pdb(owner: Owner) -> Manifest:
    """The PodDisruptionBudget `<md>`: voluntary evictions take one serving pod at a time."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(owner, owner.name, common_labels(owner.name)),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": {LABEL_MD: owner.name, LABEL_SERVING: "true"}},
        },
    }


def build_hpa(owner: Owner, spec: ModelDeploymentSpec) -> Manifest:
    """The autoscaling/v2 HPA `<md>` scaling the ModelDeployment through its scale subresource.

    It targets the ModelDeployment, not a Deployment: the operator splits the total between the
    stable and canary revisions, so scaling one Deployment directly would fight the rollout.
    """
    auto = spec.autoscaling
    if auto is None:
        raise ValueError("build_hpa needs spec.autoscaling")
    metrics: list[dict[str, Any]] = []
    cpu = auto.target_cpu_utilization
    if cpu is None and auto.target_inflight_requests is None:
        cpu = 80  # the HPA's own default, written out so `kubectl get hpa` shows it
    if cpu is not None:
        metrics.append(
            {
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": cpu},
                },
            }
        )
    if auto.target_inflight_requests is not None:
        metrics.append(
            {
                "type": "Pods",
                "pods": {
                    "metric": {"name": "roost_inflight_requests"},
                    "target": {
                        "type": "AverageValue",
                        "averageValue": str(auto.target_inflight_requests),
                    },
                },
            }
        )
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(owner, owner.name, common_labels(owner.name)),
        "spec": {
            "scaleTargetRef": {"apiVersion": API_VERSION, "kind": KIND, "name": owner.name},
            "minReplicas": auto.min_replicas,
            "maxReplicas": auto.max_replicas,
            "metrics": metrics,
        },
    }


def build_http_route(
    owner: Owner,
    spec: ModelDeploymentSpec,
    stable_revision: str | None,
    canary_revision: str | None,
    canary_weight: int,
) -> Manifest:
    """The Gateway API HTTPRoute with stable/canary backend weights (percent of requests)."""
    if spec.http_route is None:
        raise ValueError("build_http_route needs spec.traffic.httpRoute")
    backends = _backends(owner, stable_revision, canary_revision, canary_weight, SERVICE_PORT)
    return _route("HTTPRoute", owner, spec.http_route, backends)


def build_grpc_route(
    owner: Owner,
    spec: ModelDeploymentSpec,
    stable_revision: str | None,
    canary_revision: str | None,
    canary_weight: int,
) -> Manifest:
    """The GRPCRoute counterpart of the HTTPRoute: the same weights, on the gRPC port.

    A route of its own (`spec.traffic.grpcRoute`), not derived from the HTTPRoute: Gateway API
    rejects a GRPCRoute whose hostnames overlap an HTTPRoute's on the same listener.
    """
    if spec.grpc_route is None:
        raise ValueError("build_grpc_route needs spec.traffic.grpcRoute")
    port = GRPC_SERVICE_PORT
    backends = _backends(owner, stable_revision, canary_revision, canary_weight, port)
    return _route("GRPCRoute", owner, spec.grpc_route, backends)


def _backends(
    owner: Owner, stable: str | None, canary: str | None, canary_weight: int, port: int
) -> list[dict[str, Any]]:
    backends: list[dict[str, Any]] = []
    weight = max(0, min(100, canary_weight)) if canary else 0
    if stable:
        backends.append(
            {
                "name": deployment_name(owner.name, stable),
                "port": port,
                "weight": 100 - weight if canary else 100,
            }
        )
    if canary:
        backends.append(
            {
                "name": deployment_name(owner.name, canary),
                "port": port,
                "weight": weight if stable else 100,
            }
        )
    return backends


def _route(
    kind: str, owner: Owner, route: HTTPRouteSpec, backends: list[dict[str, Any]]
) -> Manifest:
    parents = []
    for name, namespace in route.parent_refs:
        ref: dict[str, Any] = {
            "group": "gateway.networking.k8s.io",
            "kind": "Gateway",
            "name": name,
        }
        if namespace:
            ref["namespace"] = namespace
        parents.append(ref)
    body: dict[str, Any] = {"parentRefs": parents, "rules": [{"backendRefs": backends}]}
    if route.hostnames:
        body["hostnames"] = list(route.hostnames)
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": kind,
        "metadata": _metadata(owner, route.name, common_labels(owner.name)),
        "spec": body,
    }
