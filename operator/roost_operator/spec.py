"""The ModelDeployment spec, parsed once into frozen dataclasses.

The API server already validates the manifest against the CRD's schema and CEL rules, but the
operator must not trust that blindly: a CRD installed from an older chart, or a schema default
that is missing on an object stored before the default existed, must still give a readable
`SpecError` (which the handlers turn into `Stalled=True`/`InvalidSpec`) instead of a KeyError.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from roost_operator.gates import GateThresholds

# Names the operator sets itself; a user value would silently break the pod (a wrong host,
# a model the revision hash does not know about), so they are refused with a hint.
RESERVED_ENV = {
    "ROOST_MODEL": "spec.model.uri",
    "ROOST_SHA256": "spec.model.sha256",
    "ROOST_PROFILE": "spec.model.profileUri",
    "ROOST_NAME": "the ModelDeployment's name",
    "ROOST_REVISION": "the revision hash",
    "ROOST_HOST": "the pod IP",
    "ROOST_PORT": "spec.server.port",
    "ROOST_MAX_BATCH_SIZE": "spec.server.maxBatchSize",
    "ROOST_MAX_DELAY_MS": "spec.server.maxDelayMs",
    "ROOST_THREADS": "spec.server.threads",
    "ROOST_DRIFT_WINDOW": "spec.server.driftWindow",
    "POD_NAME": "the downward API",
    "POD_NAMESPACE": "the downward API",
}
SCHEMES = ("file", "http", "https", "s3", "gs")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class SpecError(ValueError):
    """The spec cannot be served as written; the message says what to fix."""


def parse_duration(value: Any, where: str) -> float:
    """Seconds in a Go-style duration such as ``30s``, ``2m``, ``1h30m`` or ``500ms``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    pos, total = 0, 0.0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            break
        number, unit = float(match.group(1)), match.group(2)
        total += number * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]
        pos = match.end()
    if not text or pos != len(text):
        raise SpecError(f"{where} must be a duration such as 30s, 2m or 1h30m, got {value!r}")
    return total


def _int(value: Any, where: str, default: int, minimum: int = 0) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{where} must be an integer, got {value!r}")
    if value < minimum:
        raise SpecError(f"{where} must be at least {minimum}, got {value}")
    return value


def _uri(value: Any, where: str) -> str:
    text = str(value or "")
    if not any(text.startswith(f"{s}://") and len(text) > len(s) + 3 for s in SCHEMES):
        raise SpecError(f"{where} must start with one of {', '.join(s + '://' for s in SCHEMES)}")
    return text


@dataclass(frozen=True)
class ModelSpec:
    """`spec.model`: what the pods load."""

    uri: str
    sha256: str | None = None
    profile_uri: str | None = None
    credentials_secret: str | None = None
    resolved: tuple[tuple[str, str], ...] = ()
    """Registry version facts (`model.resolved`, set by the operator for `models:/` references)."""


@dataclass(frozen=True)
class ServerSpec:
    """`spec.server`: settings of `roost serve` (all part of the revision hash)."""

    image: str | None = None
    port: int = 8080
    max_batch_size: int = 32
    max_delay_ms: int = 2
    threads: int = 1
    drift_window: int = 2000
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class AutoscalingSpec:
    """`spec.autoscaling`: an HPA driving the ModelDeployment's scale subresource."""

    min_replicas: int
    max_replicas: int
    target_cpu_utilization: int | None = None
    target_inflight_requests: int | None = None


@dataclass(frozen=True)
class StepSpec:
    """One canary step: the canary's traffic weight, held for `pause_seconds`."""

    weight: int
    pause_seconds: float


@dataclass(frozen=True)
class AnalysisSpec:
    """`spec.rollout.analysis`."""

    source: str = "pods"
    prometheus_url: str = ""
    interval_seconds: float = 10.0
    failure_limit: int = 2
    thresholds: GateThresholds = field(default_factory=GateThresholds)

    def source_spec(self) -> dict[str, Any]:
        """The dict `analysis.AnalysisSources.for_spec` takes."""
        return {"source": self.source, "prometheusUrl": self.prometheus_url}


