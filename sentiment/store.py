"""The artifact store: a local directory or `s3://bucket/prefix`, behind one small async interface.

S3 is reached through aioboto3 with the standard AWS configuration chain (credentials, AWS_REGION /
AWS_DEFAULT_REGION, AWS_ENDPOINT_URL for a local endpoint), so nothing here knows which AWS it talks to.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import urlparse

import aioboto3
from botocore.exceptions import ClientError

from sentiment.errors import InvalidInput, NotFound, TooLarge
from sentiment.names import shown

_CHUNK = 1 << 20


class ArtifactStore(Protocol):
    """Keys are '/'-separated paths relative to the store's root."""

    uri: str

    async def get_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        """The object's content; NotFound when it does not exist, TooLarge past `max_bytes`."""
        ...

    async def put_bytes(self, key: str, data: bytes) -> None:
        """Write the whole object (atomically for readers: never half-written)."""
        ...

    async def list_keys(self, prefix: str) -> list[str]:
        """Every key under `prefix`, sorted."""
        ...

    async def download(self, key: str, dest: Path, max_bytes: int | None = None) -> str:
        """Copy an object to a local file; returns its sha256. NotFound when it does not exist; TooLarge
        (and no file left at `dest`) when it holds more than `max_bytes`."""
        ...

    async def aclose(self) -> None: ...


def check_key(key: str) -> str:
    """A store key: '/'-separated segments, none empty, '.' or '..', no NUL or backslash; InvalidInput otherwise.

    The same rule for both stores, so a key that S3 would take literally cannot climb out of a local store.
    """
    if not key or len(key) > 1024 or "\x00" in key or "\\" in key:
        raise InvalidInput(f"store key {shown(key)} is not valid")
    if any(part in ("", ".", "..") for part in key.rstrip("/").split("/")):
        raise InvalidInput(f"store key {shown(key)} has an empty, '.' or '..' segment")
    return key


def check_location(uri: str, what: str = "URI") -> str:
    """`uri` if it is `s3://bucket[/key]` or a local path (no other scheme); InvalidInput naming `what`."""
    if uri.startswith("s3://"):
        split_s3_uri(uri)
    elif "://" in uri:
        raise InvalidInput(f"{what} {shown(uri)} must be s3://bucket/... or a local path")
    return uri


