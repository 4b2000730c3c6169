"""The demo's core (`make demo`) on the test cluster: the same code path, asserted.

roost installed with its Helm chart (the operator running as the chart's ServiceAccount),
model v1 deployed under live traffic, v2 promoted through a shadow step and every canary step,
and a model that predicts a constant class rolled back in the shadow step before any client
request reached it, then a worse model with the same
class mix rolled back by the accuracy gate on the labels the traffic sends back.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from roost_devcluster import controlplane, demo


def test_demo_promotes_v2_and_rolls_back_the_bad_model(
    cluster: controlplane.Cluster, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:6]
    namespace = f"demo-{suffix}"
    api = cluster.api()
    try:
        result = demo.run(
            cluster, tmp_path, namespace=namespace, release=f"roost-{suffix}", keep=False
        )
    finally:
        api.delete(f"/api/v1/namespaces/{namespace}")
    assert result.promoted_revision
    assert result.rolled_back_revision
    assert result.rolled_back_revision != result.promoted_revision
    assert "shadowDisagreement" in result.rollback_reason, result.rollback_reason
    assert result.rolled_back_client_requests == 0
    assert result.requests.get(200, 0) > 100
    # The worse model with v1's class mix: rolled back on the labels sent back, not on drift.
    assert result.accuracy_revision not in ("", result.rolled_back_revision)
    assert result.accuracy_reason.startswith("gate accuracy failed"), result.accuracy_reason
    assert result.feedback.get("joined", 0) > 0, result.feedback
    assert result.timeline_png is not None
    assert result.timeline_png.read_bytes()[:4] == b"\x89PNG"
