"""The ModelDeployment spec, parsed once into frozen dataclasses.

The API server already validates the manifest against the CRD's schema and CEL rules, but the
operator must not trust that blindly: a CRD installed from an older chart, or a schema default
that is missing on an object stored before the default existed, must still give a readable
`SpecError` (which the handlers turn into `Stalled=True`/`InvalidSpec`) instead of a KeyError.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from roost_operator import times
from roost_operator.gatespec import (
    DEFAULT_MIN_DRIFT_ROWS,
    AccuracyGate,
    DivergenceGate,
    DriftGate,
    ErrorRateGate,
    GateMode,
    GateSpecError,
    GatesSpec,
    LatencyGate,
    OnInconclusive,
    QualityErrorGate,
    ShadowGate,
    parse_gates,
)
from roost_operator.validationspec import ValidationSpec, ValidationSpecError, parse_validation

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
    "ROOST_GRPC_PORT": "spec.server.grpcPort",
    "ROOST_MAX_BATCH_SIZE": "spec.server.maxBatchSize",
    "ROOST_MAX_DELAY_MS": "spec.server.maxDelayMs",
    "ROOST_THREADS": "spec.server.threads",
    "ROOST_DRIFT_WINDOW": "spec.server.driftWindow",
    "POD_NAME": "the downward API",
    "POD_NAMESPACE": "the downward API",
    "ROOST_LOG_URI": "spec.logging.uri",
    "ROOST_LOG_SAMPLE_RATE": "spec.logging.sampleRate",
    "ROOST_LOG_FORMAT": "spec.logging.format",
    "ROOST_LOG_REDACT": "spec.logging.redact",
}
__all__ = [
    "DEFAULT_MIN_DRIFT_ROWS",
    "AccuracyGate",
    "AnalysisSpec",
    "DivergenceGate",
    "DriftGate",
    "ErrorRateGate",
    "GateMode",
    "GatesSpec",
    "LatencyGate",
    "ModelDeploymentSpec",
    "OnInconclusive",
    "QualityErrorGate",
    "ShadowGate",
    "SpecError",
    "ValidationSpec",
    "parse_duration",
    "parse_spec",
]
SCHEMES = ("file", "http", "https", "s3", "gs")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class SpecError(ValueError):
    """The spec cannot be served as written; the message says what to fix."""


def parse_duration(value: Any, where: str) -> float:
    """Seconds in a Go-style duration such as ``30s``, ``2m``, ``1h30m`` or ``500ms``."""
    try:
        return times.parse_duration(value, where)
    except ValueError as e:
        raise SpecError(str(e)) from None


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
    grpc_port: int = 8081
    max_batch_size: int = 32
    max_delay_ms: int = 2
    threads: int = 1
    drift_window: int = 2000
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class LoggingSpec:
    """`spec.logging`: the inference log of every serving pod (`roost serve --log-*`)."""

    uri: str
    """Directory, fsspec URI (`s3://`, `gs://`) or http(s) CloudEvents receiver."""
    sample_rate: float = 1.0
    format: str = "jsonl"
    redact: tuple[str, ...] = ()
    credentials_secret: str | None = None
    """A Secret whose keys become the pods' environment (e.g. AWS_* for the log's bucket)."""


@dataclass(frozen=True)
class AutoscalingSpec:
    """`spec.autoscaling`: an HPA driving the ModelDeployment's scale subresource."""

    min_replicas: int
    max_replicas: int
    target_cpu_utilization: int | None = None
    target_inflight_requests: int | None = None


@dataclass(frozen=True)
class Step:
    """One canary step: the traffic weight (1..100) held for at least `pause_seconds`.

    A shadow step (`shadow` > 0) carries no weight: the canary serves no client, and the stable
    pods copy `shadow` percent of their requests to it and compare the answers.
    """

    weight: int
    pause_seconds: float
    shadow: int = 0


@dataclass(frozen=True)
class AnalysisSpec:
    """`spec.rollout.analysis`."""

    source: str = "pods"
    prometheus_url: str = ""
    interval_seconds: float = 10.0
    failure_limit: int = 2
    """Consecutive failing legacy point checks (`maxP99Seconds`) that roll back."""
    min_requests: int = 50
    """Canary requests the rollout needs before any gate may pass (a floor, not a test)."""
    alpha: float = 0.05
    """Largest probability of rolling back a canary that is within every enforced margin."""
    progress_deadline_seconds: float | None = 600.0
    """Per step: how long (from the step's start) its gates may stay inconclusive."""
    on_inconclusive: OnInconclusive = "rollback"
    gates: GatesSpec = field(default_factory=GatesSpec)


