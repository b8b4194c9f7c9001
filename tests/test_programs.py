"""scripts/programs.py, on a stand-in server (tests/fake_program.py): the port from the log line or given, SERVING,
an early exit or a slow start reported with the log's name, SIGTERM then SIGKILL at the deadline, the log kept."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from scripts.local_aws import free_port
from scripts.programs import ProgramError, start

FAKE = "tests.fake_program"


async def test_the_port_is_read_from_the_log_line_and_sigterm_stops_it(tmp_path: Path) -> None:
    log = tmp_path / "fake.log"
    program = start(FAKE, dict(os.environ), log)  # port 0: the program picks one
    try:
        seconds = await program.wait_serving(timeout_s=30)
        assert program.port > 0 and program.address == f"127.0.0.1:{program.port}"
        assert f"(port {program.port})" in program.log_text() and seconds > 0
        assert await asyncio.to_thread(program.stop, 10) == 0
    finally:
        program.kill()
    assert not program.killed and "fake stopped" in log.read_text(), "the log outlives the program"


async def test_a_given_port_is_used_and_an_earlier_run_in_the_same_log_is_ignored(tmp_path: Path) -> None:
    log = tmp_path / "fake.log"
    log.write_text("fake serving on 127.0.0.1:1 (port 1)\n")  # what a previous run left
    port = free_port()
    with start(FAKE, dict(os.environ), log, port=port) as program:
        await program.wait_serving(timeout_s=30)
        assert program.port == port
        assert "(port 1)" not in program.log_text() and f"(port {port})" in program.log_text()
    assert program.returncode == 0


async def test_an_early_exit_is_reported_at_once_with_the_code_and_the_log(tmp_path: Path) -> None:
    log = tmp_path / "fake.log"
    program = start(FAKE, {**os.environ, "FAKE_EXIT_CODE": "3"}, log, port=free_port())
    with pytest.raises(ProgramError, match=rf"exited with 3 before it was SERVING; read {log}"):
        await program.wait_serving(timeout_s=30)
    assert "fake exiting with 3" in program.log_text()
    with pytest.raises(ProgramError, match="exited with 3 before it logged a bound port"):
        await start(FAKE, {**os.environ, "FAKE_EXIT_CODE": "3"}, log).wait_port(30)


async def test_a_program_not_serving_in_time_fails_the_wait(tmp_path: Path) -> None:
    with start(FAKE, {**os.environ, "FAKE_SERVE_AFTER_S": "60"}, tmp_path / "fake.log") as program:
        await program.wait_port(30)  # bound at once, SERVING only after a minute
        with pytest.raises(ProgramError, match=r"was not SERVING on 127\.0\.0\.1:\d+ within 1s"):
            await program.wait_serving(timeout_s=1)
        assert program.running()


async def test_one_that_ignores_sigterm_is_killed_at_the_deadline(tmp_path: Path) -> None:
    program = start(FAKE, {**os.environ, "FAKE_IGNORE_SIGTERM": "1"}, tmp_path / "fake.log")
    await program.wait_serving(timeout_s=30)
    code = await asyncio.to_thread(program.stop, 1)
    assert code == -9 and program.killed and not program.running()
    assert program.stop() == -9, "stopping a stopped program only answers its exit code"


def test_a_program_that_serves_nothing_has_no_address(tmp_path: Path) -> None:
    program = start(FAKE, {**os.environ, "FAKE_EXIT_CODE": "0"}, tmp_path / "fake.log", port=None)
    assert program.wait(30) == 0
    with pytest.raises(ProgramError, match="port not known"):
        _ = program.address
