"""Domain records of the stream: a tweet as read (`parse_message` reads X API v2 messages), a malformed message,
and cleaning as the original consumer did."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Links as the original consumer removed them: anything from http(s):// or www. to the next space.
_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
# Emoji and pictographs, with the joiners, variation selectors, skin tones and tags that build sequences.
_EMOJI = re.compile(
    "["
    "\U0001f000-\U0001faff"  # emoticons, pictographs, transport, flags (regional indicators), supplemental
    "\u2600-\u27bf"  # miscellaneous symbols, dingbats
    "\u2300-\u23ff"  # miscellaneous technical (watch, hourglass)
    "\u2b00-\u2bff"  # arrows, stars
    "\ufe00-\ufe0f"  # variation selectors
    "\u200d"  # zero-width joiner
    "\u20e3"  # combining keycap
    "\U000e0020-\U000e007f"  # tag characters (subdivision flags)
    "]+"
)


@dataclass(frozen=True)
class Tweet:
    """One tweet as the source read it; `date` is ISO 8601 UTC ("" when the source had none)."""

    id: str
    user: str
    text: str
    date: str


@dataclass(frozen=True)
class Malformed:
    """A message the source could not use; `kind` is a short stable name counted in metrics."""

    kind: str
    detail: str = ""


SourceEvent = Tweet | Malformed


def clean_text(text: str) -> str:
    """The text sent to the model: links and emojis removed, whitespace collapsed ("" when nothing is left)."""
    text = _URL.sub(" ", text)
    text = _EMOJI.sub(" ", text)
    return " ".join(text.split())


def parse_message(raw: bytes | str) -> SourceEvent:
    """One X API v2 stream message (`{"data": tweet, "includes": {"users": [...]}}`) as a Tweet.

    Unknown extra keys are tolerated (X adds fields over time); a missing text or id, or a field of the
    wrong type, is Malformed with a stable kind.
    """
    try:
        message = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return Malformed("invalid_json", _excerpt(raw))
    if not isinstance(message, dict):
        return Malformed("not_an_object", _excerpt(raw))
    data = message.get("data")
    if data is None:
        if "errors" in message:  # X's operational messages (e.g. a forced disconnect) carry only errors
            return Malformed("error_message", _excerpt(json.dumps(message["errors"])))
        return Malformed("no_data", _excerpt(raw))
    if not isinstance(data, dict):
        return Malformed("unexpected_field", "data is not an object")
    text = data.get("text")
    if text is None or text == "":
        return Malformed("no_text", f"tweet {data.get('id')}")
    if not isinstance(text, str):
        return Malformed("unexpected_field", "text is not a string")
    tweet_id = data.get("id")
    if isinstance(tweet_id, int) and not isinstance(tweet_id, bool):
        tweet_id = str(tweet_id)
    if not isinstance(tweet_id, str) or not tweet_id:
        return Malformed("no_id", _excerpt(raw))
    created_at = data.get("created_at", "")
    if not isinstance(created_at, str):
        return Malformed("unexpected_field", "created_at is not a string")
    user = _username(message.get("includes"), data.get("author_id"))
    if user is None:
        return Malformed("unexpected_field", "includes.users is not a list of objects")
    return Tweet(id=tweet_id, user=user, text=text, date=created_at)


def _username(includes: Any, author_id: Any) -> str | None:
    """The author's username from `includes.users`; the author id when absent; None when malformed."""
    fallback = str(author_id) if author_id is not None else ""
    if includes is None:
        return fallback
    if not isinstance(includes, Mapping):
        return None
    users = includes.get("users", [])
    if not isinstance(users, list) or not all(isinstance(u, Mapping) for u in users):
        return None
    for user in users:
        if user.get("id") == author_id and isinstance(user.get("username"), str):
            return str(user["username"])
    return fallback


def _excerpt(raw: bytes | str, limit: int = 120) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return text[:limit]
