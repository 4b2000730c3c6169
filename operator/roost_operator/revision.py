"""The revision hash: a short name for the pod template the operator builds for a spec.

The revision is the hash of the pod template itself (built for placeholder names), so anything
that would restart a pod makes a new revision — a spec change, a new default serving image, or
an operator upgrade whose builders add a port, an environment variable or a probe. A new
revision goes through the canary steps and gates like any other; an existing revision's
Deployment is never rewritten with a different template, so the Deployment controller never
rolls a model's pods outside a canary. `replicas`, autoscaling, the rollout policy, traffic
routing and `paused` are not in the pod template: changing them never makes a new revision.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from roost_operator.builders import Owner, build_deployment
from roost_operator.spec import ModelDeploymentSpec

REVISION_LENGTH = 10
# The ModelDeployment's own name and uid are in the template (labels, ROOST_NAME); they name
# the model, not what it serves, so the hash sees placeholders instead.
_PLACEHOLDER = Owner("md", "ns", "uid")
_REVISION = "revision"


def pod_template(spec: ModelDeploymentSpec, image: str) -> dict[str, Any]:
    """The pod template of `spec`'s Deployment, with placeholder names: what the hash covers."""
    deployment = build_deployment(_PLACEHOLDER, spec, _REVISION, 1, image)
    template: dict[str, Any] = deployment["spec"]["template"]
    return template


def compute_revision(spec: ModelDeploymentSpec, image: str) -> str:
    """First 10 hex characters of sha256 over the canonical JSON of `pod_template` (with the
    registry version facts of a `models:/` reference).

    `image` is the resolved image (`spec.server.image` or the operator's default), so a new
    default serving image rolls out like any other change.
    """
    hashed: dict[str, Any] = pod_template(spec, image)
    if spec.model.resolved:
        # A registry reference: the resolved version, run id and digest are part of what a
        # revision is, even where the pod template would not show them. Only registry
        # references have them, so revisions of plain URIs keep their hash.
        hashed = {"template": hashed, "resolved": dict(spec.model.resolved)}
    canonical = json.dumps(hashed, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:REVISION_LENGTH]
