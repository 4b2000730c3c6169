"""The revision hash: a short name for everything that changes what a pod serves.

Two specs with the same revision run byte-identical pod templates, so the operator can scale a
revision's Deployment without restarting its pods. `replicas`, autoscaling, the rollout policy,
traffic routing and `paused` are deliberately left out: changing them must never roll out a
new revision.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from roost_operator.spec import ModelDeploymentSpec

REVISION_LENGTH = 10


def revision_inputs(spec: ModelDeploymentSpec, image: str) -> dict[str, Any]:
    """What the revision hashes, as a JSON-able dict (contract: docs/architecture.md)."""
    server = spec.server
    inputs: dict[str, Any] = {
        "model": {
            "uri": spec.model.uri,
            "sha256": spec.model.sha256,
            "profileUri": spec.model.profile_uri,
            "credentials": spec.model.credentials_secret,
        },
        "server": {
            "port": server.port,
            "maxBatchSize": server.max_batch_size,
            "maxDelayMs": server.max_delay_ms,
            "threads": server.threads,
            "driftWindow": server.drift_window,
            # Order matters to a process's environment only for duplicates, which the spec
            # refuses; sorting keeps a reordered list from making a new revision.
            "env": sorted([name, value] for name, value in server.env),
        },
        "resources": {"requests": dict(spec.requests), "limits": dict(spec.limits)},
        "image": image,
    }
    if spec.model.resolved:
        # Only registry references have it, so revisions of plain URIs keep their hash.
        inputs["model"] = {**inputs["model"], "resolved": dict(spec.model.resolved)}
    return inputs


def compute_revision(spec: ModelDeploymentSpec, image: str) -> str:
    """First 10 hex characters of sha256 over the canonical JSON of `revision_inputs`.

    `image` is the resolved image (`spec.server.image` or the operator's default), so a new
    default serving image rolls out like any other change.
    """
    canonical = json.dumps(
        revision_inputs(spec, image), sort_keys=True, separators=(",", ":"), ensure_ascii=True
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:REVISION_LENGTH]
