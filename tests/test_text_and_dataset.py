"""The shared text pipeline and the Sentiment140 reader."""

from __future__ import annotations

import gzip
import random
from pathlib import Path

import pytest

from sentiment import text as text_module
from sentiment.dataset import (
    DatasetLimits,
    ReadStats,
    iter_tweets,
    load_sample,
    parse_twitter_date,
    reservoir_sample,
    sample_notice,
)
from sentiment.errors import InvalidDataset, NotFound
from sentiment.text import OOV_ID, TextConfig, Vocabulary, encode, tokenize


def test_tokenize_strips_urls_mentions_and_keeps_negations() -> None:
    text = "@bob I can't believe it!!! sooooo happy :) http://t.co/x #blessed &amp; 2009"
    tokens = tokenize(text)
    assert tokens == [
        "<user>", "i", "can", "not", "believe", "it", "!", "soo", "happy", "<smile>", "<url>", "blessed", "<num>"
    ]  # fmt: skip
    assert tokenize("love it 😍 but 😢 why?!?") == ["love", "it", "<smile>", "but", "<sad>", "why", "?"]
    # A bundle written before placeholders, marks and emojis existed keeps its tokens.
    legacy = TextConfig.from_dict(
        {"drop_stop_words": False, "emoticon_tokens": True, "number_token": True, "max_repeat": 2}
    )
    assert tokenize(text, legacy) == [t for t in tokens if t not in ("<user>", "!", "<url>")]
    assert TextConfig.from_dict(TextConfig().to_dict()) == TextConfig()
    assert "not" in tokenize("this is not good", TextConfig(drop_stop_words=True))
    assert "is" not in tokenize("this is not good", TextConfig(drop_stop_words=True))


def plain_tokenize(text: str, config: TextConfig) -> list[str]:
    """`tokenize` as every pass in turn, with none of its shortcuts: the oracle for them."""
    m = text_module
    placeholder = config.placeholder_tokens
    text = m.html.unescape(text)
    text = m._URL.sub(f" {m.URL_TOKEN} " if placeholder else " ", text)
    text = m._MENTION.sub(f" {m.USER_TOKEN} " if placeholder else " ", text)
    if config.emoticon_tokens:
        text = m._NEG_EMOTICON.sub(" <sad> ", m._POS_EMOTICON.sub(" <smile> ", text))
    if config.emoji_tokens:
        text = m._NEG_EMOJI.sub(" <sad> ", m._POS_EMOJI.sub(" <smile> ", text))
    text = m._NOT.sub(m._negate, m._HASHTAG.sub(r" \1 ", text)).lower()
    if config.punctuation_tokens:
        text = m._REPEATED_MARKS.sub(r" \1 ", text)
    if config.max_repeat > 0:
        text = m._ELONGATED.sub(lambda match: match.group(1) * config.max_repeat, text)
    tokens = [t.strip("'") for t in m._TOKEN.findall(text)]
    tokens = [t for t in tokens if t and (t not in "!?" or config.punctuation_tokens)]
    tokens = [m.NUMBER_TOKEN if config.number_token and m._NUMBER.match(t) else t for t in tokens]
    return [t for t in tokens if not (config.drop_stop_words and t in m.STOP_WORDS)]


def test_tokenize_shortcuts_change_no_token() -> None:
    """`tokenize` skips a regex pass when a cheap test says it cannot match: same tokens as every pass."""
    m = text_module
    rng = random.Random(7)
    pieces = [
        *"abnotwcsiNOTWCSI:;=8-o*'()[]{}|/\\<3@#.!?_ 09",
        *("http://", "HTTPS://", "www.", ".com", ".Ly/x", ".NET", ".io", ".me", "n't", "N'T", "can", "won"),
        *("cant", "WonT", "8)", ":'(", "&amp;", "&lt;3", "&#10;"),
        *("😀", "😢", "💔", "é", "İ", "ſ", "\u212a"),
    ]
    corpus = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 25))) for _ in range(20_000)]
    passes = [m._URL, m._MENTION, m._POS_EMOTICON, m._NEG_EMOTICON, m._POS_EMOJI, m._NEG_EMOJI, m._HASHTAG]
    for pattern in [*passes, m._NOT, m._REPEATED_MARKS, m._ELONGATED]:
        assert sum(1 for t in corpus if pattern.search(t)) > 100, f"the corpus hardly exercises {pattern}"
    everything_off = TextConfig(True, False, False, 0, False, False, False)
    for config in (TextConfig(), everything_off):
        for text in corpus:
            assert tokenize(text, config) == plain_tokenize(text, config), text


