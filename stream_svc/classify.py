"""The stream's view of the model: the `SentimentClient` protocol, and `classify`, which turns failures into reasons.

`sentiment.predict_client.PredictClient` implements the protocol (the tests have a fake); gRPC stays in
that client, which turns status codes into the domain errors of `sentiment.errors`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from sentiment.errors import InvalidInput, SentimentError
from sentiment.prediction import Prediction

log = logging.getLogger(__name__)


class SentimentClient(Protocol):
    """What the pipeline asks of the model service."""

    @property
    def retries(self) -> int:
        """Calls retried so far (only grows; the pipeline reports it)."""
        ...

    async def predict_batch(self, texts: Sequence[str]) -> list[Prediction]:
        """One prediction per text, same order; raises once its own retries are spent: `InvalidInput`
        when a text is unusable, another `SentimentError` (`ModelNotReady`, `Overloaded`, ...) otherwise."""
        ...


async def classify(client: SentimentClient, texts: Sequence[str]) -> list[Prediction | str]:
    """One prediction per text, or the reason there is none (`predict failed: ...`), same order.

    An `InvalidInput` is isolated by halving the batch until the texts it names are alone, so one bad
    text does not cost its neighbours their predictions.
    """
    try:
        predictions = list(await client.predict_batch(texts))
        if len(predictions) != len(texts):
            raise RuntimeError(f"{len(predictions)} predictions for {len(texts)} texts")
        return list(predictions)
    except Exception as exc:
        if isinstance(exc, InvalidInput) and len(texts) > 1:
            half = len(texts) // 2
            return await classify(client, texts[:half]) + await classify(client, texts[half:])
        if isinstance(
            exc, SentimentError
        ):  # safe to show; PredictClient's names the status (UNAVAILABLE: ...)
            reason = f"predict failed: {exc}"
        else:
            reason = f"predict failed: {type(exc).__name__}: {exc}"
        log.error("%s (%d tweets to the dead-letter file)", reason, len(texts))
        return [reason] * len(texts)
