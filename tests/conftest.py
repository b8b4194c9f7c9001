"""Shared fixtures: the local AWS endpoint (moto server mode) for the whole session, buckets, datasets."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from scripts.local_aws import LocalAws
from sentiment.synthetic import write_sentiment140

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def aws() -> Iterator[LocalAws]:
    """moto in server mode on a free loopback port; the standard AWS variables point at it."""
    saved = dict(os.environ)
    with LocalAws() as endpoint:
        os.environ.update(endpoint.env)
        yield endpoint
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def bucket(aws: LocalAws) -> str:
    """A fresh, empty bucket on the local endpoint."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def dataset_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated Sentiment140-format dataset (gzipped), large enough for a tiny model to learn."""
    return write_sentiment140(tmp_path_factory.mktemp("data") / "tweets.csv.gz", 4000, seed=7)