def test_encode_pre_pads_and_keeps_the_tail() -> None:
    vocab = Vocabulary(["good", "bad"])
    out = encode([["good"], ["bad", "good", "zzz"]], vocab, sequence_length=2)
    assert out.tolist() == [[0, 2], [2, OOV_ID]]


def test_encode_scatters_many_rows_as_it_places_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """From SCATTER_ROWS rows `encode` places the ids of SCATTER_CHUNK rows at once: the same matrix as
    row by row."""
    monkeypatch.setattr(text_module, "SCATTER_CHUNK", 23)
    rng = random.Random(3)
    vocab = Vocabulary(["good", "bad", "meh"])
    words = ["good", "bad", "meh", "zzz"]
    for _ in range(200):
        rows = [[rng.choice(words) for _ in range(rng.randint(0, 12))] for _ in range(rng.randint(0, 70))]
        pad_to = rng.choice([None, 0, 1, 4, 12, 30])
        matrix = encode(rows, vocab, sequence_length=10, pad_to=pad_to)
        width = 10 if pad_to is None else min(pad_to, 10)
        assert matrix.shape == (len(rows), max(width, 1))
        for row, tokens in zip(matrix, rows, strict=True):
            assert row.tolist() == encode([tokens], vocab, 10, pad_to=pad_to)[0].tolist()
    assert text_module.SCATTER_ROWS <= 70  # the scatter ran


