"""PredictService: protos in, domain calls, protos out. Errors become status codes in `map_errors`."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from model_svc.inference import Inference
from model_svc.metrics import ModelMetrics
from protos import common_pb2, predict_pb2, predict_pb2_grpc
from sentiment.errors import ModelNotReady
from sentiment.prediction import Prediction
from sentiment.rpc import map_errors, model_info

F = TypeVar("F", bound=Callable[..., Any])

SERVICE_NAME = predict_pb2.DESCRIPTOR.services_by_name["PredictService"].full_name


class _Observer:
    """One RPC's series, looked up once: the hot path touches only the OK counter and the histogram."""

    def __init__(self, metrics: ModelMetrics, rpc: str) -> None:
        self.latency = metrics.latency.labels(rpc)
        self.ok = metrics.requests.labels(rpc, "OK")
        self._requests = metrics.requests
        self._rpc = rpc

    def done(self, code: str, seconds: float) -> None:
        (self.ok if code == "OK" else self._requests.labels(self._rpc, code)).inc()
        self.latency.observe(seconds)


def observed(method: F) -> F:
    """Count each RPC by method and final status code and time it (outside `map_errors`)."""
    rpc = method.__name__

    @functools.wraps(method)
    async def wrapper(self: PredictService, request: Any, context: grpc.aio.ServicerContext) -> Any:
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
            self.observers[rpc].done(code, time.perf_counter() - started)

    return wrapper  # type: ignore[return-value]


# Sending the reply takes time too: a text is computed only if its result can still reach the caller.
REPLY_MARGIN_S = 0.0005


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    """When the result must be ready, on the time.monotonic() clock: the caller's deadline less the
    time the reply takes to leave; None when the caller set no deadline."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining - REPLY_MARGIN_S


LABEL_CODES = {name: predict_pb2.Label.Value(name) for name in predict_pb2.Label.keys()}


def _to_proto(result: Prediction) -> predict_pb2.Prediction:
    return predict_pb2.Prediction(
        label=LABEL_CODES[result.label], score=result.score, model_version=result.model_version
    )


class PredictService(predict_pb2_grpc.PredictServiceServicer):  # type: ignore[misc]  # generated, untyped
    """Predict, PredictBatch and GetModel over the domain's `Inference`; `current_version` names what
    models/CURRENT named at the last poll (GetModel's `current`)."""

    def __init__(self, inference: Inference, current_version: Callable[[], str | None]) -> None:
        self._inference = inference
        self._current_version = current_version
        self.observers = {
            rpc: _Observer(inference.metrics, rpc) for rpc in ("Predict", "PredictBatch", "GetModel")
        }

    @observed
    @map_errors
    async def Predict(
        self, request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> predict_pb2.Prediction:
        return _to_proto(await self._inference.predict(request.text, _deadline(context)))

    @observed
    @map_errors
    async def PredictBatch(
        self, request: predict_pb2.PredictBatchRequest, context: grpc.aio.ServicerContext
    ) -> predict_pb2.PredictBatchResponse:
        results = await self._inference.predict_batch(request.texts, _deadline(context))
        return predict_pb2.PredictBatchResponse(predictions=[_to_proto(r) for r in results])

    @observed
    @map_errors
    async def GetModel(
        self, request: predict_pb2.GetModelRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.ModelInfo:
        model = self._inference.model
        if model is None:
            raise ModelNotReady("no model loaded")
        return model_info(
            model.version,
            model.bundle.manifest,
            model.bundle.preprocessing,
            current=model.version == self._current_version(),
        )
