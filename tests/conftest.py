"""Shared fixtures: the local AWS endpoint (moto server mode) for the whole session, buckets, datasets."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from scripts.local_aws import LocalAws
from sentiment.synthetic import write_sentiment140
from train_svc.params import TrainParams
from train_svc.trainer import train

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The programs the tests start compile no XLA programs (~7 s a load of the tiny model) unless a test asks.
os.environ.setdefault("XLA_MAX_ROWS", "0")

# Each area keeps its fixtures in its own module, so parallel work does not collide here.
pytest_plugins = ["tests.fixtures_train", "tests.fixtures_model", "tests.fixtures_stream"]


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


# A tiny model, recipe unchanged but small, that learns the generated tweets in seconds.
TINY_PARAMS = TrainParams(
    epochs=6,
    batch_size=64,
    sequence_length=30,
    embedding_dim=32,
    w2v_epochs=5,
    w2v_min_count=2,
    lstm_units=16,
)


@pytest.fixture(scope="session")
def tiny_bundle_dir(dataset_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle folder trained once per session on the generated dataset."""
    out = tmp_path_factory.mktemp("bundle")
    train(dataset_file, TINY_PARAMS, out, progress=lambda event: None)
    return out


@pytest.fixture
def model_store(tiny_bundle_dir: Path, tmp_path: Path) -> Path:
    """A local artifact store holding the tiny bundle as `models/v1/`, promoted (CURRENT = v1)."""
    target = tmp_path / "store" / "models" / "v1"
    shutil.copytree(tiny_bundle_dir, target)
    (tmp_path / "store" / "models" / "CURRENT").write_text("v1")
    return tmp_path / "store"