@dataclass(frozen=True)
class RolloutPolicy:
    """`spec.rollout`: the canary steps and the analysis that judges them (`rollout.decide`)."""

    steps: tuple[Step, ...] = ()
    analysis: AnalysisSpec = AnalysisSpec()
    validation: ValidationSpec | None = None
    """`spec.rollout.validation`: checks before any traffic (None: the canary is not held)."""

    @property
    def interval_seconds(self) -> float:
        """Time between analyses (and the window each one looks at)."""
        return self.analysis.interval_seconds

    @property
    def failure_limit(self) -> int:
        """Failing legacy point checks in a row that roll the canary back."""
        return self.analysis.failure_limit

    @property
    def analysis_enabled(self) -> bool:
        """Whether gates are configured: a step then also needs a passing analysis to end."""
        return self.analysis.gates.any

    @property
    def progress_deadline_seconds(self) -> float | None:
        """Per step, from when its pods are ready: how long its gates may stay inconclusive
        (never shorter than the step's pause). None waits for a verdict however long it takes."""
        return self.analysis.progress_deadline_seconds

    @property
    def on_inconclusive(self) -> OnInconclusive:
        """What a step that reached its deadline without a verdict does; recorded as a
        deadline verdict, never as a pass."""
        return self.analysis.on_inconclusive

    def full_scale(self, step: int) -> bool:
        """Past the last step: full scale next to the stable revision, promoted once ready."""
        return step >= len(self.steps)

    def weight(self, step: int) -> int:
        """Canary traffic weight of a step (100 past the last one; 0 in a shadow step)."""
        return self.steps[step].weight if step < len(self.steps) else 100

    def shadow(self, step: int) -> int:
        """Percent of requests copied to the canary in a shadow step; 0 in any other step."""
        return self.steps[step].shadow if step < len(self.steps) else 0

    def gated(self, step: int) -> bool:
        """Whether the step needs a passing analysis: a shadow step is judged by the shadow
        gate (always present with shadow steps), any other step by the traffic gates."""
        return self.shadow(step) > 0 or self.analysis_enabled

    def pause_seconds(self, step: int) -> float:
        """How long a step holds once its pods are ready (0 past the last one)."""
        return self.steps[step].pause_seconds if step < len(self.steps) else 0.0


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
    rollout: RolloutPolicy = RolloutPolicy()
    http_route: HTTPRouteSpec | None = None
    grpc_route: HTTPRouteSpec | None = None
    """`spec.traffic.grpcRoute`: the GRPCRoute counterpart (same fields, gRPC port)."""
    paused: bool = False
    logging: LoggingSpec | None = None


