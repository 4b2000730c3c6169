"""The HTTP side of the server: app factory, lifespan, Open Inference Protocol routes, /metrics.

:func:`create_app` builds a FastAPI app around a :class:`DataPlane`, which owns the model, the
batcher, the metrics and the drift monitor. ``POST .../infer`` is answered by a thin ASGI layer
in front of FastAPI that calls the data plane directly (:mod:`roost_serving.fastpath`): routing,
dependency injection and response classes cost several times the model run of a small tabular
model, and this one route carries all the traffic. FastAPI registers no handler for it; the
OpenAPI document describes it all the same (:mod:`roost_serving.openapi`). Everything else goes
through FastAPI. With ``--grpc-port`` the same data plane also answers the Open Inference
Protocol over gRPC (:mod:`roost_serving.grpc_server`).

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
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from functools import partial
from typing import Any, TypeVar

import numpy as np
import orjson
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from roost_serving import __version__
from roost_serving.batching import Batcher
from roost_serving.config import Settings
from roost_serving.direct import DirectInfer
from roost_serving.fastpath import InferenceFastPath
from roost_serving.fetch import FetchError, FetchPolicy, fetch_bytes, fetch_within
from roost_serving.groundtruth import GroundTruth
from roost_serving.grpc_server import grpc_lifespan
from roost_serving.inference_log import InferenceLog, open_log, shutdown_deadline
from roost_serving.limits import (
    Limits,
    queue_full,
)
from roost_serving.metrics import ServingMetrics
from roost_serving.model import LoadedModel, load_model
from roost_serving.monitor import DriftMonitor
from roost_serving.openapi import document_infer
from roost_serving.profile import Profile
from roost_serving.profile_check import check_profile
from roost_serving.protocol import (
    DecodedRequest,
    ModelMetadataResponse,
    NotFoundError,
    NotReadyError,
    RoostError,
    ServerMetadataResponse,
    check_inputs,
    check_outputs,
    decode_request,
    encode_response,
)
from roost_serving.redact import redact_uri
from roost_serving.requestid import Inference, resolve
from roost_serving.runtime import RuntimeConfig, install_routes
from roost_serving.shadow import ShadowTee

log = logging.getLogger("roost.server")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

EXTENSIONS = ["binary_tensor_data"]
_JSON = b"application/json"
_CLOSE = (b"connection", b"close")

OFFLOAD_BYTES = 64 * 1024
"""Bodies larger than this are decoded (and their responses encoded) on a codec thread: a
16 MiB JSON body takes the CPU for a few hundred milliseconds, which on the event loop would
delay every other request and the health probes by as much."""

Payload = TypeVar("Payload")


class DataPlane:
    """Model lifecycle and inference, independent of HTTP routing."""

    def __init__(self, settings: Settings, registry: CollectorRegistry) -> None:
        """Create the metrics; nothing is loaded until :meth:`lifespan` runs."""
        self.settings = settings
        self.registry = registry
        self.metrics = ServingMetrics(registry, settings.name, settings.revision)
        self.version = settings.revision or "1"
        self.runtime = RuntimeConfig(registry, settings.name, settings.revision)
        """What the operator pushes at run time (``PUT /v2/roost/runtime``)."""
        self.shadow = ShadowTee(registry, settings.name, settings.revision)
        """Copies of requests to the canary during a shadow step (the ``shadow`` section)."""
        self.runtime.subscribe("shadow", self.shadow.configure)
        self.model: LoadedModel | None = None
        self.batcher: Batcher | None = None
        self.monitor: DriftMonitor | None = None
        self.truth = GroundTruth(settings, registry, self.runtime)
        """Predictions kept for labels, ``POST .../feedback`` and its peers (groundtruth)."""
        self.load_error: str | None = None
        self.shutting_down = False
        self.on_fatal: Callable[[str], None] = lambda _: None
        self.limits = settings.limits()
        self.inflight = 0
        """Inference requests inside the server now (admission control: ``--max-queue``)."""
        self.metrics.track_inflight(lambda: self.inflight)
        self.observers: list[Callable[[Inference], None]] = [self.truth.remember]
        """Called on the event loop after each successful model run, before the response is
        encoded (shadow tee, inference log, ...); they must not block: queue and return."""
        self.grpc_port: int | None = None
        """The bound gRPC port once the gRPC server listens."""
        self.inference_log: InferenceLog | None = None
        """The inference log (``--log-uri``) once the model is loaded; feedback appends here."""
        self.shutdown_started: float | None = None
        """``time.monotonic()`` of the termination signal: the grace period counts from it."""
        self._arriving = 0
        # One thread: big requests are decoded in parallel with the model run, at most one
        # competes with the event loop for the GIL, and one large decoded body is built at once.
        self._codec = ThreadPoolExecutor(max_workers=1, thread_name_prefix="roost-codec")

    @property
    def ready(self) -> bool:
        """Loaded and not shutting down: what readiness reports."""
        return self.batcher is not None and not self.shutting_down

    def begin_shutdown(self) -> None:
        """Turn readiness false; requests still in flight (or arriving) are served."""
        self.shutting_down = True
        self.shutdown_started = time.monotonic()
        if self.inference_log is not None:
            self.inference_log.flush_soon()

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
                # uvicorn has already waited for (or cancelled) the requests; what is still
                # queued has nobody waiting, so the grace period is not spent on it.
                with suppress(TimeoutError):
                    await asyncio.wait_for(self.batcher.stop(), 1.0)
            await asyncio.to_thread(self.close_log)
            self._codec.shutdown(wait=False, cancel_futures=True)
            await self.shadow.close()

    def close_log(self) -> None:
        """Flush and close the inference log within the shutdown deadline (idempotent)."""
        if self.inference_log is not None:
            self.inference_log.close(
                shutdown_deadline(self.shutdown_started, self.settings.grace_seconds)
            )

    async def _load(self) -> None:
        settings = self.settings
        policy = FetchPolicy(
            connect_timeout=settings.fetch_connect_timeout,
            read_timeout=settings.fetch_read_timeout,
            attempts=settings.fetch_attempts,
        )
        started = time.monotonic()
        try:
            model = await fetch_within(
                settings.fetch_timeout,
                "model",
                lambda: load_model(settings.model, settings.sha256, settings.threads, policy),
            )
            left = settings.fetch_timeout - (time.monotonic() - started)
            profile = await fetch_within(max(left, 0.001), "profile", lambda: self._profile(policy))
            if profile is not None and settings.profile is not None:
                check_profile(profile, model.inputs, model.outputs, redact_uri(settings.profile))
        except RoostError as exc:
            self.fail(exc.message)
            return
        if settings.log_uri is not None:
            try:
                self.inference_log = open_log(settings, self.registry, model.inputs, profile)
            except ValueError as exc:
                self.fail(f"cannot open the inference log: {exc}")
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
        self.shadow.batchable = model.batchable
        if monitor.compare is not None:
            # The stable's output edges, pushed by the operator (roost_serving.compare).
            self.runtime.subscribe("compare", monitor.compare.apply)
        self.truth.model_loaded(model, profile, self.inference_log)
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

    def _profile(self, policy: FetchPolicy) -> Profile | None:
        uri = self.settings.profile
        if uri is None:
            return None
        raw = fetch_bytes(uri, policy, "profile")
        try:
            return Profile.from_json(raw)
        except Exception as exc:  # any parse failure of the profile is a load failure
            raise FetchError(f"cannot load profile {redact_uri(uri)}: {exc}") from None

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

    def admit(self) -> None:
        """Admission control: raise the 503 at once when ``--max-queue`` requests are inside."""
        if self.inflight >= self.limits.max_queue:
            raise queue_full(self.inflight, self.limits)

    async def run(
        self,
        name: str,
        version: str | None,
        decode: Callable[[Payload], DecodedRequest],
        payload: Payload,
        offload: bool = False,
        header_id: str | None = None,
        source: str = "client",
        protocol: str = "rest",
    ) -> Inference:
        """Decode, check and run one request of either protocol; returns it with its outputs.

        ``decode(payload)`` is the protocol's codec (REST body or gRPC message); the checks
        against the model and everything after them are shared. ``offload`` decodes on the
        codec thread (large bodies), so the event loop keeps answering probes meanwhile.
        The request id is the decoded request's own, else ``header_id``, else a fresh one
        (:func:`roost_serving.requestid.resolve`); it is also set on the decoded request, so
        the response carries it. ``source="validation"`` requests (the operator's validation
        and warm-up) run beside the batcher, so drift and prediction monitors never see them.
        A sampled client request is recorded in the inference log, answered or refused.
        """
        inference_log = self.inference_log
        if inference_log is None or source != "client" or not inference_log.sampled():
            return await self._run(name, version, decode, payload, offload, header_id, source)
        return await inference_log.around(
            protocol,
            lambda held: self._run(
                name, version, decode, payload, offload, header_id, source, held
            ),
        )

    async def _run(
        self,
        name: str,
        version: str | None,
        decode: Callable[[Payload], DecodedRequest],
        payload: Payload,
        offload: bool,
        header_id: str | None,
        source: str,
        held: list[DecodedRequest] | None = None,
    ) -> Inference:
        self._arriving += 1
        try:
            model = self.serving_model(name, version)
            if offload:
                loop = asyncio.get_running_loop()
                request = await loop.run_in_executor(self._codec, decode, payload)
            else:
                request = decode(payload)
            request_id = self.check(model, request, header_id, held)
        finally:
            self._arriving -= 1
        if source == "validation":
            loop = asyncio.get_running_loop()
            outputs = await loop.run_in_executor(self._codec, model.run, request.inputs)
        else:
            batcher = self.batcher
            assert batcher is not None  # serving_model checked it
            outputs = await batcher.submit(request.inputs)
        return self.answered(request_id, request, outputs, source)

    def serving_model(self, name: str, version: str | None) -> LoadedModel:
        """The model for a request, loaded and with its batcher running, or the error."""
        model = self.loaded_model(name, version)
        if self.batcher is None:
            raise NotReadyError(f"model {name!r} is not loaded yet")
        return model

    def check(
        self,
        model: LoadedModel,
        request: DecodedRequest,
        header_id: str | None,
        held: list[DecodedRequest] | None = None,
    ) -> str:
        """Give a decoded request its id (returned) and check it against the model (the 400s).

        ``held`` (a sampled request's inference-log holder) gets the request once its id is
        known, so a refusal from here on is recorded with its inputs.
        """
        request.id = request_id = resolve(request.id, header_id)
        if held is not None:
            held.append(request)
        check_inputs(request, model.input_index)
        check_outputs(request, model.outputs)
        return request_id

    def answered(
        self,
        request_id: str,
        request: DecodedRequest,
        outputs: dict[str, np.ndarray],
        source: str,
    ) -> Inference:
        """The model ran: hand the inference to the observers (they queue and return)."""
        done = Inference(request_id, request, outputs, source)
        for observer in self.observers:
            try:
                observer(done)
            except Exception:  # a downstream consumer must never fail the client's request
                log.exception("inference observer failed (request id %s)", done.request_id)
        return done

    async def infer(
        self,
        name: str,
        version: str | None,
        body: bytes,
        header_length: int | None,
        header_id: str | None = None,
        source: str = "client",
    ) -> tuple[bytes, int | None, str]:
        """Run one REST inference request; returns the response body, binary header length
        and the request id.

        A client request may be copied to the canary during a shadow step (``self.shadow``);
        roost's own requests (validation, shadow copies) never are.
        """
        offload = len(body) > OFFLOAD_BYTES
        decode = partial(_decode_body, limits=self.limits)
        done = await self.run(
            name, version, decode, (body, header_length), offload, header_id, source
        )
        self.tee(done, body, header_length)
        if offload:
            loop = asyncio.get_running_loop()
            encoded = await loop.run_in_executor(
                self._codec, self.encode, name, done.request, done.outputs
            )
        else:
            encoded = self.encode(name, done.request, done.outputs)
        return encoded[0], encoded[1], done.request_id

    def tee(self, done: Inference, body: bytes | None, header_length: int | None = None) -> None:
        """Offer an answered client request to the shadow tee (REST and gRPC alike).

        A JSON REST body is copied as it came; a binary REST body (``header_length``) or a
        gRPC message (``body`` None) is rebuilt from the decoded inputs.
        """
        if done.source != "client" or self.shadow.target is None:
            return  # roost's own requests (validation, copies) are never copied
        request = done.request
        reencode = body is None or header_length is not None or request.binary_default
        self.shadow.offer(
            body or b"",
            reencode or bool(request.binary_outputs),
            done.request_id,
            request.inputs,
            done.outputs,
            request.outputs,
        )

    def encode(
        self, name: str, request: DecodedRequest, outputs: dict[str, np.ndarray]
    ) -> tuple[bytes, int | None]:
        """The REST response body for a request's outputs, and its binary header length."""
        return encode_response(name, self.version, request, outputs, self.limits)


def _decode_body(payload: tuple[bytes, int | None], limits: Limits) -> DecodedRequest:
    return decode_request(*payload, limits)


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
    direct: DirectInfer
    """What the connection answers without ASGI (roost_serving.direct), on the same plane."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Hand the connection scope to the fast path, which falls back to FastAPI."""
        await self.fast_path(scope, receive, send)


def create_app(settings: Settings, registry: CollectorRegistry | None = None) -> RoostApp:
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
        # The headers carry e.g. Allow on a 405.
        return JSONResponse(
            {"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(Exception)
    async def _internal_error(_request: Request, exc: Exception) -> Response:
        log.error("request failed", exc_info=exc)
        return JSONResponse({"error": f"internal error: {type(exc).__name__}"}, status_code=500)

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

    document_infer(app)
    install_routes(app, plane.runtime)

    @app.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        plane.truth.table.sweep()  # the accuracy gate's cohort counters, current when read
        return Response(generate_latest(plane.registry), media_type=CONTENT_TYPE_LATEST)

    app.fast_path = InferenceFastPath(partial(FastAPI.__call__, app), plane)
    app.direct = DirectInfer(plane, min(settings.max_body_bytes, OFFLOAD_BYTES))
    return app
