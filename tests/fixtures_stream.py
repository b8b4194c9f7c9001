"""Fixtures for the stream tests: a fake sentiment client, an in-memory sink, tables, the fake X API, model_svc."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import botocore.exceptions
import pytest
from aiohttp import web

from scripts.local_aws import LocalAws
from sentiment.errors import InvalidInput, ModelNotReady, SentimentError
from sentiment.prediction import Prediction
from stream_svc.dynamodb import create_table
from stream_svc.items import Item
from stream_svc.sink import Sink, WriteFailure
from stream_svc.tweets import SourceEvent
from tests.fake_x_api import FakeXApi

POSITIVE_HINTS = ("love", "great", "happy", "awesome", "amazing", "wonderful", "best", "fun", "glad")


class FakeSentimentClient:
    """A `SentimentClient` that labels by keyword; a batch holding `reject` raises `InvalidInput`, every
    batch raises `fail_with` when given; `batches` records what was sent."""

    def __init__(self, reject: str = "", fail_with: SentimentError | None = None) -> None:
        self.reject = reject
        self.fail_with = fail_with
        self.batches: list[list[str]] = []
        self.batch_seen = asyncio.Event()
        self.retries = 0

    async def predict_batch(self, texts: Sequence[str]) -> list[Prediction]:
        self.batches.append(list(texts))
        self.batch_seen.set()
        if self.fail_with is not None:
            raise self.fail_with
        if self.reject and any(self.reject in t for t in texts):
            raise InvalidInput(f"text contains {self.reject!r}")
        out = []
        for text in texts:
            positive = any(word in text.lower() for word in POSITIVE_HINTS)
            out.append(Prediction("POSITIVE" if positive else "NEGATIVE", 0.9 if positive else 0.1, "fake-1"))
        return out


class MemorySink:
    """Items by id; `gate` (set by default) holds every write while cleared; `fail_ids` never land."""

    def __init__(self, fail_ids: Sequence[str] = ()) -> None:
        self.items: dict[str, dict[str, Any]] = {}
        self.writes = 0
        self.retries = 0
        self.fail_ids = set(fail_ids)
        self.gate = asyncio.Event()
        self.gate.set()
        self.closed = False

    @property
    def requests(self) -> int:
        return self.writes

    async def write(self, items: Sequence[Item]) -> list[WriteFailure]:
        await self.gate.wait()
        self.writes += 1
        failures = []
        for item in items:
            if item["id"] in self.fail_ids:
                failures.append(WriteFailure(item, "ValidationException: refused by the test"))
            else:
                self.items[str(item["id"])] = dict(item)
        return failures

    async def aclose(self) -> None:
        self.closed = True


class RecordingSink:
    """Delegates to another sink and records the ids that landed (to wait on, without polling the table)."""

    def __init__(self, inner: Sink) -> None:
        self.inner = inner
        self.landed: set[str] = set()

    @property
    def retries(self) -> int:
        return self.inner.retries

    @property
    def requests(self) -> int:
        return self.inner.requests

    async def write(self, items: Sequence[Item]) -> list[WriteFailure]:
        failures = await self.inner.write(items)
        failed = {str(f.item["id"]) for f in failures}
        self.landed.update(str(i["id"]) for i in items if str(i["id"]) not in failed)
        return failures

    async def aclose(self) -> None:
        await self.inner.aclose()


class ListSource:
    """A source fed by the test: `push(events)`, `finish()`; counts what the pipeline has taken."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[SourceEvent | None] = asyncio.Queue()
        self.taken = 0
        self.connected = True
        self.failed = False
        self.failure = ""

    def silent_s(self) -> float:
        return 0.0

    def push(self, events: Sequence[SourceEvent]) -> None:
        for event in events:
            self.queue.put_nowait(event)

    def finish(self) -> None:
        self.queue.put_nowait(None)

    async def __aiter__(self) -> AsyncIterator[SourceEvent]:
        while (event := await self.queue.get()) is not None:
            self.taken += 1
            yield event

    async def aclose(self) -> None:
        self.finish()

    def take_buffered(self) -> list[SourceEvent]:
        events = []
        while not self.queue.empty():
            if (event := self.queue.get_nowait()) is not None:
                events.append(event)
        return events


