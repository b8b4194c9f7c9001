"""A job's dataset before training: its URI checked, the object fetched within MAX_DATASET_BYTES, its
first rows probed. The dataset is outside data; nothing here trusts its name, its size or its content."""

from __future__ import annotations

import itertools
from pathlib import Path

from sentiment.dataset import ReadStats, iter_tweets
from sentiment.errors import InvalidDataset, InvalidInput, TooLarge
from sentiment.store import check_location, fetch_uri, split_s3_uri

# How many rows the parent reads before paying for a child: enough to tell "not Sentiment140" at once.
_PROBE_TWEETS = 1000


def validate_dataset_uri(uri: str) -> str:
    """`uri` when it names an S3 object or a local path; InvalidInput otherwise."""
    if not uri:
        raise InvalidInput("dataset_uri is required (this server has no default DATASET_URI)")
    if check_location(uri, "dataset_uri").startswith("s3://"):
        _bucket, key = split_s3_uri(uri)
        if not key or key.endswith("/"):
            raise InvalidInput(f"dataset_uri {uri!r} names no object (expected s3://bucket/key)")
    return uri


async def fetch_dataset(uri: str, dest: Path, max_bytes: int) -> str:
    """Copy the dataset at `uri` to `dest`; returns its sha256.

    NotFound when it does not exist. InvalidDataset, naming MAX_DATASET_BYTES, when it is larger than
    `max_bytes` (0: no limit): refused before copying when its announced size (S3 ContentLength, the local
    file's size) says so, else stopped once the bytes copied pass it.
    """
    try:
        return await fetch_uri(uri, dest, max_bytes=max_bytes or None)
    except TooLarge as exc:
        raise InvalidDataset(f"{exc} (MAX_DATASET_BYTES={max_bytes})") from exc


def probe_dataset(path: Path, max_bytes: int) -> None:
    """Read the first rows: InvalidDataset at once for a file that is not Sentiment140 CSV (gzipped or not)."""
    for _ in itertools.islice(iter_tweets(path, ReadStats(), max_bytes), _PROBE_TWEETS):
        pass