@dataclass(frozen=True)
class HTTPRouteSpec:
    """`spec.traffic.httpRoute`: a Gateway API route whose backend weights roost sets."""

    name: str
    parent_refs: tuple[tuple[str, str | None], ...]
    hostnames: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelDeploymentSpec:
    """The whole `spec` of one ModelDeployment."""

    model: ModelSpec
    replicas: int = 1
    requests: tuple[tuple[str, str], ...] = ()
    limits: tuple[tuple[str, str], ...] = ()
    server: ServerSpec = ServerSpec()
    autoscaling: AutoscalingSpec | None = None
    steps: tuple[StepSpec, ...] = ()
    analysis: AnalysisSpec = AnalysisSpec()
    http_route: HTTPRouteSpec | None = None
    paused: bool = False


def _model(raw: Mapping[str, Any]) -> ModelSpec:
    if not isinstance(raw, Mapping) or not raw.get("uri"):
        raise SpecError("spec.model.uri is required, e.g. s3://bucket/models/wine/model.onnx")
    sha = raw.get("sha256")
    if sha is not None and not _SHA256.match(str(sha)):
        raise SpecError("spec.model.sha256 must be 64 lowercase hexadecimal characters")
    profile = raw.get("profileUri")
    secret = (raw.get("credentials") or {}).get("secretName")
    resolved = raw.get("resolved") or {}
    uri = str(raw["uri"])
    return ModelSpec(
        # A registry reference is resolved (roost_operator.registry) before anything builds pods.
        uri=uri if uri.startswith("models:/") else _uri(uri, "spec.model.uri"),
        sha256=str(sha) if sha else None,
        profile_uri=_uri(profile, "spec.model.profileUri") if profile else None,
        credentials_secret=str(secret) if secret else None,
        resolved=tuple(sorted((str(k), str(v)) for k, v in dict(resolved).items())),
    )


def _server(raw: Mapping[str, Any]) -> ServerSpec:
    env: list[tuple[str, str]] = []
    for item in raw.get("env") or []:
        name = str(item.get("name") or "")
        if not name:
            raise SpecError("spec.server.env[*].name is required")
        if name in RESERVED_ENV:
            raise SpecError(
                f"spec.server.env must not set {name}: roost sets it from {RESERVED_ENV[name]}"
            )
        env.append((name, str(item.get("value") or "")))
    image = raw.get("image")
    return ServerSpec(
        image=str(image) if image else None,
        port=_int(raw.get("port"), "spec.server.port", 8080, 1),
        max_batch_size=_int(raw.get("maxBatchSize"), "spec.server.maxBatchSize", 32, 1),
        max_delay_ms=_int(raw.get("maxDelayMs"), "spec.server.maxDelayMs", 2),
        threads=_int(raw.get("threads"), "spec.server.threads", 1, 1),
        drift_window=_int(raw.get("driftWindow"), "spec.server.driftWindow", 2000, 1),
        env=tuple(env),
    )


def _autoscaling(raw: Mapping[str, Any] | None) -> AutoscalingSpec | None:
    if not raw:
        return None
    low = _int(raw.get("minReplicas"), "spec.autoscaling.minReplicas", 1, 1)
    high = _int(raw.get("maxReplicas"), "spec.autoscaling.maxReplicas", low, 1)
    if low > high:
        raise SpecError(
            "spec.autoscaling.minReplicas must be less than or equal to "
            "spec.autoscaling.maxReplicas"
        )
    cpu = raw.get("targetCPUUtilizationPercentage")
    inflight = raw.get("targetInflightRequests")
    return AutoscalingSpec(
        min_replicas=low,
        max_replicas=high,
        target_cpu_utilization=_int(cpu, "spec.autoscaling.targetCPUUtilizationPercentage", 0, 1)
        if cpu is not None
        else None,
        target_inflight_requests=_int(inflight, "spec.autoscaling.targetInflightRequests", 0, 1)
        if inflight is not None
        else None,
    )