async def wait_until(condition: Callable[[], bool], timeout_s: float = 30.0, what: str = "") -> None:
    """Poll `condition` every 10 ms (for state that has no event of its own); fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what or condition}")
        await asyncio.sleep(0.01)


def unavailable(details: str = "model_svc is down") -> ModelNotReady:
    """What `PredictClient` raises once its retries of an UNAVAILABLE call are spent."""
    return ModelNotReady(f"UNAVAILABLE: {details}")


async def spawn_stream_svc(env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    """`python -m stream_svc` as a child process, stdout and stderr piped.

    Not subprocess.run: a model_svc or a fake X API on the test's event loop must keep answering.
    """
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "stream_svc",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def run_cli(*args: str, env: dict[str, str] | None = None, timeout_s: float = 120) -> tuple[int, str]:
    """`python -m stream_svc ARGS` as a child (the test's loop stays free for a proxy or model_svc), on top
    of this process's environment with LOG_LEVEL=WARNING and `env`: (exit code, stdout and stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "stream_svc",
        *args,
        env={**os.environ, "LOG_LEVEL": "WARNING", **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def log_records(stderr: bytes) -> list[dict[str, Any]]:
    """The JSON log lines of a child's stderr (it is not a terminal, so it logs JSON)."""
    return [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]


def run_summary(stderr: bytes) -> dict[str, Any]:
    """The `stream_svc finished: k=v ...` line as a dict (numbers as int, the rest as text)."""
    for record in reversed(log_records(stderr)):
        if record["msg"].startswith("stream_svc finished: "):
            fields = dict(part.split("=", 1) for part in record["msg"].split(": ", 1)[1].split())
            return {k: int(v) if v.isdigit() else v for k, v in fields.items()}
    raise AssertionError(f"no summary line in:\n{stderr.decode()[-3000:]}")


def table_items(table: str) -> dict[str, dict[str, Any]]:
    """The table's items in DynamoDB's typed JSON ({"S": ...}, {"N": ...}), by id."""
    client = boto3.client("dynamodb")
    items: dict[str, dict[str, Any]] = {}
    for page in client.get_paginator("scan").paginate(TableName=table):
        for item in page["Items"]:
            items[item["id"]["S"]] = item
    return items


@pytest.fixture
async def stream_table(aws: LocalAws) -> str:
    """A fresh analysis table (partition key `id`, the `by_time` index) on the local endpoint."""
    name = f"tweets-{uuid.uuid4().hex[:10]}"
    assert (await create_table(name)).created
    return name


@pytest.fixture
async def fake_x() -> AsyncIterator[Callable[..., Awaitable[FakeXApi]]]:
    """A factory of started fake X API servers, all stopped at the end of the test."""
    servers: list[FakeXApi] = []

    async def make(**kwargs: Any) -> FakeXApi:
        server = FakeXApi(**kwargs)
        await server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.stop()


@pytest.fixture
def dead_letter_path(tmp_path: Path) -> Path:
    return tmp_path / "dead-letter.jsonl"


THROTTLE_CODES = ("ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded")


class DynamoFaultProxy:
    """An HTTP proxy in front of the local DynamoDB endpoint that injects faults into BatchWriteItem.

    The first `throttle` BatchWriteItem requests are answered 400 with a throttling error (the three codes
    in turn) and never reach the table; the next `unprocessed` requests forward only their first half
    and answer the rest as `UnprocessedItems`, as DynamoDB does under pressure. Everything else passes.
    `targets` counts every request by operation (`Query`, `Scan`, ...) and `put_ids` the PutRequests of
    each tweet id that reached the table: what the endpoint saw, whatever the client says.
    """

    def __init__(self, upstream: str, throttle: int = 0, unprocessed: int = 0) -> None:
        self.upstream = upstream.rstrip("/")
        self.throttle = throttle
        self.unprocessed = unprocessed
        self.throttled = 0
        self.split = 0
        self.batch_requests = 0
        self.targets: Counter[str] = Counter()
        self.put_ids: Counter[str] = Counter()
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> str:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._session = aiohttp.ClientSession()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self.url

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.targets[request.headers.get("X-Amz-Target", "").rsplit(".", 1)[-1]] += 1
        if request.headers.get("X-Amz-Target", "").endswith(".BatchWriteItem"):
            self.batch_requests += 1
            if self.throttled < self.throttle:
                code = THROTTLE_CODES[self.throttled % len(THROTTLE_CODES)]
                self.throttled += 1
                error = {
                    "__type": f"com.amazonaws.dynamodb.v20120810#{code}",
                    "message": "injected by the test",
                }
                return web.json_response(error, status=400, content_type="application/x-amz-json-1.0")
            if self.split < self.unprocessed:
                payload = json.loads(body)
                (table, requests), *_ = payload["RequestItems"].items()
                if len(requests) > 1:
                    self.split += 1
                    keep, hold = requests[: len(requests) // 2], requests[len(requests) // 2 :]
                    payload["RequestItems"][table] = keep
                    status, answer = await self._forward(request, json.dumps(payload).encode())
                    parsed = json.loads(answer)
                    parsed.setdefault("UnprocessedItems", {}).setdefault(table, []).extend(hold)
                    return web.json_response(parsed, status=status, content_type="application/x-amz-json-1.0")
        status, answer = await self._forward(request, body)
        if status == 200 and request.headers.get("X-Amz-Target", "").endswith(".BatchWriteItem"):
            self._count_puts(body, answer)
        return web.Response(body=answer, status=status, content_type="application/x-amz-json-1.0")

    def _count_puts(self, body: bytes, answer: bytes) -> None:
        (requests,) = json.loads(body)["RequestItems"].values()
        unprocessed = [u for u in json.loads(answer).get("UnprocessedItems", {}).values()]
        held = {
            r["PutRequest"]["Item"]["id"]["S"] for group in unprocessed for r in group if "PutRequest" in r
        }
        for entry in requests:
            if "PutRequest" in entry and entry["PutRequest"]["Item"]["id"]["S"] not in held:
                self.put_ids[entry["PutRequest"]["Item"]["id"]["S"]] += 1

    async def _forward(self, request: web.Request, body: bytes) -> tuple[int, bytes]:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with self._session.request(
            request.method, self.upstream + request.path_qs, data=body, headers=headers
        ) as response:
            return response.status, await response.read()


@pytest.fixture
async def dynamo_fault_proxy(aws: LocalAws) -> AsyncIterator[Callable[..., Awaitable[DynamoFaultProxy]]]:
    proxies: list[DynamoFaultProxy] = []

    async def make(**kwargs: Any) -> DynamoFaultProxy:
        proxy = DynamoFaultProxy(aws.endpoint, **kwargs)
        await proxy.start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        await proxy.stop()


@dataclass(frozen=True)
class AccessKey:
    user: str
    key_id: str
    secret: str


@dataclass(frozen=True)
class AuthAws:
    """A dedicated moto server that checks every request's signature and IAM policy, as AWS does.

    `admin` may do anything (it sets up and inspects); `writer(table)` makes a user allowed `dynamodb:*`
    and a table for it, whose access key a test can delete (a revocation) with `revoke`.
    """

    endpoint: str
    admin: AccessKey
    region: str = "us-east-1"

    def client(self, service: str, key: AccessKey) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=key.key_id,
            aws_secret_access_key=key.secret,
        )

    def env(self, key: AccessKey) -> dict[str, str]:
        """The AWS variables of a process that runs as `key` against this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": key.key_id,
            "AWS_SECRET_ACCESS_KEY": key.secret,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
        }

    def process_env(self, key: AccessKey) -> dict[str, str]:
        """This process's environment less its own AWS variables, running as `key` against this server."""
        own = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        return {**own, **self.env(key)}

    def writer(self) -> tuple[AccessKey, str]:
        """A new user allowed `dynamodb:*` with its access key, and a new analysis table."""
        name = f"writer-{uuid.uuid4().hex[:8]}"
        key = _iam_user(self.client("iam", self.admin), name, {"Action": "dynamodb:*", "Resource": "*"})
        table = f"tweets-{uuid.uuid4().hex[:10]}"
        self.client("dynamodb", self.admin).create_table(
            TableName=table,
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
        )
        return key, table

    def user(self, policy: dict[str, Any]) -> AccessKey:
        """A new user whose only permissions are `policy` (an IAM policy document), with its access key."""
        iam = self.client("iam", self.admin)
        name = f"user-{uuid.uuid4().hex[:8]}"
        iam.create_user(UserName=name)
        iam.put_user_policy(UserName=name, PolicyName="policy", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return AccessKey(name, key["AccessKeyId"], key["SecretAccessKey"])

    def revoke(self, key: AccessKey) -> None:
        self.client("iam", self.admin).delete_access_key(UserName=key.user, AccessKeyId=key.key_id)

    def items(self, table: str) -> dict[str, dict[str, Any]]:
        client = self.client("dynamodb", self.admin)
        return {
            item["id"]["S"]: item
            for page in client.get_paginator("scan").paginate(TableName=table)
            for item in page["Items"]
        }


def _iam_user(iam: Any, name: str, statement: dict[str, str]) -> AccessKey:
    """Three IAM requests: the user, its inline policy (`statement`, allowed), its access key."""
    iam.create_user(UserName=name)
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", **statement}]}
    iam.put_user_policy(UserName=name, PolicyName="allow", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return AccessKey(name, key["AccessKeyId"], key["SecretAccessKey"])


@pytest.fixture(scope="module")
def auth_aws() -> Iterator[AuthAws]:
    """moto on its own port with authentication enforced after the admin user's three set-up requests."""
    with LocalAws(extra_env={"INITIAL_NO_AUTH_ACTION_COUNT": "3"}) as server:
        bootstrap = AccessKey("", "testing", "testing")  # any key passes while requests are free
        setup = AuthAws(server.endpoint, bootstrap)
        admin = _iam_user(setup.client("iam", bootstrap), "admin", {"Action": "*", "Resource": "*"})
        auth = AuthAws(server.endpoint, admin)
        try:
            auth.client("iam", bootstrap).list_users()
        except botocore.exceptions.ClientError:
            pass
        else:
            raise AssertionError("moto did not start enforcing authentication")
        yield auth


def model_svc_config(store: Path, listen_addr: str = "127.0.0.1:0") -> Any:
    from model_svc.config import ModelConfig

    return ModelConfig(  # no XLA programs: see tests.fixtures_model.model_config
        store_uri=str(store),
        listen_addr=listen_addr,
        metrics_port=0,
        reload_interval_s=5.0,
        grace_s=1.0,
        xla_max_rows=0,
    )


@pytest.fixture(scope="module")
def stream_model_store(tiny_bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local artifact store holding the tiny bundle as v1 (CURRENT), shared by a module's tests."""
    import shutil

    store = tmp_path_factory.mktemp("stream_model_store")
    shutil.copytree(tiny_bundle_dir, store / "models" / "v1")
    (store / "models" / "CURRENT").write_text("v1")
    return store


@pytest.fixture(scope="module")
async def stream_model_server(stream_model_store: Path) -> AsyncIterator[Any]:
    """A real model_svc on 127.0.0.1:<port>, serving the tiny bundle, for a module's read-only tests."""
    from model_svc.server import start_server

    server = await start_server(model_svc_config(stream_model_store))
    yield server
    await server.stop(0)
