"""The prediction path without gRPC: validate texts, queue them in the batcher, score them with the model.

Labels come from the model (`LoadedModel.predict_texts`, which applies the bundle's thresholds); this module
decides what is admitted: text sizes, batch sizes, and (through the batcher) deadlines and overload.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from model_svc.batcher import Batcher
from model_svc.metrics import ModelMetrics
from model_svc.model import LoadedModel
from sentiment.errors import DeadlineExpired, InvalidInput, ModelNotReady
from sentiment.prediction import Prediction


class Inference:
    """Holds the model now serving; `swap` replaces it in one assignment (batches in flight keep theirs).

    Each batch reads `self.model` once, so every result carries the version that computed it.
    """

    def __init__(
        self,
        max_text_chars: int,
        predict_batch_max_texts: int,
        batch_max_texts: int,
        batch_max_wait_s: float,
        queue_max_texts: int,
        metrics: ModelMetrics | None = None,
    ) -> None:
        self.metrics = metrics or ModelMetrics()
        self.metrics.queue_texts.set_function(lambda: self.batcher.queued)
        self.max_text_chars = max_text_chars
        self.predict_batch_max_texts = predict_batch_max_texts
        self.model: LoadedModel | None = None
        self.batcher: Batcher[str, Prediction] = Batcher(
            self._run_batch,
            batch_max_texts,
            batch_max_wait_s,
            max_queued=queue_max_texts,
            name="inference",
            expected_run_s=self._expected_run_s,
        )
        self.texts_computed = 0
        self.batches_run = 0

    def swap(self, model: LoadedModel) -> LoadedModel | None:
        """Serve `model` from the next batch on; returns the one it replaces."""
        old, self.model = self.model, model
        return old

    def _expected_run_s(self, texts: int) -> float:
        model = self.model
        return model.expected_batch_s(texts) if model is not None else 0.0

    @property
    def version(self) -> str:
        return self.model.version if self.model is not None else ""

    def check_text(self, text: str, where: str = "text") -> None:
        if not text.strip():
            raise InvalidInput(f"{where} is empty")
        if len(text) > self.max_text_chars:
            raise InvalidInput(
                f"{where} has {len(text)} characters, more than the limit of {self.max_text_chars}"
            )

    def _ready(self) -> None:
        if self.model is None:
            raise ModelNotReady("no model loaded")

    async def predict(self, text: str, deadline: float | None = None) -> Prediction:
        """Score one text. `deadline` is on the time.monotonic() clock; past it the text is not computed."""
        self.check_text(text)
        self._ready()
        try:
            return await self.batcher.submit(text, deadline)
        except DeadlineExpired:
            self.metrics.expired.inc()
            raise

    async def predict_batch(self, texts: Sequence[str], deadline: float | None = None) -> list[Prediction]:
        """Score many texts, one result each in order; all are admitted to the queue or none."""
        if not texts:
            raise InvalidInput("texts is empty: send at least one text")
        if len(texts) > self.predict_batch_max_texts:
            raise InvalidInput(
                f"{len(texts)} texts, more than the limit of {self.predict_batch_max_texts} a call"
            )
        for i, text in enumerate(texts):
            self.check_text(text, f"texts[{i}]")
        self._ready()
        try:
            return await self.batcher.submit_many(texts, deadline)
        except DeadlineExpired:
            self.metrics.expired.inc(len(texts))
            raise

    def _run_batch(self, texts: list[str]) -> list[Prediction]:
        """The batcher's function, on the inference thread."""
        model = self.model
        if model is None:  # pragma: no cover - submit checks first and a model is never unloaded
            raise ModelNotReady("no model loaded")
        started = time.perf_counter()
        results = model.predict_texts(texts)
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        self.metrics.batch_texts.observe(len(texts))
        self.metrics.texts.inc(len(texts))
        self.texts_computed += len(texts)
        self.batches_run += 1
        return results
