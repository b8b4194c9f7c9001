"""stream_svc domain: cleaning, message parsing, replay sources, the pipeline (fake sentiment client, memory sink)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from sentiment.errors import ConfigError
from sentiment.prediction import Prediction
from sentiment.synthetic import generate, write_jsonl, write_sentiment140, x_api_payload
from stream_svc.classify import classify
from stream_svc.config import StreamConfig
from stream_svc.deadletter import DeadLetterFile, read_dead_letters
from stream_svc.metrics import StreamMetrics
from stream_svc.pipeline import Pipeline
from stream_svc.replay import ReplaySource
from stream_svc.tweets import Malformed, Tweet, clean_text, parse_message
from tests.fixtures_stream import FakeSentimentClient, ListSource, MemorySink, unavailable, wait_until


def tweets(n: int, start: int = 0, text: str = "I love this movie") -> list[Tweet]:
    return [Tweet(id=str(start + i), user="u", text=f"{text} {i}", date="") for i in range(n)]


def pipeline(source, client, sink, dead_letter_path: Path, **kwargs) -> Pipeline:  # type: ignore[no-untyped-def]
    return Pipeline(source, client, sink, DeadLetterFile(dead_letter_path), **kwargs)


def test_clean_removes_links_and_emojis_only() -> None:
    raw = "@bob I love it 😍🎉 https://t.co/abc123 see www.example.com/x #great 👍🏽 👨‍👩‍👧 🇫🇷 ❤️ 1️⃣ ok"
    assert clean_text(raw) == "@bob I love it see #great 1 ok"
    assert clean_text("😢 https://t.co/x 👎") == ""
    assert clean_text("  plain   text\n") == "plain text"


def test_parse_message_reads_x_v2_payloads_and_names_malformed_kinds() -> None:
    synthetic = next(generate(1, seed=3))
    tweet = parse_message(json.dumps(x_api_payload(synthetic)).encode())
    assert tweet == Tweet(
        id=synthetic.id,
        user=synthetic.user,
        text=synthetic.text,
        date=synthetic.created_at.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
    )
    extra = {"data": {"id": 7, "text": "hi", "author_id": "9", "lang": "en"}, "extra_top_level": 1}
    assert parse_message(json.dumps(extra)) == Tweet(id="7", user="9", text="hi", date="")
    cases = {
        b"{not json": "invalid_json",
        b"\xff\xfe": "invalid_json",
        b"[1, 2]": "not_an_object",
        b'{"meta": {}}': "no_data",
        b'{"errors": [{"title": "operational-disconnect"}]}': "error_message",
        b'{"data": [1]}': "unexpected_field",
        b'{"data": {"id": "1"}}': "no_text",
        b'{"data": {"id": "1", "text": ""}}': "no_text",
        b'{"data": {"id": "1", "text": 5}}': "unexpected_field",
        b'{"data": {"text": "hello"}}': "no_id",
        b'{"data": {"id": "1", "text": "x", "created_at": 5}}': "unexpected_field",
        b'{"data": {"id": "1", "text": "x", "author_id": "2"}, "includes": {"users": "bob"}}': "unexpected_field",
    }
    for raw, kind in cases.items():
        event = parse_message(raw)
        assert isinstance(event, Malformed) and event.kind == kind, (raw, event)


async def test_replay_jsonl_through_pipeline_balances_counters(
    tmp_path: Path, dead_letter_path: Path
) -> None:
    path = write_jsonl(tmp_path / "replay.jsonl", 300, seed=1)
    with path.open("a", encoding="utf-8") as out:
        out.write("{broken\n")
        out.write('{"data": {"id": "x1"}}\n')
        out.write(json.dumps({"data": {"id": "e1", "text": "😢 https://t.co/x"}}) + "\n")
        out.write(json.dumps({"data": {"id": "e2", "text": "🎉🎉"}}) + "\n")
        out.write("{still broken\n")
    client, sink = FakeSentimentClient(), MemorySink()
    run = pipeline(ReplaySource(path), client, sink, dead_letter_path, batch_size=32, predict_concurrency=2)
    counters = await run.run()
    assert counters.received == 302 and counters.written == 300 and counters.skipped_empty == 2
    assert counters.dead_lettered == 0 and counters.balanced()
    assert counters.malformed == {"invalid_json": 2, "no_text": 1}
    assert len(sink.items) == 300 and "e1" not in sink.items
    sent = [text for batch in client.batches for text in batch]
    assert len(sent) == 300 and all(text and "http" not in text for text in sent)
    assert max(len(b) for b in client.batches) == 32
    item = next(iter(sink.items.values()))
    assert set(item) == {
        "id", "user", "sentiment", "score", "twitter_raw", "twitter_clean", "data", "model_version", "analyzed_at",
        "time_bucket", "time_sort",
    }  # fmt: skip
    assert item["data"].endswith("Z") and item["model_version"] == "fake-1"
    assert not dead_letter_path.exists()


async def test_each_pipeline_counts_into_its_own_registry(tmp_path: Path) -> None:
    """Two runs in one process, as tests and benchmarks make them: neither sees the other's counts."""
    runs: list[tuple[StreamMetrics, int]] = []
    for n in (7, 12):
        metrics, source = StreamMetrics(), ListSource()
        run = pipeline(
            source, FakeSentimentClient(), MemorySink(), tmp_path / f"dl-{n}.jsonl", metrics=metrics
        )
        source.push([*tweets(n), Malformed("invalid_json"), Tweet("e", "u", "🎉", "")])
        source.finish()
        counters = await run.run()
        assert counters.written == n and counters.balanced()
        runs.append((metrics, n))
    for metrics, n in runs:
        assert metrics.sample("stream_tweets_received_total") == n + 1
        assert metrics.sample("stream_tweets_predicted_total") == n
        assert metrics.total("stream_tweets_written_total") == n
        assert metrics.sample("stream_tweet_latency_seconds_count") == n
        assert metrics.sample("stream_tweets_skipped_total", {"reason": "empty_after_cleaning"}) == 1
        assert metrics.sample("stream_messages_malformed_total", {"kind": "invalid_json"}) == 1
        assert metrics.sample("stream_queue_depth", {"queue": "tweets"}) == 0


