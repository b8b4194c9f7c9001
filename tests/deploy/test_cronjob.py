"""The CronJob that calls Train: its spec, the command line the README documents, and that line run by a shell
against a real train_svc."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
from pathlib import Path

import boto3
import grpc
import pytest

from protos import train_pb2
from tests.deploy.helpers import (
    REPO,
    VENV_BIN,
    config_data,
    cronjob_command,
    gitlab_ci,
    needs_kubectl,
    objects_of,
)
from tests.fixtures_train import TrainHarness


def test_cronjob_calls_train_with_the_auth_token_from_a_secret_never_concurrently(overlay: str) -> None:
    objects = objects_of(overlay)
    cronjob = next(o for o in objects if o["kind"] == "CronJob")
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    command = cronjob_command(objects)
    words = shlex.split(command)
    assert words[0] == "grpcurl" and words[-2:] == ["train-svc:50051", "sentiment.v1.TrainService/Train"]
    assert words[words.index("-H") + 1] == "authorization: Bearer $TRAIN_AUTH_TOKEN"
    request = json.loads(words[words.index("-d") + 1])
    assert request["promote"] is True and request["min_accuracy"] == 0.75
    assert request["dataset_uri"] == config_data(objects, "train-svc-config")["DATASET_URI"]
    ctr = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    (token,) = ctr["env"]
    assert token["valueFrom"]["secretKeyRef"] == {"name": "train-auth", "key": "token"}
    assert ctr["image"] == gitlab_ci()["variables"]["GRPCURL_IMAGE"]


@needs_kubectl
def test_readme_documents_the_cronjob_command() -> None:
    assert cronjob_command(objects_of("prod")) in (REPO / "README.md").read_text()


@needs_kubectl
async def test_cronjob_command_starts_a_training_job_on_a_real_train_svc(
    train_harness: TrainHarness, bucket: str, dataset_file: Path
) -> None:
    """The rendered CronJob line, run by a shell as in the pod, against train_svc on a local port."""
    dataset_uri = f"s3://{bucket}/datasets/{dataset_file.name}"
    boto3.client("s3").upload_file(str(dataset_file), bucket, f"datasets/{dataset_file.name}")
    token = "cron-test-token"
    server, client = await train_harness.start(f"s3://{bucket}/store", auth_token=token)

    command = cronjob_command(objects_of("prod"))
    command = re.sub(r'"dataset_uri": "[^"]*"', f'"dataset_uri": "{dataset_uri}"', command)
    command = command.replace(" train-svc:50051 ", f" 127.0.0.1:{server.port} ")
    command = shlex.quote(str(VENV_BIN / "grpcurl")) + command.removeprefix("grpcurl")

    async def run_shell(auth_token: str) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            command,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "TRAIN_AUTH_TOKEN": auth_token},
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()

    code, out, err = await run_shell("not-the-token")
    assert code != 0 and "Unauthenticated" in err

    code, out, err = await run_shell(token)
    assert code == 0, err
    reply = json.loads(out)
    job_id = reply.get("job_id") or reply.get("jobId")  # grpcurl prints the proto field names
    assert job_id, out
    job = await client.stub.GetJob(train_pb2.GetJobRequest(job_id=job_id), timeout=10)
    assert job.dataset_uri == dataset_uri and job.promote and job.min_accuracy == pytest.approx(0.75)
    metadata = (("authorization", f"Bearer {token}"),)
    try:
        await client.stub.CancelJob(train_pb2.CancelJobRequest(job_id=job_id), metadata=metadata, timeout=10)
    except grpc.aio.AioRpcError as exc:  # it may have finished or failed already; either way it ran
        assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION
