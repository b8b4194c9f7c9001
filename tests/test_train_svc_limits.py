"""train_svc trusts nothing it reads: versions and job ids are checked, datasets are bounded, the queue is
bounded, and the work dir is owned and swept. Real servers on port 0, real files, the moto S3 endpoint."""

from __future__ import annotations

import gzip
import json
import logging
import time
from pathlib import Path

import boto3
import grpc
import pytest

from protos import train_pb2
from sentiment.errors import ConfigError, InvalidDataset
from sentiment.synthetic import write_sentiment140
from tests.fixtures_train import TrainHarness
from train_svc.fetch import fetch_dataset
from train_svc.workdir import LOCK_FILE

QUICK_PARAMS = {
    "epochs": 1,
    "batch_size": 64,
    "sequence_length": 20,
    "embedding_dim": 16,
    "w2v_epochs": 2,
    "w2v_min_count": 2,
    "lstm_units": 8,
}
ROW = b'"4","1","Mon Apr 06 22:19:45 PDT 2009","NO_QUERY","u","what a happy day, I love it"\n'


def write_gzip_bomb(path: Path, decompressed_bytes: int) -> Path:
    """A valid Sentiment140 gzip that is a few KB on disk and `decompressed_bytes` once read."""
    path.write_bytes(gzip.compress(ROW * (decompressed_bytes // len(ROW)), compresslevel=9))
    return path


async def test_promote_model_rejects_names_that_are_not_versions(
    train_harness: TrainHarness, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    (store / "models").mkdir(parents=True)
    _, client = await train_harness.start(str(store))
    for version in ("CURRENT", "v1\x00x", "a" * 300, "../jobs", ".hidden"):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.stub.PromoteModel(train_pb2.PromoteModelRequest(version=version), timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, version
        assert "model version" in err.value.details()
    assert not (store / "models" / "CURRENT").exists()
    assert await client.serving()


async def test_train_beyond_max_queued_jobs_is_resource_exhausted(
    train_harness: TrainHarness, dataset_file: Path, tmp_path: Path
) -> None:
    _, client = await train_harness.start(str(tmp_path / "store"), max_queued_jobs=1)
    long_params = train_pb2.TrainParams(**{**QUICK_PARAMS, "epochs": 500})
    running = await client.stub.Train(
        train_pb2.TrainRequest(dataset_uri=str(dataset_file), params=long_params)
    )
    await client.watch_until_done(running.job_id, until=lambda j: j.state == train_pb2.RUNNING)
    queued = await client.stub.Train(train_pb2.TrainRequest(dataset_uri=str(dataset_file)))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.stub.Train(train_pb2.TrainRequest(dataset_uri=str(dataset_file)), timeout=5)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "MAX_QUEUED_JOBS=1" in err.value.details()

    # Room again once the queued one is gone; the refused call left no job behind.
    await client.stub.CancelJob(train_pb2.CancelJobRequest(job_id=queued.job_id))
    accepted = await client.stub.Train(train_pb2.TrainRequest(dataset_uri=str(dataset_file)))
    assert accepted.state == train_pb2.QUEUED
    jobs = await client.stub.ListJobs(train_pb2.ListJobsRequest())
    assert [j.job_id for j in jobs.jobs] == [accepted.job_id, queued.job_id, running.job_id]


async def test_gzip_bomb_fails_the_job_quickly_with_the_bytes_message(
    train_harness: TrainHarness, tmp_path: Path
) -> None:
    bomb = write_gzip_bomb(tmp_path / "bomb.csv.gz", 8 << 20)
    assert bomb.stat().st_size < 100_000  # passes the download check: only reading it expands it
    _, client = await train_harness.start(str(tmp_path / "store"), max_dataset_bytes=1 << 20)
    t0 = time.monotonic()
    job = await client.stub.Train(train_pb2.TrainRequest(dataset_uri=str(bomb)))
    final = await client.watch_until_done(job.job_id, timeout_s=60)
    assert final.state == train_pb2.FAILED, final
    assert final.error == f"dataset expands past MAX_DATASET_BYTES={1 << 20} bytes"
    assert time.monotonic() - t0 < 30
    assert [p.name for p in train_harness.work_dir.iterdir()] == [LOCK_FILE]  # the scratch went too
    assert await client.serving()


async def test_a_dataset_object_above_max_bytes_fails_before_it_is_read(
    train_harness: TrainHarness, bucket: str, tmp_path: Path
) -> None:
    dataset = write_sentiment140(tmp_path / "tweets.csv", 2000, seed=1)
    size = dataset.stat().st_size
    boto3.client("s3").upload_file(str(dataset), bucket, "data/tweets.csv")
    _, client = await train_harness.start(str(tmp_path / "store"), max_dataset_bytes=size - 1)
    for uri in (str(dataset), f"s3://{bucket}/data/tweets.csv"):
        job = await client.stub.Train(train_pb2.TrainRequest(dataset_uri=uri))
        final = await client.watch_until_done(job.job_id)
        assert final.state == train_pb2.FAILED, final
        assert uri in final.error and f"holds more than the limit of {size - 1:,} bytes" in final.error
        assert final.error.endswith(f"(MAX_DATASET_BYTES={size - 1})"), final.error
        assert final.rows_read == 0 and final.stage == "download"
    assert [p.name for p in train_harness.work_dir.iterdir()] == [LOCK_FILE]


async def test_fetch_counts_the_bytes_a_source_did_not_announce(tmp_path: Path) -> None:
    # /proc files say they are 0 bytes long, then read as more: only the count while copying catches them.
    source = Path("/proc/self/maps")
    assert source.stat().st_size == 0
    with pytest.raises(InvalidDataset, match=r"more than the limit of 64 bytes \(MAX_DATASET_BYTES=64\)"):
        await fetch_dataset(str(source), tmp_path / "dataset", max_bytes=64)
    assert not (tmp_path / "dataset").exists()
    digest = await fetch_dataset(str(source), tmp_path / "dataset", max_bytes=0)
    assert len(digest) == 64 and (tmp_path / "dataset").stat().st_size > 64


async def test_rows_above_max_dataset_rows_are_sampled_to_the_cap_and_the_job_says_so(
    train_harness: TrainHarness, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    dataset = write_sentiment140(tmp_path / "tweets.csv.gz", 1000, seed=3)
    _, client = await train_harness.start(str(store), max_dataset_rows=400)
    job = await client.stub.Train(
        train_pb2.TrainRequest(dataset_uri=str(dataset), params=train_pb2.TrainParams(**QUICK_PARAMS))
    )
    final = await client.watch_until_done(job.job_id, timeout_s=120)
    assert final.state == train_pb2.SUCCEEDED, final.error
    notice = (
        "the dataset has 1,000 usable rows, more than MAX_DATASET_ROWS=400: "
        "trained on a seeded uniform sample of 400"
    )
    assert final.notice == notice and final.rows_read == 1000
    manifest = json.loads((store / "models" / final.model_version / "manifest.json").read_text())
    assert manifest["notice"] == notice
    assert manifest["metrics"]["rows_used"] == 400 and sum(manifest["split"].values()) == 400
    assert json.loads((store / "jobs" / f"{job.job_id}.json").read_text())["notice"] == notice

    # Under the cap nothing is sampled and nothing is said.
    small = write_sentiment140(tmp_path / "small.csv", 300, seed=4)
    job = await client.stub.Train(
        train_pb2.TrainRequest(dataset_uri=str(small), params=train_pb2.TrainParams(**QUICK_PARAMS))
    )
    final = await client.watch_until_done(job.job_id, timeout_s=120)
    assert final.state == train_pb2.SUCCEEDED and final.notice == ""
    assert final.metrics.rows_used == 300


async def test_job_records_with_invalid_ids_are_ignored_at_start(
    train_harness: TrainHarness, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    jobs = tmp_path / "store" / "jobs"
    jobs.mkdir(parents=True)
    good = "job-20200101-000000-0000beef"
    record = {"job_id": good, "dataset_uri": "s3://b/k.csv", "params": {}, "state": "SUCCEEDED"}
    (jobs / f"{good}.json").write_text(json.dumps(record))
    (jobs / "evil.json").write_text(json.dumps({**record, "job_id": "../../models/CURRENT"}))
    (jobs / "nul.json").write_text(json.dumps({**record, "job_id": "job-1\x00"}))
    # A valid id under another job's key would shadow that job.
    (jobs / "job-20200101-000000-0000f00d.json").write_text(json.dumps(record))
    huge = "job-20200101-000000-000000aa"
    (jobs / f"{huge}.json").write_text(json.dumps({**record, "job_id": huge, "error": "x" * (2 << 20)}))
    # Fields of the wrong type would answer INTERNAL on GetJob later.
    typed = {"epoch": "3", "metrics": {"accuracy": "high"}, "params": {"epochs": 1.5}, "promoted": 1}
    for i, (name, value) in enumerate(typed.items()):
        job_id = f"job-20200101-000000-0000000{i}"
        (jobs / f"{job_id}.json").write_text(json.dumps({**record, "job_id": job_id, name: value}))
    with caplog.at_level(logging.WARNING, logger="train_svc.records"):
        _, client = await train_harness.start(str(tmp_path / "store"))
    listed = await client.stub.ListJobs(train_pb2.ListJobsRequest())
    assert [j.job_id for j in listed.jobs] == [good]
    ignored = {r.args[0] for r in caplog.records if r.msg == "ignoring job record %s: %s" and r.args}
    assert ignored == {
        "jobs/evil.json",
        "jobs/nul.json",
        "jobs/job-20200101-000000-0000f00d.json",
        f"jobs/{huge}.json",
        *(f"jobs/job-20200101-000000-0000000{i}.json" for i in range(len(typed))),
    }


async def test_start_removes_stale_job_scratch_and_never_follows_a_symlink(
    train_harness: TrainHarness, tmp_path: Path
) -> None:
    work = train_harness.work_dir
    stale = work / "job-20200101-000000-0badf00d"
    (stale / "bundle").mkdir(parents=True)
    (stale / "dataset").write_bytes(b"a copy of the dataset")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "sentinel").write_text("keep me")
    (work / "job-20200101-000000-deadbeef").symlink_to(outside, target_is_directory=True)
    (work / "job-20200101-000000-cafef00d").symlink_to(outside / "sentinel")
    (work / "notes.txt").write_text("not a job")
    (work / "job-not-an-id").mkdir()

    await train_harness.start(str(tmp_path / "store"))
    assert sorted(p.name for p in work.iterdir()) == sorted([LOCK_FILE, "notes.txt", "job-not-an-id"])
    assert (outside / "sentinel").read_text() == "keep me"


async def test_a_second_server_on_the_same_work_dir_fails_to_start(
    train_harness: TrainHarness, tmp_path: Path
) -> None:
    first, client = await train_harness.start(str(tmp_path / "store"))
    with pytest.raises(ConfigError, match=r"WORK_DIR=.* is in use by another running train_svc"):
        await train_harness.start(str(tmp_path / "store2"))
    assert await client.serving()
    await first.stop(1.0)
    # The lock goes with the server that held it.
    _, again = await train_harness.start(str(tmp_path / "store"))
    assert await again.serving()


async def test_invalid_utf8_in_a_train_request_is_invalid_argument_and_counted(
    train_harness: TrainHarness, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server, client = await train_harness.start(str(tmp_path / "store"))
    bad = b"\n\x05s3:\xff\xfe"  # field 1 (dataset_uri): bytes that are not UTF-8
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        for method in ("Train", "WatchJob"):
            call = (channel.unary_unary if method == "Train" else channel.unary_stream)(
                f"/sentiment.v1.TrainService/{method}",
                request_serializer=lambda raw: raw,
                response_deserializer=lambda raw: raw,
            )
            with caplog.at_level(logging.WARNING), pytest.raises(grpc.aio.AioRpcError) as caught:
                reply = call(bad, timeout=5)
                if method == "WatchJob":
                    async for _ in reply:
                        pass
                else:
                    await reply
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
            assert "UTF-8" in (caught.value.details() or "")
            counted = server.metrics.registry.get_sample_value(
                "train_invalid_requests_total", {"rpc": method}
            )
            assert counted == 1, method
    assert not [r for r in caplog.records if r.exc_info]
    assert await client.serving() and server.runner.list() == []
