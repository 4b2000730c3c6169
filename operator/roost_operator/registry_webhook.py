"""MLflow webhooks: an alias moved, so resolve now instead of at the next poll.

MLflow (3.x) posts `model_version_alias.created` (and `model_version.created`, ...) to a URL
registered with `MlflowClient.create_webhook(..., secret=...)`, signed with HMAC-SHA256 over
``<delivery id>.<timestamp>.<body>`` in `X-MLflow-Signature: v1,<base64>`. roost listens on
`--registry-webhook-port` (off by default) at `POST /mlflow`, checks the signature when
`ROOST_REGISTRY_WEBHOOK_SECRET` is set, and marks every ModelDeployment that references the
model due for a poll. A webhook only shortens the delay: it carries no version roost would
trust, the poll still reads the registry. Polling stays on, so a lost delivery costs at most one
poll interval.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

from aiohttp import web

from roost_operator.registry_sync import RegistrySync

MAX_SKEW_SECONDS = 300.0
"""Deliveries older (or newer) than this are refused: a captured one cannot be replayed later."""


def signature_ok(
    secret: str, delivery_id: str, timestamp: str, body: bytes, signature: str, now: float
) -> bool:
    """Whether `signature` is MLflow's v1 HMAC of this delivery, and the delivery is recent."""
    try:
        if abs(now - float(timestamp)) > MAX_SKEW_SECONDS:
            return False
    except ValueError:
        return False
    signed = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).digest()
    return hmac.compare_digest(f"v1,{base64.b64encode(digest).decode()}", signature)


def model_of(payload: Any) -> str | None:
    """The registered model a delivery is about, for model and alias events."""
    if not isinstance(payload, dict) or not str(payload.get("entity", "")).startswith("model"):
        return None
    name = (payload.get("data") or {}).get("name")
    return str(name) if name else None


def app(sync: RegistrySync, secret: str | None) -> web.Application:
    """The webhook receiver: `POST /mlflow`."""

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        if secret and not signature_ok(
            secret,
            request.headers.get("X-MLflow-Delivery-Id", ""),
            request.headers.get("X-MLflow-Timestamp", ""),
            body,
            request.headers.get("X-MLflow-Signature", ""),
            time.time(),
        ):
            return web.json_response({"error": "bad or missing signature"}, status=401)
        try:
            model = model_of(json.loads(body))
        except ValueError:
            return web.json_response({"error": "body is not JSON"}, status=400)
        woken = sync.refresh(model) if model else 0
        return web.json_response({"model": model, "modelDeployments": woken})

    application = web.Application(client_max_size=64 * 1024)
    application.router.add_post("/mlflow", receive)
    return application


async def serve(sync: RegistrySync, port: int, host: str, secret: str | None) -> web.AppRunner:
    """Start the receiver; the caller cleans the runner up on shutdown."""
    runner = web.AppRunner(app(sync, secret), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
