"""The stream pipeline: source -> clean -> batch -> PredictBatch -> BatchWriteItem, bounded all the way.

    source --(tweets queue)--> batcher --(batches queue)--> N predict workers --(items queue)--> M writers

Every queue is bounded, so a slow model or table slows the reader and, through it, the source. Every
received tweet ends in exactly one place: written, dead-lettered (with the reason), or skipped because it
was empty after cleaning; `Counters.balanced()` checks it. Stopping the source drains every queue. A drain
can be abandoned (a deadline given to `stop`, or the table refusing the credentials): the workers are
cancelled and every tweet accepted but unfinished is dead-lettered with that reason (see `drain`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

import grpc

from sentiment.errors import InvalidInput
from sentiment.predict_client import Prediction
from stream_svc import metrics
from stream_svc.deadletter import DeadLetterFile
from stream_svc.drain import Abandon, Unfinished, drain_or_abandon
from stream_svc.sink import BATCH_WRITE_MAX_ITEMS, Item, Sink, TableAccessError
from stream_svc.sources import Source
from stream_svc.tweets import Malformed, SourceEvent, Tweet, clean_text

log = logging.getLogger(__name__)


class Predictor(Protocol):
    async def predict_batch(self, texts: Sequence[str]) -> list[Prediction]:
        """One prediction per text, same order; raises once its own retries are spent.

        An invalid input is signalled by grpc INVALID_ARGUMENT (or `InvalidInput`).
        """
        ...


@dataclass
class Counters:
    received: int = 0
    predicted: int = 0
    written: int = 0
    dead_lettered: int = 0
    skipped_empty: int = 0
    malformed: dict[str, int] = field(default_factory=dict)
    predict_retries: int = 0
    write_retries: int = 0
    write_requests: int = 0
    abandoned: int = 0  # dead-lettered unfinished when the drain was abandoned (part of dead_lettered)

    def balanced(self) -> bool:
        """Every received tweet is accounted for."""
        return self.received == self.written + self.dead_lettered + self.skipped_empty

    def summary(self) -> str:
        malformed = sum(self.malformed.values())
        return (
            f"received={self.received} written={self.written} dead_lettered={self.dead_lettered} "
            f"skipped_empty={self.skipped_empty} malformed={malformed} predicted={self.predicted} "
            f"predict_retries={self.predict_retries} write_retries={self.write_retries} "
            f"write_requests={self.write_requests} abandoned={self.abandoned} balanced={self.balanced()}"
        )


@dataclass
class _Pending:
    tweet: Tweet
    clean: str
    received_at: float
    seq: int = -1  # its name in the pipeline's `Unfinished`


@dataclass
class _Analyzed:
    item: dict[str, Any]
    received_at: float
    seq: int


_END: Any = object()  # end of a queue's stream, one per consumer


def utc_timestamp() -> str:
    """Now, as the table's `analyzed_at` holds it: ISO 8601 UTC with a Z."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def make_item(tweet: Tweet, clean: str, prediction: Prediction, analyzed_at: str) -> dict[str, Any]:
    """The table item, with the original design's names; `score` a Decimal (a DynamoDB Number)."""
    return {
        "id": tweet.id,
        "user": tweet.user,
        "sentiment": prediction.label,
        "score": Decimal(f"{prediction.score:.6f}"),
        "twitter_raw": tweet.text,
        "twitter_clean": clean,
        "data": tweet.date,
        "model_version": prediction.model_version,
        "analyzed_at": analyzed_at,
    }


def _tweet_record(pending: _Pending) -> dict[str, Any]:
    tweet = pending.tweet
    return {
        "id": tweet.id,
        "user": tweet.user,
        "twitter_raw": tweet.text,
        "twitter_clean": pending.clean,
        "data": tweet.date,
    }


def _is_invalid_input(exc: BaseException) -> bool:
    if isinstance(exc, InvalidInput):
        return True
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.INVALID_ARGUMENT


