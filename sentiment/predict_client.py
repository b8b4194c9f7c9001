"""Async Predict client for internal callers (stream_svc, benchmarks, tests).

One channel, `round_robin` over every address a `dns:///` target resolves to (a headless Service gives one
per pod), a deadline on each call, and retries with exponential backoff and jitter on UNAVAILABLE,
DEADLINE_EXCEEDED and RESOURCE_EXHAUSTED. Other errors (INVALID_ARGUMENT) are the caller's to handle.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from protos import predict_pb2, predict_pb2_grpc

log = logging.getLogger(__name__)

RETRYABLE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
)
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Prediction:
    label: str  # NEGATIVE / NEUTRAL / POSITIVE
    score: float
    model_version: str


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 5.0
    multiplier: float = 2.0

    def backoff_s(self, attempt: int) -> float:
        """Full-jitter backoff before retry number `attempt` (1-based)."""
        cap = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))
        return random.uniform(0, cap)


class PredictClient:
    """`async with PredictClient("dns:///model-svc:50052") as client: await client.predict_batch(texts)`."""

    def __init__(
        self,
        target: str,
        timeout_s: float = 10.0,
        retry: RetryPolicy = RetryPolicy(),
        root_certificates: bytes | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        options = [
            ("grpc.lb_policy_name", "round_robin"),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.enable_retries", 0),  # retries are ours, with backoff we can see and count
        ]
        if root_certificates is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self._channel = grpc.aio.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.aio.insecure_channel(target, options=options)
        self._stub = predict_pb2_grpc.PredictServiceStub(self._channel)
        self.timeout_s = timeout_s
        self.retry = retry
        self.retries = 0  # calls retried, for metrics

    async def __aenter__(self) -> PredictClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._channel.close()

    async def predict(self, text: str) -> Prediction:
        response = await self._call(self._stub.Predict, predict_pb2.PredictRequest(text=text))
        return _from_proto(response)

    async def predict_batch(self, texts: Sequence[str]) -> list[Prediction]:
        """One prediction per text, same order. Raises grpc.aio.AioRpcError once retries are spent."""
        response = await self._call(
            self._stub.PredictBatch, predict_pb2.PredictBatchRequest(texts=list(texts))
        )
        if len(response.predictions) != len(texts):
            raise RuntimeError(
                f"PredictBatch returned {len(response.predictions)} predictions for {len(texts)} texts"
            )
        return [_from_proto(p) for p in response.predictions]

    async def _call(self, method, request):  # type: ignore[no-untyped-def]
        for attempt in range(1, self.retry.attempts + 1):
            try:
                return await method(request, timeout=self.timeout_s, wait_for_ready=attempt > 1)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRYABLE or attempt == self.retry.attempts:
                    raise
                self.retries += 1
                delay = self.retry.backoff_s(attempt)
                log.warning(
                    "Predict %s (%s); retry %d in %.2fs", exc.code().name, exc.details(), attempt, delay
                )
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")


def _from_proto(message: predict_pb2.Prediction) -> Prediction:
    return Prediction(predict_pb2.Label.Name(message.label), message.score, message.model_version)
