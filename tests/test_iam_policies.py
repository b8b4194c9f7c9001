"""The IAM policies in `manifests/iam/` are enough, and no more than the job needs: each program and command
runs as a user holding only its policy, against a moto server that checks every request's signature and
permissions (`auth_aws`).

moto checks S3 requests against the object's ARN, so the S3 statements are tested as written (bucket
names included, which is why the buckets here have the manifests' names). It checks DynamoDB requests
against the resource "*", so a DynamoDB statement is tested for its actions, its Resource widened to "*".
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import botocore.exceptions
import grpc
import pytest

from protos import train_pb2, train_pb2_grpc
from scripts.programs import start
from sentiment.predict_client import PredictClient
from sentiment.synthetic import generate, x_api_payload
from tests.fixtures_stream import AccessKey, AuthAws, run_summary, spawn_stream_svc
from tests.test_stream_deadletters import dead_letter_file
from tests.test_train_svc import QUICK_PARAMS

POLICIES = Path(__file__).resolve().parents[1] / "manifests" / "iam"
BUCKET = "tweet-sentiment-stream"  # as the policies and the overlays' DEAD_LETTER_URI name it
PREFIX = "dev/dead-letters"


def policy(name: str) -> dict[str, Any]:
    """A policy of manifests/iam/ as moto can check it (see the module's docstring)."""
    document: dict[str, Any] = copy.deepcopy(json.loads((POLICIES / f"{name}.json").read_text()))
    for statement in document["Statement"]:
        actions = statement["Action"]
        if all(action.startswith("dynamodb:") for action in actions):
            statement["Resource"] = "*"
    return document


async def as_user(auth_aws: AuthAws, key: AccessKey, env: dict[str, str], *args: str) -> tuple[int, str]:
    """`python -m stream_svc ARGS` with only `key`'s credentials (no AWS variable of this process)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "stream_svc",
        *args,
        env={**auth_aws.process_env(key), "LOG_LEVEL": "WARNING", **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def test_every_policy_is_valid_json_with_allow_statements_only() -> None:
    names = sorted(p.stem for p in POLICIES.glob("*.json"))
    assert names == ["model-svc", "stream-ops", "stream-svc", "train-svc"]
    for name in names:
        document = json.loads((POLICIES / f"{name}.json").read_text())
        assert document["Version"] == "2012-10-17"
        for statement in document["Statement"]:
            assert statement["Effect"] == "Allow" and statement["Sid"], (name, statement)
            assert "*" not in statement["Action"] and statement["Resource"] != "*", (name, statement)


async def test_the_stream_and_the_operator_commands_run_on_their_policies_alone(
    auth_aws: AuthAws, stream_model_server: Any, tmp_path: Path
) -> None:
    stream_key, ops_key = auth_aws.user(policy("stream-svc")), auth_aws.user(policy("stream-ops"))
    admin_s3 = auth_aws.client("s3", auth_aws.admin)
    admin_s3.create_bucket(Bucket=BUCKET)
    table = f"tweet_sentiment_{uuid.uuid4().hex[:8]}"
    env = {
        "DYNAMODB_TABLE": table,
        "MODEL_TARGET": f"127.0.0.1:{stream_model_server.port}",
        "DEAD_LETTER_URI": f"s3://{BUCKET}/{PREFIX}",
        "DEAD_LETTER_PATH": str(tmp_path / "spool" / "dead-letter.jsonl"),
    }
    code, out = await as_user(auth_aws, ops_key, env, "create-table")
    assert code == 0, out

    # The stream: 100 tweets written, 2 too long for model_svc dead-lettered and shipped to S3.
    tweets = list(generate(102, seed=91))
    tweets[-2:] = [dataclasses.replace(t, text="so long " * 200) for t in tweets[-2:]]
    replay = tmp_path / "replay.jsonl"
    replay.write_text("".join(json.dumps(x_api_payload(t)) + "\n" for t in tweets))
    stream_env = {**auth_aws.process_env(stream_key), **env, "SOURCE": "replay", "REPLAY_PATH": str(replay), "METRICS_PORT": "0"}  # fmt: skip
    proc = await spawn_stream_svc(stream_env)
    _, stderr = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, stderr.decode()[-3000:]
    summary = run_summary(stderr)
    assert summary["written"] == 100 and summary["dead_lettered"] == 2, summary
    listed = admin_s3.list_objects_v2(Bucket=BUCKET, Prefix=PREFIX).get("Contents", [])
    assert len(listed) == 1, "the dead letters reached S3 on the stream's own policy"

    # Not the stream's job: it may not delete.
    ids = tmp_path / "deleted.txt"
    ids.write_text("\n".join([*(t.id for t in tweets[-2:]), *(t.id for t in tweets[:3])]) + "\n")
    code, out = await as_user(auth_aws, stream_key, env, "forget", "--ids", str(ids))
    assert code == 1 and "5 failed" in out and "AccessDenied" in out, out

    # The operator: forget (table and dead letters), redrive, reports, backfill.
    letters = tmp_path / "letters" / "dead-letter.20261201T000000.000000Z.jsonl"
    letters.parent.mkdir()
    redriven = await dead_letter_file(letters, 30, seed=92)
    admin_s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{letters.name}", Body=letters.read_bytes())
    code, out = await as_user(auth_aws, ops_key, env, "forget", "--ids", str(ids))
    assert code == 0 and "forget: 5 ids, 3 deleted, 2 not in the table, 0 failed" in out, out
    assert "2 files read, 1 rewritten; forgotten tweets' lines removed: 2" in out, out
    code, out = await as_user(auth_aws, ops_key, env, "redrive", f"s3://{BUCKET}/{PREFIX}")
    assert code == 0 and "written 30, failed again 0" in out, out
    start = min(t.created_at for t in tweets).replace(minute=0, second=0, microsecond=0)
    hour, until = (moment.strftime("%Y-%m-%dT%H:%M:%SZ") for moment in (start, start + timedelta(hours=2)))
    code, out = await as_user(auth_aws, ops_key, env, "report", "--since", hour, "--until", until)
    assert code == 0 and "tweets analysed: " in out and "Scan" not in out, out
    code, out = await as_user(auth_aws, ops_key, env, "report", "--all")
    assert code == 0 and f"tweets analysed: {100 - 3 + len(redriven)}\n" in out, out
    code, out = await as_user(
        auth_aws, ops_key, env, "backfill-buckets", "--state", str(tmp_path / "state.json")
    )
    assert code == 0, out


async def test_train_svc_and_model_svc_run_on_their_policies_alone(
    auth_aws: AuthAws, dataset_file: Path, tmp_path: Path
) -> None:
    """train-svc reads a dataset and publishes, records and promotes a model; model-svc serves it."""
    admin_s3 = auth_aws.client("s3", auth_aws.admin)
    for bucket in ("tweet-sentiment-data", "tweet-sentiment-models"):
        admin_s3.create_bucket(Bucket=bucket)
    admin_s3.put_object(Bucket="tweet-sentiment-data", Key="tweets.csv.gz", Body=dataset_file.read_bytes())
    store = "s3://tweet-sentiment-models/dev"
    train_key, model_key = auth_aws.user(policy("train-svc")), auth_aws.user(policy("model-svc"))
    base = {"STORE_URI": store, "METRICS_PORT": "0", "GRACE_S": "1"}
    train = start("train_svc", {**auth_aws.process_env(train_key), **base, "WORK_DIR": str(tmp_path / "work")}, tmp_path / "train.log")  # fmt: skip
    try:
        await train.wait_serving("sentiment.v1.TrainService", 60)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{train.port}") as channel:
            stub = train_pb2_grpc.TrainServiceStub(channel)
            job = await stub.Train(
                train_pb2.TrainRequest(
                    dataset_uri="s3://tweet-sentiment-data/tweets.csv.gz",
                    params=train_pb2.TrainParams(**QUICK_PARAMS),
                    promote=True,
                )
            )
            watch = stub.WatchJob(train_pb2.WatchJobRequest(job_id=job.job_id), timeout=120)
            final = [update async for update in watch][-1]
            assert final.state == train_pb2.SUCCEEDED and final.promoted, (final, train.log_text()[-3000:])
            listed = await stub.ListJobs(train_pb2.ListJobsRequest(), timeout=10)
            assert [j.job_id for j in listed.jobs] == [job.job_id], "the job record was read back"
    finally:
        await asyncio.to_thread(train.stop, 10)

    model = start("model_svc", {**auth_aws.process_env(model_key), **base}, tmp_path / "model.log")
    try:
        await model.wait_serving("sentiment.v1.PredictService", 60)
        async with PredictClient(f"127.0.0.1:{model.port}") as client:
            (prediction,) = await client.predict_batch(["what a lovely day"])
        assert prediction.model_version == final.model_version
    finally:
        await asyncio.to_thread(model.stop, 10)
    with pytest.raises(botocore.exceptions.ClientError, match="AccessDenied"):  # it reads, never writes
        auth_aws.client("s3", model_key).put_object(
            Bucket="tweet-sentiment-models", Key="dev/models/CURRENT", Body=b"v0"
        )
