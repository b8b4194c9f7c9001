"""The one text pipeline that training and serving share: tweet text -> tokens -> padded id sequences.

The settings travel inside each model bundle (`TextConfig.to_dict`), so a served model sees exactly the
tokens it was trained on.
"""

from __future__ import annotations

import html
import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

PAD_ID = 0
OOV_ID = 1
FIRST_WORD_ID = 2

# NLTK's English stop words (embedded: no download at run time) minus the words that carry sentiment.
NEGATIONS = frozenset({"no", "nor", "not", "never", "none", "nobody", "nothing", "neither", "nowhere"})
_NLTK_ENGLISH = """
i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she her hers
herself it its itself they them their theirs themselves what which who whom this that these those am is are
was were be been being have has had having do does did doing a an the and but if or because as until while
of at by for with about against between into through during before after above below to from up down in out
on off over under again further then once here there when where why how all any both each few more most
other some such no nor not only own same so than too very s t can will just don should now d ll m o re ve y
ain aren couldn didn doesn hadn hasn haven isn ma mightn mustn needn shan shouldn wasn weren won wouldn
""".split()
STOP_WORDS = frozenset(w for w in _NLTK_ENGLISH if w not in NEGATIONS)

_URL_ENDINGS = ("com", "net", "org", "ly", "co", "io", "me")
_URL = re.compile(rf"(?:https?://|www\.)\S+|\b[\w.-]+\.(?:{'|'.join(_URL_ENDINGS)})(?:/\S*)?", re.IGNORECASE)
_URL_HINTS = ("://", "www.", *(f".{ending}" for ending in _URL_ENDINGS))  # a URL has one of these
_MENTION = re.compile(r"@\w+")
_HASHTAG = re.compile(r"#(\w+)")
_POS_EMOTICON = re.compile(r"(?:[:=;8][-o*']?[)\]dDpP}]|<3)")
_NEG_EMOTICON = re.compile(r"(?:[:=;8][-o*']?[(\[{|/\\]|:'\()")
# Either kind above, as one class: its search takes 0.4x the two patterns' alternation.
_EMOTICON = re.compile(r"[:=;8][-o*']?[)\]dDpP}(\[{|/\\]|<3")
_NOT = re.compile(r"\b(?:won't|wont)\b|\b(can)'?t\b|n't\b", re.IGNORECASE)
_ELONGATED = re.compile(r"(\w)\1{2,}")
_NUMBER = re.compile(r"^\d+(?:[.,]\d+)*$")
_REPEATED_MARKS = re.compile(r"([!?])[!?]*")
_TOKEN = re.compile(r"[a-z0-9_']+|<[a-z]+>|[!?]")
# Emojis carry sentiment in live tweets; the training data (latin-1) has none, so each maps to the
# emoticon token the model did learn. Others are dropped like any punctuation.
_POS_EMOJI = re.compile(
    "[\U0001f600-\U0001f60d\U0001f617-\U0001f61d\U0001f638-\U0001f63b\U0001f44d\U0001f44f\U0001f64c\U0001f389\U0001f495-\U0001f49f\u2764\u263a\U0001f970\U0001f973\U0001f929]"
)
_NEG_EMOJI = re.compile(
    "[\U0001f612-\U0001f616\U0001f61e-\U0001f62d\U0001f630-\U0001f637\U0001f63e-\U0001f640\U0001f44e\U0001f494\u2639\U0001f641\U0001f614]"
)

POS_EMOTICON_TOKEN = "<smile>"
NEG_EMOTICON_TOKEN = "<sad>"
NUMBER_TOKEN = "<num>"
URL_TOKEN = "<url>"
USER_TOKEN = "<user>"

MAX_REPEAT_LIMIT = 16

# Settings a bundle written before they existed did not use: a missing key reads as "off", never as
# today's default, so an old bundle keeps its tokens.
_ABSENT_MEANS = {"placeholder_tokens": False, "punctuation_tokens": False, "emoji_tokens": False}


