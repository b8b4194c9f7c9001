"""TrainService end to end: real servers on port 0, the moto S3 endpoint, the real grpcurl binary, real training."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import boto3
import grpc
import pytest

from protos import train_pb2
from sentiment.store import LocalStore
from sentiment.synthetic import write_sentiment140
from tests.conftest import TINY_PARAMS
from tests.fixtures_train import GrpcurlRunner, TrainHarness
from train_svc.job import Job, JobState, Stage
from train_svc.params import TrainParams
from train_svc.records import JobRecords
from train_svc.runner import RESTARTED_RUNNING

SERVICE = "sentiment.v1.TrainService"
TERMINAL_STATES = {train_pb2.SUCCEEDED, train_pb2.FAILED, train_pb2.CANCELLED}
# Small and quick; not meant to learn much (the promotion-gate test relies on that).
QUICK_PARAMS = {
    "max_rows": 600,
    "epochs": 1,
    "batch_size": 64,
    "sequence_length": 20,
    "embedding_dim": 16,
    "w2v_epochs": 2,
    "w2v_min_count": 2,
    "lstm_units": 8,
}
# The tiny model on half the generated rows: enough to pass a 0.65 gate, quick to train.
E2E_OVERRIDES = {"max_rows": 2000, "epochs": 4}
# Long enough that it is still fitting when the test cancels it.
LONG_PARAMS = {**QUICK_PARAMS, "epochs": 500}


def upload(bucket: str, key: str, path: Path | None = None, data: bytes | None = None) -> str:
    s3 = boto3.client("s3")
    if path is not None:
        s3.upload_file(str(path), bucket, key)
    else:
        s3.put_object(Bucket=bucket, Key=key, Body=data or b"")
    return f"s3://{bucket}/{key}"


def s3_keys(bucket: str, prefix: str) -> list[str]:
    response = boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(obj["Key"] for obj in response.get("Contents", []))


async def test_grpcurl_trains_publishes_and_promotes_on_s3(
    train_harness: TrainHarness, grpcurl: GrpcurlRunner, bucket: str, dataset_file: Path
) -> None:
    dataset_uri = upload(bucket, "data/tweets.csv.gz", path=dataset_file)
    _, client = await train_harness.start(f"s3://{bucket}/store")
    address = client.address

    listed = await grpcurl("-plaintext", address, "list")
    assert listed.returncode == 0, listed.stderr
    assert {SERVICE, "grpc.health.v1.Health"} <= set(listed.stdout.split())

    health = await grpcurl("-plaintext", address, "grpc.health.v1.Health/Check")
    assert health.json_objects() == [{"status": "SERVING"}]

    request = {
        "dataset_uri": dataset_uri,
        "params": {**{k: v for k, v in TINY_PARAMS.to_dict().items() if k != "seed"}, **E2E_OVERRIDES},
        "promote": True,
        "min_accuracy": 0.65,
    }
    started = await grpcurl("-plaintext", "-d", json.dumps(request), address, f"{SERVICE}/Train")
    assert started.returncode == 0, started.stderr
    job = started.json_objects()[0]
    assert job["state"] == "QUEUED" and job["job_id"].startswith("job-")
    assert (
        job["params"]["epochs"] == E2E_OVERRIDES["epochs"] and job["params"]["seed"] == "42"
    )  # defaults filled

    watched = await grpcurl(
        "-plaintext",
        "-d",
        json.dumps({"job_id": job["job_id"]}),
        address,
        f"{SERVICE}/WatchJob",
        timeout_s=120,
    )
    assert watched.returncode == 0, watched.stderr
    updates = watched.json_objects()
    final = updates[-1]
    assert final["state"] == "SUCCEEDED", final
    assert {"word2vec", "fit", "evaluate"} <= {u.get("stage") for u in updates}
    assert final["promoted"] is True and final["stage"] == "done"
    assert float(final["metrics"]["accuracy"]) >= 0.65
    assert int(final["rows_read"]) == 4000 and "malformed_rows" not in final  # 0 is omitted in JSON
    version = final["model_version"]

    keys = s3_keys(bucket, "store/")
    for name in ("manifest.json", "model.keras", "vocab.json", "preprocessing.json"):
        assert f"store/models/{version}/{name}" in keys
    assert f"store/jobs/{job['job_id']}.json" in keys
    s3 = boto3.client("s3")
    assert s3.get_object(Bucket=bucket, Key="store/models/CURRENT")["Body"].read().decode() == version
    manifest = json.loads(
        s3.get_object(Bucket=bucket, Key=f"store/models/{version}/manifest.json")["Body"].read()
    )
    assert manifest["job_id"] == job["job_id"]
    assert manifest["dataset"]["uri"] == dataset_uri and len(manifest["dataset"]["sha256"]) == 64
    assert manifest["code_version"] and manifest["timings"]["download_s"] >= 0

    models = (await grpcurl("-plaintext", address, f"{SERVICE}/ListModels")).json_objects()[0]
    assert models["current_version"] == version
    [model] = models["models"]
    assert model["version"] == version and model["current"] is True
    assert model["metrics"]["accuracy"] == final["metrics"]["accuracy"]
    assert model["dataset_uri"] == dataset_uri and model["sequence_length"] == TINY_PARAMS.sequence_length

    got = await grpcurl(
        "-plaintext", "-d", json.dumps({"job_id": job["job_id"]}), address, f"{SERVICE}/GetJob"
    )
    assert got.json_objects()[0]["state"] == "SUCCEEDED"
    jobs = (await grpcurl("-plaintext", address, f"{SERVICE}/ListJobs")).json_objects()[0]["jobs"]
    assert [j["job_id"] for j in jobs] == [job["job_id"]]

    # Finished jobs cannot be cancelled.
    cancelled = await grpcurl(
        "-plaintext", "-d", json.dumps({"job_id": job["job_id"]}), address, f"{SERVICE}/CancelJob"
    )
    assert cancelled.returncode != 0 and "FailedPrecondition" in cancelled.stderr
    assert await client.serving()


async def test_missing_dataset_object_fails_readably(train_harness: TrainHarness, bucket: str) -> None:
    _, client = await train_harness.start(f"s3://{bucket}/store")
    job = await client.stub.Train(train_pb2.TrainRequest(dataset_uri=f"s3://{bucket}/no/such.csv"))
    final = await client.watch_until_done(job.job_id)
    assert final.state == train_pb2.FAILED
    assert "does not exist" in final.error and f"s3://{bucket}/no/such.csv" in final.error
    assert final.finished_at.seconds > 0
    assert await client.serving()

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.stub.CancelJob(train_pb2.CancelJobRequest(job_id=job.job_id))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_file_that_is_not_csv_fails_readably(
    train_harness: TrainHarness, bucket: str, tmp_path: Path
) -> None:
    _, client = await train_harness.start(str(tmp_path / "store"))
    binary = upload(bucket, "data/picture.png", data=b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 64)
    json_lines = upload(bucket, "data/tweets.jsonl", data=b'{"id": 1, "text": "hello"}\n' * 50)
    for uri in (binary, json_lines):
        job = await client.stub.Train(train_pb2.TrainRequest(dataset_uri=uri))
        final = await client.watch_until_done(job.job_id)
        assert final.state == train_pb2.FAILED, final
        assert "CSV" in final.error, final.error
        assert await client.serving()


async def test_malformed_rows_are_counted_and_gate_blocks_promotion(
    train_harness: TrainHarness, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    _, client = await train_harness.start(str(store))
    dataset = write_sentiment140(tmp_path / "tweets.csv", 1000, seed=3)
    with dataset.open("a", encoding="latin-1") as out:
        out.write('"0","only three","fields"\n' * 25)
        out.write('"7","1","Mon Apr 06 22:19:45 PDT 2009","NO_QUERY","u","target seven"\n' * 15)

    job = await client.stub.Train(
        train_pb2.TrainRequest(
            dataset_uri=str(dataset),
            params=train_pb2.TrainParams(**QUICK_PARAMS),
            promote=True,
            min_accuracy=1.0,
        )
    )
    final = await client.watch_until_done(job.job_id, timeout_s=90)
    assert final.state == train_pb2.SUCCEEDED, final.error
    assert final.rows_read == 1040 and final.malformed_rows == 40
    assert final.metrics.accuracy < 1.0  # so the gate at 1.0 must hold it back
    assert final.promoted is False and final.model_version
    assert not (store / "models" / "CURRENT").exists()
    assert (store / "models" / final.model_version / "manifest.json").is_file()

    models = await client.stub.ListModels(train_pb2.ListModelsRequest())
    assert [m.version for m in models.models] == [final.model_version]
    assert models.current_version == "" and not models.models[0].current

    # An operator can still promote it by hand; an unknown version is NOT_FOUND.
    promoted = await client.stub.PromoteModel(train_pb2.PromoteModelRequest(version=final.model_version))
    assert promoted.current and promoted.version == final.model_version
    assert (store / "models" / "CURRENT").read_text() == final.model_version
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.stub.PromoteModel(train_pb2.PromoteModelRequest(version="20200101-000000-abcdef"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert await client.serving()


async def test_cancel_queued_and_running_jobs(
    train_harness: TrainHarness, dataset_file: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    # A terminate would only come after 20 s, so a quick CANCELLED proves the trainer stopped by itself.
    _, client = await train_harness.start(str(store), cancel_timeout_s=20.0)
    running = await client.stub.Train(
        train_pb2.TrainRequest(dataset_uri=str(dataset_file), params=train_pb2.TrainParams(**LONG_PARAMS))
    )
    queued = await client.stub.Train(train_pb2.TrainRequest(dataset_uri=str(dataset_file)))
    after = await client.stub.Train(train_pb2.TrainRequest(dataset_uri=str(tmp_path / "missing.csv")))

    cancelled = await client.stub.CancelJob(train_pb2.CancelJobRequest(job_id=queued.job_id))
    assert cancelled.state == train_pb2.CANCELLED

    # Epoch 2 onwards is mid-fit (epoch 1 ends the recipe's frozen-embedding phase and a recompile follows).
    fitting = await client.watch_until_done(
        running.job_id, timeout_s=90, until=lambda j: j.epoch >= 2 or j.state in TERMINAL_STATES
    )
    assert fitting.state == train_pb2.RUNNING and fitting.stage == "fit", fitting
    t0 = time.monotonic()
    result = await client.stub.CancelJob(train_pb2.CancelJobRequest(job_id=running.job_id))
    elapsed = time.monotonic() - t0
    assert result.state == train_pb2.CANCELLED and result.error == "cancelled by request", result
    assert elapsed < 10, elapsed
    assert await client.serving()

    # The queue moves on (FIFO, skipping the cancelled one).
    last = await client.watch_until_done(after.job_id)
    assert last.state == train_pb2.FAILED and "does not exist" in last.error
    record = json.loads((store / "jobs" / f"{running.job_id}.json").read_text())
    assert record["state"] == "CANCELLED"
    jobs = await client.stub.ListJobs(train_pb2.ListJobsRequest())
    assert [j.job_id for j in jobs.jobs] == [after.job_id, queued.job_id, running.job_id]


async def test_a_crashed_trainer_fails_the_job(
    train_harness: TrainHarness, dataset_file: Path, tmp_path: Path
) -> None:
    server, client = await train_harness.start(str(tmp_path / "store"))
    job = await client.stub.Train(
        train_pb2.TrainRequest(dataset_uri=str(dataset_file), params=train_pb2.TrainParams(**LONG_PARAMS))
    )
    await client.watch_until_done(job.job_id, until=lambda j: j.stage in {"word2vec", "fit"})
    pid = server.runner.trainer_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # what the kernel's OOM killer would do
    final = await client.watch_until_done(job.job_id)
    assert final.state == train_pb2.FAILED
    assert final.error == "the training process was killed by signal SIGKILL"
    assert await client.serving()


async def test_invalid_requests_are_rejected_at_once(train_harness: TrainHarness, tmp_path: Path) -> None:
    _, client = await train_harness.start(str(tmp_path / "store"))
    bad = [
        train_pb2.TrainRequest(dataset_uri="s3://b/k.csv", params=train_pb2.TrainParams(epochs=-1)),
        train_pb2.TrainRequest(dataset_uri="s3://b/k.csv", params=train_pb2.TrainParams(batch_size=10**6)),
        train_pb2.TrainRequest(dataset_uri="s3://b/k.csv", params=train_pb2.TrainParams(max_rows=5)),
        train_pb2.TrainRequest(dataset_uri="s3://b/k.csv", min_accuracy=1.5),
        train_pb2.TrainRequest(dataset_uri="ftp://host/k.csv"),
        train_pb2.TrainRequest(dataset_uri="s3://bucket-only"),
        train_pb2.TrainRequest(),  # no dataset and no DATASET_URI default
    ]
    for request in bad:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.stub.Train(request, timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request
        assert err.value.details()
    assert (await client.stub.ListJobs(train_pb2.ListJobsRequest())).jobs == []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.stub.GetJob(train_pb2.GetJobRequest(job_id="job-nope"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert await client.serving()


async def test_mutating_calls_need_the_token(
    train_harness: TrainHarness, grpcurl: GrpcurlRunner, tmp_path: Path
) -> None:
    missing = str(tmp_path / "missing.csv")
    _, client = await train_harness.start(str(tmp_path / "store"), auth_token="s3cret", dataset_uri=missing)
    calls = [
        lambda md: client.stub.Train(train_pb2.TrainRequest(), metadata=md),
        lambda md: client.stub.CancelJob(train_pb2.CancelJobRequest(job_id="job-x"), metadata=md),
        lambda md: client.stub.PromoteModel(train_pb2.PromoteModelRequest(version="v1"), metadata=md),
    ]
    for call in calls:
        for metadata in [(), (("authorization", "Bearer wrong"),), (("authorization", "s3cret"),)]:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(metadata)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert await client.serving()

    # The right token through grpcurl, as the README shows it; reads stay open without it.
    accepted = await grpcurl(
        "-plaintext", "-H", "authorization: Bearer s3cret", "-d", "{}", client.address, f"{SERVICE}/Train"
    )
    assert accepted.returncode == 0, accepted.stderr
    job = accepted.json_objects()[0]
    assert job.get("state") == "QUEUED" and job.get("dataset_uri") == missing, accepted.stdout
    final = await client.watch_until_done(job["job_id"])
    assert final.state == train_pb2.FAILED
    assert (await client.stub.GetJob(train_pb2.GetJobRequest(job_id=job["job_id"]))).job_id == job["job_id"]
    assert len((await client.stub.ListJobs(train_pb2.ListJobsRequest())).jobs) == 1
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.stub.PromoteModel(
            train_pb2.PromoteModelRequest(version="v1"), metadata=(("authorization", "Bearer s3cret"),)
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_jobs_survive_a_restart(
    train_harness: TrainHarness, dataset_file: Path, tmp_path: Path
) -> None:
    store_dir = tmp_path / "store"
    first, client = await train_harness.start(str(store_dir), cancel_timeout_s=1.0)
    failed = await client.stub.Train(train_pb2.TrainRequest(dataset_uri=str(tmp_path / "missing.csv")))
    assert (await client.watch_until_done(failed.job_id)).state == train_pb2.FAILED
    running = await client.stub.Train(
        train_pb2.TrainRequest(dataset_uri=str(dataset_file), params=train_pb2.TrainParams(**LONG_PARAMS))
    )
    queued = await client.stub.Train(train_pb2.TrainRequest(dataset_uri=str(dataset_file)))
    # At "fit" the child is importing TensorFlow and not looking at its stop flag: stop() must terminate it.
    await client.watch_until_done(
        running.job_id, until=lambda j: j.stage == "fit" or j.state in TERMINAL_STATES
    )
    t0 = time.monotonic()
    await first.stop(1.0)
    assert time.monotonic() - t0 < 8
    # A graceful stop cancels and records what was running or queued.
    # A server that died with a job RUNNING leaves a record like this one.
    crashed = Job(
        job_id="job-20000101-000000-deadbeef",
        dataset_uri="s3://b/k.csv",
        params=TrainParams(),
        state=JobState.RUNNING,
        stage=Stage.FIT,
        created_at=1.0,
        started_at=2.0,
    )
    await JobRecords(LocalStore(store_dir)).save(crashed)

    _, client = await train_harness.start(str(store_dir))
    got = await client.stub.GetJob(train_pb2.GetJobRequest(job_id=crashed.job_id))
    assert got.state == train_pb2.FAILED and got.error == RESTARTED_RUNNING
    assert json.loads((store_dir / "jobs" / f"{crashed.job_id}.json").read_text())["state"] == "FAILED"
    for job_id in (running.job_id, queued.job_id):
        got = await client.stub.GetJob(train_pb2.GetJobRequest(job_id=job_id))
        assert got.state == train_pb2.CANCELLED and "shut down" in got.error
    got = await client.stub.GetJob(train_pb2.GetJobRequest(job_id=failed.job_id))
    assert got.state == train_pb2.FAILED and "does not exist" in got.error
    jobs = await client.stub.ListJobs(train_pb2.ListJobsRequest())
    assert [j.job_id for j in jobs.jobs] == [queued.job_id, running.job_id, failed.job_id, crashed.job_id]
    assert await client.serving()
