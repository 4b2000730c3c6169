"""Ground truth end to end: labels sent back through random pods move the accuracy metrics, and
a worse model with the same prediction mix is rolled back on the accuracy gate while drift and
divergence pass (issue 13).

The traffic generator knows the wine traffic's true labels (sample.json) and sends each one back
a second after its answer to a random Ready pod, as through a Service; pods forward the labels
they did not predict to their peers (the operator's runtime ``peers`` section). The label
horizon is 4 s (``ROOST_LABEL_HORIZON`` through ``spec.server.env``), so the accuracy gate's
evidence trails the traffic by 4 s.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
from e2e.operator_fixtures import operator_process
from e2e.test_canary_scenarios import SEQUENTIAL, Rollout, rollout
from prometheus_client.parser import text_string_to_metric_families
from roost_devcluster.traffic import Traffic, ready_targets

__all__ = ["operator_process", "rollout"]

pytestmark = pytest.mark.e2e

SERVER = {"env": [{"name": "ROOST_LABEL_HORIZON", "value": "4"}]}
GATES = {
    "accuracy": {"maxDropVsStable": 0.05},
    "divergence": {"margin": 0.1},
    "drift": {"margin": 0.2},
}


def _labels(rollout: Rollout) -> list[Any]:
    sample = json.loads((rollout.models["wine-v1"] / "sample.json").read_text())
    return list(sample["labels"])


def _pod_totals(rollout: Rollout) -> dict[str, float]:
    """Feedback and quality series summed over the Ready pods."""
    out: dict[str, float] = {}
    for target in ready_targets(rollout.api, rollout.namespace, "wine"):
        text = httpx.get(f"http://{target.ip}:{target.port}/metrics", timeout=5).text
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                key = s.name + (f"/{s.labels['outcome']}" if "outcome" in s.labels else "")
                out[key] = out.get(key, 0.0) + s.value
    return out


def test_labels_through_random_pods_and_a_worse_same_mix_model_rolled_back_on_accuracy(
    rollout: Rollout,
) -> None:
    stable = rollout.serve_stable(GATES, analysis=SEQUENTIAL, server=SERVER)
    traffic = Traffic(
        rollout.api, rollout.namespace, "wine", rollout.rows(),
        rate=30, duration=200, labels=_labels(rollout), label_delay=1.0,
    )  # fmt: skip
    with traffic:
        # Labels flow: joined at the pod that answered, half of them forwarded there by the
        # pod they landed on.
        totals = rollout.wait(
            lambda: (
                (t := _pod_totals(rollout)).get("roost_feedback_items_total/forwarded", 0) > 20
                and t
            ),
            "labels joined through forwarding",
        )
        assert totals["roost_labelled_predictions_total"] > 20, totals
        assert (
            totals["roost_correct_predictions_total"]
            > 0.9 * totals["roost_labelled_predictions_total"]
        ), totals
        rollout.apply("wine-permuted", [{"weight": 50, "pause": "10s"}], GATES,
                      analysis=SEQUENTIAL, server=SERVER)  # fmt: skip
        canary = rollout.new_canary(stable)
        seen: dict[str, str] = {}

        def rolled_back() -> dict[str, Any] | None:
            st = rollout.status()
            for gate in ((st.get("canary") or {}).get("lastAnalysis") or {}).get("gates") or []:
                seen[gate["name"]] = gate["verdict"]
            history = st.get("history") or []
            done = history and history[-1]["outcome"] == "RolledBack" and not st.get("canary")
            return st if done else None

        st = rollout.wait(rolled_back, "the canary rolled back", timeout=180)
    entry = st["history"][-1]
    print(
        f"SCENARIO worse-same-mix: rolled back after {time.monotonic() - rollout.started:.1f} s; "
        f"last gates {seen}; feedback {dict(traffic.feedback)}; {entry['reason']}"
    )
    assert entry["revision"] == canary
    assert entry["reason"].startswith("gate accuracy failed"), entry
    assert seen.get("drift") != "fail", seen
    assert seen.get("divergence") != "fail", seen
    assert traffic.feedback["joined"] > 0, traffic.feedback
    rollout.assert_rolled_back(stable, canary, "accuracy")