@dataclass(frozen=True)
class TextConfig:
    """How text becomes tokens. Recorded in each bundle; a change of meaning needs a new field."""

    drop_stop_words: bool = False
    emoticon_tokens: bool = True
    number_token: bool = True
    max_repeat: int = 2  # "loooove" -> "loove"
    placeholder_tokens: bool = True  # URLs -> <url>, mentions -> <user> (rather than dropped)
    punctuation_tokens: bool = True  # "!" and "?" as tokens ("!!!" -> "!")
    emoji_tokens: bool = True  # sentiment-bearing emojis -> <smile> / <sad>

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TextConfig:
        """Settings as a bundle records them; ValueError for an unknown key or a value of the wrong type."""
        known = {f.name: f.default for f in fields(cls)}
        unknown = set(data) - set(known)
        if unknown:
            raise ValueError(f"unknown text settings {sorted(str(k)[:40] for k in unknown)[:5]}")
        values = {**_ABSENT_MEANS, **data}
        for name, value in values.items():
            if type(value) is not type(known[name]):
                raise ValueError(f"text.{name} must be {type(known[name]).__name__}, got {str(value)[:40]}")
        if not 0 <= values.get("max_repeat", 0) <= MAX_REPEAT_LIMIT:
            raise ValueError(f"text.max_repeat must be in 0..{MAX_REPEAT_LIMIT}")
        return cls(**values)


def _may_hold_url(text: str) -> bool:
    """False only where _URL cannot match: an ASCII text with none of _URL_HINTS (lowercased, as
    IGNORECASE matches them), any other text with no "." and no "://"."""
    if "." not in text and "://" not in text:
        return False
    if not text.isascii():
        return True
    lowered = text.lower()
    return any(hint in lowered for hint in _URL_HINTS)


def _spaced(match: re.Match[str]) -> str:
    """Group 1 between spaces: a callable, since Python 3.11 parses a template like r" \\1 " on every call
    (~1 us, more than the pass on a tweet with no match)."""
    return f" {match.group(1)} "


def _negate(match: re.Match[str]) -> str:
    if match.group(1):  # can't -> can not
        return f"{match.group(1)} not"
    return " not" if match.group(0).lower() == "n't" else "will not"


def tokenize(text: str, config: TextConfig = TextConfig()) -> list[str]:
    """Tokens of one tweet: URLs and mentions as placeholders (or dropped), hashtags as words, negations
    spelled "not", emoticons and emojis as <smile> / <sad>, numbers as <num>, "!" and "?" kept.

    This runs on model_svc's hot path (once per tweet). Each pass is skipped when a cheap test shows it
    cannot match (an emoji needs a non-ASCII text, a mention an "@", a URL one of its literal parts, ...)
    and no replacement is a template: same tokens in ~40% of the time, 9-11 us a real tweet on one core
    (`tests/test_text_and_dataset.py` checks the shortcuts against the plain passes).
    """
    text = html.unescape(text)
    if _may_hold_url(text):
        text = _URL.sub(f" {URL_TOKEN} " if config.placeholder_tokens else " ", text)
    if "@" in text:
        text = _MENTION.sub(f" {USER_TOKEN} " if config.placeholder_tokens else " ", text)
    if (
        config.emoticon_tokens
        and (":" in text or "=" in text or ";" in text or "8" in text or "<3" in text)
        and _EMOTICON.search(text)
    ):
        text = _POS_EMOTICON.sub(f" {POS_EMOTICON_TOKEN} ", text)
        text = _NEG_EMOTICON.sub(f" {NEG_EMOTICON_TOKEN} ", text)
    if config.emoji_tokens and not text.isascii():
        text = _POS_EMOJI.sub(f" {POS_EMOTICON_TOKEN} ", text)
        text = _NEG_EMOJI.sub(f" {NEG_EMOTICON_TOKEN} ", text)
    if "#" in text:
        text = _HASHTAG.sub(_spaced, text)
    lowered = text.lower()
    # Every negation above has one of these; IGNORECASE can match other letters in a non-ASCII text.
    if "n't" in lowered or "wont" in lowered or "cant" in lowered or not text.isascii():
        lowered = _NOT.sub(_negate, text).lower()
    text = lowered
    if config.punctuation_tokens and ("!" in text or "?" in text):
        text = _REPEATED_MARKS.sub(_spaced, text)
    if config.max_repeat > 0:
        text = _ELONGATED.sub(lambda m: m.group(1) * config.max_repeat, text)
    quotes, marks = "'" in text, config.punctuation_tokens
    numbers, stop_words = config.number_token, config.drop_stop_words
    tokens = []
    for token in _TOKEN.findall(text):
        if quotes and (token[0] == "'" or token[-1] == "'"):
            token = token.strip("'")
            if not token:
                continue
        if not marks and token in "!?":
            continue
        if numbers and token[0].isdigit() and _NUMBER.match(token):
            token = NUMBER_TOKEN
        if stop_words and token in STOP_WORDS:
            continue
        tokens.append(token)
    return tokens


