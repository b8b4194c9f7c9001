"""`python -m train_svc` killed with SIGKILL mid-job: the next server on its work dir removes what the job
left, a second live server cannot take the same work dir, and stale temp work dirs are swept."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from protos import train_pb2, train_pb2_grpc
from scripts import programs
from scripts.programs import Program
from train_svc.runner import RESTARTED_RUNNING
from train_svc.workdir import LOCK_FILE, TEMP_PREFIX, try_lock

LONG_PARAMS = train_pb2.TrainParams(
    epochs=500, batch_size=64, sequence_length=20, embedding_dim=16, w2v_epochs=2, lstm_units=8
)


@contextlib.asynccontextmanager
async def train_process(env: dict[str, str], log_path: Path) -> AsyncIterator[Program]:
    """`python -m train_svc` with `env` (in a session of its own: its trainer child too), SERVING; killed,
    group and all, on exit."""
    program = programs.start("train_svc", env, log_path)
    try:
        await program.wait_serving(timeout_s=60)
        yield program
    finally:
        await asyncio.to_thread(program.kill)


def server_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "WORK_DIR"}
    base = {"STORE_URI": str(tmp_path / "store"), "LISTEN_ADDR": "127.0.0.1:0", "METRICS_PORT": "0"}
    return {**env, **base, "GRACE_S": "1", "CANCEL_TIMEOUT_S": "1", **extra}


async def test_restart_after_sigkill_removes_the_killed_jobs_scratch(
    dataset_file: Path, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    env = server_env(tmp_path, WORK_DIR=str(work))
    async with train_process(env, tmp_path / "train.log") as first:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{first.port}") as channel:
            stub = train_pb2_grpc.TrainServiceStub(channel)
            job = await stub.Train(train_pb2.TrainRequest(dataset_uri=str(dataset_file), params=LONG_PARAMS))
            async with asyncio.timeout(90):
                async for update in stub.WatchJob(train_pb2.WatchJobRequest(job_id=job.job_id)):
                    if update.stage in ("word2vec", "fit"):
                        break
        await asyncio.to_thread(first.kill)  # the server and its trainer at once, as the OOM killer would
    scratch = work / job.job_id
    # The dataset's local name is fixed, whatever the URI calls it.
    assert (scratch / "dataset").read_bytes() == dataset_file.read_bytes()

    async with train_process(env, tmp_path / "train.log") as second:
        assert not scratch.exists()
        assert sorted(p.name for p in work.iterdir()) == [LOCK_FILE]
        assert any(
            job.job_id in line and "removed stale job scratch" in line
            for line in second.log_text().splitlines()
        )
        async with grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as channel:
            stub = train_pb2_grpc.TrainServiceStub(channel)
            got = await stub.GetJob(train_pb2.GetJobRequest(job_id=job.job_id), timeout=5)
            assert got.state == train_pb2.FAILED and got.error == RESTARTED_RUNNING

        # While it runs, no other server may take its WORK_DIR.
        third = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "train_svc", env=env, stderr=asyncio.subprocess.PIPE
        )
        _, err = await asyncio.wait_for(third.communicate(), 30)
        assert third.returncode == 2, err.decode()
        assert f"WORK_DIR={work} is in use by another running train_svc" in err.decode()

        assert await asyncio.to_thread(second.stop, 20) == 0 and not second.killed


@pytest.fixture
def temp_root(tmp_path: Path) -> Path:
    """What the server under test sees as the system temp dir (TMPDIR), so the real /tmp is not touched."""
    root = tmp_path / "tmp"
    root.mkdir()
    return root


async def test_stale_temp_work_dirs_are_removed_and_live_ones_kept(temp_root: Path, tmp_path: Path) -> None:
    stale = temp_root / f"{TEMP_PREFIX}stale"
    (stale / "job-20200101-000000-0badf00d").mkdir(parents=True)
    (stale / "job-20200101-000000-0badf00d" / "dataset").write_bytes(b"left by a killed server")
    (stale / LOCK_FILE).touch()
    live = temp_root / f"{TEMP_PREFIX}live"
    live.mkdir()
    held = try_lock(live / LOCK_FILE)  # held by this process: a server that is running
    assert held is not None
    starting = temp_root / f"{TEMP_PREFIX}starting"  # no lock file yet: a server between mkdtemp and lock
    starting.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / LOCK_FILE).touch()
    (outside / "sentinel").write_text("keep me")
    (temp_root / f"{TEMP_PREFIX}link").symlink_to(outside, target_is_directory=True)
    try:
        async with train_process(
            server_env(tmp_path, TMPDIR=str(temp_root)), tmp_path / "train.log"
        ) as server:
            assert not stale.exists()
            assert (outside / "sentinel").read_text() == "keep me"
            names = {p.name for p in temp_root.iterdir()}
            (own,) = names - {live.name, starting.name, f"{TEMP_PREFIX}link"}
            assert own.startswith(TEMP_PREFIX) and (temp_root / own / LOCK_FILE).is_file()
            assert try_lock(temp_root / own / LOCK_FILE) is None  # the server holds its own
            assert await asyncio.to_thread(server.stop, 20) == 0 and not server.killed
        # A clean stop removes its own temp dir; the others are untouched.
        assert {p.name for p in temp_root.iterdir()} == {live.name, starting.name, f"{TEMP_PREFIX}link"}
        assert (live / LOCK_FILE).is_file()
    finally:
        os.close(held)