def split_s3_uri(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise InvalidInput(f"not an s3:// URI: {uri!r}")
    return parsed.netloc, parsed.path.lstrip("/")


class LocalStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        path = (self.root / check_key(key)).resolve()
        if self.root.resolve() not in path.parents:
            raise InvalidInput(f"key {shown(key)} escapes the store")
        return path

    async def get_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        path = self._path(key)

        def read() -> bytes:
            with path.open("rb") as handle:
                data = handle.read() if max_bytes is None else handle.read(max_bytes + 1)
            _check_size(len(data), max_bytes, key)
            return data

        try:
            return await asyncio.to_thread(read)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(f"{key} not found in {self.uri}") from None

    async def put_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
            tmp.write_bytes(data)
            tmp.replace(path)

        await asyncio.to_thread(write)

    async def list_keys(self, prefix: str) -> list[str]:
        base = self._path(prefix) if prefix else self.root

        def walk() -> list[str]:
            if not base.exists():
                return []
            root = self.root.resolve()
            return sorted(
                str(p.resolve().relative_to(root))
                for p in base.rglob("*")
                if p.is_file() and ".tmp" not in p.name
            )

        return await asyncio.to_thread(walk)

    async def download(self, key: str, dest: Path, max_bytes: int | None = None) -> str:
        return await copy_local_file(self._path(key), dest, max_bytes, key)

    async def aclose(self) -> None:
        return None


class S3Store:
    """`s3://bucket/prefix`; open with `await S3Store.open(uri)` and close with `aclose()`."""

    def __init__(self, uri: str, client: Any, stack: AsyncExitStack) -> None:
        self.uri = uri
        self.bucket, prefix = split_s3_uri(uri)
        self.prefix = prefix.rstrip("/")
        self._client = client
        self._stack = stack

    @classmethod
    async def open(cls, uri: str, session: aioboto3.Session | None = None) -> S3Store:
        stack = AsyncExitStack()
        client = await stack.enter_async_context((session or aioboto3.Session()).client("s3"))
        return cls(uri, client, stack)

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    async def get_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        try:
            response = await self._client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            raise _not_found(exc, f"s3://{self.bucket}/{self._key(key)}") from exc
        body = response["Body"]
        async with body:
            _check_size(int(response.get("ContentLength") or 0), max_bytes, key)
            data = bytes(await body.read())
        _check_size(len(data), max_bytes, key)
        return data

    async def put_bytes(self, key: str, data: bytes) -> None:
        await self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    async def list_keys(self, prefix: str) -> list[str]:
        full = self._key(prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys: list[str] = []
        paginator = self._client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
            keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        return sorted(keys)

    async def download(self, key: str, dest: Path, max_bytes: int | None = None) -> str:
        return await download_s3_object(self._client, self.bucket, self._key(key), dest, max_bytes)

    async def aclose(self) -> None:
        await self._stack.aclose()


def _not_found(exc: ClientError, where: str) -> Exception:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    if code in ("NoSuchKey", "404", "NoSuchBucket", "NotFound"):
        return NotFound(f"{where} does not exist ({code})")
    other: Exception = exc  # botocore ships no types
    return other


def _check_size(size: int, max_bytes: int | None, what: str) -> None:
    if max_bytes is not None and size > max_bytes:
        raise TooLarge(f"{what} holds more than the limit of {max_bytes:,} bytes")


class _HashingFile:
    """`dest` opened for writing: each chunk is counted against `max_bytes` and hashed as it is written.

    Past the limit (announced or written) TooLarge is raised and the partial file is removed."""

    def __init__(self, dest: Path, max_bytes: int | None, what: str) -> None:
        self._dest, self._max_bytes, self._what = dest, max_bytes, what
        self._digest = hashlib.sha256()
        self._size = 0
        self._out: BinaryIO | None = None

    def __enter__(self) -> _HashingFile:
        self._out = open(self._dest, "wb")
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        assert self._out is not None
        self._out.close()
        if kind is not None and issubclass(kind, TooLarge):
            self._dest.unlink(missing_ok=True)

    def announce(self, size: int) -> None:
        """The size the source says it has (0: unknown): refused at once when over the limit."""
        _check_size(size, self._max_bytes, self._what)

    def write(self, chunk: bytes) -> None:
        assert self._out is not None
        self._size += len(chunk)
        _check_size(self._size, self._max_bytes, self._what)
        self._digest.update(chunk)
        self._out.write(chunk)

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()


async def download_s3_object(
    client: Any, bucket: str, key: str, dest: Path, max_bytes: int | None = None
) -> str:
    """Stream one object to `dest` in 1 MiB chunks, hashing as it goes; returns the sha256.

    Past `max_bytes` (the announced ContentLength or the bytes actually sent) it stops, removes `dest`
    and raises TooLarge.
    """
    try:
        response = await client.get_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        raise _not_found(exc, f"s3://{bucket}/{key}") from exc
    body = response["Body"]
    with _HashingFile(dest, max_bytes, f"s3://{bucket}/{key}") as out:
        # `async with body as x` would give the raw aiohttp response, whose read() takes no size.
        async with body:
            out.announce(int(response.get("ContentLength") or 0))
            while chunk := await body.read(_CHUNK):
                out.write(chunk)
    return out.sha256


async def copy_local_file(source: Path, dest: Path, max_bytes: int | None = None, what: str = "") -> str:
    """Copy a local file to `dest` in a thread, hashing as it goes; returns the sha256.

    NotFound when `source` is not a file; TooLarge (and no `dest` left) when it holds more than `max_bytes`.
    """

    def copy() -> str:
        if not source.is_file():
            raise NotFound(f"{what or source} does not exist")
        with open(source, "rb") as src, _HashingFile(dest, max_bytes, what or str(source)) as out:
            out.announce(os.fstat(src.fileno()).st_size)
            while chunk := src.read(_CHUNK):
                out.write(chunk)
        return out.sha256

    return await asyncio.to_thread(copy)


async def fetch_uri(
    uri: str, dest: Path, session: aioboto3.Session | None = None, max_bytes: int | None = None
) -> str:
    """Copy `s3://bucket/key` or a local path to `dest`; returns its sha256. NotFound if it is missing,
    TooLarge past `max_bytes`."""
    if check_location(uri, "dataset URI").startswith("s3://"):
        bucket, key = split_s3_uri(uri)
        async with (session or aioboto3.Session()).client("s3") as client:
            return await download_s3_object(client, bucket, key, dest, max_bytes)
    return await copy_local_file(Path(uri), dest, max_bytes, f"dataset {uri}")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


async def open_store(uri: str, session: aioboto3.Session | None = None) -> ArtifactStore:
    """A store for `uri`: `s3://bucket/prefix` or a local directory path."""
    if check_location(uri, "store URI").startswith("s3://"):
        return await S3Store.open(uri, session)
    return LocalStore(uri)
