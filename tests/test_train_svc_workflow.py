"""The seams of train_svc: the workflow against a fake JobControl (the child hands its part of the manifest
back, the parent writes manifest.json once and promotes through the registry), the server's one lifecycle
(a failed start and a stop unwind the same stack), the stage metric, and job records with stages."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos import train_pb2
from sentiment import bundle
from sentiment.dataset import DatasetLimits
from sentiment.store import LocalStore
from tests.conftest import TINY_PARAMS
from tests.fixtures_train import TrainHarness
from train_svc.child import TrainingProcess
from train_svc.config import TrainConfig
from train_svc.job import Job, JobCancelled, Stage
from train_svc.metrics import TrainMetrics
from train_svc.params import TrainParams
from train_svc.records import job_from_record, job_to_record
from train_svc.server import start_server
from train_svc.workflow import Workflow

QUICK = TrainParams(
    max_rows=600, epochs=1, batch_size=64, sequence_length=20, embedding_dim=16, w2v_epochs=2, lstm_units=8
)
LONG_PARAMS = train_pb2.TrainParams(
    epochs=500, batch_size=64, sequence_length=20, embedding_dim=16, w2v_epochs=2, lstm_units=8
)


@dataclass
class FakeControl:
    """A JobControl that records what the workflow told it; `cancel_reason` set = a cancel was asked for."""

    updates: list[dict[str, Any]] = field(default_factory=list)
    trainers: list[TrainingProcess | None] = field(default_factory=list)
    cancel_reason: str = ""

    def update(self, job: Job, **changes: Any) -> None:
        for name, value in changes.items():
            setattr(job, name, value)
        self.updates.append(changes)

    def check_cancel(self, job: Job) -> None:
        if self.cancel_reason:
            raise JobCancelled(self.cancel_reason)

    def set_trainer(self, process: TrainingProcess | None) -> None:
        self.trainers.append(process)


async def test_workflow_publishes_one_manifest_and_promotes_through_the_registry(
    dataset_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = LocalStore(tmp_path / "store")
    workflow = Workflow(store, DatasetLimits(), code_version="test-1")
    job = Job(
        job_id="job-20261128-153012-a1b2c3d4", dataset_uri=str(dataset_file), params=QUICK, promote=True
    )
    control = FakeControl()
    with caplog.at_level(logging.INFO, logger="train_svc.registry"):
        published = await workflow.run(job, tmp_path / job.job_id, control, time.monotonic())

    stages = [u["stage"] for u in control.updates if "stage" in u]
    assert [s for i, s in enumerate(stages) if i == 0 or s != stages[i - 1]] == [
        Stage.READ, Stage.WORD2VEC, Stage.FIT, Stage.EVALUATE, Stage.PUBLISH
    ]  # fmt: skip
    assert all(type(s) is Stage for s in stages)
    assert control.updates[0]["dataset_sha256"] == job.dataset_sha256 and len(job.dataset_sha256) == 64
    assert len(control.trainers) == 2 and control.trainers[0] is not None and control.trainers[1] is None

    # One manifest, written by the parent with what only the job knows, and checksums that verify.
    local = await bundle.fetch(store, published.version, _fresh(tmp_path / "fetched"))
    manifest = local.manifest
    assert (manifest.job_id, manifest.dataset_uri) == (job.job_id, str(dataset_file))
    assert manifest.dataset_sha256 == job.dataset_sha256 and manifest.code_version == "test-1"
    assert manifest.created_at.endswith("Z") and set(manifest.files) == set(bundle.PAYLOAD_FILES)
    assert {"download_s", "child_s", "read_s", "fit_s"} <= set(manifest.timings)
    assert manifest.metrics["train_seconds"] > 0 and published.metrics == dict(manifest.metrics)
    assert manifest.split["test"] == 120 and manifest.params == QUICK.to_dict()

    assert published.promoted and await bundle.read_current(store) == published.version
    assert any(r.getMessage() == f"model {published.version} promoted" for r in caplog.records)


async def test_workflow_stops_before_the_child_when_cancelled_after_the_download(
    dataset_file: Path, tmp_path: Path
) -> None:
    store = LocalStore(tmp_path / "store")
    job = Job(job_id="job-20261128-153012-a1b2c3d5", dataset_uri=str(dataset_file), params=QUICK)
    control = FakeControl(cancel_reason="cancelled by request")
    with pytest.raises(JobCancelled, match="cancelled by request"):
        await Workflow(store, DatasetLimits()).run(job, tmp_path / job.job_id, control, time.monotonic())
    assert control.trainers == [] and control.updates == []
    assert await bundle.list_versions(store) == []


def _fresh(path: Path) -> Path:
    path.mkdir()
    return path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_a_failed_start_unwinds_like_a_stop(train_harness: TrainHarness, tmp_path: Path) -> None:
    grpc_port = _free_port()
    config = TrainConfig(
        store_uri=str(tmp_path / "store"),
        listen_addr=f"127.0.0.1:{grpc_port}",
        work_dir=str(train_harness.work_dir),
    )
    with socket.socket() as taken:  # the metrics port is in use: the start fails after gRPC listens
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        with pytest.raises(OSError):
            await start_server(replace(config, metrics_port=taken.getsockname()[1]))
    # The work dir's lock and the gRPC port went with the failed start.
    server, client = await train_harness.start(config.store_uri, listen_addr=config.listen_addr)
    assert server.port == grpc_port and await client.serving()


async def test_stop_turns_every_health_status_not_serving_and_watchers_see_their_job_end(
    train_harness: TrainHarness, dataset_file: Path, tmp_path: Path
) -> None:
    server, client = await train_harness.start(str(tmp_path / "store"))
    job = await client.stub.Train(train_pb2.TrainRequest(dataset_uri=str(dataset_file), params=LONG_PARAMS))
    await client.watch_until_done(job.job_id, until=lambda j: j.stage == "fit")
    health = health_pb2_grpc.HealthStub(client.channel)
    statuses = {
        name: health.Watch(health_pb2.HealthCheckRequest(service=name))
        for name in ("", "sentiment.v1.TrainService", "liveness")
    }
    for call in statuses.values():
        assert (await call.read()).status == health_pb2.HealthCheckResponse.SERVING
    watcher = asyncio.create_task(client.watch_until_done(job.job_id))
    await asyncio.sleep(0.2)  # the watcher is in

    t0 = time.monotonic()
    stopping = asyncio.create_task(server.stop(30.0))
    for call in statuses.values():
        assert (await asyncio.wait_for(call.read(), 10)).status == health_pb2.HealthCheckResponse.NOT_SERVING
        call.cancel()  # an open Watch is an in-flight call: it would hold the stop for its whole grace
    last = await asyncio.wait_for(watcher, 20)
    assert last.state == train_pb2.CANCELLED and "shut down" in last.error
    await asyncio.wait_for(stopping, 20)
    assert time.monotonic() - t0 < 15, "the stop waited out its grace instead of ending the job"
    await server.stop(1.0)  # a second stop is a no-op
    record = json.loads((tmp_path / "store" / "jobs" / f"{job.job_id}.json").read_text())
    assert record["state"] == "CANCELLED" and record["stage"] == "fit"
    with pytest.raises(grpc.aio.AioRpcError):
        await client.stub.ListJobs(train_pb2.ListJobsRequest(), timeout=2)


def test_stage_metric_reports_queued_and_done_as_themselves() -> None:
    metrics = TrainMetrics()

    def stage() -> str:
        states = ("idle", *(s.value for s in Stage))
        [name] = [s for s in states if metrics.registry.get_sample_value("train_stage", {"train_stage": s})]
        return name

    assert stage() == "idle"
    for value in Stage:
        metrics.set_stage(value)
        assert stage() == value.value
    metrics.set_stage(None)
    assert stage() == "idle"


def test_job_records_keep_the_stage_and_refuse_an_unknown_one() -> None:
    job = Job(job_id="job-20261128-153012-a1b2c3d4", dataset_uri="s3://b/k.csv", params=TINY_PARAMS)
    job.stage = Stage.WORD2VEC
    record = json.loads(json.dumps(job_to_record(job)))
    assert record["stage"] == "word2vec" and record["state"] == "QUEUED"
    again = job_from_record(record)
    assert again == job and type(again.stage) is Stage
    with pytest.raises(ValueError):
        job_from_record({**record, "stage": "compiling"})
