"""`roost_operator.provenance`: audit facts in status, write-back decisions, unresolved plans."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from roost_operator import conditions, provenance
from roost_operator.planner import ModelDeploymentObject
from roost_operator.registry import Resolution
from roost_operator.revision import compute_revision, pod_template
from roost_operator.spec import parse_spec

NOW = datetime(2026, 12, 1, 7, 0, tzinfo=UTC)
URL = "http://mlflow:5000/api/2.0/mlflow-artifacts/artifacts/1/r/artifacts/model"


def _res(version: str = "3", run: str = "run3") -> Resolution:
    return Resolution(
        "models:/wine@champion",
        "wine",
        version,
        run,
        "mlflow-artifacts:/1/r/artifacts/model",
        f"{URL}/model.onnx",
        "a" * 64,
        f"{URL}/profile.json",
        "b" * 64,
        "2026-12-01T06:59:00Z",
    )


SPEC: dict[str, Any] = {
    "model": {"uri": "models:/wine@champion", "registry": {"trackingUri": "http://mlflow:5000"}},
    "replicas": 2,
}


def test_manager_is_the_latest_writer_of_spec() -> None:
    fields = [
        {
            "manager": "kubectl-client-side-apply",
            "time": "2026-12-01T06:00:00Z",
            "fieldsV1": {"f:spec": {}},
        },
        {
            "manager": "argocd-controller",
            "time": "2026-12-01T06:30:00Z",
            "fieldsV1": {"f:spec": {}},
        },
        {"manager": "roost", "time": "2026-12-01T06:40:00Z", "fieldsV1": {"f:status": {}}},
        {"manager": "kopf", "time": "2026-12-01T06:50:00Z", "fieldsV1": {"f:metadata": {}}},
    ]
    assert provenance.manager_of(fields) == "argocd-controller"
    assert provenance.manager_of(None) == "unknown"


def test_resolved_spec_serves_the_version_and_its_revision_follows_the_version() -> None:
    spec = provenance.resolved_spec(SPEC, _res())
    model = spec["model"]
    assert model["uri"] == f"{URL}/model.onnx"
    assert model["sha256"] == "a" * 64
    assert model["profileUri"] == f"{URL}/profile.json"
    assert "registry" not in model
    parsed = parse_spec(spec)
    rev3 = compute_revision(parsed, "img")
    # Same files, another version (re-registered): still a new revision.
    rev4 = compute_revision(parse_spec(provenance.resolved_spec(SPEC, _res("4", "run4"))), "img")
    assert rev3 != rev4
    # Plain URIs keep the hash they had before registry support existed.
    plain = parse_spec({"model": {"uri": "file:///m/model.onnx"}})
    assert (
        compute_revision(plain, "img")
        == hashlib.sha256(
            json.dumps(
                pod_template(plain, "img"), sort_keys=True, separators=(",", ":"), ensure_ascii=True
            ).encode()
        ).hexdigest()[:10]
    )


def _audit(revision: str, evidence: dict[str, Any] | None = None) -> provenance.Audit:
    facts = provenance.facts(provenance.resolved_spec(SPEC, _res()), _res(), "kubectl")
    cond = provenance.resolved_condition(_res(), None)
    return provenance.Audit(revision, facts, _res(), cond, evidence)


def test_annotate_records_facts_evidence_and_pending_write_back() -> None:
    before = {
        "stable": {"revision": "old"},
        "canary": {"revision": "new", "lastAnalysis": {"gates": [{"name": "errorRate"}]}},
        "history": [],
        "revisions": {"old": {"version": "2"}},
    }
    after = {
        "stable": {"revision": "new"},
        "history": [
            {"revision": "new", "outcome": "Promoted", "startedAt": "t0", "finishedAt": "t1"}
        ],
        "conditions": [{"type": "Ready", "status": "True", "reason": "Serving", "message": ""}],
    }
    status = provenance.annotate(before, after, _audit("new"), 3, NOW)
    entry = status["history"][-1]
    assert (entry["version"], entry["runId"], entry["manager"]) == ("3", "run3", "kubectl")
    assert entry["modelSha256"] == "a" * 64
    assert entry["gates"] == [{"name": "errorRate"}]
    assert entry["registryWriteBack"] == "pending"
    assert status["model"]["version"] == "3"
    assert [c["type"] for c in status["conditions"]] == ["Ready", "ModelResolved"]
    assert set(status["revisions"]) == {"old", "new"}
    # Next tick: the planner's history lacks the extra keys again; they are carried over.
    again = provenance.annotate(status, {**after, "conditions": []}, _audit("new"), 3, NOW)
    assert again["history"][-1]["registryWriteBack"] == "pending"
    assert again["history"][-1]["gates"] == [{"name": "errorRate"}]


def test_write_backs_move_the_alias_only_on_promotion() -> None:
    status = {
        "history": [
            {
                "revision": "a",
                "outcome": "Promoted",
                "reason": "passed all 1 steps",
                "finishedAt": "t1",
                "version": "2",
                "reference": "models:/wine@champion",
                "registryWriteBack": "done",
            },
            {
                "revision": "b",
                "outcome": "RolledBack",
                "reason": "gate divergence failed",
                "finishedAt": "t2",
                "version": "3",
                "reference": "models:/wine@champion",
                "gates": [{"name": "divergence", "verdict": "fail"}],
                "registryWriteBack": "pending",
            },
        ]
    }
    [wb] = provenance.write_backs(status, "prod", "wine")
    assert (wb.index, wb.model, wb.version, wb.alias) == (1, "wine", "3", None)
    assert wb.tags["roost/prod/wine/outcome"] == "RolledBack"
    assert wb.tags["roost/prod/wine/reason"] == "gate divergence failed"
    assert '"divergence"' in wb.tags["roost/prod/wine/gates"]
    status["history"][1]["outcome"] = "Promoted"
    [wb] = provenance.write_backs(status, "prod", "wine")
    assert wb.alias == "roost-prod-wine-stable"
    assert provenance.write_backs(provenance.mark_written(status, [1]), "prod", "wine") == []


def test_first_stable_revision_moves_the_alias() -> None:
    after = {
        "stable": {"revision": "r1"},
        "history": [],
        "revisions": {"r1": {"version": "1", "reference": "models:/wine/1"}},
    }
    wb = provenance.initial_write_back({}, after, "ns", "wine")
    assert wb is not None
    assert (wb.model, wb.version, wb.alias) == ("wine", "1", "roost-ns-wine-stable")
    assert provenance.initial_write_back(after, after, "ns", "wine") is None


def _md(status: dict[str, Any] | None = None) -> ModelDeploymentObject:
    return ModelDeploymentObject("wine", "ns", "uid", 2, SPEC, status or {})


def test_unresolvable_reference_is_stalled_and_unreachable_registry_is_reconciling() -> None:
    plan = provenance.unresolved_plan(_md(), "ModelReferenceUnresolvable", "no alias", NOW, 5.0)
    conds = plan.status["conditions"]
    assert conditions.is_true(conds, "Stalled")
    assert conditions.find(conds, "Stalled")["reason"] == "ModelReferenceUnresolvable"  # type: ignore[index]
    assert not conditions.is_true(conds, "Ready")
    assert [e.reason for e in plan.events] == ["ModelReferenceUnresolvable"]
    assert plan.apply == ()  # nothing is touched
    assert plan.delete == ()
    # Said once: the same condition again posts no second event.
    again = provenance.unresolved_plan(
        _md(plan.status), "ModelReferenceUnresolvable", "no alias", NOW, 5.0
    )
    assert again.events == ()
    down = provenance.unresolved_plan(_md(), "RegistryUnreachable", "refused", NOW, 5.0)
    assert conditions.is_true(down.status["conditions"], "Reconciling")
    assert not conditions.is_true(down.status["conditions"], "Stalled")
    assert down.requeue_after == 5.0


def test_unreachable_registry_condition_names_what_still_serves() -> None:
    cond = provenance.resolved_condition(_res(), "connection refused")
    assert (cond.status, cond.reason) == ("False", "RegistryUnreachable")
    assert "still serving the last resolved models:/wine@champion -> version 3" in cond.message


def test_stall_keeps_ready() -> None:
    status = {
        "conditions": conditions.merge(
            None, conditions.kstatus((True, "Serving", ""), None, None), 1, NOW
        )
    }
    out = provenance.stall({}, status, ("ModelReferenceUnresolvable", "gone"), 1, NOW)
    assert conditions.is_true(out["conditions"], "Ready")
    assert conditions.is_true(out["conditions"], "Stalled")


def test_audit_events_carry_the_facts() -> None:
    before: dict[str, Any] = {
        "history": [],
        "model": {"version": "2", "reference": "models:/wine@champion"},
    }
    after = {
        "model": _res().to_status(),
        "history": [
            {
                "revision": "b",
                "outcome": "RolledBack",
                "startedAt": "t",
                "reason": "gate x",
                "version": "3",
                "runId": "run3",
                "modelSha256": "a" * 64,
                "manager": "helm",
                "reference": "models:/wine@champion",
            }
        ],
    }
    resolved, audited = provenance.audit_events(before, after)
    assert resolved.reason == "ModelResolved"
    assert "version 3 (run run3)" in resolved.message
    assert audited.type == "Warning"
    assert "version 3 (run run3), sha256 aaaaaaaaaaaa, spec by helm; gate x" in audited.message
