"""PredictService: protos in, domain calls, protos out. Errors become status codes in `map_errors`."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from model_svc import metrics
from model_svc.model import Scored
from model_svc.predictor import Predictor
from protos import common_pb2, predict_pb2, predict_pb2_grpc
from sentiment.errors import ModelNotReady
from sentiment.rpc import map_errors, model_info

F = TypeVar("F", bound=Callable[..., Any])

SERVICE_NAME = predict_pb2.DESCRIPTOR.services_by_name["PredictService"].full_name


def observed(method: F) -> F:
    """Count each RPC by method and final status code and time it (outside `map_errors`)."""
    rpc = method.__name__
    latency = metrics.LATENCY.labels(rpc)
    ok = metrics.REQUESTS.labels(rpc, "OK")  # looked up once: the hot path's only label set

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        code = "OK"
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            status = context.code()
            code = status.name if isinstance(status, grpc.StatusCode) else "UNKNOWN"
            raise
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        finally:
            (ok if code == "OK" else metrics.REQUESTS.labels(rpc, code)).inc()
            latency.observe(time.perf_counter() - started)

    return wrapper  # type: ignore[return-value]


# Sending the reply takes time too: a text is computed only if its result can still reach the caller.
REPLY_MARGIN_S = 0.0005


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    """When the result must be ready, on the time.monotonic() clock: the caller's deadline less the
    time the reply takes to leave; None when the caller set no deadline."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining - REPLY_MARGIN_S


def _to_proto(result: Scored) -> predict_pb2.Prediction:
    return predict_pb2.Prediction(
        label=predict_pb2.Label.Value(result.label), score=result.score, model_version=result.model_version
    )


class PredictService(predict_pb2_grpc.PredictServiceServicer):
    def __init__(self, predictor: Predictor, current_version: Callable[[], str | None]) -> None:
        self._predictor = predictor
        self._current_version = current_version

    @observed
    @map_errors
    async def Predict(
        self, request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> predict_pb2.Prediction:
        return _to_proto(await self._predictor.predict(request.text, _deadline(context)))

    @observed
    @map_errors
    async def PredictBatch(
        self, request: predict_pb2.PredictBatchRequest, context: grpc.aio.ServicerContext
    ) -> predict_pb2.PredictBatchResponse:
        results = await self._predictor.predict_batch(request.texts, _deadline(context))
        return predict_pb2.PredictBatchResponse(predictions=[_to_proto(r) for r in results])

    @observed
    @map_errors
    async def GetModel(
        self, request: predict_pb2.GetModelRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.ModelInfo:
        model = self._predictor.model
        if model is None:
            raise ModelNotReady("no model loaded")
        return model_info(
            model.version, model.bundle.manifest, current=model.version == self._current_version()
        )
