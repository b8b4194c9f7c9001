"""`python -m train_svc` killed with SIGKILL mid-job: the next server on its work dir removes what the job
left, a second live server cannot take the same work dir, and stale temp work dirs are swept."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from protos import train_pb2, train_pb2_grpc
from train_svc.jobs import RESTARTED_RUNNING
from train_svc.workdir import LOCK_FILE, TEMP_PREFIX, try_lock

LONG_PARAMS = train_pb2.TrainParams(
    epochs=500, batch_size=64, sequence_length=20, embedding_dim=16, w2v_epochs=2, lstm_units=8
)


@dataclass
class TrainProcess:
    """A `python -m train_svc` in its own process group (its trainer child too), and what it logged."""

    process: asyncio.subprocess.Process
    port: int
    stderr: list[str]

    def kill_group(self) -> None:
        """SIGKILL the server and its trainer at once, as a node or the OOM killer would."""
        os.killpg(self.process.pid, signal.SIGKILL)


async def _read_stderr(
    process: asyncio.subprocess.Process, lines: list[str], port: asyncio.Future[int]
) -> None:
    assert process.stderr is not None
    while line := (await process.stderr.readline()).decode():
        lines.append(line)
        if not port.done() and (found := re.search(r"serving on \S+ \(port (\d+)\)", line)):
            port.set_result(int(found.group(1)))
    if not port.done():
        port.set_exception(AssertionError("train_svc exited before serving:\n" + "".join(lines)))


@contextlib.asynccontextmanager
async def train_process(env: dict[str, str]) -> AsyncIterator[TrainProcess]:
    """Start `python -m train_svc` with `env`, wait until it serves; killed (group and all) on exit."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "train_svc", env=env, stderr=asyncio.subprocess.PIPE, start_new_session=True
    )
    lines: list[str] = []
    port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    reader = asyncio.create_task(_read_stderr(process, lines, port))
    try:
        yield TrainProcess(process, await asyncio.wait_for(port, 30), lines)
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
        await asyncio.wait_for(reader, 10)


def server_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "WORK_DIR"}
    base = {"STORE_URI": str(tmp_path / "store"), "LISTEN_ADDR": "127.0.0.1:0", "METRICS_PORT": "0"}
    return {**env, **base, "GRACE_S": "1", "CANCEL_TIMEOUT_S": "1", **extra}


async def test_restart_after_sigkill_removes_the_killed_jobs_scratch(
    dataset_file: Path, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    env = server_env(tmp_path, WORK_DIR=str(work))
    async with train_process(env) as first:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{first.port}") as channel:
            stub = train_pb2_grpc.TrainServiceStub(channel)
            job = await stub.Train(train_pb2.TrainRequest(dataset_uri=str(dataset_file), params=LONG_PARAMS))
            async with asyncio.timeout(90):
                async for update in stub.WatchJob(train_pb2.WatchJobRequest(job_id=job.job_id)):
                    if update.stage in ("word2vec", "fit"):
                        break
        first.kill_group()
        await first.process.wait()
    scratch = work / job.job_id
    # The dataset's local name is fixed, whatever the URI calls it.
    assert (scratch / "dataset").read_bytes() == dataset_file.read_bytes()

    async with train_process(env) as second:
        assert not scratch.exists()
        assert sorted(p.name for p in work.iterdir()) == [LOCK_FILE]
        assert any(job.job_id in line and "removed stale job scratch" in line for line in second.stderr)
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

        second.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(second.process.wait(), 20) == 0


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
        async with train_process(server_env(tmp_path, TMPDIR=str(temp_root))) as server:
            assert not stale.exists()
            assert (outside / "sentinel").read_text() == "keep me"
            names = {p.name for p in temp_root.iterdir()}
            (own,) = names - {live.name, starting.name, f"{TEMP_PREFIX}link"}
            assert own.startswith(TEMP_PREFIX) and (temp_root / own / LOCK_FILE).is_file()
            assert try_lock(temp_root / own / LOCK_FILE) is None  # the server holds its own
            server.process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(server.process.wait(), 20) == 0
        # A clean stop removes its own temp dir; the others are untouched.
        assert {p.name for p in temp_root.iterdir()} == {live.name, starting.name, f"{TEMP_PREFIX}link"}
        assert (live / LOCK_FILE).is_file()
    finally:
        os.close(held)
