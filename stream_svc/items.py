"""The item schema of the analysis table, and the record a tweet leaves in the dead-letter file before it has one.

An item, as the original design named its attributes: `id` (the partition key), `user`, `sentiment`,
`score` (a Decimal: a DynamoDB Number), `twitter_raw`, `twitter_clean`, `data` (the tweet's date), plus
`model_version` and `analyzed_at` (ISO 8601 UTC with a Z); and the time keys of `stream_svc.keys`
(`time_bucket`, `time_sort`, and `expires_at` when RETENTION_DAYS is set).
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from sentiment.prediction import Prediction
from sentiment.timefmt import utc_iso
from stream_svc.keys import DEFAULT_LAYOUT, TableLayout, time_keys
from stream_svc.tweets import Tweet

Item = Mapping[str, Any]  # attribute name -> str | Decimal (numbers are Decimal, as DynamoDB wants)


def utc_timestamp() -> str:
    """Now, as the table's `analyzed_at` holds it: ISO 8601 UTC with a Z."""
    return utc_iso()


def make_item(
    tweet: Tweet, clean: str, prediction: Prediction, analyzed_at: str, layout: TableLayout = DEFAULT_LAYOUT
) -> dict[str, Any]:
    """The table item, with the original design's names; `score` a Decimal (a DynamoDB Number); the
    time keys laid out as `layout` says."""
    item = {
        "id": tweet.id,
        "user": tweet.user,
        "sentiment": prediction.label,
        "score": Decimal(f"{prediction.score:.6f}"),
        "twitter_raw": tweet.text,
        "twitter_clean": clean,
        "data": tweet.date,
        "model_version": prediction.model_version,
        "analyzed_at": analyzed_at,
    }
    item.update(time_keys(item, layout))
    return item


def tweet_record(tweet: Tweet, clean: str) -> dict[str, Any]:
    """What the dead-letter file keeps of a tweet that has no prediction: the item's tweet attributes."""
    return {
        "id": tweet.id,
        "user": tweet.user,
        "twitter_raw": tweet.text,
        "twitter_clean": clean,
        "data": tweet.date,
    }
