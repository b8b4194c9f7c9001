"""The X API v2 source against the fake X API: rule sync, stream params, drops, resumes, malformed payloads."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

from sentiment.synthetic import generate, x_api_payload
from stream_svc.deadletter import DeadLetterFile
from stream_svc.pipeline import Pipeline
from stream_svc.sink import DynamoSink
from stream_svc.x_stream import XStreamSource, sync_rules
from tests.fake_x_api import FakeXApi
from tests.fixtures_stream import FakeSentimentClient, RecordingSink, table_items, wait_until

MakeFakeX = Callable[..., Awaitable[FakeXApi]]


async def test_rules_are_synced_add_missing_delete_stale(fake_x: MakeFakeX) -> None:
    fake = await fake_x(rules=["stale rule", "keep me"])
    source = XStreamSource("test-token", ["keep me", "new rule", "new rule"], base_url=fake.base_url)
    assert await sync_rules(source.client, source.rules) == (1, 1)
    assert sorted(rule["value"] for rule in fake.rules.values()) == ["keep me", "new rule"]
    assert [kind for kind, _ in fake.rule_requests] == ["list", "delete", "add"]
    assert fake.rule_requests[2][1] == [{"value": "new rule"}]
    assert await sync_rules(source.client, source.rules) == (0, 0)  # idempotent


async def test_stream_survives_drops_and_bad_payloads_and_lands_every_tweet_once(
    fake_x: MakeFakeX, stream_table: str, dead_letter_path: Path
) -> None:
    tweets = list(generate(80, seed=11))
    messages: list[dict[str, object] | bytes] = [x_api_payload(t) for t in tweets]
    bad = [
        b"{this is not json",
        b'{"data": {"id": "404", "author_id": "1"}}',  # no text
        b'{"data": {"id": "405", "text": 42}}',  # a field of the wrong type
        json.dumps({"errors": [{"title": "operational-disconnect"}]}).encode(),
        b"{again not json",
    ]
    for offset, payload in zip((5, 20, 33, 47, 61), bad, strict=True):
        messages.insert(offset, payload)
    emoji_only = {"data": {"id": "777", "text": "😍 https://t.co/zzz", "author_id": "1"}}
    messages.insert(50, emoji_only)
    fake = await fake_x(messages=messages, rules=["old"], drop_after=[15, 44, 70], resend=3)
    source = XStreamSource("test-token", ["love", "hate"], base_url=fake.base_url)
    sink = RecordingSink(await DynamoSink.open(stream_table, concurrency=4))
    run = Pipeline(
        source,
        FakeSentimentClient(),
        sink,
        DeadLetterFile(dead_letter_path),
        batch_size=8,
        batch_max_wait_s=0.02,
    )
    task = asyncio.create_task(run.run())
    wanted = {t.id for t in tweets}
    try:
        await wait_until(lambda: wanted <= sink.landed, 30, "every tweet written")
        await wait_until(lambda: run.counters.skipped_empty == 1, 5, "the emoji-only tweet counted")
    finally:
        await run.stop()
        counters = await task
        await sink.aclose()
    assert not source.failed
    assert fake.drops == 3 and fake.connections == 4  # tweepy reconnected after every cut
    assert all(q == {"expansions": "author_id", "tweet.fields": "created_at"} for q in fake.stream_queries)
    assert sorted(rule["value"] for rule in fake.rules.values()) == ["hate", "love"]
    assert counters.malformed == {"invalid_json": 2, "no_text": 1, "unexpected_field": 1, "error_message": 1}
    assert counters.balanced() and counters.dead_lettered == 0
    assert counters.received > len(tweets)  # resent tweets were received again ...
    landed = table_items(stream_table)
    assert set(landed) == wanted  # ... and each is in the table once
    first = tweets[0]
    row = landed[first.id]
    assert row["user"] == {"S": first.user} and row["twitter_raw"] == {"S": first.text}
    assert row["data"] == {"S": first.created_at.strftime("%Y-%m-%dT%H:%M:%S.000Z")}
    assert "N" in row["score"] and row["sentiment"]["S"] in ("POSITIVE", "NEGATIVE")
    assert "777" not in landed