def _logging(raw: Any) -> LoggingSpec | None:
    if not raw:
        return None
    where = "spec.logging"
    if not isinstance(raw, Mapping) or not raw.get("uri"):
        raise SpecError(f"{where}.uri is required, e.g. s3://bucket/inference-log")
    rate = _number(raw, "sampleRate", where, 0.0, 1.0)
    fmt = str(raw.get("format") or "jsonl")
    if fmt not in ("jsonl", "parquet"):
        raise SpecError(f"{where}.format must be jsonl or parquet, not {fmt!r}")
    redact = raw.get("redact") or []
    if not isinstance(redact, list) or not all(isinstance(n, str) and n for n in redact):
        raise SpecError(f"{where}.redact must be a list of input or feature names")
    if any("," in name for name in redact):
        raise SpecError(f"{where}.redact names must not contain ','")
    secret = (raw.get("credentials") or {}).get("secretName")
    return LoggingSpec(
        uri=str(raw["uri"]),
        sample_rate=1.0 if rate is None else rate,
        format=fmt,
        redact=tuple(str(n) for n in redact),
        credentials_secret=str(secret) if secret else None,
    )


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
    port = _int(raw.get("port"), "spec.server.port", 8080, 1)
    grpc_port = _int(raw.get("grpcPort"), "spec.server.grpcPort", 8081, 1)
    if grpc_port == port:
        raise SpecError(f"spec.server.grpcPort and spec.server.port are both {port}")
    return ServerSpec(
        image=str(image) if image else None,
        port=port,
        grpc_port=grpc_port,
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


def _steps(raw: Any) -> tuple[Step, ...]:
    steps: list[Step] = []
    for i, item in enumerate(raw or []):
        where = f"spec.rollout.steps[{i}]"
        pause = item.get("pause")
        seconds = parse_duration(pause, f"{where}.pause") if pause else 0.0
        if item.get("shadow") is not None:
            if item.get("weight") is not None:
                raise SpecError(
                    f"{where} has both weight and shadow; a shadow step carries no weight"
                )
            shadow = _int(item.get("shadow"), f"{where}.shadow", 0, 1)
            if shadow > 100:
                raise SpecError(f"{where}.shadow must be between 1 and 100 (percent copied)")
            if steps and steps[-1].shadow == 0:
                raise SpecError(
                    f"{where}: shadow steps come before the weighted steps (the canary gets no "
                    "client traffic until they pass)"
                )
            steps.append(Step(weight=0, pause_seconds=seconds, shadow=shadow))
            continue
        if item.get("weight") is None:
            raise SpecError(f"{where} needs a weight (1..100) or a shadow share (1..100)")
        weight = _int(item.get("weight"), f"{where}.weight", 0, 1)
        if weight > 100:
            raise SpecError(f"{where}.weight must be between 1 and 100")
        if steps and weight <= steps[-1].weight:
            raise SpecError("spec.rollout.steps weights must be strictly increasing")
        steps.append(Step(weight=weight, pause_seconds=seconds))
    return tuple(steps)


def _gates(raw: Any) -> GatesSpec:
    try:
        return parse_gates(raw)
    except GateSpecError as e:
        raise SpecError(str(e)) from e


def _number(raw: Mapping[str, Any], key: str, where: str, lo: float, hi: float) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(f"{where}.{key} must be a number, got {value!r}")
    if not lo <= value <= hi:
        raise SpecError(f"{where}.{key} must be between {lo:g} and {hi:g}, got {value!r}")
    return float(value)


def _analysis(raw: Mapping[str, Any]) -> AnalysisSpec:
    where = "spec.rollout.analysis"
    source = str(raw.get("source") or "pods")
    if source not in ("pods", "prometheus"):
        raise SpecError(f"{where}.source must be pods or prometheus, not {source}")
    url = str(raw.get("prometheusUrl") or "")
    if source == "prometheus" and not url:
        raise SpecError(f"{where}.prometheusUrl is required when source is prometheus")
    interval = parse_duration(raw.get("interval") or "10s", f"{where}.interval")
    if interval <= 0:
        raise SpecError(f"{where}.interval must be longer than zero")
    alpha = _number(raw, "alpha", where, 1e-6, 0.5)
    deadline = raw.get("progressDeadline", "10m")
    on_inconclusive = raw.get("onInconclusive", "rollback")
    if on_inconclusive not in ("rollback", "pause", "promote"):
        raise SpecError(
            f"{where}.onInconclusive must be rollback, pause or promote, not {on_inconclusive!r}"
        )
    return AnalysisSpec(
        source=source,
        prometheus_url=url,
        interval_seconds=interval,
        failure_limit=_int(raw.get("failureLimit"), f"{where}.failureLimit", 2, 1),
        min_requests=_int(raw.get("minRequests"), f"{where}.minRequests", 50),
        alpha=0.05 if alpha is None else alpha,
        # An empty or zero deadline means "wait for a verdict however long it takes".
        progress_deadline_seconds=parse_duration(deadline, f"{where}.progressDeadline") or None
        if deadline
        else None,
        on_inconclusive=on_inconclusive,
        gates=_gates(raw.get("gates")),
    )


def _validation(raw: Any) -> ValidationSpec | None:
    try:
        return parse_validation(raw)
    except ValidationSpecError as e:
        raise SpecError(str(e)) from None


def _http_route(raw: Mapping[str, Any] | None, key: str = "httpRoute") -> HTTPRouteSpec | None:
    route = (raw or {}).get(key)
    if not route:
        return None
    if not route.get("name") or not route.get("parentRefs"):
        raise SpecError(f"spec.traffic.{key} needs a name and at least one parentRef")
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


def _rollout(raw: Mapping[str, Any]) -> RolloutPolicy:
    steps = _steps(raw.get("steps"))
    analysis = _analysis(raw.get("analysis") or {})
    if any(s.shadow for s in steps) and analysis.gates.shadow is None:
        # A shadow step is always judged: without a gate in the spec, the default one.
        analysis = replace(analysis, gates=replace(analysis.gates, shadow=ShadowGate()))
    return RolloutPolicy(
        steps=steps, analysis=analysis, validation=_validation(raw.get("validation"))
    )


def parse_spec(raw: Mapping[str, Any]) -> ModelDeploymentSpec:
    """Parse `spec` (as the API server returns it) or raise `SpecError` saying what to fix."""
    resources = raw.get("resources") or {}
    return ModelDeploymentSpec(
        model=_model(raw.get("model") or {}),
        replicas=_int(raw.get("replicas"), "spec.replicas", 1),
        requests=_quantities(resources.get("requests"), "spec.resources.requests"),
        limits=_quantities(resources.get("limits"), "spec.resources.limits"),
        server=_server(raw.get("server") or {}),
        autoscaling=_autoscaling(raw.get("autoscaling")),
        rollout=_rollout(raw.get("rollout") or {}),
        http_route=_http_route(raw.get("traffic")),
        grpc_route=_http_route(raw.get("traffic"), "grpcRoute"),
        paused=bool(raw.get("paused", False)),
        logging=_logging(raw.get("logging")),
    )
