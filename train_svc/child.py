"""The trainer in a child process: `trainer.train_model` runs under the 'spawn' start method and talks over a pipe.

TensorFlow holds the CPU and the GIL for minutes, so the server's event loop must not share a process with
it. The child writes the bundle's payload files and sends `("progress", event)` for each trainer event,
then exactly one of `("done", manifest)` (the trainer's part of the manifest, as `Manifest.to_dict`),
`("cancelled", "")` or `("failed", reason)`. The parent asks it to stop by sending anything on the same
(duplex) pipe; the child also stops when the parent's end closes, so an orphaned trainer does not run on
after the server died.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from sentiment.bundle import Manifest
from sentiment.dataset import DatasetLimits

log = logging.getLogger(__name__)

# After SIGTERM, how long a child gets before SIGKILL.
_TERMINATE_WAIT_S = 3.0


@dataclass(frozen=True)
class Outcome:
    """How a training child ended: with the trainer's part of the manifest, `cancelled`, or a readable `error`."""

    manifest: Manifest | None = None
    cancelled: bool = False
    error: str = ""


class _Parent:
    """The child's end of the pipe: progress goes out, and a stop request (or EOF) comes in."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._stop = False

    def should_stop(self) -> bool:
        # Readable means the parent asked to stop, or its end closed (EOF): either way, stop.
        self._stop = self._stop or self._conn.poll()
        return self._stop

    def progress(self, event: dict[str, Any]) -> None:
        try:
            self._conn.send(("progress", event))
        except OSError:
            self._stop = True

    def finish(self, message: tuple[str, Any]) -> None:
        try:
            self._conn.send(message)
        except OSError:
            pass
        finally:
            self._conn.close()


def child_main(
    conn: Connection,
    dataset_path: str,
    params: dict[str, int],
    out_dir: str,
    log_level: str,
    max_dataset_rows: int,
    max_dataset_bytes: int,
) -> None:
    """Entry point of the spawned process (importable, so 'spawn' can find it); the limits are the server's
    MAX_DATASET_ROWS / MAX_DATASET_BYTES (see `sentiment.dataset.DatasetLimits`)."""
    # Ctrl-C in a terminal reaches the whole process group; the parent decides when this child stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from sentiment.logs import setup_logging

    setup_logging(log_level)
    parent = _Parent(conn)
    limits = DatasetLimits(max_dataset_rows, max_dataset_bytes)
    parent.finish(_train(parent, Path(dataset_path), params, Path(out_dir), limits))
    # Everything the parent needs is on disk or sent. A normal interpreter exit would wait on TensorFlow's
    # threads (a tf.data pipeline interrupted by a cancel can hold it for seconds), so leave at once.
    logging.shutdown()
    os._exit(0)


def _train(
    parent: _Parent, dataset_path: Path, params: dict[str, int], out_dir: Path, limits: DatasetLimits
) -> tuple[str, Any]:
    """Run the trainer; its final message to the parent."""
    from sentiment.errors import SentimentError
    from train_svc import trainer
    from train_svc.network import Cancelled
    from train_svc.params import TrainParams

    try:
        manifest = trainer.train_model(
            dataset_path, TrainParams(**params), out_dir, parent.progress, parent.should_stop, limits=limits
        )
    except Cancelled:
        return ("cancelled", "")
    except SentimentError as exc:
        return ("failed", str(exc))
    except Exception as exc:
        log.exception("training failed")
        return ("failed", f"training failed: {type(exc).__name__}: {exc}")
    return ("done", manifest.to_dict())


class TrainingProcess:
    """One training run in a spawned child; `await run(on_progress)` returns its Outcome.

    `limits` bound what the trainer reads of the dataset. `request_stop()` asks the child to stop at its
    next check; if it has not exited `cancel_timeout_s` later it is terminated (then killed). A child that
    exits without a final message (crash, OOM kill) yields an Outcome whose error names the exit code or
    signal.
    """

    def __init__(
        self,
        dataset_path: Path,
        params: dict[str, int],
        out_dir: Path,
        *,
        limits: DatasetLimits,
        log_level: str = "INFO",
        cancel_timeout_s: float = 5.0,
    ) -> None:
        self._args = (str(dataset_path), params, str(out_dir), log_level, limits.max_rows, limits.max_bytes)
        self._cancel_timeout_s = cancel_timeout_s
        self._ctx = multiprocessing.get_context("spawn")
        self._conn: Connection | None = None
        self._process: Any = None
        self._stop_requested = False
        self._enforcer: asyncio.Task[None] | None = None
        self._exited = asyncio.Event()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def request_stop(self) -> None:
        if self._stop_requested:
            return
        self._stop_requested = True
        if self._conn is not None:
            try:
                self._conn.send("stop")
            except OSError:
                pass  # the child is already gone
        if self._process is not None:
            self._enforcer = asyncio.create_task(self._enforce_stop())

    async def _enforce_stop(self) -> None:
        try:
            await asyncio.wait_for(self._exited.wait(), self._cancel_timeout_s)
            return
        except TimeoutError:
            pass
        log.warning("trainer did not stop within %.1fs; terminating it", self._cancel_timeout_s)
        self._process.terminate()
        try:
            await asyncio.wait_for(self._exited.wait(), _TERMINATE_WAIT_S)
        except TimeoutError:
            self._process.kill()

    async def run(self, on_progress: Callable[[dict[str, Any]], None]) -> Outcome:
        loop = asyncio.get_running_loop()
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=child_main, args=(child_conn, *self._args), name="trainer", daemon=True
        )
        messages: asyncio.Queue[tuple[str, Any] | None] = asyncio.Queue()

        def on_readable() -> None:
            try:
                while parent_conn.poll():
                    messages.put_nowait(parent_conn.recv())
            except (EOFError, OSError):
                loop.remove_reader(parent_conn.fileno())
                messages.put_nowait(None)

        try:
            await asyncio.to_thread(process.start)
            self._process = process
            child_conn.close()  # so the child's exit reads as EOF here
            self._conn = parent_conn
            if self._stop_requested:
                self._stop_requested = False
                self.request_stop()
            loop.add_reader(parent_conn.fileno(), on_readable)
            final: tuple[str, Any] | None = None
            while (message := await messages.get()) is not None:
                kind, payload = message
                if kind == "progress":
                    on_progress(payload)
                else:
                    final = (kind, payload)
            await asyncio.to_thread(process.join, _TERMINATE_WAIT_S + self._cancel_timeout_s)
            self._exited.set()
            if process.exitcode is None:
                process.kill()
                await asyncio.to_thread(process.join, _TERMINATE_WAIT_S)
            return self._outcome(final, process.exitcode)
        finally:
            self._exited.set()
            if self._enforcer is not None:
                self._enforcer.cancel()
            if process.pid is not None and process.exitcode is None:
                process.kill()  # only when this coroutine itself was cancelled
                process.join(_TERMINATE_WAIT_S)
            try:
                loop.remove_reader(parent_conn.fileno())
            except (OSError, ValueError):
                pass
            parent_conn.close()
            child_conn.close()

    def _outcome(self, final: tuple[str, Any] | None, exitcode: int | None) -> Outcome:
        if final is not None:
            kind, payload = final
            if kind == "done":
                return Outcome(manifest=Manifest.from_dict(payload))
            if kind == "cancelled":
                return Outcome(cancelled=True)
            return Outcome(error=str(payload) or "training failed")
        if self._stop_requested:
            return Outcome(cancelled=True)
        if exitcode is not None and exitcode < 0:
            try:
                name = signal.Signals(-exitcode).name
            except ValueError:
                name = str(-exitcode)
            return Outcome(error=f"the training process was killed by signal {name}")
        return Outcome(error=f"the training process exited with code {exitcode} before it finished")
