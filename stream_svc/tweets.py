"""Domain records of the stream: a tweet as read, a malformed message, and cleaning as the original consumer did."""

from __future__ import annotations

import re
from dataclasses import dataclass

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
