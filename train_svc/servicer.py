"""TrainService over gRPC: protos to domain calls and back; errors mapped by `sentiment.rpc.map_errors`."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from protos import common_pb2, train_pb2, train_pb2_grpc
from sentiment.errors import Unauthenticated
from sentiment.rpc import map_errors, metrics_to_proto, model_info
from sentiment.store import ArtifactStore
from train_svc import registry
from train_svc.job import Job, TrainRequest
from train_svc.runner import JobRunner

SERVICE_NAME = train_pb2.DESCRIPTOR.services_by_name["TrainService"].full_name
PARAM_FIELDS = tuple(f.name for f in train_pb2.TrainParams.DESCRIPTOR.fields)


def _timestamp(seconds: float) -> Timestamp | None:
    if not seconds:
        return None
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def job_to_proto(job: Job) -> train_pb2.TrainJob:
    return train_pb2.TrainJob(
        job_id=job.job_id,
        state=train_pb2.JobState.Value(job.state.value),
        stage=job.stage.value,
        epoch=job.epoch,
        epochs=job.epochs,
        loss=job.loss,
        accuracy=job.accuracy,
        model_version=job.model_version,
        metrics=metrics_to_proto(job.metrics) if job.metrics else None,
        error=job.error,
        dataset_uri=job.dataset_uri,
        params=train_pb2.TrainParams(**job.params.to_dict()),
        promote=job.promote,
        min_accuracy=job.min_accuracy,
        promoted=job.promoted,
        rows_read=job.rows_read,
        malformed_rows=job.malformed_rows,
        notice=job.notice,
        created_at=_timestamp(job.created_at),
        started_at=_timestamp(job.started_at),
        finished_at=_timestamp(job.finished_at),
    )


def model_to_proto(model: registry.PublishedModel) -> common_pb2.ModelInfo:
    return model_info(model.version, model.manifest, model.preprocessing, model.current)


# The generated base class is untyped (protos/ is not type-checked), so mypy sees it as Any.
class TrainService(train_pb2_grpc.TrainServiceServicer):  # type: ignore[misc]
    """Reads are open; Train, CancelJob and PromoteModel need the bearer token when one is configured."""

    def __init__(self, runner: JobRunner, store: ArtifactStore, auth_token: str = "") -> None:
        self._runner = runner
        self._store = store
        self._token = auth_token.encode()

    def _authorize(self, context: grpc.aio.ServicerContext) -> None:
        if not self._token:
            return
        given = dict(context.invocation_metadata() or ()).get("authorization")
        if not given:
            raise Unauthenticated("this call needs metadata 'authorization: Bearer <token>'")
        text = given.decode("latin-1") if isinstance(given, bytes) else str(given)
        scheme, _, token = text.strip().partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self._token):
            raise Unauthenticated("the bearer token is not valid")

    @map_errors
    async def Train(
        self, request: train_pb2.TrainRequest, context: grpc.aio.ServicerContext
    ) -> train_pb2.TrainJob:
        self._authorize(context)
        job = await self._runner.submit(
            TrainRequest(
                dataset_uri=request.dataset_uri.strip(),
                params={name: getattr(request.params, name) for name in PARAM_FIELDS},
                promote=request.promote,
                min_accuracy=request.min_accuracy,
            )
        )
        return job_to_proto(job)

    @map_errors
    async def GetJob(
        self, request: train_pb2.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> train_pb2.TrainJob:
        return job_to_proto(self._runner.get(request.job_id))

    @map_errors
    async def WatchJob(
        self, request: train_pb2.WatchJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[train_pb2.TrainJob]:
        async for job in self._runner.watch(request.job_id):
            yield job_to_proto(job)

    @map_errors
    async def ListJobs(
        self, request: train_pb2.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> train_pb2.ListJobsResponse:
        return train_pb2.ListJobsResponse(jobs=[job_to_proto(job) for job in self._runner.list()])

    @map_errors
    async def CancelJob(
        self, request: train_pb2.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> train_pb2.TrainJob:
        self._authorize(context)
        return job_to_proto(await self._runner.cancel(request.job_id))

    @map_errors
    async def ListModels(
        self, request: train_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> train_pb2.ListModelsResponse:
        published, current = await registry.list_models(self._store)
        return train_pb2.ListModelsResponse(
            models=[model_to_proto(m) for m in published], current_version=current
        )

    @map_errors
    async def PromoteModel(
        self, request: train_pb2.PromoteModelRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.ModelInfo:
        self._authorize(context)
        return model_to_proto(await registry.promote(self._store, request.version.strip()))