async def test_replay_csv_gz_gives_iso_dates_and_honours_rate(tmp_path: Path) -> None:
    path = write_sentiment140(tmp_path / "tweets.csv.gz", 40, seed=2)
    started = time.monotonic()
    events = [event async for event in ReplaySource(path, rate=400)]
    elapsed = time.monotonic() - started
    assert len(events) == 40 and all(isinstance(e, Tweet) for e in events)
    first = events[0]
    assert isinstance(first, Tweet) and first.date.startswith("2026-11-01T") and first.date.endswith("Z")
    assert elapsed >= 39 / 400  # paced: the 40th tweet is due 39/400 s after the first


async def test_batches_flush_at_size_and_after_max_wait(dead_letter_path: Path) -> None:
    source, client, sink = ListSource(), FakeSentimentClient(), MemorySink()
    run = pipeline(source, client, sink, dead_letter_path, batch_size=4, batch_max_wait_s=0.05)
    task = asyncio.create_task(run.run())
    source.push(tweets(10))
    # The last two tweets go out on the wait alone: the source is still open.
    await wait_until(lambda: sum(map(len, client.batches)) == 10, 5, "10 tweets predicted")
    assert sorted(len(b) for b in client.batches) == [2, 4, 4]
    source.finish()
    counters = await task
    assert counters.written == 10 and counters.balanced()


async def test_bounded_queues_hold_the_source_back(dead_letter_path: Path) -> None:
    source, client, sink = ListSource(), FakeSentimentClient(), MemorySink()
    sink.gate.clear()
    run = pipeline(
        source, client, sink, dead_letter_path, batch_size=4, predict_concurrency=1, write_concurrency=1
    )
    task = asyncio.create_task(run.run())
    source.push(tweets(2000))
    await asyncio.sleep(0.3)  # the absence of progress can only be observed over time
    # tweets queue 4 + batch forming 4 + batches queue 1x4 + predicting 4 + items queue 25 + writer 25 + reader 1
    assert source.taken <= 4 + 4 + 4 + 4 + 25 + 25 + 1
    sink.gate.set()
    source.finish()
    counters = await task
    assert counters.written == 2000 and len(sink.items) == 2000 and counters.balanced()


async def test_invalid_input_is_isolated_and_dead_lettered(dead_letter_path: Path) -> None:
    source, client, sink = ListSource(), FakeSentimentClient(reject="BAD"), MemorySink(fail_ids=["5"])
    run = pipeline(source, client, sink, dead_letter_path, batch_size=8, batch_max_wait_s=0.01)
    task = asyncio.create_task(run.run())
    source.push([*tweets(3), Tweet("99", "u", "BAD text", ""), *tweets(4, start=3)])
    source.finish()
    counters = await task
    assert counters.received == 8 and counters.written == 6 and counters.dead_lettered == 2
    assert counters.balanced() and "99" not in sink.items and "5" not in sink.items
    letters = {entry["id"]: entry for entry in read_dead_letters(dead_letter_path)}
    assert letters["99"]["stage"] == "predict" and "BAD" in letters["99"]["reason"]
    assert letters["99"]["record"]["twitter_raw"] == "BAD text"
    assert letters["5"]["stage"] == "write" and "ValidationException" in letters["5"]["reason"]
    assert letters["5"]["record"]["sentiment"] == "POSITIVE"


