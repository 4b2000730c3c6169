"""Dynamic batching: requests coalesce, and batched results equal unbatched ones exactly."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
from roost_serving.batching import Batcher
from roost_serving.config import Settings
from roost_serving.model import load_model
from roost_serving.protocol import RoostError


def _batcher(run: Any, batches: list[int], max_batch_size: int = 8) -> Batcher:
    return Batcher(
        run,
        max_batch_size=max_batch_size,
        max_delay_s=0.002,
        enabled=True,
        on_batch=lambda _i, _o, rows: batches.append(rows),
        on_dequeue=lambda _s: None,
        arriving=lambda: 0,
    )


async def test_concurrent_requests_share_runs_and_get_their_own_rows(
    serving_models: dict[str, Path],
) -> None:
    model = load_model(str(serving_models["forest"]))
    batches: list[int] = []
    batcher = _batcher(model.run, batches)
    batcher.start()
    rng = np.random.default_rng(3)
    requests = [{"X": rng.normal(size=(n, 5)).astype(np.float32)} for n in (1, 2, 3, 1, 1, 4, 2)]
    results = await asyncio.gather(*(batcher.submit(r) for r in requests))
    await batcher.stop()
    assert sum(batches) == 14
    assert max(batches) <= 8
    assert len(batches) < len(requests)  # all were queued before the worker ran
    for request, result in zip(requests, results, strict=True):
        alone = model.run(request)
        assert result.keys() == alone.keys()
        for name in alone:
            np.testing.assert_array_equal(result[name], alone[name])


async def test_incompatible_shapes_are_not_mixed_and_errors_stay_with_their_request() -> None:
    seen: list[tuple[int, ...]] = []

    def run(inputs: Any) -> dict[str, np.ndarray]:
        x = inputs["X"]
        seen.append(x.shape)
        if (x < 0).any():
            raise RoostError("negative values are not allowed")
        return {"Y": x * 2}

    batcher = _batcher(run, [])
    batcher.start()
    good = {"X": np.ones((1, 3))}
    wide = {"X": np.ones((1, 4))}
    bad = {"X": -np.ones((1, 3))}
    results = await asyncio.gather(
        batcher.submit(good), batcher.submit(wide), batcher.submit(bad), return_exceptions=True
    )
    await batcher.stop()
    np.testing.assert_array_equal(results[0]["Y"], [[2, 2, 2]])  # type: ignore[index]
    np.testing.assert_array_equal(results[1]["Y"], [[2, 2, 2, 2]])  # type: ignore[index]
    assert isinstance(results[2], RoostError)
    assert all(len(shape) == 2 and shape[1] in (3, 4) for shape in seen)


async def test_over_http_concurrent_results_equal_unbatched(
    start_server: Any, serving_models: dict[str, Path]
) -> None:
    server = start_server(Settings(model=str(serving_models["forest"]), name="forest"))
    session = ort.InferenceSession(str(serving_models["forest"]))
    rng = np.random.default_rng(11)
    rows = [rng.normal(size=(int(rng.integers(1, 4)), 5)).astype(np.float32) for _ in range(96)]
    async with httpx.AsyncClient(
        base_url=server.url, timeout=30, limits=httpx.Limits(max_connections=32)
    ) as client:

        async def one(x: np.ndarray) -> dict[str, Any]:
            body = {
                "inputs": [
                    {"name": "X", "datatype": "FP32", "shape": list(x.shape), "data": x.tolist()}
                ]
            }
            response = await client.post("/v2/models/forest/infer", json=body)
            assert response.status_code == 200
            return {o["name"]: o["data"] for o in response.json()["outputs"]}

        answers = await asyncio.gather(*(one(x) for x in rows))
    for x, answer in zip(rows, answers, strict=True):
        label, proba = session.run(None, {"X": x})
        assert answer["label"] == label.tolist()
        # JSON carries float32 values exactly (shortest round-trip repr).
        assert (
            np.array(answer["probabilities"], dtype=np.float32).tolist() == proba.ravel().tolist()
        )
    labels = {"model": "forest", "revision": ""}
    assert server.metric("roost_batch_size_sum", **labels) == sum(len(x) for x in rows)
    assert server.metric("roost_queue_duration_seconds_count", **labels) == len(rows)


async def test_a_lone_request_runs_at_once_and_is_still_observed() -> None:
    batches: list[int] = []
    waits: list[float] = []
    batcher = Batcher(
        lambda inputs: {"Y": inputs["X"] * 2},
        max_batch_size=8,
        max_delay_s=0.002,
        enabled=True,
        on_batch=lambda _i, _o, rows: batches.append(rows),
        on_dequeue=waits.append,
        arriving=lambda: 0,
    )
    batcher.start()
    x = np.ones((3, 2), dtype=np.float32)
    for _ in range(2):
        np.testing.assert_array_equal((await batcher.submit({"X": x}))["Y"], x * 2)
    await batcher.stop()
    # Drift and batch metrics see each run; nothing waited in the queue.
    assert (batches, waits) == ([3, 3], [0.0, 0.0])
