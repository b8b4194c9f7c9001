"""Job records in the store: `jobs/<job_id>.json`, one JSON object per job, rewritten at each state change.

A record is store data: `job_from_record` checks every field's type, and `JobRecords.load_all` ignores
(and logs) a record that does not parse or names another job than its key.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from typing import Any

from sentiment.errors import InvalidInput
from sentiment.names import check_job_id
from sentiment.store import ArtifactStore
from train_svc.job import Job, JobState, Stage
from train_svc.params import TrainParams

log = logging.getLogger(__name__)

JOBS_PREFIX = "jobs"
MAX_RECORD_BYTES = 1 << 20  # a job record is a few hundred bytes; the store is not trusted to say so


def job_to_record(job: Job) -> dict[str, Any]:
    record = dataclasses.asdict(job)
    record["state"] = job.state.value
    record["stage"] = job.stage.value
    return record


def job_from_record(record: dict[str, Any]) -> Job:
    """A job from its store record (store data: ValueError/TypeError/KeyError when it does not fit)."""
    known = {f.name for f in dataclasses.fields(Job)}
    values = {k: v for k, v in record.items() if k in known}
    values["state"] = JobState(values["state"])
    if "stage" in values:
        values["stage"] = Stage(values["stage"])
    names = {f.name for f in dataclasses.fields(TrainParams)}
    # Tolerant of records written by a version with other parameters: unknown ones are dropped.
    params = {k: v for k, v in dict(values.get("params", {})).items() if k in names}
    if not all(type(v) is int for v in params.values()):
        raise TypeError("params must be integers")
    values["params"] = TrainParams(**params)
    metrics = dict(values.get("metrics", {}))
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in metrics.values()):
        raise TypeError("metrics must be numbers")
    for f in dataclasses.fields(Job):
        if f.name in values and f.default is not dataclasses.MISSING and not _fits(values[f.name], f.default):
            raise TypeError(f"{f.name} must be {type(f.default).__name__}")
    return Job(**values)


def _fits(value: Any, default: Any) -> bool:
    """`value` has the type of a scalar field's `default` (an int may stand for a float, a bool never)."""
    if isinstance(default, bool) or isinstance(value, bool):
        return type(value) is type(default)
    if isinstance(default, float):
        return isinstance(value, int | float)
    return not isinstance(default, int | str) or type(value) is type(default)


class JobRecords:
    """`jobs/<job_id>.json` in the artifact store."""

    def __init__(self, store: ArtifactStore) -> None:
        self._store = store

    async def save(self, job: Job) -> None:
        data = json.dumps(job_to_record(job), sort_keys=True).encode()
        await self._store.put_bytes(f"{JOBS_PREFIX}/{job.job_id}.json", data)

    async def load_all(self) -> list[Job]:
        """Every readable record; one that does not parse, or whose job_id is not a job id
        (`check_job_id`) or not its key's name, is store data not to trust: logged and ignored."""
        keys = [k for k in await self._store.list_keys(JOBS_PREFIX + "/") if k.endswith(".json")]
        limit = asyncio.Semaphore(16)

        async def load(key: str) -> Job | None:
            async with limit:
                try:
                    job = job_from_record(json.loads(await self._store.get_bytes(key, MAX_RECORD_BYTES)))
                    if key != f"{JOBS_PREFIX}/{check_job_id(job.job_id)}.json":
                        raise ValueError(f"it holds job {job.job_id!r}")
                    return job
                except (ValueError, KeyError, TypeError, InvalidInput) as exc:
                    log.warning("ignoring job record %s: %s", key, exc)
                    return None

        return [job for job in await asyncio.gather(*(load(k) for k in keys)) if job is not None]