class Pipeline:
    """Runs one source to its end (or to `stop()`), then drains; `run()` returns the counters.

    `run()` raises `TableAccessError` when the sink does (the credentials or the table are refused): the
    source is stopped and everything accepted is dead-lettered with that reason first.

    `batch_size` / `batch_max_wait_s`: a batch is sent when full or when its first tweet has waited that
    long. `predict_concurrency` PredictBatch calls and `write_concurrency` writers run at once.
    `latency_samples`, when given, collects each written tweet's end-to-end seconds (benchmarks).
    """

    def __init__(
        self,
        source: Source,
        predictor: Predictor,
        sink: Sink,
        dead_letter: DeadLetterFile,
        *,
        batch_size: int = 64,
        batch_max_wait_s: float = 0.05,
        predict_concurrency: int = 4,
        write_concurrency: int = 8,
        latency_samples: list[float] | None = None,
    ) -> None:
        self.source = source
        self.predictor = predictor
        self.sink = sink
        self.dead_letter = dead_letter
        self.batch_size = batch_size
        self.batch_max_wait_s = batch_max_wait_s
        self.predict_concurrency = predict_concurrency
        self.write_concurrency = write_concurrency
        self.counters = Counters()
        self.latency_samples = latency_samples
        # Sized to keep every worker busy and no more: what waits in a queue only adds latency.
        self._tweets: asyncio.Queue[Any] = asyncio.Queue(maxsize=batch_size)
        self._batches: asyncio.Queue[Any] = asyncio.Queue(maxsize=max(1, predict_concurrency // 2))
        self._items: asyncio.Queue[Any] = asyncio.Queue(maxsize=write_concurrency * BATCH_WRITE_MAX_ITEMS)
        for name, queue in (("tweets", self._tweets), ("batches", self._batches), ("items", self._items)):
            metrics.QUEUE_DEPTH.labels(queue=name).set_function(queue.qsize)
        self._seen_predict_retries = 0
        self._seen_write_retries = 0
        self._unfinished: Unfinished[_Pending | _Analyzed] = Unfinished()
        self._abandon = Abandon()

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop the source; `run()` returns once everything taken in has been written or dead-lettered.

        With `grace_s`, the drain is abandoned that many seconds from now if it has not finished: what is
        unfinished is then dead-lettered with a reason naming the deadline.
        """
        if grace_s is not None:
            reason = f"drain deadline: not finished within {grace_s:g}s of the stop (GRACE_S)"
            self._abandon.after(grace_s, "deadline", reason)
        await self.source.aclose()

    async def run(self) -> Counters:
        reader = asyncio.create_task(self._read())
        batcher = asyncio.create_task(self._batch())
        predictors = [asyncio.create_task(self._predict_worker()) for _ in range(self.predict_concurrency)]
        writers = [asyncio.create_task(self._write_worker()) for _ in range(self.write_concurrency)]
        drain = asyncio.create_task(self._drain(reader, batcher, predictors, writers))
        await drain_or_abandon(drain, [reader, batcher, *predictors, *writers], self._abandon)
        if self._abandon.fired:
            await self.source.aclose()
            self._dead_letter_unfinished()
        self._sync_retries()
        if self._abandon.error is not None:
            raise self._abandon.error
        if not self._abandon.fired:
            drain.result()
            reader.result()
        return self.counters

    async def _drain(
        self,
        reader: asyncio.Task[None],
        batcher: asyncio.Task[None],
        predictors: list[asyncio.Task[None]],
        writers: list[asyncio.Task[None]],
    ) -> None:
        """Each stage ends once the one before it has: reader, batcher, predictors, writers."""
        # The reader's failure (an unreadable file) still lets what it took in drain before it is raised.
        await asyncio.wait([reader])
        await batcher
        await asyncio.gather(*predictors)
        for _ in writers:
            await self._items.put(_END)
        await asyncio.gather(*writers)

    def _dead_letter_unfinished(self) -> None:
        """Once the workers are gone: dead-letter every tweet accepted and not finished, with the reason,
        and those the source had received but not handed over (they are accepted now, not lost)."""
        for event in self.source.take_buffered():
            self._accept(event)
        left = self._unfinished.take()
        reason = self._abandon.reason
        self._dead_letter("predict", [(_tweet_record(e), reason) for e in left if isinstance(e, _Pending)])
        self._dead_letter("write", [(dict(e.item), reason) for e in left if isinstance(e, _Analyzed)])
        self.counters.abandoned += len(left)
        metrics.ABANDONED.labels(reason=self._abandon.label).inc(len(left))
        log.warning("drain abandoned (%s): %d unfinished tweets dead-lettered", reason, len(left))

    async def _read(self) -> None:
        try:
            async for event in self.source:
                if (pending := self._accept(event)) is not None:
                    await self._tweets.put(pending)
        finally:
            if not self._abandon.fired:  # else the batcher is cancelled: a full queue would never take it
                await self._tweets.put(_END)

    def _accept(self, event: SourceEvent) -> _Pending | None:
        """Count one source event; a tweet to predict comes back registered as unfinished, a malformed
        message or a tweet empty after cleaning is counted and comes back None."""
        if isinstance(event, Malformed):
            self._malformed(event)
            return None
        self.counters.received += 1
        metrics.RECEIVED.inc()
        received_at = time.monotonic()
        clean = clean_text(event.text)
        if not clean:
            self.counters.skipped_empty += 1
            metrics.SKIPPED.labels(reason="empty_after_cleaning").inc()
            log.debug("tweet %s is empty after cleaning; skipped", event.id, extra={"tweet_id": event.id})
            return None
        pending = _Pending(event, clean, received_at)
        pending.seq = self._unfinished.add(pending)
        return pending

    def _malformed(self, event: Malformed) -> None:
        seen = self.counters.malformed.get(event.kind, 0)
        self.counters.malformed[event.kind] = seen + 1
        metrics.MALFORMED.labels(kind=event.kind).inc()
        if seen == 0:  # once per kind: a flood of bad messages must not flood the log
            log.warning("malformed stream message (%s), skipped: %s", event.kind, event.detail)

    async def _batch(self) -> None:
        ended = False
        while not ended:
            first = await self._tweets.get()
            if first is _END:
                break
            batch = [first]
            deadline = asyncio.get_running_loop().time() + self.batch_max_wait_s
            while len(batch) < self.batch_size:
                try:
                    entry = self._tweets.get_nowait()
                except asyncio.QueueEmpty:
                    try:
                        async with asyncio.timeout_at(deadline):
                            entry = await self._tweets.get()
                    except TimeoutError:
                        break
                if entry is _END:
                    ended = True
                    break
                batch.append(entry)
            await self._batches.put(batch)
        for _ in range(self.predict_concurrency):
            await self._batches.put(_END)

    async def _predict_worker(self) -> None:
        while (batch := await self._batches.get()) is not _END:
            outcomes = await self._predict(batch)
            analyzed_at = utc_timestamp()
            failed: list[tuple[dict[str, Any], str]] = []
            ready: list[_Analyzed] = []
            for pending, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, str):
                    failed.append((_tweet_record(pending), outcome))
                    self._unfinished.discard(pending.seq)
                else:
                    item = make_item(pending.tweet, pending.clean, outcome, analyzed_at)
                    analyzed = _Analyzed(item, pending.received_at, pending.seq)
                    self._unfinished.replace(pending.seq, analyzed)
                    ready.append(analyzed)
            self._dead_letter("predict", failed)
            self.counters.predicted += len(ready)
            metrics.PREDICTED.inc(len(ready))
            self._sync_retries()
            for analyzed in ready:
                await self._items.put(analyzed)

    async def _predict(self, batch: list[_Pending]) -> list[Prediction | str]:
        """Predictions, or the reason there is none; an invalid input is isolated by halving the batch."""
        try:
            predictions = list(await self.predictor.predict_batch([p.clean for p in batch]))
            if len(predictions) != len(batch):
                raise RuntimeError(f"{len(predictions)} predictions for {len(batch)} texts")
            return list(predictions)
        except Exception as exc:
            if _is_invalid_input(exc) and len(batch) > 1:
                half = len(batch) // 2
                return await self._predict(batch[:half]) + await self._predict(batch[half:])
            if isinstance(exc, grpc.aio.AioRpcError):
                reason = f"predict failed: {exc.code().name}: {exc.details()}"
            else:
                reason = f"predict failed: {type(exc).__name__}: {exc}"
            log.error("%s (%d tweets to the dead-letter file)", reason, len(batch))
            return [reason] * len(batch)

    async def _write_worker(self) -> None:
        ended = False
        while not ended:
            entry = await self._items.get()
            if entry is _END:
                return
            chunk: list[_Analyzed] = [entry]
            while len(chunk) < BATCH_WRITE_MAX_ITEMS:
                try:
                    entry = self._items.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if entry is _END:
                    ended = True
                    break
                chunk.append(entry)
            await self._write(chunk)

    async def _write(self, chunk: list[_Analyzed]) -> None:
        if self._abandon.fired:  # nothing more is sent; the chunk stays unfinished, to be dead-lettered
            return
        items: list[Item] = [entry.item for entry in chunk]
        try:
            failures = await self.sink.write(items)
        except TableAccessError as exc:  # every other write would be refused too: stop everything
            self._abandon.now("table_refused", f"write failed: {exc}", exc)
            return
        except Exception as exc:  # the sink's own retries are spent or it broke: keep the tweets
            log.exception("sink write failed")
            failures_by_id = {
                str(entry.item["id"]): f"write failed: {type(exc).__name__}: {exc}" for entry in chunk
            }
        else:
            failures_by_id = {str(f.item["id"]): f"write failed: {f.reason}" for f in failures}
        now = time.monotonic()
        written = 0
        failed: list[tuple[dict[str, Any], str]] = []
        for entry in chunk:
            self._unfinished.discard(entry.seq)
            reason = failures_by_id.get(str(entry.item["id"]))
            if reason is None:
                written += 1
                metrics.LATENCY.observe(now - entry.received_at)
                if self.latency_samples is not None:
                    self.latency_samples.append(now - entry.received_at)
            else:
                failed.append((dict(entry.item), reason))
        self.counters.written += written
        metrics.WRITTEN.inc(written)
        self._dead_letter("write", failed)
        self._sync_retries()

    def _dead_letter(self, stage: str, failed: list[tuple[dict[str, Any], str]]) -> None:
        if not failed:
            return
        self.dead_letter.add(stage, failed)
        self.counters.dead_lettered += len(failed)
        metrics.DEAD_LETTERED.labels(stage=stage).inc(len(failed))

    def _sync_retries(self) -> None:
        """Fold the clients' own retry counts into the counters and metrics."""
        predict_retries = int(getattr(self.predictor, "retries", 0))
        write_retries = int(getattr(self.sink, "retries", 0))
        if predict_retries > self._seen_predict_retries:
            metrics.PREDICT_RETRIES.inc(predict_retries - self._seen_predict_retries)
            self._seen_predict_retries = predict_retries
        if write_retries > self._seen_write_retries:
            metrics.DYNAMODB_RETRIES.inc(write_retries - self._seen_write_retries)
            self._seen_write_retries = write_retries
        self.counters.predict_retries = predict_retries
        self.counters.write_retries = write_retries
        self.counters.write_requests = int(getattr(self.sink, "requests", 0))