def _steps(raw: Any) -> tuple[StepSpec, ...]:
    steps: list[StepSpec] = []
    for i, item in enumerate(raw or []):
        weight = _int(item.get("weight"), f"spec.rollout.steps[{i}].weight", 0, 1)
        if weight > 100:
            raise SpecError(f"spec.rollout.steps[{i}].weight must be between 1 and 100")
        if steps and weight <= steps[-1].weight:
            raise SpecError("spec.rollout.steps weights must be strictly increasing")
        pause = item.get("pause")
        seconds = parse_duration(pause, f"spec.rollout.steps[{i}].pause") if pause else 0.0
        steps.append(StepSpec(weight=weight, pause_seconds=seconds))
    return tuple(steps)


def _analysis(raw: Mapping[str, Any]) -> AnalysisSpec:
    source = str(raw.get("source") or "pods")
    if source not in ("pods", "prometheus"):
        raise SpecError(f"spec.rollout.analysis.source must be pods or prometheus, not {source}")
    url = str(raw.get("prometheusUrl") or "")
    if source == "prometheus" and not url:
        raise SpecError("spec.rollout.analysis.prometheusUrl is required when source is prometheus")
    try:
        thresholds = GateThresholds.from_spec(raw)
    except ValueError as e:
        raise SpecError(str(e)) from e
    interval = parse_duration(raw.get("interval") or "10s", "spec.rollout.analysis.interval")
    if interval <= 0:
        raise SpecError("spec.rollout.analysis.interval must be longer than zero")
    return AnalysisSpec(
        source=source,
        prometheus_url=url,
        interval_seconds=interval,
        failure_limit=_int(raw.get("failureLimit"), "spec.rollout.analysis.failureLimit", 2, 1),
        thresholds=thresholds,
    )


def _http_route(raw: Mapping[str, Any] | None) -> HTTPRouteSpec | None:
    route = (raw or {}).get("httpRoute")
    if not route:
        return None
    if not route.get("name") or not route.get("parentRefs"):
        raise SpecError("spec.traffic.httpRoute needs a name and at least one parentRef")
    refs = tuple(
        (str(r["name"]), str(r["namespace"]) if r.get("namespace") else None)
        for r in route["parentRefs"]
    )
    return HTTPRouteSpec(
        name=str(route["name"]),
        parent_refs=refs,
        hostnames=tuple(str(h) for h in route.get("hostnames") or []),
    )


def _quantities(raw: Any, where: str) -> tuple[tuple[str, str], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise SpecError(f"{where} must be a map such as {{cpu: 500m, memory: 512Mi}}")
    return tuple(sorted((str(k), str(v)) for k, v in raw.items()))


def parse_spec(raw: Mapping[str, Any]) -> ModelDeploymentSpec:
    """Parse `spec` (as the API server returns it) or raise `SpecError` saying what to fix."""
    rollout = raw.get("rollout") or {}
    resources = raw.get("resources") or {}
    return ModelDeploymentSpec(
        model=_model(raw.get("model") or {}),
        replicas=_int(raw.get("replicas"), "spec.replicas", 1),
        requests=_quantities(resources.get("requests"), "spec.resources.requests"),
        limits=_quantities(resources.get("limits"), "spec.resources.limits"),
        server=_server(raw.get("server") or {}),
        autoscaling=_autoscaling(raw.get("autoscaling")),
        steps=_steps(rollout.get("steps")),
        analysis=_analysis(rollout.get("analysis") or {}),
        http_route=_http_route(raw.get("traffic")),
        paused=bool(raw.get("paused", False)),
    )
