"""Drive a roost server with KServe's own clients; run by the KServe virtualenv's python.

    python kserve_clients.py REST_URL GRPC_ADDRESS ready|not-ready

Prints one JSON object with what each client call returned (or the error it raised), for
test_serving_kserve_client.py to assert on. Not collected by pytest (no test_ prefix); it
imports kserve, which lives only in its own virtualenv (kserve pins pandas < 3).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import httpx
import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig

ROWS = np.arange(15, dtype=np.float32).reshape(3, 5) / 10.0


def _request(binary: bool) -> InferRequest:
    tensor = InferInput("X", list(ROWS.shape), "FP32")
    tensor.set_data_from_numpy(ROWS, binary_data=binary)
    return InferRequest(model_name="forest", infer_inputs=[tensor], request_id="kserve-1")


async def _call(coro: Any) -> Any:
    try:
        return await coro
    except httpx.HTTPStatusError as exc:
        return {"http_error": exc.response.status_code}


async def ready(rest_url: str, grpc_address: str) -> dict[str, Any]:
    rest = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=10))
    out: dict[str, Any] = {
        "live": await rest.is_server_live(rest_url),
        "ready": await rest.is_server_ready(rest_url),
        "model_ready": await rest.is_model_ready(rest_url, "forest"),
    }
    for binary in (False, True):
        response = await rest.infer(rest_url, _request(binary), model_name="forest")
        out[f"infer_binary_{binary}".lower()] = {
            "id": response.id,
            "outputs": {o.name: o.as_numpy().tolist() for o in response.outputs},
        }
    await rest.close()
    grpc = InferenceGRPCClient(grpc_address, retries=0, timeout=10)
    out["grpc_ready"] = await grpc.is_server_ready()
    out["grpc_model_ready"] = await grpc.is_model_ready("forest")
    response = await grpc.infer(_request(True))
    out["grpc_infer"] = {o.name: o.as_numpy().tolist() for o in response.outputs}
    await grpc.close()
    return out


async def not_ready(rest_url: str) -> dict[str, Any]:
    rest = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=10))
    out = {
        "live": await _call(rest.is_server_live(rest_url)),
        "ready": await _call(rest.is_server_ready(rest_url)),
        "model_ready": await _call(rest.is_model_ready(rest_url, "forest")),
    }
    await rest.close()
    return out


def main() -> None:
    """Run the calls for one server state and print the JSON result."""
    rest_url, grpc_address, state = sys.argv[1:4]
    result = asyncio.run(ready(rest_url, grpc_address) if state == "ready" else not_ready(rest_url))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
