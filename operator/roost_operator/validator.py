"""Validation before any weight: the canary's pods, checked against the stable's, pre-traffic.

Run by the reconciler when `planner.validation_request` says so: the canary's containers are
ready, its ``roost.dev/traffic`` gate is still closed (no client can reach it), and
`spec.rollout.validation` is set. The checks, with the messages of `roost validate`
(`roost_serving.validation`, shared so CI and the cluster say the same thing):

1. signature: each revision's OIP metadata (``GET /v2/models/{name}`` on a pod) — input
   names, datatypes and shapes, output names and datatypes — unless an interface change is
   declared (``allowInterfaceChange``);
2. answers: sample rows (the golden set, else the rows `roost profile` sampled into the
   canary's reference profile) sent to every canary pod and to a stable pod, compared: label
   agreement for classifiers, the largest absolute difference for float outputs, accuracy on
   expected labels when the golden set has them;
3. latency: the slowest canary request after each pod's first (which warms it up).

Every request carries ``Roost-Source: validation``: the pods count it under
``source="validation"``, keep it out of their drift and prediction monitors, and analysis
never reads it as user traffic. The outcome is a JSON-ready dict for
``status.canary.validation``; None means "could not tell yet" (the stable pods did not
answer), and the next reconcile tries again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
import numpy as np
import orjson
from roost_serving import validation as checks
from roost_serving.fetch import FetchError, FetchPolicy, fetch_bytes
from roost_serving.profile_sample import parse_sample
from roost_serving.protocol import TensorSpec
from roost_serving.tabular import ProfileError, read_table

from roost_operator.planner import ValidationRequest
from roost_operator.pods import PodTarget
from roost_operator.times import rfc3339_seconds
from roost_operator.validationspec import ValidationSpec

log = logging.getLogger("roost.validation")

SOURCE_HEADERS = {"Roost-Source": "validation"}
ROWS_PER_REQUEST = 8
FETCH = FetchPolicy(connect_timeout=5.0, read_timeout=30.0, attempts=2)


class _UnansweredError(Exception):
    """A pod did not answer (connection error, timeout, 5xx): which side, and why."""

    def __init__(self, side: str, why: str) -> None:
        super().__init__(f"the {side} pod {why}")
        self.side = side


def _url(pod: PodTarget, path: str) -> str:
    host = f"[{pod.ip}]" if ":" in pod.ip else pod.ip
    return f"http://{host}:{pod.port}{path}"


def _specs(items: Any) -> list[TensorSpec]:
    return [
        TensorSpec(str(t["name"]), str(t["datatype"]), tuple(int(d) for d in t["shape"]))
        for t in items or []
    ]


async def _metadata(
    client: httpx.AsyncClient, pod: PodTarget, name: str, side: str
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    try:
        response = await client.get(_url(pod, f"/v2/models/{name}"), headers=SOURCE_HEADERS)
    except httpx.HTTPError as e:
        raise _UnansweredError(side, f"{pod.name} did not answer its metadata: {e}") from None
    if response.status_code != 200:
        raise _UnansweredError(side, f"{pod.name} answered {response.status_code} for its metadata")
    body = response.json()
    return _specs(body.get("inputs")), _specs(body.get("outputs"))


def _decode(outputs: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    out = {}
    for o in outputs:
        data = np.asarray(o.get("data", []))
        out[str(o["name"])] = data.reshape([int(d) for d in o["shape"]])
    return out


async def _answer(
    client: httpx.AsyncClient, pod: PodTarget, name: str, tensor: TensorSpec, rows: np.ndarray
) -> tuple[dict[str, np.ndarray], float]:
    """One infer request of ``rows``; its outputs and seconds. 4xx: the model refused them."""
    body = {
        "id": f"validation-{pod.name}-{time.monotonic_ns()}",
        "inputs": [
            {
                "name": tensor.name,
                "datatype": tensor.datatype,
                "shape": list(rows.shape),
                "data": rows.ravel().tolist(),
            }
        ],
    }
    started = time.perf_counter()
    response = await client.post(
        _url(pod, f"/v2/models/{name}/infer"),
        content=orjson.dumps(body),
        headers={**SOURCE_HEADERS, "Content-Type": "application/json"},
    )
    seconds = time.perf_counter() - started
    if response.status_code >= 500:  # overloaded or starting: not the model's fault (yet)
        raise httpx.HTTPError(f"{pod.name} answered {response.status_code}")
    if response.status_code != 200:
        error = response.json().get("error", "") if response.content else ""
        raise ValueError(f"{pod.name} answered {response.status_code} to sample rows: {error}")
    return _decode(response.json()["outputs"]), seconds


async def _answers(
    client: httpx.AsyncClient, pod: PodTarget, name: str, tensor: TensorSpec, rows: np.ndarray
) -> tuple[dict[str, np.ndarray], list[float]]:
    parts: list[dict[str, np.ndarray]] = []
    latencies: list[float] = []
    for start in range(0, len(rows), ROWS_PER_REQUEST):
        outputs, seconds = await _answer(
            client, pod, name, tensor, rows[start : start + ROWS_PER_REQUEST]
        )
        parts.append(outputs)
        latencies.append(seconds)
    joined = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}
    return joined, latencies


def sample_rows(
    spec: ValidationSpec, profile_uri: str | None, features: int
) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """(rows, expected labels, where they came from): the golden set, else the profile's
    sample; rows None when neither has any. Blocking I/O: run it in a thread."""
    if spec.golden_uri is not None:
        table = read_table(spec.golden_uri)
        expected = table.pop(spec.expected_column) if spec.expected_column else None
        if spec.expected_column and expected is None:
            raise ProfileError(f"the golden set has no column {spec.expected_column!r}")
        columns = [np.asarray(v, dtype=np.float64) for v in table.values()]
        rows = np.stack(columns, axis=1) if columns else np.zeros((0, features))
        keep = slice(0, spec.rows)
        return rows[keep], None if expected is None else np.asarray(expected)[keep], "golden set"
    if profile_uri is None:
        return None, None, "no golden set and no profile"
    raw = orjson.loads(fetch_bytes(profile_uri, FETCH, "profile"))
    sample = parse_sample(raw.get("sample") if isinstance(raw, dict) else None)
    if sample is None or not sample.rows:
        return None, None, "no golden set, and the profile holds no sample rows"
    return np.asarray(sample.rows, np.float64)[: spec.rows], None, "profile sample"


def _outcome(result: str, message: str, **details: Any) -> dict[str, Any]:
    return {
        "result": result,
        "message": message[:1024],
        "time": rfc3339_seconds(datetime.now(UTC)),
        **{k: v for k, v in details.items() if v is not None},
    }


async def validate(
    request: ValidationRequest, client: httpx.AsyncClient | None = None
) -> dict[str, Any] | None:
    """Run the checks; the ``status.canary.validation`` record, or None to try again later."""
    if not request.canary_pods or not request.stable_pods:
        return None
    spec = request.validation
    own = client is None
    client = client or httpx.AsyncClient(timeout=spec.timeout_seconds)
    try:
        return await _validate(client, request, spec)
    except _UnansweredError as e:
        if e.side == "stable":
            log.warning("validation of %s postponed: %s", request.canary_revision, e)
            return None
        return _outcome("failed", str(e))
    finally:
        if own:
            await client.aclose()


async def _validate(
    client: httpx.AsyncClient, request: ValidationRequest, spec: ValidationSpec
) -> dict[str, Any]:
    name = request.model_name
    stable_pod = request.stable_pods[0]
    stable_in, stable_out = await _metadata(client, stable_pod, name, "stable")
    canary_in, canary_out = await _metadata(client, request.canary_pods[0], name, "canary")
    signature = checks.compare_signatures(
        canary_in,
        canary_out,
        stable_in,
        stable_out,
        allow_interface_change=spec.allow_interface_change,
    )
    if not signature.ok:
        return _outcome("failed", "; ".join(signature.problems), signature="incompatible")
    noted = f" (declared interface change: {'; '.join(signature.notes)})" if signature.notes else ""
    if signature.notes or len(stable_in) != 1 or len(stable_in[0].shape) != 2:
        return _outcome(
            "passed", f"signature accepted{noted}; answers not compared", signature="ok"
        )
    tensor = stable_in[0]
    try:
        rows, expected, origin = await asyncio.to_thread(
            sample_rows, spec, request.profile_uri, tensor.shape[1]
        )
    except (FetchError, ProfileError, OSError, ValueError) as e:
        return _outcome("failed", f"cannot read the sample rows: {e}", signature="ok")
    if rows is None or len(rows) == 0:
        return _outcome("passed", f"signature compatible; {origin}: answers not compared")
    return await _compare(client, request, spec, tensor, rows, expected, origin)


async def _compare(
    client: httpx.AsyncClient,
    request: ValidationRequest,
    spec: ValidationSpec,
    tensor: TensorSpec,
    rows: np.ndarray,
    expected: np.ndarray | None,
    origin: str,
) -> dict[str, Any]:
    name = request.model_name
    try:
        stable, _ = await _answers(client, request.stable_pods[0], name, tensor, rows)
    except httpx.HTTPError as e:
        raise _UnansweredError("stable", f"did not answer the sample rows: {e}") from None
    except ValueError as e:  # the rows do not fit the stable model: the sample is wrong
        return _outcome("failed", f"{origin} does not fit the stable model: the pod {e}")
    latencies: list[float] = []
    candidate: dict[str, np.ndarray] = {}
    for pod in request.canary_pods:  # every canary pod: each one is warmed up
        try:
            candidate, seconds = await _answers(client, pod, name, tensor, rows)
        except httpx.HTTPError as e:
            raise _UnansweredError(
                "canary", f"{pod.name} did not answer the sample rows: {e}"
            ) from None
        except ValueError as e:
            return _outcome("failed", f"the canary pod {e}", signature="ok")
        latencies += seconds[1:] or seconds
    report = checks.compare_outputs(
        candidate,
        stable,
        expected,
        checks.GoldenThresholds(min_agreement=spec.min_agreement, max_abs_error=spec.max_abs_error),
    )
    slowest = max(latencies) if latencies else 0.0
    problems = list(report.problems)
    if slowest > spec.max_latency_seconds:
        problems.append(
            f"the canary took {slowest:.3f}s for {ROWS_PER_REQUEST} rows, more than "
            f"maxLatency {spec.max_latency_seconds:g}s"
        )
    details = {
        "signature": "ok",
        "rows": report.rows,
        "agreement": report.agreement,
        "maxAbsError": report.max_abs_error,
        "canaryLatencySeconds": round(slowest, 6),
    }
    if problems:
        return _outcome("failed", f"{origin}: " + "; ".join(problems), **details)
    return _outcome("passed", f"signature compatible; {origin}: {report.summary()}", **details)
