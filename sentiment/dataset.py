"""Sentiment140 reader: six quoted columns `target,ids,date,flag,user,text`, latin-1, optional gzip.

Streams the file (the full one is 238 MB), accepts empty ids/date/user, maps target 0 -> 0 and 4 -> 1,
skips target 2 (neutral, in the test file only) and counts malformed rows instead of failing on them.
"""

from __future__ import annotations

import csv
import gzip
import io
import random
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from sentiment.errors import InvalidDataset, NotFound

# Tolerance before a file is judged "not Sentiment140" rather than "has some bad rows".
MIN_VALID_SHARE = 0.5
_PROBE_ROWS = 1000


@dataclass(frozen=True)
class Tweet:
    label: int  # 0 negative, 1 positive
    id: str
    date: str
    user: str
    text: str


@dataclass
class ReadStats:
    rows_read: int = 0
    malformed_rows: int = 0
    neutral_rows: int = 0
    by_label: dict[int, int] = field(default_factory=lambda: {0: 0, 1: 0})


def open_text(path: str | Path) -> io.TextIOWrapper:
    """Open a local .csv or .csv.gz (sniffed by magic bytes, not by name) as latin-1 text."""
    raw: BinaryIO = open(path, "rb")
    magic = raw.read(2)
    raw.seek(0)
    stream: BinaryIO = gzip.GzipFile(fileobj=raw) if magic == b"\x1f\x8b" else raw  # type: ignore[assignment]
    return io.TextIOWrapper(stream, encoding="latin-1", newline="")


def iter_tweets(path: str | Path, stats: ReadStats | None = None) -> Iterator[Tweet]:
    """Yield each well-formed labelled row; malformed rows are counted in `stats` and skipped.

    Raises InvalidDataset when the file is not gzip it claims to be, or when most of its first rows are
    not Sentiment140 rows (a file that is not this CSV at all).
    """
    stats = stats if stats is not None else ReadStats()
    try:
        with open_text(path) as handle:
            for row in csv.reader(handle):
                stats.rows_read += 1
                tweet = _parse(row, stats)
                if stats.rows_read == _PROBE_ROWS:
                    _check_share(stats)
                if tweet is not None:
                    yield tweet
    except (OSError, EOFError, zlib.error, csv.Error) as exc:
        if isinstance(exc, FileNotFoundError):
            raise NotFound(f"dataset {path} does not exist") from exc
        raise InvalidDataset(f"cannot read {Path(path).name} as CSV or gzipped CSV: {exc}") from exc
    _check_share(stats)


def _check_share(stats: ReadStats) -> None:
    valid = stats.rows_read - stats.malformed_rows - stats.neutral_rows
    if stats.rows_read == 0:
        raise InvalidDataset("the dataset is empty")
    if valid == 0 or stats.malformed_rows > stats.rows_read * (1 - MIN_VALID_SHARE):
        raise InvalidDataset(
            f"not a Sentiment140 CSV: {stats.malformed_rows} of the first {stats.rows_read} rows are malformed "
            "(expected six columns target,ids,date,flag,user,text with target 0 or 4)"
        )


def _parse(row: list[str], stats: ReadStats) -> Tweet | None:
    if len(row) != 6:
        stats.malformed_rows += 1
        return None
    target, ids, date, _flag, user, text = row
    target = target.strip()
    if target == "2":
        stats.neutral_rows += 1
        return None
    if target not in ("0", "4") or not text.strip():
        stats.malformed_rows += 1
        return None
    label = 0 if target == "0" else 1
    stats.by_label[label] += 1
    return Tweet(label=label, id=ids.strip(), date=date.strip(), user=user.strip(), text=text)


def load_sample(
    path: str | Path, max_rows: int = 0, seed: int = 42, stats: ReadStats | None = None
) -> tuple[list[str], list[int]]:
    """Texts and labels; with `max_rows` > 0 a seeded reservoir sample, half from each label.

    The whole file is streamed once whatever `max_rows` is, so the sample is even across the file
    (Sentiment140 is sorted by label).
    """
    if max_rows <= 0:
        texts, labels = [], []
        for tweet in iter_tweets(path, stats):
            texts.append(tweet.text)
            labels.append(tweet.label)
        return texts, labels
    rng = random.Random(seed)
    quota = {0: max_rows // 2, 1: max_rows - max_rows // 2}
    reservoirs: dict[int, list[str]] = {0: [], 1: []}
    seen = {0: 0, 1: 0}
    for tweet in iter_tweets(path, stats):
        label = tweet.label
        seen[label] += 1
        bucket = reservoirs[label]
        if len(bucket) < quota[label]:
            bucket.append(tweet.text)
        else:
            slot = rng.randrange(seen[label])
            if slot < quota[label]:
                bucket[slot] = tweet.text
    pairs = [(text, label) for label in (0, 1) for text in reservoirs[label]]
    rng.shuffle(pairs)
    return [p[0] for p in pairs], [p[1] for p in pairs]


def parse_twitter_date(value: str) -> str:
    """Sentiment140's date ("Mon Apr 06 22:19:45 PDT 2009") as ISO 8601 UTC, or "" when empty/unparsable."""
    value = value.strip()
    if not value:
        return ""
    offsets = {"PDT": "-0700", "PST": "-0800", "UTC": "+0000", "GMT": "+0000"}
    parts = value.split()
    if len(parts) == 6 and parts[4] in offsets:
        try:
            moment = datetime.strptime(
                " ".join([*parts[:4], offsets[parts[4]], parts[5]]), "%a %b %d %H:%M:%S %z %Y"
            )
        except ValueError:
            return ""
        return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return ""
