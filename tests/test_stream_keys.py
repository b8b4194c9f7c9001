"""The time-bucket key design (`stream_svc.keys`) and the configuration that lays it out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sentiment.errors import ConfigError
from stream_svc.config import StreamConfig
from stream_svc.keys import TableLayout, parse_since, time_keys, window_buckets

NOW = datetime(2026, 11, 20, 12, 30, tzinfo=UTC)


def test_an_item_is_keyed_by_its_hour_and_its_time_then_id() -> None:
    item = {"id": "42", "data": "2026-11-20T09:15:02.123Z", "analyzed_at": "2026-11-20T09:15:03.5Z"}
    assert time_keys(item, TableLayout()) == {
        "time_bucket": "2026-11-20T09",
        "time_sort": "2026-11-20T09:15:02.123Z#42",
    }
    # A Sentiment140 date (utc_iso: no milliseconds) sorts in the same format; no date: analyzed_at.
    assert time_keys({**item, "data": "2009-04-06T22:19:45Z"}, TableLayout())["time_sort"].startswith(
        "2009-04-06T22:19:45.000Z#"
    )
    assert time_keys({**item, "data": ""}, TableLayout())["time_sort"] == "2026-11-20T09:15:03.500Z#42"


def test_shards_are_stable_per_id_and_spread_an_hour() -> None:
    layout = TableLayout(bucket_shards=4)
    buckets = {
        time_keys({"id": str(i), "data": "2026-11-20T09:00:00Z"}, layout)["time_bucket"] for i in range(200)
    }
    assert buckets == {f"2026-11-20T09#{k}" for k in range(4)}
    again = time_keys({"id": "7", "data": "2026-11-20T09:59:00Z"}, layout)["time_bucket"]
    assert again == time_keys({"id": "7", "data": "2026-11-20T09:00:00Z"}, layout)["time_bucket"]


def test_retention_sets_expires_at_from_the_analysis_time() -> None:
    item = {"id": "1", "data": "2026-11-01T00:00:00Z", "analyzed_at": "2026-11-20T00:00:00Z"}
    keys = time_keys(item, TableLayout(retention_days=30))
    assert int(keys["expires_at"]) == int(datetime(2026, 12, 20, tzinfo=UTC).timestamp())
    assert "expires_at" not in time_keys(item, TableLayout(retention_days=0))


def test_a_window_covers_each_hour_it_touches_and_each_shard() -> None:
    since, until = datetime(2026, 11, 20, 9, 30, tzinfo=UTC), datetime(2026, 11, 20, 11, 0, tzinfo=UTC)
    assert window_buckets(since, until, 1) == ["2026-11-20T09", "2026-11-20T10"]
    sharded = window_buckets(since, until, 2)
    assert sharded == ["2026-11-20T09", "2026-11-20T09#0", "2026-11-20T09#1", "2026-11-20T10", "2026-11-20T10#0", "2026-11-20T10#1"]  # fmt: skip


def test_since_reads_durations_and_times() -> None:
    assert parse_since("24h", NOW) == NOW - timedelta(hours=24)
    assert parse_since("90m", NOW) == NOW - timedelta(minutes=90)
    assert parse_since("7d", NOW) == NOW - timedelta(days=7)
    assert parse_since("2026-11-20T08:00:00Z", NOW) == datetime(2026, 11, 20, 8, tzinfo=UTC)
    with pytest.raises(ValueError, match="neither a duration"):
        parse_since("yesterday", NOW)


def test_the_new_variables_are_read_and_checked() -> None:
    config = StreamConfig.from_env(
        {
            "BUCKET_SHARDS": "4",
            "RETENTION_DAYS": "30",
            "DEAD_LETTER_URI": "s3://dl/stream",
            "DEAD_LETTER_ROLL_S": "60",
        },
        require_source=False,
    )
    assert config.layout == TableLayout(bucket_shards=4, retention_days=30)
    assert config.dead_letters_to_s3 and config.dead_letter_uri == "s3://dl/stream"
    assert config.dead_letter_path == "dead-letter.jsonl" and config.dead_letter_roll_s == 60  # the spool
    local = StreamConfig.from_env({"DEAD_LETTER_URI": "/var/dl/letters.jsonl"}, require_source=False)
    assert not local.dead_letters_to_s3 and local.dead_letter_path == "/var/dl/letters.jsonl"
    with pytest.raises(ConfigError, match="DEAD_LETTER_URI"):
        StreamConfig.from_env({"DEAD_LETTER_URI": "https://example.com/dl"}, require_source=False)
    with pytest.raises(ConfigError, match="BUCKET_SHARDS"):
        StreamConfig.from_env({"BUCKET_SHARDS": "0"}, require_source=False)
