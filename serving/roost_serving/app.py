"""The HTTP side of the server: app factory, lifespan, Open Inference Protocol routes, /metrics.

:func:`create_app` builds a FastAPI app around a :class:`DataPlane`, which owns the model, the
batcher, the metrics and the drift monitor. ``POST .../infer`` is answered by a thin ASGI
layer in front of FastAPI that calls the data plane directly: routing, dependency injection
and response classes cost several times the model run of a small tabular model, and this one
route carries all the traffic. FastAPI registers no handler for it (one that skipped the
fast path's metrics could only drift from it); the OpenAPI document describes it all the same
(:func:`_document_infer`). Everything else goes through FastAPI. With ``--grpc-port`` the
same data plane also answers the Open Inference Protocol over gRPC
(:mod:`roost_serving.grpc_server`).

The model is loaded by a task the lifespan starts: the port opens at once, liveness is 200,
readiness and inference answer 503 until the model is loaded. A model that cannot be loaded
is fatal: the data plane records the reason and calls ``on_fatal`` (the CLI stops the server
and exits 1 with ``roost: error: <reason>``).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from functools import partial
from typing import Any, TypeVar

import numpy as np
import orjson
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from roost_serving import __version__
from roost_serving.batching import Batcher
from roost_serving.config import Settings
from roost_serving.grpc_server import grpc_lifespan
from roost_serving.metrics import ServingMetrics
from roost_serving.model import LoadedModel, load_model
from roost_serving.monitor import DriftMonitor
from roost_serving.profile import Profile
from roost_serving.protocol import (
    HEADER_LENGTH,
    BadRequestError,
    DecodedRequest,
    ErrorResponse,
    InferenceRequest,
    InferenceResponse,
    ModelMetadataResponse,
    NotFoundError,
    NotReadyError,
    PayloadTooLargeError,
    RoostError,
    ServerMetadataResponse,
    check_inputs,
    check_outputs,
    decode_request,
    encode_response,
    error_body,
)

log = logging.getLogger("roost.server")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

EXTENSIONS = ["binary_tensor_data"]
_JSON = b"application/json"
Payload = TypeVar("Payload")


class DataPlane:
    """Model lifecycle and inference, independent of HTTP routing."""

    def __init__(self, settings: Settings, registry: CollectorRegistry) -> None:
        """Create the metrics; nothing is loaded until :meth:`lifespan` runs."""
        self.settings = settings
        self.registry = registry
        self.metrics = ServingMetrics(registry, settings.name, settings.revision)
        self.version = settings.revision or "1"
        self.model: LoadedModel | None = None
        self.batcher: Batcher | None = None
        self.monitor: DriftMonitor | None = None
        self.load_error: str | None = None
        self.shutting_down = False
        self.on_fatal: Callable[[str], None] = lambda _: None
        self.grpc_port: int | None = None
        """The bound gRPC port once the gRPC server listens."""
        self._arriving = 0

    @property
    def ready(self) -> bool:
        """Loaded and not shutting down: what readiness reports."""
        return self.batcher is not None and not self.shutting_down

    def begin_shutdown(self) -> None:
        """Turn readiness false; requests still in flight (or arriving) are served."""
        self.shutting_down = True

    # --- lifecycle ---------------------------------------------------------------------------

    @asynccontextmanager
    async def lifespan(self, _app: Any = None) -> AsyncIterator[None]:
        """Load the model in the background while serving; stop the batcher on shutdown."""
        loader = asyncio.get_running_loop().create_task(self._load(), name="roost-load")
        try:
            yield
        finally:
            self.shutting_down = True
            loader.cancel()
            with suppress(asyncio.CancelledError):
                await loader
            if self.batcher is not None:
                await self.batcher.stop()

    async def _load(self) -> None:
        settings = self.settings
        try:
            model = await asyncio.to_thread(
                load_model, settings.model, settings.sha256, settings.threads
            )
            profile = await asyncio.to_thread(self._load_profile)
        except RoostError as exc:
            self.fail(exc.message)
            return
        monitor = DriftMonitor(
            profile, self.registry, settings.name, settings.revision, settings.drift_window
        )
        self.metrics.model_loaded(model.uri, model.sha256, model.platform, model.load_seconds)
        batcher = Batcher(
            model.run,
            max_batch_size=settings.max_batch_size,
            max_delay_s=settings.max_delay_ms / 1000.0,
            enabled=model.batchable,
            on_batch=self._observe_batch,
            on_dequeue=self.metrics.queue_duration.observe,
            arriving=lambda: self._arriving,
        )
        batcher.start()
        self.model, self.monitor, self.batcher = model, monitor, batcher
        # Everything allocated so far (imports, app, model) lives as long as the process; moving
        # it out of the collector's generations keeps full collections, which otherwise walk
        # every one of those objects and stall the loop for milliseconds, short.
        gc.collect()
        gc.freeze()
        log.info(
            "model %r loaded from %s in %.3fs (sha256 %s, batching %s)",
            settings.name,
            model.uri,
            model.load_seconds,
            model.sha256,
            "on" if batcher.enabled else "off: fixed batch dimension",
        )

    def _load_profile(self) -> Profile | None:
        if self.settings.profile is None:
            return None
        try:
            return Profile.load(self.settings.profile)
        except RoostError:
            raise
        except Exception as exc:  # any parse/fetch failure of the profile is a load failure
            raise RoostError(f"cannot load profile {self.settings.profile}: {exc}") from None

    def fail(self, reason: str) -> None:
        """The server cannot serve: record why and stop the process (exit status 1)."""
        self.load_error = reason
        log.error("model %r cannot be served: %s", self.settings.name, reason)
        self.on_fatal(reason)

    def _observe_batch(
        self, inputs: MutableMapping[str, np.ndarray] | Any, outputs: Any, rows: int
    ) -> None:
        self.metrics.batch_size.observe(rows)
        if self.monitor is not None:
            self.monitor.observe(inputs, outputs)

    # --- requests ----------------------------------------------------------------------------

    def loaded_model(self, name: str, version: str | None) -> LoadedModel:
        """The model for a name/version in a URL, or the error that answers the request."""
        if name != self.settings.name:
            raise NotFoundError(
                f"unknown model {name!r}; this server serves {self.settings.name!r}"
            )
        if version is not None and version != self.version:
            raise NotFoundError(
                f"unknown version {version!r} of model {name!r}; the served version is "
                f"{self.version!r}"
            )
        if self.model is None:
            raise NotReadyError(
                f"model {name!r} is not loaded yet; retry when /v2/health/ready is 200"
            )
        return self.model

    async def run(
        self,
        name: str,
        version: str | None,
        decode: Callable[[Payload], DecodedRequest],
        payload: Payload,
    ) -> tuple[DecodedRequest, dict[str, np.ndarray]]:
        """Decode, check and run one request of either protocol; returns it and its outputs.

        ``decode(payload)`` is the protocol's codec (REST body or gRPC message); the checks
        against the model and everything after them are shared.
        """
        self._arriving += 1
        try:
            model = self.loaded_model(name, version)
            batcher = self.batcher
            if batcher is None:
                raise NotReadyError(f"model {name!r} is not loaded yet")
            request = decode(payload)
            check_inputs(request, model.inputs)
            check_outputs(request, model.outputs)
        finally:
            self._arriving -= 1
        return request, await batcher.submit(request.inputs)

    async def infer(
        self, name: str, version: str | None, body: bytes, header_length: int | None
    ) -> tuple[bytes, int | None]:
        """Run one REST inference request; returns the response body and binary header length."""
        request, outputs = await self.run(name, version, _decode_body, (body, header_length))
        return encode_response(name, self.version, request, outputs)


def _decode_body(payload: tuple[bytes, int | None]) -> DecodedRequest:
    return decode_request(*payload)


def _parse_infer_path(path: str) -> tuple[str, str | None] | None:
    parts = path.split("/")
    # "", "v2", "models", name, "infer"  |  ..., name, "versions", v, "infer"
    if len(parts) == 5:
        return parts[3], None
    if len(parts) == 7 and parts[4] == "versions":
        return parts[3], parts[5]
    return None


class InferenceFastPath:
    """ASGI layer answering ``POST /v2/models/.../infer`` straight from the data plane."""

    def __init__(self, app: ASGIApp, plane: DataPlane) -> None:
        """Wrap ``app`` (FastAPI's stack), which answers everything else."""
        self.app = app
        self.plane = plane
        self.max_body = plane.settings.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Dispatch one ASGI connection scope."""
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            if path.startswith("/v2/models/") and path.endswith("/infer"):
                target = _parse_infer_path(path)
                if target is not None:
                    await self._infer(scope, receive, send, *target)
                    return
        await self.app(scope, receive, send)

    async def _infer(
        self, scope: Scope, receive: Receive, send: Send, name: str, version: str | None
    ) -> None:
        plane, metrics = self.plane, self.plane.metrics
        started = time.perf_counter()
        metrics.inflight.inc()
        header_length: int | None = None
        content_type = _JSON
        try:
            header_length = _header_length(scope)
            body = await self._read_body(scope, receive)
            payload, out_length = await plane.infer(name, version, body, header_length)
            status = 200
            extra: list[tuple[bytes, bytes]] = []
            if out_length is not None:
                content_type = b"application/octet-stream"
                extra.append((HEADER_LENGTH.encode(), str(out_length).encode()))
        except RoostError as exc:
            status, payload, extra, content_type = (
                exc.status_code,
                error_body(exc.message),
                [],
                _JSON,
            )
        except Exception as exc:  # never a stack trace in the body, always a logged one
            log.exception("inference failed")
            status, payload, extra = 500, error_body(f"internal error: {type(exc).__name__}"), []
            content_type = _JSON
        finally:
            metrics.inflight.dec()
        headers = [
            (b"content-type", content_type),
            (b"content-length", str(len(payload)).encode()),
            *extra,
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
        metrics.count_request(status)
        metrics.request_duration.observe(time.perf_counter() - started)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        for key, value in scope["headers"]:
            if key == b"content-length" and value.isdigit() and int(value) > self.max_body:
                raise PayloadTooLargeError(_too_large(int(value), self.max_body))
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise BadRequestError("client disconnected before sending the whole body")
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise PayloadTooLargeError(_too_large(size, self.max_body))
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(size: int, limit: int) -> str:
    return (
        f"request body of {size} bytes exceeds the limit of {limit} bytes; send fewer rows "
        "per request or raise --max-body-bytes / ROOST_MAX_BODY_BYTES"
    )


def _header_length(scope: Scope) -> int | None:
    for key, value in scope["headers"]:
        if key == b"inference-header-content-length":
            if not value.isdigit():
                raise BadRequestError(
                    "Inference-Header-Content-Length must be a non-negative integer"
                )
            return int(value)
    return None


def _health(key: str, ok: bool, **extra: str) -> Response:
    # The status code is the answer for Triton's and most clients; KServe's own client reads
    # {"live": true} / {"ready": true} from the body (and raises on a 503, as against KServe).
    body = orjson.dumps({**extra, key: ok})
    return Response(body, status_code=200 if ok else 503, media_type="application/json")


class RoostApp(FastAPI):
    """FastAPI with :class:`InferenceFastPath` as its outermost layer.

    Outside FastAPI's own ``__call__`` rather than registered as a middleware: that call and
    Starlette's error middleware (a per-request telemetry check, a wrapped ``send``) cost a
    fair share of a one-row request, and the fast path answers every error itself.
    """

    fast_path: InferenceFastPath

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Hand the connection scope to the fast path, which falls back to FastAPI."""
        await self.fast_path(scope, receive, send)


def create_app(settings: Settings, registry: CollectorRegistry | None = None) -> FastAPI:
    """Build the server app for ``settings``; metrics go to ``registry`` (a fresh one if None).

    The returned app's ``state.plane`` is its :class:`DataPlane`.
    """
    plane = DataPlane(settings, registry if registry is not None else CollectorRegistry())
    lifespan: Callable[[Any], AbstractAsyncContextManager[None]] = plane.lifespan
    if settings.grpc_port is not None:
        lifespan = grpc_lifespan(plane, settings.host, settings.grpc_port)
    app = RoostApp(
        title="roost",
        version=__version__,
        description="Open Inference Protocol (KServe V2) server for one ONNX model.",
        lifespan=lifespan,
    )
    app.state.plane = plane

    @app.exception_handler(RoostError)
    async def _roost_error(_request: Request, exc: RoostError) -> Response:
        return JSONResponse({"error": exc.message}, status_code=exc.status_code)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> Response:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.get("/v2/health/live", status_code=200, response_class=Response)
    async def live() -> Response:
        return _health("live", True)

    @app.get("/v2/health/ready", response_class=Response)
    async def ready() -> Response:
        return _health("ready", plane.ready)

    @app.get("/v2", response_model=ServerMetadataResponse)
    async def server_metadata() -> ServerMetadataResponse:
        return ServerMetadataResponse(name="roost", version=__version__, extensions=EXTENSIONS)

    def metadata(name: str, version: str | None) -> ModelMetadataResponse:
        model = plane.loaded_model(name, version)
        return ModelMetadataResponse(
            name=name,
            versions=[plane.version],
            platform=model.platform,
            inputs=[spec.metadata() for spec in model.inputs],
            outputs=[spec.metadata() for spec in model.outputs],
        )

    def model_ready(name: str, version: str | None) -> Response:
        try:
            plane.loaded_model(name, version)
        except NotReadyError:
            return _health("ready", False, name=name)
        return _health("ready", plane.ready, name=name)

    @app.get("/v2/models/{name}", response_model=ModelMetadataResponse)
    async def model_metadata(name: str) -> ModelMetadataResponse:
        return metadata(name, None)

    @app.get("/v2/models/{name}/versions/{version}", response_model=ModelMetadataResponse)
    async def version_metadata(name: str, version: str) -> ModelMetadataResponse:
        return metadata(name, version)

    @app.get("/v2/models/{name}/ready", response_class=Response)
    async def model_ready_route(name: str) -> Response:
        return model_ready(name, None)

    @app.get("/v2/models/{name}/versions/{version}/ready", response_class=Response)
    async def version_ready_route(name: str, version: str) -> Response:
        return model_ready(name, version)

    _document_infer(app)

    @app.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        return Response(generate_latest(plane.registry), media_type=CONTENT_TYPE_LATEST)

    app.fast_path = InferenceFastPath(partial(FastAPI.__call__, app), plane)
    return app


def _document_infer(app: FastAPI) -> None:
    """Describe the fast path's infer routes in the OpenAPI document (no handler behind them)."""
    components: dict[str, type[BaseModel]] = {
        "InferenceRequest": InferenceRequest,
        "InferenceResponse": InferenceResponse,
        "ErrorResponse": ErrorResponse,
    }

    def ref(name: str) -> dict[str, Any]:
        return {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}

    def operation(summary: str, params: list[str]) -> dict[str, Any]:
        errors = {
            str(code): {"description": phrase, "content": ref("ErrorResponse")}
            for code, phrase in (
                (400, "Bad Request"),
                (404, "Not Found"),
                (413, "Payload Too Large"),
                (500, "Internal Server Error"),
                (503, "Service Unavailable"),
            )
        }
        return {
            "summary": summary,
            "operationId": summary.lower().replace(" ", "_"),
            "parameters": [
                {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                for p in params
            ],
            "requestBody": {"required": True, "content": ref("InferenceRequest")},
            "responses": {
                "200": {"description": "Successful Response", "content": ref("InferenceResponse")},
                **errors,
            },
        }

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, model in components.items():
                document = model.model_json_schema(ref_template="#/components/schemas/{model}")
                for key, value in document.pop("$defs", {}).items():
                    schemas.setdefault(key, value)
                schemas[name] = document
            paths = schema.setdefault("paths", {})
            paths["/v2/models/{name}/infer"] = {"post": operation("Infer", ["name"])}
            paths["/v2/models/{name}/versions/{version}/infer"] = {
                "post": operation("Infer Version", ["name", "version"])
            }
        return app.openapi_schema or schema

    app.openapi = openapi  # type: ignore[method-assign]
