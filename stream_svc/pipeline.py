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
from dataclasses import dataclass
from typing import Any

from stream_svc.batching import END, EndOfStream, take_batch
from stream_svc.classify import SentimentClient, classify
from stream_svc.counters import Counters
from stream_svc.deadletter import DeadLetterFile
from stream_svc.drain import Abandon, Unfinished, drain_or_abandon
from stream_svc.dynamodb import TableAccessError
from stream_svc.items import make_item, tweet_record, utc_timestamp
from stream_svc.keys import DEFAULT_LAYOUT, TableLayout
from stream_svc.metrics import StreamMetrics
from stream_svc.sink import BATCH_WRITE_MAX_ITEMS, Sink, WriteFailure
from stream_svc.sources import Source
from stream_svc.tweets import Malformed, SourceEvent, Tweet, clean_text

log = logging.getLogger(__name__)

DeadLetters = list[tuple[dict[str, Any], str]]  # (record, reason), as `DeadLetterFile.add` takes them


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


class Pipeline:
    """Runs one source to its end (or to `stop()`), then drains; `run()` returns the counters.

    `run()` raises `TableAccessError` when the sink does (the credentials or the table are refused): the
    source is stopped and everything accepted is dead-lettered with that reason first.

    `batch_size` / `batch_max_wait_s`: a batch is sent when full or when its first tweet has waited that
    long. `predict_concurrency` PredictBatch calls and `write_concurrency` writers run at once.
    `metrics` receives the counts (a registry of its own when not given). `latency_samples`, when given,
    collects each written tweet's end-to-end seconds (benchmarks). `layout` keys the items in time
    (`stream_svc.keys`).
    """

    def __init__(
        self,
        source: Source,
        client: SentimentClient,
        sink: Sink,
        dead_letter: DeadLetterFile,
        *,
        batch_size: int = 64,
        batch_max_wait_s: float = 0.05,
        predict_concurrency: int = 4,
        write_concurrency: int = 8,
        metrics: StreamMetrics | None = None,
        latency_samples: list[float] | None = None,
        layout: TableLayout = DEFAULT_LAYOUT,
    ) -> None:
        self.source = source
        self.client = client
        self.sink = sink
        self.dead_letter = dead_letter
        self.batch_size = batch_size
        self.batch_max_wait_s = batch_max_wait_s
        self.predict_concurrency = predict_concurrency
        self.write_concurrency = write_concurrency
        self.counters = Counters()
        self.metrics = metrics or StreamMetrics()
        self.latency_samples = latency_samples
        self.layout = layout
        # Sized to keep every worker busy and no more: what waits in a queue only adds latency.
        self._tweets: asyncio.Queue[_Pending | EndOfStream] = asyncio.Queue(maxsize=batch_size)
        self._batches: asyncio.Queue[list[_Pending] | EndOfStream] = asyncio.Queue(
            maxsize=max(1, predict_concurrency // 2)
        )
        self._items: asyncio.Queue[_Analyzed | EndOfStream] = asyncio.Queue(
            maxsize=write_concurrency * BATCH_WRITE_MAX_ITEMS
        )
        queues: dict[str, asyncio.Queue[Any]] = {
            "tweets": self._tweets,
            "batches": self._batches,
            "items": self._items,
        }
        for name, queue in queues.items():
            self.metrics.queue_depth.labels(queue=name).set_function(queue.qsize)
        self._unfinished: Unfinished[_Pending | _Analyzed] = Unfinished()
        self._abandon = Abandon()

    @property
    def table_refused(self) -> bool:
        """The table refused the credentials, permissions or the table itself (the drain was abandoned)."""
        return self._abandon.fired and self._abandon.label == "table_refused"

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
        # A reader's failure still lets what it took in drain before it is raised.
        await asyncio.wait([reader])
        await batcher
        await asyncio.gather(*predictors)
        for _ in writers:
            await self._items.put(END)
        await asyncio.gather(*writers)

    def _dead_letter_unfinished(self) -> None:
        """Once the workers are gone: dead-letter every tweet accepted and not finished, with the reason,
        and those the source had received but not handed over (they are accepted now, not lost)."""
        for event in self.source.take_buffered():
            self._accept(event)
        left = self._unfinished.take()
        reason = self._abandon.reason
        predict = [(tweet_record(e.tweet, e.clean), reason) for e in left if isinstance(e, _Pending)]
        self._dead_letter("predict", predict)
        self._dead_letter("write", [(dict(e.item), reason) for e in left if isinstance(e, _Analyzed)])
        self.counters.abandoned += len(left)
        self.metrics.abandoned.labels(reason=self._abandon.label).inc(len(left))
        log.warning("drain abandoned (%s): %d unfinished tweets dead-lettered", reason, len(left))

    async def _read(self) -> None:
        try:
            async for event in self.source:
                if (pending := self._accept(event)) is not None:
                    await self._tweets.put(pending)
        finally:
            if not self._abandon.fired:  # else the batcher is cancelled: a full queue would never take it
                await self._tweets.put(END)

    def _accept(self, event: SourceEvent) -> _Pending | None:
        """Count one source event; a tweet to predict comes back registered as unfinished, a malformed
        message or a tweet empty after cleaning is counted and comes back None."""
        if isinstance(event, Malformed):
            self._malformed(event)
            return None
        self.counters.received += 1
        self.metrics.received.inc()
        received_at = time.monotonic()
        clean = clean_text(event.text)
        if not clean:
            self.counters.skipped_empty += 1
            self.metrics.skipped.labels(reason="empty_after_cleaning").inc()
            log.debug("tweet %s is empty after cleaning; skipped", event.id, extra={"tweet_id": event.id})
            return None
        pending = _Pending(event, clean, received_at)
        pending.seq = self._unfinished.add(pending)
        return pending

    def _malformed(self, event: Malformed) -> None:
        seen = self.counters.malformed.get(event.kind, 0)
        self.counters.malformed[event.kind] = seen + 1
        self.metrics.malformed.labels(kind=event.kind).inc()
        if seen == 0:  # once per kind: a flood of bad messages must not flood the log
            log.warning("malformed stream message (%s), skipped: %s", event.kind, event.detail)

    async def _batch(self) -> None:
        ended = False
        while not ended:
            batch, ended = await take_batch(self._tweets, self.batch_size, self.batch_max_wait_s)
            if batch:
                await self._batches.put(batch)
        for _ in range(self.predict_concurrency):
            await self._batches.put(END)

    async def _predict_worker(self) -> None:
        while not isinstance(batch := await self._batches.get(), EndOfStream):
            outcomes = await classify(self.client, [p.clean for p in batch])
            analyzed_at = utc_timestamp()
            failed: DeadLetters = []
            ready: list[_Analyzed] = []
            for pending, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, str):
                    failed.append((tweet_record(pending.tweet, pending.clean), outcome))
                    self._unfinished.discard(pending.seq)
                else:
                    item = make_item(pending.tweet, pending.clean, outcome, analyzed_at, self.layout)
                    analyzed = _Analyzed(item, pending.received_at, pending.seq)
                    self._unfinished.replace(pending.seq, analyzed)
                    ready.append(analyzed)
            self._dead_letter("predict", failed)
            self.counters.predicted += len(ready)
            self.metrics.predicted.inc(len(ready))
            self._sync_retries()
            for analyzed in ready:
                await self._items.put(analyzed)

    async def _write_worker(self) -> None:
        ended = False
        while not ended:
            # No wait for a fuller chunk: the writers are many, and an item waits for a free one anyway.
            chunk, ended = await take_batch(self._items, BATCH_WRITE_MAX_ITEMS, max_wait_s=0.0)
            if chunk:
                await self._write(chunk)

    async def _write(self, chunk: list[_Analyzed]) -> None:
        if self._abandon.fired:  # nothing more is sent; the chunk stays unfinished, to be dead-lettered
            return
        try:
            failures = await self.sink.write([entry.item for entry in chunk])
        except TableAccessError as exc:  # every other write would be refused too: stop everything
            self._abandon.now("table_refused", f"write failed: {exc}", exc)
            return
        except Exception as exc:  # the sink's own retries are spent or it broke: keep the tweets
            log.exception("sink write failed")
            failures = [WriteFailure(entry.item, f"{type(exc).__name__}: {exc}") for entry in chunk]
        self._settle(chunk, failures)

    def _settle(self, chunk: list[_Analyzed], failures: list[WriteFailure]) -> None:
        """Count the chunk's written items and dead-letter its failures; none of it is unfinished now."""
        failures_by_id = {str(f.item["id"]): f"write failed: {f.reason}" for f in failures}
        now = time.monotonic()
        written = 0
        failed: DeadLetters = []
        for entry in chunk:
            self._unfinished.discard(entry.seq)
            reason = failures_by_id.get(str(entry.item["id"]))
            if reason is None:
                written += 1
                self.metrics.written.labels(sentiment=str(entry.item.get("sentiment", ""))).inc()
                self.metrics.latency.observe(now - entry.received_at)
                if self.latency_samples is not None:
                    self.latency_samples.append(now - entry.received_at)
            else:
                failed.append((dict(entry.item), reason))
        self.counters.written += written
        self._dead_letter("write", failed)
        self._sync_retries()

    def _dead_letter(self, stage: str, failed: DeadLetters) -> None:
        if not failed:
            return
        self.dead_letter.add(stage, failed)
        self.counters.dead_lettered += len(failed)
        self.metrics.dead_lettered.labels(stage=stage).inc(len(failed))

    def _sync_retries(self) -> None:
        """Fold the client's and the sink's own retry counts (which only grow) into the counters and metrics."""
        counters = self.counters
        predict_retries, write_retries = self.client.retries, self.sink.retries
        if predict_retries > counters.predict_retries:
            self.metrics.predict_retries.inc(predict_retries - counters.predict_retries)
        if write_retries > counters.write_retries:
            self.metrics.dynamodb_retries.inc(write_retries - counters.write_retries)
        counters.predict_retries = predict_retries
        counters.write_retries = write_retries
        counters.write_requests = self.sink.requests
