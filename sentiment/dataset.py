"""Sentiment140 reader: six quoted columns `target,ids,date,flag,user,text`, latin-1, optional gzip.

Streams the file (the full one is 238 MB), accepts empty ids/date/user, maps target 0 -> 0 and 4 -> 1,
skips target 2 (neutral, in the test file only) and counts malformed rows instead of failing on them.
A dataset is outside data: `DatasetLimits` bounds the bytes read (after gzip) and the rows kept in memory,
so a small gzip bomb or a huge file cannot exhaust the trainer.
"""

from __future__ import annotations

import csv
import gzip
import io
import random
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TypeVar

from sentiment.errors import InvalidDataset, NotFound
from sentiment.timefmt import utc_iso

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

# Tolerance before a file is judged "not Sentiment140" rather than "has some bad rows".
MIN_VALID_SHARE = 0.5
_PROBE_ROWS = 1000
# Sized for a 6 GiB trainer pod: the full Kaggle Sentiment140 file is 1.6M rows and 238 MB.
DEFAULT_MAX_ROWS = 2_000_000
DEFAULT_MAX_BYTES = 2 << 30
# A row's own bounds, so the rows kept in memory bound its size too: a tweet is at most 280 characters
# (model_svc's MAX_TEXT_CHARS default is 1000); an id, date or user name is a few dozen.
MAX_TEXT_CHARS = 1000
MAX_FIELD_CHARS = 100

T = TypeVar("T")


@dataclass(frozen=True)
class DatasetLimits:
    """What one dataset may cost: rows kept in memory, and bytes read (downloaded, and again after gzip).

    0 means no limit. train_svc sets them from MAX_DATASET_ROWS / MAX_DATASET_BYTES, the names the
    messages use.
    """

    max_rows: int = DEFAULT_MAX_ROWS
    max_bytes: int = DEFAULT_MAX_BYTES


DEFAULT_LIMITS = DatasetLimits()


@dataclass(frozen=True)
class LabelledTweet:
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

    @property
    def usable_rows(self) -> int:
        """Well-formed labelled rows seen: what a sample is drawn from."""
        return sum(self.by_label.values())


class _BoundedReader(io.RawIOBase):
    """`stream` read-only, raising InvalidDataset as soon as more than `max_bytes` bytes come out of it."""

    def __init__(self, stream: BinaryIO, max_bytes: int) -> None:
        self._stream = stream
        self._max_bytes = max_bytes
        self._left = max_bytes

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer)
        # One byte more than allowed tells "exactly at the limit" from "past it".
        data = self._stream.read(min(len(view), self._left + 1))
        if len(data) > self._left:
            raise InvalidDataset(f"dataset expands past MAX_DATASET_BYTES={self._max_bytes} bytes")
        self._left -= len(data)
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._stream.close()
        super().close()


def open_text(path: str | Path, max_bytes: int = 0) -> io.TextIOWrapper:
    """Open a local .csv or .csv.gz (sniffed by magic bytes, not by name) as latin-1 text.

    With `max_bytes` > 0, reading past that many (decompressed) bytes raises InvalidDataset.
    """
    raw: BinaryIO = open(path, "rb")
    magic = raw.read(2)
    raw.seek(0)
    stream: BinaryIO = gzip.GzipFile(fileobj=raw) if magic == b"\x1f\x8b" else raw  # type: ignore[assignment]
    if max_bytes > 0:
        stream = io.BufferedReader(_BoundedReader(stream, max_bytes))
    return io.TextIOWrapper(stream, encoding="latin-1", newline="")


def iter_tweets(
    path: str | Path, stats: ReadStats | None = None, max_bytes: int = 0
) -> Iterator[LabelledTweet]:
    """Yield each well-formed labelled row; malformed rows are counted in `stats` and skipped.

    Raises InvalidDataset when the file is not gzip it claims to be, when most of its first rows are
    not Sentiment140 rows (a file that is not this CSV at all), or, with `max_bytes` > 0, once more than
    that many bytes were read after decompression.
    """
    stats = stats if stats is not None else ReadStats()
    try:
        with open_text(path, max_bytes) as handle:
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


def _parse(row: list[str], stats: ReadStats) -> LabelledTweet | None:
    if len(row) != 6:
        stats.malformed_rows += 1
        return None
    target, ids, date, _flag, user, text = row
    target = target.strip()
    if target == "2":
        stats.neutral_rows += 1
        return None
    if target not in ("0", "4") or not text.strip() or len(text) > MAX_TEXT_CHARS:
        stats.malformed_rows += 1
        return None
    if max(len(ids), len(date), len(user)) > MAX_FIELD_CHARS:
        stats.malformed_rows += 1
        return None
    label = 0 if target == "0" else 1
    stats.by_label[label] += 1
    return LabelledTweet(label=label, id=ids.strip(), date=date.strip(), user=user.strip(), text=text)


def load_sample(
    path: str | Path,
    max_rows: int = 0,
    seed: int = 42,
    stats: ReadStats | None = None,
    limits: DatasetLimits = DEFAULT_LIMITS,
) -> tuple[list[str], list[int]]:
    """Texts and labels, never more than `limits.max_rows` of them (0: no cap).

    0 < `max_rows` <= the cap: a seeded reservoir sample of `max_rows`, half from each label. Otherwise
    (`max_rows` 0 means every row): every usable row in file order while there are no more than the cap,
    else a seeded uniform sample of exactly the cap (see `sample_notice`). The whole file is streamed once
    either way, so a sample is even across the file (Sentiment140 is sorted by label). InvalidDataset
    once the file reads past `limits.max_bytes` decompressed bytes.
    """
    tweets = iter_tweets(path, stats, limits.max_bytes)
    rng = random.Random(seed)
    if max_rows <= 0 or (limits.max_rows and max_rows > limits.max_rows):
        pairs = reservoir_sample(((t.text, t.label) for t in tweets), limits.max_rows, rng)
        return [p[0] for p in pairs], [p[1] for p in pairs]
    quota = {0: max_rows // 2, 1: max_rows - max_rows // 2}
    reservoirs: dict[int, list[str]] = {0: [], 1: []}
    seen = {0: 0, 1: 0}
    for tweet in tweets:
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


def reservoir_sample(items: Iterable[T], size: int, rng: random.Random) -> list[T]:
    """A uniform sample of `size` items in one pass (Algorithm R); `size` 0 keeps them all.

    With no more than `size` items the result is every item in its order; beyond, each item is kept
    with probability size/n, drawn from `rng`.
    """
    kept: list[T] = []
    for seen, item in enumerate(items):
        if not size or seen < size:
            kept.append(item)
        elif (slot := rng.randrange(seen + 1)) < size:
            kept[slot] = item
    return kept


def sample_notice(usable_rows: int, max_rows: int, max_rows_cap: int) -> str:
    """What a job says when `load_sample` capped its rows ("" when it kept what was asked for)."""
    if not max_rows_cap or usable_rows <= max_rows_cap or 0 < max_rows <= max_rows_cap:
        return ""
    asked = f"params.max_rows={max_rows:,} is above MAX_DATASET_ROWS and " if max_rows else ""
    return (
        f"{asked}the dataset has {usable_rows:,} usable rows, more than MAX_DATASET_ROWS={max_rows_cap:,}: "
        f"trained on a seeded uniform sample of {max_rows_cap:,}"
    )


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
        return utc_iso(moment)
    return ""