async def test_classify_isolates_invalid_input_and_names_every_other_failure() -> None:
    client = FakeSentimentClient(reject="BAD")
    outcomes = await classify(client, ["good 1", "BAD 2", "good 3", "good 4", "BAD 5"])
    assert [isinstance(o, Prediction) for o in outcomes] == [True, False, True, True, False]
    assert outcomes[1] == outcomes[4] == "predict failed: text contains 'BAD'"
    assert ["BAD 2"] in client.batches and ["BAD 5"] in client.batches  # halved until alone
    down = await classify(FakeSentimentClient(fail_with=unavailable()), ["a", "b"])
    assert down == ["predict failed: UNAVAILABLE: model_svc is down"] * 2

    class Short(FakeSentimentClient):
        async def predict_batch(self, texts: Sequence[str]) -> list[Prediction]:
            return []

    assert (
        await classify(Short(), ["a", "b"]) == ["predict failed: RuntimeError: 0 predictions for 2 texts"] * 2
    )


async def test_unavailable_model_dead_letters_with_reason(dead_letter_path: Path) -> None:
    source = ListSource()
    run = pipeline(
        source, FakeSentimentClient(fail_with=unavailable()), MemorySink(), dead_letter_path, batch_size=5
    )
    task = asyncio.create_task(run.run())
    source.push(tweets(12))
    source.finish()
    counters = await task
    assert counters.dead_lettered == 12 and counters.written == 0 and counters.balanced()
    reasons = {entry["reason"] for entry in read_dead_letters(dead_letter_path)}
    assert reasons == {"predict failed: UNAVAILABLE: model_svc is down"}


async def test_stop_drains_everything_taken_in(tmp_path: Path, dead_letter_path: Path) -> None:
    path = write_jsonl(tmp_path / "replay.jsonl", 3000, seed=4)
    source, sink = ReplaySource(path, rate=2000), MemorySink()
    run = pipeline(source, FakeSentimentClient(), sink, dead_letter_path, batch_size=16)
    task = asyncio.create_task(run.run())
    await wait_until(lambda: len(sink.items) >= 100, 10, "100 written")
    await run.stop()
    counters = await task
    assert 100 <= counters.received < 3000
    assert counters.balanced() and len(sink.items) == counters.written
    assert len(sink.items) + counters.skipped_empty == counters.received


def test_config_from_env_names_the_bad_key() -> None:
    config = StreamConfig.from_env({"SOURCE": "replay", "REPLAY_PATH": "t.jsonl", "X_RULES": "a; b ;"})
    assert config.x_rules == ("a", "b") and config.batch_size == 64 and config.metrics_port == 8003
    assert (config.grace_s, config.x_auth_max_tries, config.dynamodb_auth_max_tries) == (20.0, 3, 4)
    bad = {
        "BATCH_SIZE": ({"SOURCE": "replay", "REPLAY_PATH": "x", "BATCH_SIZE": "many"}),
        "SOURCE": ({"SOURCE": "kafka"}),
        "X_BEARER_TOKEN": ({"SOURCE": "x", "X_RULES": "a"}),
        "X_RULES": ({"SOURCE": "x", "X_BEARER_TOKEN": "t"}),
        "REPLAY_PATH": ({"SOURCE": "replay"}),
        "REPLAY_RATE": ({"SOURCE": "replay", "REPLAY_PATH": "x", "REPLAY_RATE": "-1"}),
        "GRACE_S": ({"SOURCE": "replay", "REPLAY_PATH": "x", "GRACE_S": "soon"}),
        "X_AUTH_MAX_TRIES": ({"SOURCE": "replay", "REPLAY_PATH": "x", "X_AUTH_MAX_TRIES": "0"}),
        "X_AUTH_RETRY_WAIT_S": ({"SOURCE": "replay", "REPLAY_PATH": "x", "X_AUTH_RETRY_WAIT_S": "-1"}),
        "DYNAMODB_AUTH_MAX_TRIES": ({"SOURCE": "replay", "REPLAY_PATH": "x", "DYNAMODB_AUTH_MAX_TRIES": "x"}),
    }
    for key, environ in bad.items():
        with pytest.raises(ConfigError, match=key):
            StreamConfig.from_env(environ)
    assert StreamConfig.from_env({}, require_source=False).dynamodb_table == "tweet_sentiment"
