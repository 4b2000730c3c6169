"""The Argo CD health check (charts/roost/files/argocd-health.lua) run by a real Lua runtime on
ModelDeployments shaped as roost-operator writes them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lupa
import pytest

SCRIPT = (Path(__file__).resolve().parents[3] / "charts/roost/files/argocd-health.lua").read_text()


def _to_lua(runtime: Any, value: Any) -> Any:
    # Argo CD hands the script the object as nested Lua tables (lists 1-indexed).
    if isinstance(value, dict):
        return runtime.table_from({k: _to_lua(runtime, v) for k, v in value.items()})
    if isinstance(value, list):
        return runtime.table_from([_to_lua(runtime, v) for v in value])
    return value


def health(obj: dict[str, Any]) -> tuple[str, str]:
    """Run the script the way Argo CD does: `obj` global, returns {status, message}."""
    runtime = lupa.LuaRuntime(unpack_returned_tuples=True)
    runtime.globals().obj = _to_lua(runtime, obj)
    result = runtime.execute(SCRIPT)
    return str(result["status"]), str(result["message"])


def _cond(kind: str, status: str, reason: str, message: str) -> dict[str, Any]:
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": 3,
        "lastTransitionTime": "2026-11-22T10:00:00Z",
    }


def md(
    generation: int = 3,
    observed: int | None = 3,
    conditions: list[dict[str, Any]] | None = None,
    paused: bool = False,
    **status: Any,
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "roost.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "wine", "namespace": "ml", "generation": generation},
        "spec": {"model": {"uri": "s3://models/wine/v2/model.onnx"}, "replicas": 2},
    }
    if paused:
        obj["spec"]["paused"] = True
    if observed is not None:
        obj["status"] = {
            "observedGeneration": observed,
            "replicas": 2,
            "readyReplicas": 2,
            "selector": "roost.dev/modeldeployment=wine",
            "stable": {"revision": "a1b2c3d4e5", "modelUri": "s3://models/wine/v1/model.onnx"},
            "conditions": conditions or [],
            **status,
        }
    return obj


SERVING = [
    _cond("Ready", "True", "Serving", "2/2 pods ready"),
    _cond("Reconciling", "False", "Current", "reconciled"),
    _cond("Stalled", "False", "NotStalled", "making progress"),
]
CANARY = {
    "revision": "f6e5d4c3b2",
    "modelUri": "s3://models/wine/v2/model.onnx",
    "step": 0,
    "weight": 20,
    "stepStartedAt": "2026-11-22T10:00:00Z",
    "consecutiveFailures": 0,
    "analysisCount": 1,
}
ROLLING = [
    _cond("Ready", "True", "Serving", "2/2 pods ready"),
    _cond("Reconciling", "True", "CanaryProgressing", "step 1/2: canary f6e5d4c3b2 at 20%"),
    _cond("Stalled", "False", "NotStalled", "making progress"),
]
ROLLED_BACK = [
    _cond("Ready", "True", "StableServing", "stable revision serves 2 ready pods"),
    _cond("Reconciling", "False", "Stalled", "waiting for a spec change"),
    _cond(
        "Stalled",
        "True",
        "CanaryRolledBack",
        "Rolled back f6e5d4c3b2: gate errorRate 0.31 > 0.05; serving a1b2c3d4e5.",
    ),
]


def test_ready_with_nothing_under_way_is_healthy() -> None:
    assert health(md(conditions=SERVING)) == ("Healthy", "Serving: 2/2 pods ready")


def test_unobserved_generation_is_progressing() -> None:
    status, message = health(md(generation=4, observed=3, conditions=SERVING))
    assert status == "Progressing"
    assert "generation 4" in message


def test_no_status_yet_is_progressing() -> None:
    assert health(md(observed=None))[0] == "Progressing"


def test_canary_under_way_is_progressing() -> None:
    status, message = health(md(conditions=ROLLING, canary=CANARY))
    assert status == "Progressing"
    assert "canary f6e5d4c3b2 at 20%" in message


def test_canary_without_reconciling_condition_is_still_progressing() -> None:
    assert health(md(conditions=SERVING[:1], canary=CANARY)) == (
        "Progressing",
        "Canary f6e5d4c3b2 at weight 20%",
    )


def test_pods_starting_is_progressing() -> None:
    conditions = [
        _cond("Ready", "False", "PodsNotReady", "0/2 pods ready"),
        _cond("Reconciling", "True", "PodsStarting", "waiting for pods: 0/2 ready"),
        _cond("Stalled", "False", "NotStalled", "making progress"),
    ]
    assert health(md(conditions=conditions))[0] == "Progressing"


def test_rolled_back_canary_is_degraded() -> None:
    history = [
        {
            "revision": "f6e5d4c3b2",
            "modelUri": "s3://models/wine/v2/model.onnx",
            "outcome": "RolledBack",
            "reason": "gate errorRate 0.31 > 0.05",
        }
    ]
    status, message = health(
        md(conditions=ROLLED_BACK, failedRevision="f6e5d4c3b2", history=history)
    )
    assert status == "Degraded"
    assert message.startswith("CanaryRolledBack: Rolled back f6e5d4c3b2")


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        ("InvalidSpec", "spec.model.uri: unsupported scheme 'ftp'"),
        ("PodsFailing", "revision a1b2c3d4e5: roost: error: model file not found"),
    ],
)
def test_stalled_is_degraded(reason: str, message: str) -> None:
    conditions = [
        _cond("Ready", "False", "PodsNotReady", "0/2 pods ready"),
        _cond("Reconciling", "False", "Stalled", "waiting for a spec change"),
        _cond("Stalled", "True", reason, message),
    ]
    assert health(md(conditions=conditions)) == ("Degraded", f"{reason}: {message}")


def test_paused_is_suspended() -> None:
    conditions = [
        ROLLING[0],
        _cond("Reconciling", "True", "Paused", "step 1/2: paused (spec.paused is true)"),
        ROLLING[2],
    ]
    status, message = health(md(conditions=conditions, paused=True, canary=CANARY))
    assert status == "Suspended"
    assert "paused" in message


def test_pause_not_yet_observed_is_progressing() -> None:
    assert health(md(generation=4, observed=3, conditions=SERVING, paused=True))[0] == (
        "Progressing"
    )
