"""A post's own words as model input: cleaning, and the language policy of the English-only text encoder.

all-MiniLM-L6-v2 was trained on English sentence pairs; other languages come out as near-random
embeddings that would move the verdict for the wrong reasons. So a post's text is used only when it
is (declared or looks) English:

- ``lang`` given: used iff its primary subtag is in ``languages`` (default ``en``; "en-GB" counts);
- ``lang`` absent: used iff at least ``min_latin_share`` of its letters are Latin script (a
  cheap guard against Arabic, CJK, Cyrillic, ...; Latin-script non-English slips through);
- otherwise the post is analysed as image only, and the result says why (``TextUse.reason``).

Cleaning removes what carries no sentiment and confuses the encoder: the retweet prefix, URLs and
user handles; hashtags keep their word.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

__all__ = ["DEFAULT_TEXT_LANGUAGES", "PostText", "TextUse", "clean_post_text", "decide_text_use", "latin_share"]

DEFAULT_TEXT_LANGUAGES = ("en",)
MIN_LATIN_SHARE = 0.8

_RETWEET = re.compile(r"^\s*RT\s+@\w+:?\s*", re.IGNORECASE)
_URL = re.compile(r"(https?://|www\.)\S*", re.IGNORECASE)
_TRUNCATED_URL = re.compile(r"\s(htt?p?s?|htt\S*)$")
_HANDLE = re.compile(r"@\w+")
_HASHTAG = re.compile(r"#(\w+)")
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class PostText:
    """What the Analyzer gets of a post beside its image."""

    text: str | None = None
    lang: str | None = None


@dataclass(frozen=True)
class TextUse:
    """The text the model reads (None: the image-only case) and why."""

    text: str | None
    reason: str  # used | no_text | unsupported_language | not_latin_script


def clean_post_text(text: str | None) -> str:
    if not text:
        return ""
    text = _RETWEET.sub("", text)
    text = _URL.sub(" ", text)
    text = _HANDLE.sub(" ", text)
    text = _HASHTAG.sub(r"\1", text)
    text = _SPACES.sub(" ", text).strip()
    return _TRUNCATED_URL.sub("", text).strip()


def latin_share(text: str) -> float:
    """Share of the letters of ``text`` that are Latin script (1.0 when it has no letters)."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return 1.0
    return sum("LATIN" in unicodedata.name(c, "") for c in letters) / len(letters)


def decide_text_use(
    post: PostText | None, languages: tuple[str, ...] = DEFAULT_TEXT_LANGUAGES, min_latin_share: float = MIN_LATIN_SHARE
) -> TextUse:
    if post is None:
        return TextUse(None, "no_text")
    cleaned = clean_post_text(post.text)
    if not cleaned:
        return TextUse(None, "no_text")
    if post.lang:
        primary = post.lang.strip().lower().replace("_", "-").split("-", 1)[0]
        if primary not in {lang.lower() for lang in languages}:
            return TextUse(None, "unsupported_language")
    elif latin_share(cleaned) < min_latin_share:
        return TextUse(None, "not_latin_script")
    return TextUse(cleaned, "used")
