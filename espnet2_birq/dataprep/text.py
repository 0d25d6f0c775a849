"""Text normalisers for the corpus preparers.

AMI follows the Kaldi/ESPnet/lhotse ("kaldi" mode) convention: upper case, every character other
than ``A-Z 0-9 '`` becomes a word break (so hyphenated words are split and punctuation
disappears), then the frequent AMI backchannels ``MM HMM``/``UH HUH`` are re-joined with a hyphen
and ``O K`` becomes ``OK``.

YODAS captions are web subtitles: bracketed/parenthesised non-speech tags (``[Music]``,
``(laughter)``) and ``>>`` speaker marks are dropped, accents are folded to ASCII, case is upper,
punctuation is removed (apostrophes inside words are kept), numbers are kept as written digits.
"""

from __future__ import annotations

import re
import unicodedata

_NON_WORD = re.compile(r"[^A-Z0-9']+")
_BRACKETED = re.compile(r"\[[^\]]*\]|\([^)]*\)|<[^>]*>|\{[^}]*\}|♪[^♪]*♪")


def _words(text: str) -> str:
    # A token made only of apostrophes carries no word; word-internal and leading/trailing ones
    # (e.g. 'CAUSE, GOIN') are kept as the Kaldi recipes do.
    return " ".join(t for t in _NON_WORD.sub(" ", text).split() if t.strip("'"))


def normalize_ami(text: str) -> str:
    text = re.sub(r"\bMM HMM\b", "MM-HMM", _words(text.upper()))
    return re.sub(r"\bO K\b", "OK", re.sub(r"\bUH HUH\b", "UH-HUH", text)).strip()


def fold_ascii(text: str) -> str:
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return text.replace("\u2019", "'").replace("\u2018", "'").replace("`", "'")  # typographic apostrophes


def normalize_caption(text: str) -> str:
    """Normalise a YODAS/YouTube caption. Returns "" if nothing is left."""
    text = _BRACKETED.sub(" ", text).replace(">>", " ").replace("&amp;", "&").replace("&", " AND ")
    return _words(fold_ascii(text).upper())


def normalize_librispeech(text: str) -> str:
    """LibriSpeech's convention: upper case ``A-Z``, apostrophe and single spaces. Copies edited by
    hand may hold lower case: it is upper-cased (other characters are kept and reported)."""
    return " ".join(text.split()).upper()