def test_reader_accepts_empty_fields_and_counts_malformed(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(
        b'"0","1","Mon Apr 06 22:19:45 PDT 2009","NO_QUERY","u","sad day"\n'
        b'"4","","","NO_QUERY","","caf\xe9 is great"\n'
        b'"2","3","","NO_QUERY","","neutral"\n'
        b'"9","only","three"\n'
        b'"7","4","","NO_QUERY","","bad target"\n' + b'"4","","","NO_QUERY","","fine"\n' * 5
    )
    stats = ReadStats()
    tweets = list(iter_tweets(path, stats))
    assert [t.label for t in tweets] == [0, 1, 1, 1, 1, 1, 1]
    assert tweets[1].text == "café is great"
    assert (stats.rows_read, stats.malformed_rows, stats.neutral_rows) == (10, 2, 1)


def test_reader_rejects_a_file_that_is_not_csv(tmp_path: Path) -> None:
    path = tmp_path / "image.csv"
    path.write_bytes(bytes(range(256)) * 50)
    with pytest.raises(InvalidDataset, match="not a Sentiment140 CSV"):
        list(iter_tweets(path))
    bad_gzip = tmp_path / "truncated.csv.gz"
    bad_gzip.write_bytes(gzip.compress(b'"0","1","","","","x"\n' * 1000)[:-8])
    with pytest.raises(InvalidDataset):
        list(iter_tweets(bad_gzip))
    with pytest.raises(NotFound):
        list(iter_tweets(tmp_path / "missing.csv"))


def test_max_rows_samples_evenly_across_labels(dataset_file: Path) -> None:
    texts, labels = load_sample(dataset_file, max_rows=200, seed=1)
    assert len(texts) == 200 and sum(labels) == 100
    assert load_sample(dataset_file, max_rows=200, seed=1) == (texts, labels)


def test_reservoir_keeps_every_item_in_order_up_to_its_size_and_samples_uniformly_beyond() -> None:
    rng = random.Random(0)
    assert reservoir_sample(iter(range(50)), 50, rng) == list(range(50))
    assert reservoir_sample(iter(range(50)), 0, rng) == list(range(50))  # 0: no cap
    sample = reservoir_sample(iter(range(1000)), 10, random.Random(3))
    assert len(sample) == 10 == len(set(sample))
    assert reservoir_sample(iter(range(1000)), 10, random.Random(3)) == sample  # seeded
    counts = [0] * 20
    for _ in range(4000):
        for item in reservoir_sample(iter(range(20)), 5, rng):
            counts[item] += 1
    assert all(900 <= c <= 1100 for c in counts), counts  # each is kept 1000 times in expectation


def test_row_cap_keeps_todays_rows_under_it_and_a_seeded_sample_above(dataset_file: Path) -> None:
    every = [(t.text, t.label) for t in iter_tweets(dataset_file)]
    assert len(every) == 4000
    texts, labels = load_sample(dataset_file, 0, seed=1, limits=DatasetLimits(max_rows=4000))
    assert list(zip(texts, labels, strict=True)) == every  # same rows, same order as with no cap
    stats = ReadStats()
    texts, labels = load_sample(dataset_file, 0, seed=1, stats=stats, limits=DatasetLimits(max_rows=300))
    assert len(texts) == 300 and set(zip(texts, labels, strict=True)) <= set(every)
    assert 100 < sum(labels) < 200  # uniform, so about half of each label
    assert load_sample(dataset_file, 0, seed=1, limits=DatasetLimits(max_rows=300)) == (texts, labels)
    assert stats.usable_rows == 4000
    assert sample_notice(stats.usable_rows, 0, 300) == (
        "the dataset has 4,000 usable rows, more than MAX_DATASET_ROWS=300: "
        "trained on a seeded uniform sample of 300"
    )
    # Asking for more rows than the cap gets the cap, and says so; asking for fewer is as before.
    texts, _ = load_sample(dataset_file, 5000, seed=1, limits=DatasetLimits(max_rows=300))
    assert len(texts) == 300
    assert sample_notice(4000, 5000, 300).startswith("params.max_rows=5,000 is above MAX_DATASET_ROWS and ")
    capped = load_sample(dataset_file, 200, seed=1, limits=DatasetLimits(max_rows=300))
    assert capped == load_sample(dataset_file, 200, seed=1) and sum(capped[1]) == 100
    assert sample_notice(4000, 200, 300) == "" and sample_notice(300, 0, 300) == ""


def test_reader_stops_at_max_bytes_after_decompression(tmp_path: Path) -> None:
    row = b'"4","1","","NO_QUERY","u","a happy day"\n'
    plain = tmp_path / "d.csv"
    plain.write_bytes(row * 2000)
    size = plain.stat().st_size
    assert len(list(iter_tweets(plain, max_bytes=size))) == 2000  # exactly at the limit is fine
    with pytest.raises(InvalidDataset, match=f"dataset expands past MAX_DATASET_BYTES={size - 1} bytes"):
        list(iter_tweets(plain, max_bytes=size - 1))
    bomb = tmp_path / "bomb.csv.gz"
    bomb.write_bytes(gzip.compress(row * 200_000))  # 8 MB of rows in a few KB
    assert bomb.stat().st_size < 50_000
    stats = ReadStats()
    with pytest.raises(InvalidDataset, match="expands past MAX_DATASET_BYTES=1048576"):
        list(iter_tweets(bomb, stats, max_bytes=1 << 20))
    assert stats.rows_read * len(row) <= 1 << 20  # it stopped reading at the limit
    with pytest.raises(InvalidDataset, match="MAX_DATASET_BYTES"):
        load_sample(bomb, limits=DatasetLimits(max_bytes=1 << 20))


def test_parse_twitter_date() -> None:
    assert parse_twitter_date("Mon Apr 06 22:19:45 PDT 2009") == "2009-04-07T05:19:45Z"
    assert parse_twitter_date("") == ""