class Vocabulary:
    """Token <-> id mapping; id 0 pads, id 1 is any word not in the vocabulary."""

    def __init__(self, words: Sequence[str]) -> None:
        self.words = list(words)
        self._ids = {word: i + FIRST_WORD_ID for i, word in enumerate(self.words)}

    def __len__(self) -> int:
        """Rows of the embedding matrix, padding and OOV included."""
        return len(self.words) + FIRST_WORD_ID

    def ids(self, tokens: Iterable[str]) -> list[int]:
        get = self._ids.get
        return [get(token, OOV_ID) for token in tokens]


# From this many rows `encode` places the ids with one numpy scatter rather than a row at a time: 1.2-1.3x
# faster at 16 rows, 1.5-1.8x at 64-1024; for fewer rows numpy's fixed cost loses (3x slower for one). A
# scatter takes at most SCATTER_CHUNK rows, so a training set's ids never sit in one Python list.
SCATTER_ROWS = 16
SCATTER_CHUNK = 4096


def encode(
    token_lists: Sequence[Sequence[str]], vocab: Vocabulary, sequence_length: int, pad_to: int | None = None
) -> np.ndarray:
    """Right-aligned (pre-padded) int32 id matrix; tweets longer than `sequence_length` keep their tail.

    `pad_to` sets the width (<= sequence_length); by default it is `sequence_length`.
    """
    width = sequence_length if pad_to is None else min(pad_to, sequence_length)
    n = len(token_lists)
    out = np.zeros((n, max(width, 1)), dtype=np.int32)
    if not width:
        return out
    if n < SCATTER_ROWS:
        for row, tokens in enumerate(token_lists):
            tail = tokens[-width:]
            if tail:
                out[row, -len(tail) :] = vocab.ids(tail)
        return out
    for start in range(0, n, SCATTER_CHUNK):
        _scatter(out[start : start + SCATTER_CHUNK], token_lists[start : start + SCATTER_CHUNK], vocab)
    return out


def _scatter(out: np.ndarray, token_lists: Sequence[Sequence[str]], vocab: Vocabulary) -> None:
    """Each row's ids (its tail of `out`'s width) into the end of its row of the zeroed `out`."""
    n, width = out.shape
    tails = [tokens[-width:] for tokens in token_lists]
    ids = vocab.ids(itertools.chain.from_iterable(tails))
    lengths = np.fromiter(map(len, tails), dtype=np.intp, count=n)
    # Row r's ids end at (r + 1) * width in the flat matrix and at cumsum(lengths)[r] in `ids`: each id
    # moves by the difference.
    shift = np.arange(width, (n + 1) * width, width) - np.cumsum(lengths)
    out.reshape(-1)[np.arange(len(ids)) + np.repeat(shift, lengths)] = ids
