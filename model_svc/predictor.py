"""The prediction path without gRPC: validate texts, queue them in the batcher, score them with the model."""

from __future__ import annotations

import time
from collections.abc import Sequence

from model_svc import metrics
from model_svc.batcher import Batcher
from model_svc.model import LoadedModel, Scored
from sentiment.errors import DeadlineExpired, InvalidInput, ModelNotReady


class Predictor:
    """Holds the model now serving; `swap` replaces it in one assignment (batches in flight keep theirs).

    Each batch reads `self.model` once, so every result carries the version that computed it.
    """

    def __init__(
        self,
        max_text_chars: int,
        max_batch_texts: int,
        batch_max_size: int,
        batch_max_wait_s: float,
        queue_max_texts: int,
    ) -> None:
        self.max_text_chars = max_text_chars
        self.max_batch_texts = max_batch_texts
        self.model: LoadedModel | None = None
        self.batcher: Batcher[str, Scored] = Batcher(
            self._run_batch,
            batch_max_size,
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

    async def predict(self, text: str, deadline: float | None = None) -> Scored:
        """Score one text. `deadline` is on the time.monotonic() clock; past it the text is not computed."""
        self.check_text(text)
        self._ready()
        try:
            return await self.batcher.submit(text, deadline)
        except DeadlineExpired:
            metrics.EXPIRED.inc()
            raise

    async def predict_batch(self, texts: Sequence[str], deadline: float | None = None) -> list[Scored]:
        """Score many texts, one result each in order; all are admitted to the queue or none."""
        if not texts:
            raise InvalidInput("texts is empty: send at least one text")
        if len(texts) > self.max_batch_texts:
            raise InvalidInput(f"{len(texts)} texts, more than the limit of {self.max_batch_texts} a call")
        for i, text in enumerate(texts):
            self.check_text(text, f"texts[{i}]")
        self._ready()
        try:
            return await self.batcher.submit_many(texts, deadline)
        except DeadlineExpired:
            metrics.EXPIRED.inc(len(texts))
            raise

    def _run_batch(self, texts: list[str]) -> list[Scored]:
        """The batcher's function, on the inference thread."""
        model = self.model
        if model is None:  # pragma: no cover - submit checks first and a model is never unloaded
            raise ModelNotReady("no model loaded")
        started = time.perf_counter()
        results = model.predict_texts(texts)
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
        metrics.BATCH_SIZE.observe(len(texts))
        metrics.TEXTS.inc(len(texts))
        self.texts_computed += len(texts)
        self.batches_run += 1
        return results
