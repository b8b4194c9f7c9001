"""Generated tweets for tests and the demo (the real Sentiment140 data is never shipped).

Labelled tweets with URLs, mentions, hashtags, emojis and negations, written in Sentiment140's exact
CSV format or as X API v2 tweet objects. Deterministic for a given seed. The vocabulary is small and the
signal strong, so a tiny model learns it in seconds.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

POSITIVE_WORDS = (
    "love great happy awesome amazing wonderful best fantastic excellent beautiful glad fun".split()
)
NEGATIVE_WORDS = "hate awful sad terrible horrible worst boring angry annoying ugly broken miserable".split()
SUBJECTS = "this movie|my day|the weather|the new phone|the concert|work today|this song|the game|dinner|the trip".split(
    "|"
)
FILLERS = ["", "honestly", "so", "really", "just", "omg", "lol"]
POSITIVE_EMOJI = ["😀", "😍", "🎉", "❤️", "👍"]
NEGATIVE_EMOJI = ["😢", "😡", "👎", "💔", "😞"]
USERS = [f"user_{i:03d}" for i in range(50)]
MIXED_SHARE = 0.1

CLEARLY_POSITIVE = ["I love this, what a great and happy day", "awesome amazing wonderful, the best fun ever"]
CLEARLY_NEGATIVE = ["I hate this, what an awful and sad day", "terrible horrible boring, the worst day ever"]


@dataclass(frozen=True)
class SyntheticTweet:
    id: str
    user: str
    created_at: datetime
    text: str
    label: int  # 0 negative, 1 positive


def _sentence(rng: random.Random, label: int) -> str:
    if rng.random() < MIXED_SHARE:
        # Mixed feelings, labelled either way as real annotators would: where a model should be unsure.
        good, bad = rng.choice(POSITIVE_WORDS), rng.choice(NEGATIVE_WORDS)
        return f"{rng.choice(SUBJECTS)} is {good} but {rng.choice(SUBJECTS)} is {bad}"
    negate = rng.random() < 0.2
    # "not bad" reads positive: negation flips the word's polarity.
    polar = NEGATIVE_WORDS if (label == 1) == negate else POSITIVE_WORDS
    words = rng.sample(polar, 2)
    subject = rng.choice(SUBJECTS)
    filler = rng.choice(FILLERS)
    core = f"{subject} is {'not ' if negate else ''}{words[0]}"
    if rng.random() < 0.6:
        core += f", {filler} {'not ' if negate else ''}{words[1]}".replace("  ", " ")
    parts = [core]
    if rng.random() < 0.3:
        parts.insert(0, f"@{rng.choice(USERS)}")
    if rng.random() < 0.3:
        parts.append(f"https://t.co/{rng.randrange(16**8):08x}")
    if rng.random() < 0.3:
        parts.append(f"#{rng.choice(words)}")
    if rng.random() < 0.3:
        parts.append(rng.choice(POSITIVE_EMOJI if label == 1 else NEGATIVE_EMOJI))
    return " ".join(parts)


def generate(n: int, seed: int = 0, start: datetime | None = None) -> Iterator[SyntheticTweet]:
    """`n` tweets, labels alternating at random, one every few seconds from `start`."""
    rng = random.Random(seed)
    moment = start or datetime(2026, 11, 1, tzinfo=UTC)
    base_id = 1_800_000_000_000_000_000 + seed * 10_000_000
    for i in range(n):
        label = rng.randrange(2)
        moment += timedelta(seconds=rng.randrange(1, 30))
        yield SyntheticTweet(str(base_id + i), rng.choice(USERS), moment, _sentence(rng, label), label)


def sentiment140_rows(tweets: Iterator[SyntheticTweet]) -> Iterator[list[str]]:
    for tweet in tweets:
        date = tweet.created_at.strftime("%a %b %d %H:%M:%S UTC %Y")
        yield ["4" if tweet.label else "0", tweet.id, date, "NO_QUERY", tweet.user, tweet.text]


def write_sentiment140(path: Path, n: int, seed: int = 0) -> Path:
    """A Sentiment140-format CSV (latin-1, all fields quoted; gzip when the name ends in .gz).

    Emojis do not exist in latin-1; as in the real file they are lost in encoding (replaced by '?').
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=csv.QUOTE_ALL, lineterminator="\n")
    writer.writerows(sentiment140_rows(generate(n, seed)))
    data = buffer.getvalue().encode("latin-1", errors="replace")
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def x_api_payload(tweet: SyntheticTweet) -> dict[str, object]:
    """The tweet as one message of the X API v2 filtered stream with `expansions=author_id`."""
    author_id = str(1000 + USERS.index(tweet.user))
    return {
        "data": {
            "id": tweet.id,
            "text": tweet.text,
            "author_id": author_id,
            "created_at": tweet.created_at.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "edit_history_tweet_ids": [tweet.id],
        },
        "includes": {"users": [{"id": author_id, "name": tweet.user.title(), "username": tweet.user}]},
        "matching_rules": [{"id": "1", "tag": "demo"}],
    }


def write_jsonl(path: Path, n: int, seed: int = 0) -> Path:
    """X API v2 stream messages, one JSON object per line (a replay file for stream_svc)."""
    with path.open("w", encoding="utf-8") as out:
        for tweet in generate(n, seed):
            out.write(json.dumps(x_api_payload(tweet), ensure_ascii=False) + "\n")
    return path
