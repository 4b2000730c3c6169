"""``inference.GRPCInferenceService`` (Open Inference Protocol over gRPC) on the data plane.

The gRPC server runs in the same process and on the same event loop as the REST app, on its
own port (``--grpc-port``), and answers from the same :class:`~roost_serving.app.DataPlane`:
the same model, batcher (gRPC and REST requests share onnxruntime runs), metrics (labelled
``protocol="grpc"``), drift window, limits and readiness. A :class:`RoostError` becomes a
gRPC status whose code follows the error's HTTP status (:func:`grpc_code_name`) and whose
details are the message a REST client would read.

The service is registered from hand-written method handlers over the generated message
classes (``roost_serving.proto``), so no untyped generated stub code is needed.

Lifecycle (:func:`grpc_lifespan`): started once the REST lifespan has started the model load,
so ``ServerLive`` answers at once and ``ServerReady`` turns true with REST readiness; stopped
in the lifespan shutdown, after the REST listener has drained and before the batcher stops:
new RPCs are refused, those in flight get :data:`STOP_GRACE_SECONDS` to finish.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import grpc.aio

from roost_serving import __version__
from roost_serving.grpc_codec import (
    decode_infer_request,
    encode_infer_response,
    grpc_code_name,
    tensor_metadata,
)
from roost_serving.limits import ShedError, deadline_exceeded
from roost_serving.proto import open_inference_pb2 as pb
from roost_serving.protocol import NotReadyError, RoostError
from roost_serving.requestid import HEADER, SOURCE_HEADER, check, new_id, source_of

if TYPE_CHECKING:
    from roost_serving.app import DataPlane

log = logging.getLogger("roost.grpc")

SERVICE = "inference.GRPCInferenceService"
STOP_GRACE_SECONDS = 20.0
"""RPCs in flight at shutdown get this long; inside the pod's 30 s grace period after the
REST drain."""

Request = TypeVar("Request")
Response = TypeVar("Response")
Context = grpc.aio.ServicerContext[Any, Any]
Behaviour = Callable[[Any, Context], Awaitable[Any]]


def _status(http_status: int) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, grpc_code_name(http_status))  # type: ignore[no-any-return]


class InferenceService:
    """The six RPCs of ``GRPCInferenceService``, answered from one data plane."""

    def __init__(self, plane: DataPlane) -> None:
        """Serve ``plane``'s model."""
        self.plane = plane

    async def server_live(self, _request: pb.ServerLiveRequest, _ctx: Context) -> Any:
        """Live whenever the process answers at all."""
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, _request: pb.ServerReadyRequest, _ctx: Context) -> Any:
        """Ready as REST readiness is: model loaded, not shutting down."""
        return pb.ServerReadyResponse(ready=self.plane.ready)

    async def model_ready(self, request: pb.ModelReadyRequest, context: Context) -> Any:
        """Ready if the named model (and version) is served and loaded; unknown: NOT_FOUND."""
        try:
            self.plane.loaded_model(request.name, request.version or None)
        except NotReadyError:
            return pb.ModelReadyResponse(ready=False)
        except RoostError as exc:
            await context.abort(_status(exc.status_code), exc.message)
        return pb.ModelReadyResponse(ready=self.plane.ready)

    async def server_metadata(self, _request: pb.ServerMetadataRequest, _ctx: Context) -> Any:
        """Server name and version (the binary extension is a REST one: none listed here)."""
        return pb.ServerMetadataResponse(name="roost", version=__version__, extensions=[])

    async def model_metadata(self, request: pb.ModelMetadataRequest, context: Context) -> Any:
        """The model's versions, platform and tensor signature."""
        plane = self.plane
        try:
            model = plane.loaded_model(request.name, request.version or None)
        except RoostError as exc:
            await context.abort(_status(exc.status_code), exc.message)
        return pb.ModelMetadataResponse(
            name=request.name,
            versions=[plane.version],
            platform=model.platform,
            inputs=tensor_metadata(model.inputs),
            outputs=tensor_metadata(model.outputs),
        )

    async def model_infer(self, request: pb.ModelInferRequest, context: Context) -> Any:
        """One inference through the shared data plane, counted as ``protocol="grpc"``.

        The REST path's bounds apply alike: admission control (``--max-queue``: UNAVAILABLE at once,
        as a 503), the request deadline (the smaller of ``--request-timeout`` and the client's
        gRPC deadline: DEADLINE_EXCEEDED), shape/element/input/output limits and the response
        size limit (INVALID_ARGUMENT).
        """
        plane, metrics = self.plane, self.plane.metrics
        started = time.perf_counter()
        status = 500
        admitted = False
        header_id, source = _metadata(context)
        request_id = ""
        try:
            if header_id is not None:
                request_id = check(header_id, "the x-request-id metadata")
            plane.admit()
            admitted = True
            plane.inflight += 1
            seconds = plane.limits.request_timeout_s
            remaining = context.time_remaining()
            if remaining is not None:
                seconds = max(min(seconds, remaining), 0.001)
            name = request.model_name
            decode = partial(decode_infer_request, limits=plane.limits)
            try:
                async with asyncio.timeout(seconds):
                    done = await plane.run(
                        name,
                        request.model_version or None,
                        decode,
                        request,
                        header_id=request_id or None,
                        source=source,
                        protocol="grpc",
                    )
            except TimeoutError:
                raise deadline_exceeded(seconds) from None
            request_id = done.request_id
            plane.tee(done, None)  # a shadow step copies gRPC requests too
            response = encode_infer_response(
                name, plane.version, done.request, done.outputs, plane.limits
            )
            status = 200
            context.set_trailing_metadata(((HEADER, request_id),))
            return response
        except RoostError as exc:
            status = exc.status_code
            message = exc.message
            if isinstance(exc, ShedError):
                metrics.count_shed(exc.reason)
        except Exception as exc:  # never a stack trace to the client, always a logged one
            request_id = request_id or new_id()
            log.exception("inference failed (request id %s)", request_id)
            message = f"internal error: {type(exc).__name__}"
        finally:
            if admitted:
                plane.inflight -= 1
            metrics.count_request(status, "grpc", source)
            metrics.observe_duration(time.perf_counter() - started, "grpc", source)
        trailing = ((HEADER, request_id or new_id()),)
        await context.abort(_status(status), message, trailing_metadata=trailing)

    def handler(self) -> grpc.GenericRpcHandler:
        """The generic handler registering every RPC with its message (de)serializers."""
        table: dict[str, tuple[Behaviour, Any, Any]] = {
            "ServerLive": (self.server_live, pb.ServerLiveRequest, pb.ServerLiveResponse),
            "ServerReady": (self.server_ready, pb.ServerReadyRequest, pb.ServerReadyResponse),
            "ModelReady": (self.model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
            "ServerMetadata": (
                self.server_metadata,
                pb.ServerMetadataRequest,
                pb.ServerMetadataResponse,
            ),
            "ModelMetadata": (
                self.model_metadata,
                pb.ModelMetadataRequest,
                pb.ModelMetadataResponse,
            ),
            "ModelInfer": (self.model_infer, pb.ModelInferRequest, pb.ModelInferResponse),
        }
        methods = {
            name: grpc.unary_unary_rpc_method_handler(
                behaviour,
                request_deserializer=request_type.FromString,
                response_serializer=response_type.SerializeToString,
            )
            for name, (behaviour, request_type, response_type) in table.items()
        }
        return grpc.method_handlers_generic_handler(SERVICE, methods)


def _metadata(context: Context) -> tuple[str | None, str]:
    """The ``x-request-id`` (None when absent or blank) and source from the call's metadata."""
    header_id: str | None = None
    source = "client"
    for key, value in context.invocation_metadata() or ():
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        if key == HEADER and text.strip():
            header_id = text.strip()
        elif key == SOURCE_HEADER.decode():
            source = source_of(text.encode("latin-1", "replace"))
    return header_id, source


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def start_server(plane: DataPlane, host: str, port: int) -> tuple[grpc.aio.Server, int]:
    """Bind and start the gRPC server; returns it and the bound port (``port`` 0: any free one).

    Raises :class:`RoostError` when the address cannot be bound.
    """
    limit = plane.settings.max_body_bytes
    server = grpc.aio.server(
        options=[
            # The REST body limit applies to gRPC messages too (RESOURCE_EXHAUSTED above it).
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", -1),
            # gRPC sets SO_REUSEPORT by default: a second server on the same port would then
            # share it silently instead of failing to start.
            ("grpc.so_reuseport", 0),
        ]
    )
    server.add_generic_rpc_handlers([InferenceService(plane).handler()])
    try:
        bound = server.add_insecure_port(_address(host, port))
    except RuntimeError as exc:
        raise RoostError(f"cannot listen for gRPC on {_address(host, port)}: {exc}") from None
    if bound == 0:
        raise RoostError(f"cannot listen for gRPC on {_address(host, port)} (--grpc-port)")
    await server.start()
    return server, bound


def grpc_lifespan(
    plane: DataPlane, host: str, port: int
) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """The app lifespan: the data plane's, with the gRPC server started inside it."""

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        async with plane.lifespan(app):
            try:
                server, bound = await start_server(plane, host, port)
            except RoostError as exc:
                plane.fail(exc.message)
                yield
                return
            plane.grpc_port = bound
            log.info("gRPC GRPCInferenceService listening on %s", _address(host, bound))
            try:
                yield
            finally:
                await server.stop(STOP_GRACE_SECONDS)

    return lifespan
