"""The time-bucket key design of the analysis table: what each item carries so a time window is a Query.

The table stays keyed by tweet `id` (writes are idempotent by id). Every item also carries:

- `time_bucket`: the tweet's hour, `YYYY-MM-DDTHH`, sharded as `YYYY-MM-DDTHH#k` (k = crc32(id) mod N)
  when `BUCKET_SHARDS` N > 1, so one hour's writes spread over N index partitions;
- `time_sort`: `<time>#<id>`, the tweet's time in one fixed format (so strings sort as times) and its id
  (so two tweets of the same millisecond stay distinct);
- `expires_at` (only when `RETENTION_DAYS` > 0): epoch seconds, `analyzed_at` + RETENTION_DAYS, read by
  DynamoDB's TTL.

The global secondary index `by_time` (`time_bucket` HASH, `time_sort` RANGE) projects what the report
reads (`INDEX_PROJECTION`), so a window of W hours is W x N Queries that read only that window's items.
The tweet's time is its `data` (created_at); an item without one falls back to `analyzed_at`.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sentiment.timefmt import parse_utc_iso

INDEX_NAME = "by_time"
BUCKET = "time_bucket"
SORT = "time_sort"
EXPIRES = "expires_at"
# What the report reads from the index; the table's key (`id`) and the index keys come with it.
INDEX_PROJECTION = ("sentiment", "score", "model_version")
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


@dataclass(frozen=True)
class TableLayout:
    """How items are keyed in time: `bucket_shards` (BUCKET_SHARDS) and `retention_days` (0 = for ever)."""

    bucket_shards: int = 1
    retention_days: float = 0.0


DEFAULT_LAYOUT = TableLayout()


def parse_moment(value: Any) -> datetime | None:
    """An ISO 8601 string as an aware UTC datetime (naive is UTC); None when empty or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = parse_utc_iso(value)
    except ValueError:
        return None
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def sort_time(moment: datetime) -> str:
    """The fixed format of `time_sort`'s time part: `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC)."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def hour_of(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H")


def bucket_name(hour: str, tweet_id: str, shards: int) -> str:
    """The `time_bucket` of a tweet: its hour, with a stable shard suffix when `shards` > 1."""
    if shards <= 1:
        return hour
    return f"{hour}#{zlib.crc32(tweet_id.encode()) % shards}"


def item_moment(item: Mapping[str, Any]) -> datetime | None:
    """The tweet's time (`data`), else when it was analysed (`analyzed_at`); None when neither reads."""
    return parse_moment(item.get("data")) or parse_moment(item.get("analyzed_at"))


def time_keys(item: Mapping[str, Any], layout: TableLayout) -> dict[str, Any]:
    """The attributes of the key design for `item` (which holds `id`, `data`, `analyzed_at`).

    An item with no readable time at all is keyed at the epoch, so it is still in some bucket (and
    `report --all` counts it) rather than outside every window.
    """
    tweet_id = str(item["id"])
    moment = item_moment(item) or datetime(1970, 1, 1, tzinfo=UTC)
    keys: dict[str, Any] = {
        BUCKET: bucket_name(hour_of(moment), tweet_id, layout.bucket_shards),
        SORT: f"{sort_time(moment)}#{tweet_id}",
    }
    if layout.retention_days > 0:
        written = parse_moment(item.get("analyzed_at")) or datetime.now(UTC)
        keys[EXPIRES] = Decimal(int((written + timedelta(days=layout.retention_days)).timestamp()))
    return keys


def hours_between(since: datetime, until: datetime) -> list[str]:
    """Every hour `[since, until)` touches, oldest first."""
    hour = since.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    hours = []
    while hour < until:
        hours.append(hour_of(hour))
        hour += timedelta(hours=1)
    return hours


def window_buckets(since: datetime, until: datetime, shards: int) -> list[str]:
    """The `time_bucket` values holding `[since, until)`: each hour, and each of its shards when N > 1.

    With shards, the unsharded hour is read too (one more, usually empty, Query): items written while
    BUCKET_SHARDS was 1 stay visible after it is raised.
    """
    out = []
    for hour in hours_between(since, until):
        out.append(hour)
        if shards > 1:
            out.extend(f"{hour}#{k}" for k in range(shards))
    return out


def parse_since(text: str, now: datetime) -> datetime:
    """`24h`, `90m`, `7d`, `30s` (that long before `now`) or an ISO 8601 time; ValueError otherwise."""
    text = text.strip()
    if match := _RELATIVE.match(text):
        return now - timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})
    moment = parse_moment(text)
    if moment is None:
        raise ValueError(f"{text!r} is neither a duration (24h, 90m, 7d) nor an ISO 8601 time")
    return moment
