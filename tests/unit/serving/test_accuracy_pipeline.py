"""The accuracy gate's whole path without a cluster: two real ``roost serve`` processes (the
stable wine-v1 and the worse, same-mix wine-permuted), labels sent to random pods and forwarded
to the one that answered, and the operator's pods source scraping both and judging."""

from __future__ import annotations

import asyncio
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from roost_operator.analysis import PodsSource
from roost_operator.pods import PodTarget
from roost_operator.spec import parse_spec

from .conftest import ServeProcess

TOKEN = "pipeline-token"
GATES = {
    "accuracy": {"maxDropVsStable": 0.05},
    "divergence": {"margin": 0.1},
    "drift": {"margin": 0.2},
}


async def test_a_worse_same_mix_model_fails_on_accuracy_while_drift_and_divergence_do_not(
    example_models: dict[str, Path], serve_process: type[ServeProcess]
) -> None:
    sample = json.loads((example_models["wine-v1"] / "sample.json").read_text())
    rows, labels = sample["rows"], sample["labels"]
    pods = {}
    for revision, model in (("stable", "wine-v1"), ("canary", "wine-permuted")):
        pods[revision] = serve_process(
            {
                "ROOST_MODEL": str(example_models[model] / "model.onnx"),
                "ROOST_PROFILE": str(example_models[model] / "profile.json"),
                "ROOST_NAME": "wine",
                "ROOST_REVISION": revision,
                "ROOST_LABEL_HORIZON": "1",
                "ROOST_RUNTIME_TOKEN": TOKEN,
            }
        )
    peers = {"pods": [{"pod": r, "role": r, "url": p.url} for r, p in pods.items()]}
    spec = parse_spec(
        {"model": {"uri": "file:///m.onnx"},
         "rollout": {"analysis": {"alpha": 0.05, "minRequests": 10, "gates": GATES}}}
    ).rollout.analysis  # fmt: skip
    targets = {r: PodTarget(r, r, "127.0.0.1", p.port) for r, p in pods.items()}
    source, rng = PodsSource(), random.Random(3)
    evidence: Any = None
    now = datetime(2026, 12, 1, tzinfo=UTC)
    verdicts: dict[str, str] = {}
    forwarded = 0
    async with httpx.AsyncClient(timeout=10) as http:
        for p in pods.values():  # what the operator does: the peers section, pushed
            doc = {"version": "v1", "sections": {"peers": peers}}
            auth = {"Authorization": f"Bearer {TOKEN}"}
            answer = await http.put(p.url + "/v2/roost/runtime", json=doc, headers=auth)
            assert answer.status_code == 200, answer.text
        for interval in range(20):
            feedback = []
            for n in range(20):
                revision = rng.choice(["stable", "canary"])
                picked = [rng.randrange(len(rows)) for _ in range(8)]
                rid = f"i{interval}-{n}"
                body = {"id": rid, "inputs": [{"name": "X", "datatype": "FP32", "shape": [8, 13],
                        "data": [v for i in picked for v in rows[i]]}]}  # fmt: skip
                answer = await http.post(pods[revision].url + "/v2/models/wine/infer", json=body)
                assert answer.status_code == 200, answer.text
                feedback.append({"id": rid, "truth": [labels[i] for i in picked]})
            # Labels go to a random pod, as through a Service, well within the horizon.
            landed = await http.post(
                rng.choice(list(pods.values())).url + "/v2/models/wine/feedback",
                json={"feedback": feedback},
            )
            outcomes = landed.json()["outcomes"]
            assert outcomes["joined"] == 20, outcomes
            forwarded += outcomes["forwarded"]
            await asyncio.sleep(1.1)  # this interval's predictions reach the 1 s horizon
            now += timedelta(seconds=2)
            result = await source.analyse(
                namespace="ns", name="wine", canary_revision="canary", stable_revision="stable",
                canary_pods=[targets["canary"]], stable_pods=[targets["stable"]],
                window_seconds=2, spec=spec, evidence=evidence, now=now,
            )  # fmt: skip
            evidence = result.evidence or evidence
            verdicts = {g.name: g.verdict for g in result.gates}
            if result.verdict == "fail":
                break
    await source.close()
    assert forwarded > 0
    assert verdicts["accuracy"] == "fail", result.message
    assert "accuracy: canary" in result.message
    assert verdicts["drift"] != "fail"
    assert verdicts["divergence"] != "fail"
