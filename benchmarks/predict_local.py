"""bench_predict's in-process lines, in a spawned process of their own on the server's CPUs.

`init` loads the bundle once (TensorFlow sized to those CPUs, as model_svc sizes it), and once more with
no XLA programs; then `naive_row` is the original deployment's Keras `model.predict` per tweet,
`batch_rows` the server's own path (`LoadedModel.predict_texts`: tokenize, group by length, the XLA
programs and the graph) at the batch sizes asked for, beside the same on the graph alone,
`inference_rows` the server's whole path without gRPC (`Inference.predict_batch`: the checks, the batcher
and its inference thread, callers on an event loop, as the servicer calls it), and `scores` the in-process
scores every server is checked against.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.predict_grpc import row

_model: Any = None
_graph_only: Any = None  # the same bundle with XLA_MAX_ROWS=0: every group through the graph


def init(bundle_dir: Path, cpus: set[int]) -> bool:
    """Pin this process to `cpus` and load the bundle (as served, and on the graph alone); True when the
    fused serving graph is in use."""
    global _model, _graph_only
    os.sched_setaffinity(0, cpus)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from model_svc.model import LoadedModel, configure_threads
    from sentiment.bundle import read_local_bundle

    configure_threads(len(cpus), 1)
    _model = LoadedModel(read_local_bundle(bundle_dir, "bench"))
    _model.warm()
    _graph_only = LoadedModel(read_local_bundle(bundle_dir, "bench"), xla_max_rows=0)
    _graph_only.warm()
    return bool(_model.fused)


def naive_row(texts: list[str], seconds: float) -> dict[str, Any]:
    """Keras `model.predict` per tweet, as the original REST API did (at most 200 calls)."""
    from sentiment.text import encode, tokenize

    preprocessing = _model.bundle.preprocessing
    latencies: list[float] = []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds and len(latencies) < 200:
        text = texts[len(latencies) % len(texts)]
        t0 = time.perf_counter()
        ids = encode(
            [tokenize(text, preprocessing.text)], _model.bundle.vocabulary, preprocessing.sequence_length
        )
        _model.keras_model.predict(ids, verbose=0)
        latencies.append(time.perf_counter() - t0)
    return row("in-process model.predict per tweet", len(latencies), time.perf_counter() - started, latencies)


def batch_rows(texts: list[str], seconds: float, batches: list[int]) -> list[dict[str, Any]]:
    """`predict_texts` on consecutive chunks of each size in `batches`, `seconds` each: as served
    ("in-process batch N"), then on the graph alone ("in-process graph only, batch N")."""
    rows = []
    for batch in batches:
        for model, name in (
            (_model, f"in-process batch {batch}"),
            (_graph_only, f"in-process graph only, batch {batch}"),
        ):
            latencies: list[float] = []
            done, offset = 0, 0
            started = time.perf_counter()
            while time.perf_counter() - started < seconds:
                chunk = texts[offset : offset + batch]
                offset = (offset + batch) % (len(texts) - batch)
                t0 = time.perf_counter()
                model.predict_texts(chunk)
                latencies.append(time.perf_counter() - t0)
                done += len(chunk)
            rows.append(row(name, done, time.perf_counter() - started, latencies))
    return rows


def inference_rows(texts: list[str], seconds: float, lines: list[tuple[int, int]]) -> list[dict[str, Any]]:
    """For each (batch, callers): `callers` loops on one event loop, each sending `batch` texts at a time
    to `Inference.predict_batch`, as model_svc's servicer does with the defaults it serves with; the rows
    are named like the gRPC lines, "in-process Inference, PredictBatch <batch> c=<callers>"."""
    from model_svc.__main__ import SWITCH_INTERVAL_S
    from model_svc.config import ModelConfig
    from model_svc.metrics import ModelMetrics
    from model_svc.server import build_inference

    defaults = ModelConfig(store_uri="unused")
    sys.setswitchinterval(SWITCH_INTERVAL_S)  # as model_svc runs

    async def line(batch: int, callers: int) -> dict[str, Any]:
        inference = build_inference(defaults, ModelMetrics())
        inference.swap(_model)
        latencies: list[float] = []
        done = 0
        started = time.perf_counter()

        async def caller(index: int) -> None:
            nonlocal done
            offset = index * batch
            while time.perf_counter() - started < seconds:
                chunk = texts[offset : offset + batch]
                offset = (offset + callers * batch) % (len(texts) - batch)
                t0 = time.perf_counter()
                await inference.predict_batch(chunk)
                latencies.append(time.perf_counter() - t0)
                done += len(chunk)

        await asyncio.gather(*(caller(i) for i in range(callers)))
        elapsed = time.perf_counter() - started
        await inference.batcher.aclose()
        mean_batch = inference.texts_computed / max(1, inference.batches_run)
        name = f"in-process Inference, PredictBatch {batch} c={callers}"
        return row(name, done, elapsed, latencies, mean_batch=round(mean_batch, 1))

    return [asyncio.run(line(batch, callers)) for batch, callers in lines]


def scores(texts: list[str]) -> list[float]:
    return [p.score for p in _model.predict_texts(texts)]
