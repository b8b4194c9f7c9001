"""Async Predict client for internal callers (stream_svc, benchmarks, tests); it speaks gRPC so they need not.

`connections` channels (DEFAULT_CONNECTIONS, 4, unless told), each `round_robin` over every address a
`dns:///` target resolves to (a headless Service gives one per pod), so each pod gets that many connections,
and calls take the channels in turn: a pod running WORKERS server processes hands each connection to one of
them (the kernel picks), so a client needs several connections to a pod to reach all its workers (one would
leave all but one worker idle). A deadline on each call, and retries with
exponential backoff and full jitter on UNAVAILABLE, DEADLINE_EXCEEDED and RESOURCE_EXHAUSTED (a retry takes
the next channel). A call that still fails raises the domain error of `sentiment.errors` its status code
stands for, the inverse of `sentiment.rpc.STATUS_FOR` (INVALID_ARGUMENT:
`InvalidInput`, UNAVAILABLE: `ModelNotReady`, RESOURCE_EXHAUSTED: `Overloaded`, DEADLINE_EXCEEDED:
`DeadlineExpired`, NOT_FOUND: `NotFound`, ...), or `PredictFailed` for a code no domain error stands for;
the message names the code and the server's details (`UNAVAILABLE: model_svc is down`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from protos import predict_pb2, predict_pb2_grpc
from sentiment.errors import SentimentError
from sentiment.prediction import Prediction
from sentiment.retry import full_jitter_s
from sentiment.rpc import STATUS_FOR

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_CONNECTIONS",
    "ERROR_FOR",
    "PredictClient",
    "PredictFailed",
    "Prediction",
    "RetryPolicy",
    "domain_error",
]

RETRYABLE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
)
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# The manifests' pod runs 2 workers; 4 connections leave one idle 1 time in 8 (16: 1 in 32768), at the cost
# of 3 more connections than a one-worker pod needs (calls still take them in turn).
DEFAULT_CONNECTIONS = 4
# Reversed, so that where several errors share a code the first listed (the general one) stands for it.
ERROR_FOR: dict[grpc.StatusCode, type[SentimentError]] = {
    code: error for error, code in reversed(STATUS_FOR.items())
}


class PredictFailed(SentimentError):
    """model_svc answered a status code no domain error stands for (INTERNAL, UNKNOWN, CANCELLED, ...)."""


def domain_error(code: grpc.StatusCode, details: str) -> SentimentError:
    """The domain error a status code stands for, its message naming the code: `UNAVAILABLE: <details>`."""
    return ERROR_FOR.get(code, PredictFailed)(f"{code.name}: {details}")


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 5.0
    multiplier: float = 2.0

    def backoff_s(self, attempt: int) -> float:
        """Full-jitter backoff before retry number `attempt` (1-based)."""
        return full_jitter_s(attempt, self.initial_backoff_s, self.max_backoff_s, self.multiplier)


class PredictClient:
    """`async with PredictClient("dns:///model-svc:50052") as client: await client.predict_batch(texts)`.

    `retries` counts the calls retried (the stream folds it into its metrics).
    """

    def __init__(
        self,
        target: str,
        timeout_s: float = 10.0,
        retry: RetryPolicy = RetryPolicy(),
        root_certificates: bytes | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        connections: int = DEFAULT_CONNECTIONS,
    ) -> None:
        if connections < 1:
            raise ValueError("connections must be >= 1")
        options = [
            ("grpc.lb_policy_name", "round_robin"),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.enable_retries", 0),  # retries are ours, with backoff we can see and count
            # Channels with the same arguments would share one connection a pod (the global pool).
            ("grpc.use_local_subchannel_pool", 1),
        ]
        if root_certificates is None:
            self._channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(connections)]
        else:
            credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self._channels = [
                grpc.aio.secure_channel(target, credentials, options=options) for _ in range(connections)
            ]
        self._stubs = itertools.cycle([predict_pb2_grpc.PredictServiceStub(ch) for ch in self._channels])
        self.timeout_s = timeout_s
        self.retry = retry
        self.retries = 0

    async def __aenter__(self) -> PredictClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await asyncio.gather(*(channel.close() for channel in self._channels))

    async def predict(self, text: str) -> Prediction:
        response = await self._call("Predict", predict_pb2.PredictRequest(text=text))
        return _from_proto(response)

    async def predict_batch(self, texts: Sequence[str]) -> list[Prediction]:
        """One prediction per text, same order; raises a domain error once retries are spent."""
        response = await self._call("PredictBatch", predict_pb2.PredictBatchRequest(texts=list(texts)))
        if len(response.predictions) != len(texts):
            raise RuntimeError(
                f"PredictBatch returned {len(response.predictions)} predictions for {len(texts)} texts"
            )
        return [_from_proto(p) for p in response.predictions]

    async def _call(self, method: str, request: Any) -> Any:
        """`method` of the next channel's stub; a retry takes the channel after it."""
        for attempt in range(1, self.retry.attempts + 1):
            call = getattr(next(self._stubs), method)
            try:
                return await call(request, timeout=self.timeout_s, wait_for_ready=attempt > 1)
            except grpc.aio.AioRpcError as exc:
                code, details = exc.code(), exc.details() or ""
                if code not in RETRYABLE or attempt == self.retry.attempts:
                    raise domain_error(code, details) from exc
                self.retries += 1
                delay = self.retry.backoff_s(attempt)
                log.warning("Predict %s (%s); retry %d in %.2fs", code.name, details, attempt, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")


def _from_proto(message: predict_pb2.Prediction) -> Prediction:
    return Prediction(predict_pb2.Label.Name(message.label), message.score, message.model_version)
