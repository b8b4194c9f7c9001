"""gRPC plumbing the servers share: error mapping, health + reflection, server options, signal handling."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from protos import common_pb2
from sentiment import errors
from sentiment.bundle import Manifest, Preprocessing
from sentiment.timefmt import parse_utc_iso

log = logging.getLogger(__name__)

STATUS_FOR: dict[type[errors.SentimentError], grpc.StatusCode] = {
    errors.InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    errors.InvalidDataset: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.ModelNotReady: grpc.StatusCode.UNAVAILABLE,
    errors.Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.DeadlineExpired: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.BundleError: grpc.StatusCode.FAILED_PRECONDITION,
}

F = TypeVar("F", bound=Callable[..., Any])


def status_for(exc: BaseException) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in STATUS_FOR:
            return STATUS_FOR[cls]
    return grpc.StatusCode.INTERNAL


async def _abort(context: grpc.aio.ServicerContext, exc: Exception, rpc: str) -> None:
    if isinstance(exc, errors.SentimentError):
        await context.abort(status_for(exc), str(exc))
    log.exception("unhandled error in %s", rpc, extra={"rpc": rpc})
    await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")


def map_errors(method: F) -> F:
    """Decorate a servicer method (unary or server-streaming) so domain errors become status codes.

    SentimentError subclasses map through STATUS_FOR with their message; anything else is logged with
    its traceback and answered INTERNAL without internals. Aborts raised by the method pass through.
    """
    rpc = method.__name__
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                async for item in method(self, request, context):
                    yield item
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception as exc:
                await _abort(context, exc, rpc)

        return stream  # type: ignore[return-value]

    @functools.wraps(method)
    async def unary(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            await _abort(context, exc, rpc)

    return unary  # type: ignore[return-value]


class _Undecodable:
    """What the deserializer hands on for a request that is not a valid message (e.g. invalid UTF-8)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _tolerant(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError as exc:
            return _Undecodable(str(exc)[:120])

    return parse


class UndecodableRequests(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc ships no types
    """A request whose bytes are not a valid message (a string field that is not UTF-8, say) is answered
    INVALID_ARGUMENT with a short message, logged in one line and reported to `on_invalid(rpc_name)`.

    Without it grpc answers UNKNOWN with the internal exception in the details and logs a traceback per
    request: the deserializer is wrapped so the failure reaches a handler that can answer properly.
    """

    def __init__(self, on_invalid: Callable[[str], None] = lambda rpc: None) -> None:
        self._on_invalid = on_invalid

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None or handler.request_streaming:
            return handler
        rpc = str(handler_call_details.method).rsplit("/", 1)[-1]
        kind = "unary_unary" if not handler.response_streaming else "unary_stream"
        behavior = getattr(handler, kind)
        on_invalid = self._on_invalid

        async def refuse(request: _Undecodable, context: grpc.aio.ServicerContext) -> None:
            on_invalid(rpc)
            log.warning("%s: undecodable request refused: %s", rpc, request.reason, extra={"rpc": rpc})
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "the request is not a valid message (is every string UTF-8?)",
            )

        if inspect.isasyncgenfunction(behavior):

            async def checked(request: Any, context: grpc.aio.ServicerContext) -> Any:
                if isinstance(request, _Undecodable):
                    await refuse(request, context)
                    return
                async for response in behavior(request, context):
                    yield response

        else:  # a unary call, or a stream written with context.write (the health Watch)

            async def checked(request: Any, context: grpc.aio.ServicerContext) -> Any:  # type: ignore[misc]
                if isinstance(request, _Undecodable):
                    return await refuse(request, context)
                return await behavior(request, context)

        return handler._replace(
            request_deserializer=_tolerant(handler.request_deserializer), **{kind: checked}
        )


def server_options(max_message_bytes: int, reuse_port: bool = False) -> list[tuple[str, Any]]:
    """Options set on purpose: message size limits both ways, keepalive tolerance, SO_REUSEPORT."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ]


# Answers SERVING for as long as the process can answer at all: the target of liveness probes, so a
# server that is up but not ready (no model promoted yet) is kept out of endpoints, not restarted.
LIVENESS_SERVICE = "liveness"


async def add_health_and_reflection(
    server: grpc.aio.Server, service_names: Iterable[str]
) -> health.aio.HealthServicer:
    """Register grpc.health.v1 and reflection.

    The overall status ("") and each named service start NOT_SERVING (readiness: the caller flips them
    with `set_serving`); LIVENESS_SERVICE is SERVING from the start.
    """
    names = list(service_names)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    await set_serving(health_servicer, names, False)
    await health_servicer.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    return health_servicer


async def set_serving(
    health_servicer: health.aio.HealthServicer, service_names: Iterable[str], serving: bool
) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ["", *service_names]:
        await health_servicer.set(name, status)


def bind(server: grpc.aio.Server, address: str, tls_cert: str = "", tls_key: str = "") -> int:
    """Bind `address` (plaintext, or TLS when cert and key paths are given); returns the port (for port 0)."""
    if tls_cert and tls_key:
        with open(tls_key, "rb") as key, open(tls_cert, "rb") as cert:
            credentials = grpc.ssl_server_credentials([(key.read(), cert.read())])
        port = server.add_secure_port(address, credentials)
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind {address}")
    return int(port)


async def wait_for_signal(
    signals: Iterable[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
) -> signal.Signals:
    """Block until one of `signals` arrives (Kubernetes sends SIGTERM; Python as PID 1 ignores it otherwise)."""
    loop = asyncio.get_running_loop()
    received: asyncio.Future[signal.Signals] = loop.create_future()

    def on_signal(sig: signal.Signals) -> None:
        if not received.done():
            received.set_result(sig)

    for sig in signals:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        return await received
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


class Stoppable(Protocol):
    async def stop(self, grace_s: float) -> None: ...


async def serve_until_signal(start: Callable[[], Awaitable[Stoppable]], grace_s: float) -> None:
    """Start a server, wait for SIGTERM or SIGINT, stop it within `grace_s`.

    The handlers are in place before the start begins, so a signal during a slow start (model_svc loads its
    model) still stops the server once it is up, rather than killing the process half-started.
    """
    signalled = asyncio.create_task(wait_for_signal())
    await asyncio.sleep(0)  # let the task install the handlers
    try:
        server = await start()
    except BaseException:
        signalled.cancel()
        raise
    sig = await signalled
    log.info("%s received; shutting down (grace %.1fs)", sig.name, grace_s)
    await server.stop(grace_s)


def metrics_to_proto(metrics: Mapping[str, float]) -> common_pb2.Metrics:
    """Metrics as a manifest or a job records them; keys the proto lacks are ignored."""
    message = common_pb2.Metrics()
    for name, value in metrics.items():
        field = message.DESCRIPTOR.fields_by_name.get(name)
        if field is not None and isinstance(value, int | float):
            setattr(message, name, int(value) if field.cpp_type == field.CPPTYPE_INT64 else float(value))
    return message


def model_info(
    version: str, manifest: Manifest, preprocessing: Preprocessing, current: bool
) -> common_pb2.ModelInfo:
    """ModelInfo of a published bundle: its record from the manifest, its thresholds and sequence length
    from `preprocessing.json` (what serving uses). Fields a manifest lacks stay unset.

    The one translation both TrainService.ListModels/PromoteModel and PredictService.GetModel use.
    """
    info = common_pb2.ModelInfo(
        version=version,
        metrics=metrics_to_proto(manifest.metrics),
        thresholds=common_pb2.Thresholds(
            negative_max=preprocessing.thresholds.negative_max,
            positive_min=preprocessing.thresholds.positive_min,
        ),
        dataset_uri=manifest.dataset_uri,
        current=current,
        sequence_length=preprocessing.sequence_length,
        vocabulary_size=manifest.vocabulary_size,
    )
    if manifest.created_at:
        info.created_at.FromDatetime(parse_utc_iso(manifest.created_at))
    return info
