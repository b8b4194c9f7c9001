"""DynamoDB refusing the credentials or the table mid-stream is not a bad item: no split, a stop, exit 3.

Against a moto server of its own that enforces IAM authentication (`INITIAL_NO_AUTH_ACTION_COUNT`): a
user allowed `dynamodb:*` streams into its table, and its access key is deleted (revoked) mid-stream, as
an operator or a credential rotation would. moto answers `InvalidClientTokenId` (HTTP 403) from then on.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import aioboto3
import pytest

from sentiment.predict_client import PredictClient
from sentiment.synthetic import write_jsonl
from stream_svc.config import EXIT_TABLE_REFUSED
from stream_svc.deadletter import DeadLetterFile, read_dead_letters
from stream_svc.dynamodb import TableAccessError, client_config
from stream_svc.metrics import StreamMetrics
from stream_svc.pipeline import Pipeline
from stream_svc.replay import ReplaySource
from stream_svc.sink import DynamoSink, WriteRetry
from tests.fixtures_stream import (
    AuthAws,
    RecordingSink,
    log_records,
    run_summary,
    spawn_stream_svc,
    wait_until,
)

WRITE_CONCURRENCY = 8
AUTH_ATTEMPTS = 3
# Each writer may have one request in flight as the key goes and then tries its next chunk AUTH_ATTEMPTS
# times; splitting refused requests into single items (the old behaviour) sends ~one per tweet.
MAX_REQUESTS_AFTER_CUT = 2 * WRITE_CONCURRENCY * AUTH_ATTEMPTS


def replay_ids(replay: Path, n: int) -> set[str]:
    return {json.loads(line)["data"]["id"] for line in replay.read_text().splitlines()[:n]}


@pytest.mark.parametrize(
    ("cut", "code"),
    [("revoke the key", "InvalidClientTokenId"), ("delete the table", "ResourceNotFoundException")],
)
async def test_refusal_mid_stream_stops_the_pipeline_without_splitting_requests(
    auth_aws: AuthAws, stream_model_server: Any, tmp_path: Path, dead_letter_path: Path, cut: str, code: str
) -> None:
    key, table = auth_aws.writer()
    replay = write_jsonl(tmp_path / "replay.jsonl", 3000, seed=41)
    session = aioboto3.Session(
        aws_access_key_id=key.key_id, aws_secret_access_key=key.secret, region_name=auth_aws.region
    )
    retry = WriteRetry(auth_attempts=AUTH_ATTEMPTS, auth_initial_backoff_s=0.05)
    metrics = StreamMetrics()
    async with (
        session.client("dynamodb", endpoint_url=auth_aws.endpoint, config=client_config(16)) as client,
        PredictClient(f"127.0.0.1:{stream_model_server.port}") as predict_client,
    ):
        sink = RecordingSink(
            DynamoSink(client, table, concurrency=WRITE_CONCURRENCY, retry=retry, metrics=metrics)
        )
        run = Pipeline(
            ReplaySource(replay, rate=1000),
            predict_client,
            sink,
            DeadLetterFile(dead_letter_path),
            batch_size=32,
            batch_max_wait_s=0.02,
            write_concurrency=WRITE_CONCURRENCY,
            metrics=metrics,
        )
        task = asyncio.create_task(run.run())
        await wait_until(lambda: len(sink.landed) >= 300, 30, "300 tweets written")
        if cut == "revoke the key":
            await asyncio.to_thread(auth_aws.revoke, key)
        else:
            await asyncio.to_thread(auth_aws.client("dynamodb", auth_aws.admin).delete_table, TableName=table)
        requests_at_cut = sink.requests
        with pytest.raises(TableAccessError) as refused:
            await asyncio.wait_for(task, 30)
    requests_after_cut = sink.requests - requests_at_cut
    print(f"{cut}: {requests_after_cut} BatchWriteItem requests after the cut")  # the figure, with -s
    assert refused.value.code == code and refused.value.attempts == AUTH_ATTEMPTS
    assert requests_after_cut <= MAX_REQUESTS_AFTER_CUT
    assert metrics.sample("stream_dynamodb_auth_errors_total", {"code": code}) >= AUTH_ATTEMPTS
    assert (
        metrics.sample("stream_tweets_abandoned_total", {"reason": "table_refused"}) == run.counters.abandoned
    )
    counters = run.counters
    assert counters.balanced() and counters.skipped_empty == 0
    assert 300 <= counters.received < 3000  # the source was stopped
    assert counters.written == len(sink.landed) and counters.dead_lettered == counters.abandoned
    letters = read_dead_letters(dead_letter_path)
    dead = {entry["id"] for entry in letters}
    assert len(letters) == len(dead) == counters.dead_lettered  # one line per tweet, none invented
    assert all(entry["reason"].startswith("write failed: DynamoDB refused table") for entry in letters)
    assert all(code in entry["reason"] for entry in letters)
    assert sink.landed | dead == replay_ids(replay, counters.received)  # every tweet accepted, no other
    if cut == "revoke the key":
        assert sink.landed <= set(auth_aws.items(table))


async def test_module_exits_3_with_one_error_line_when_the_key_is_revoked_mid_stream(
    auth_aws: AuthAws, stream_model_server: Any, tmp_path: Path, dead_letter_path: Path
) -> None:
    key, table = auth_aws.writer()
    replay = write_jsonl(tmp_path / "replay.jsonl", 3000, seed=42)
    env = {
        **os.environ,
        **auth_aws.env(key),
        "SOURCE": "replay",
        "REPLAY_PATH": str(replay),
        "REPLAY_RATE": "600",
        "MODEL_TARGET": f"127.0.0.1:{stream_model_server.port}",
        "DYNAMODB_TABLE": table,
        "DYNAMODB_AUTH_MAX_TRIES": str(AUTH_ATTEMPTS),
        "WRITE_CONCURRENCY": str(WRITE_CONCURRENCY),
        "DEAD_LETTER_PATH": str(dead_letter_path),
        "METRICS_PORT": "0",
        "BATCH_SIZE": "32",
        "BATCH_MAX_WAIT_S": "0.02",
    }
    proc = await spawn_stream_svc(env)
    try:
        deadline = asyncio.get_running_loop().time() + 60
        while await asyncio.to_thread(_count, auth_aws, table) < 300:  # off the loop: model_svc runs on it
            assert proc.returncode is None and asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.1)
        await asyncio.to_thread(auth_aws.revoke, key)
        _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
    assert proc.returncode == EXIT_TABLE_REFUSED, stderr.decode()[-3000:]
    stopped = [r["msg"] for r in log_records(stderr) if r["msg"].startswith("stream_svc stopped")]
    assert len(stopped) == 1 and "InvalidClientTokenId" in stopped[0]
    summary = run_summary(stderr)
    assert summary["balanced"] == "True" and summary["received"] < 3000
    assert summary["dead_lettered"] == summary["abandoned"] > 0
    # Each successful request wrote at least one tweet, so what is over `written` was refused.
    assert summary["write_requests"] - summary["written"] <= MAX_REQUESTS_AFTER_CUT
    letters = read_dead_letters(dead_letter_path)
    assert len(letters) == summary["dead_lettered"]
    assert all("InvalidClientTokenId" in entry["reason"] for entry in letters)
    landed = set(auth_aws.items(table))
    assert landed | {e["id"] for e in letters} == replay_ids(replay, summary["received"])


async def test_module_exits_3_at_start_when_the_key_is_already_revoked(
    auth_aws: AuthAws, tmp_path: Path, dead_letter_path: Path
) -> None:
    key, table = auth_aws.writer()
    auth_aws.revoke(key)
    env = {
        **os.environ,
        **auth_aws.env(key),
        "SOURCE": "replay",
        "REPLAY_PATH": str(write_jsonl(tmp_path / "replay.jsonl", 10, seed=43)),
        "DYNAMODB_TABLE": table,
        "DEAD_LETTER_PATH": str(dead_letter_path),
        "METRICS_PORT": "0",
    }
    proc = await spawn_stream_svc(env)
    _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == EXIT_TABLE_REFUSED, stderr.decode()[-3000:]
    errors = [r["msg"] for r in log_records(stderr) if r["level"] == "error"]
    assert len(errors) == 1 and errors[0].startswith("stream_svc cannot start: DynamoDB refused table")
    assert "InvalidClientTokenId" in errors[0] and not dead_letter_path.exists()


def _count(auth_aws: AuthAws, table: str) -> int:
    client = auth_aws.client("dynamodb", auth_aws.admin)
    return int(client.scan(TableName=table, Select="COUNT")["Count"])
