"""Text normalisers for the corpus preparers.

AMI follows the Kaldi/ESPnet/lhotse ("kaldi" mode) convention: upper case,
every character other than ``A-Z 0-9 '`` becomes a word break (so hyphenated
words are split and punctuation disappears), then the frequent AMI
backchannels ``MM HMM``/``UH HUH`` are re-joined with a hyphen and ``O K``
becomes ``OK``.

YODAS captions are web subtitles: bracketed/parenthesised non-speech tags
(``[Music]``, ``(laughter)``) and ``>>`` speaker marks are dropped, accents are
folded to ASCII, case is upper, punctuation is removed (apostrophes inside
words are kept), numbers are kept as written digits (no verbalisation).
"""

from __future__ import annotations

import re
import unicodedata

_NON_WORD = re.compile(r"[^A-Z0-9']+")
_SPACES = re.compile(r"\s+")


def _strip_apostrophes(tokens):
    out = []
    for t in tokens:
        # A token made only of apostrophes carries no word; keep word-internal
        # and leading/trailing ones (e.g. 'CAUSE, GOIN') as the Kaldi recipes do.
        if t.strip("'"):
            out.append(t)
    return out


def normalize_ami(text: str) -> str:
    text = text.upper()
    text = _NON_WORD.sub(" ", text)
    text = " ".join(_strip_apostrophes(text.split()))
    text = re.sub(r"\bMM HMM\b", "MM-HMM", text)
    text = re.sub(r"\bUH HUH\b", "UH-HUH", text)
    text = re.sub(r"\bO K\b", "OK", text)
    return text.strip()


_BRACKETED = re.compile(r"\[[^\]]*\]|\([^)]*\)|<[^>]*>|\{[^}]*\}|♪[^♪]*♪")


def fold_ascii(text: str) -> str:
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    # common typographic apostrophes/quotes
    return text.replace("\u2019", "'").replace("\u2018", "'").replace("`", "'")


def normalize_caption(text: str) -> str:
    """Normalise a YODAS/YouTube caption. Returns "" if nothing is left."""
    text = _BRACKETED.sub(" ", text)
    text = text.replace(">>", " ").replace("&amp;", "&").replace("&", " AND ")
    text = fold_ascii(text).upper()
    text = _NON_WORD.sub(" ", text)
    text = " ".join(_strip_apostrophes(text.split()))
    return text.strip()


def normalize_librispeech(text: str) -> str:
    """LibriSpeech's convention: upper case ``A-Z``, apostrophe and single spaces.

    Copies of the corpus edited by hand may hold lower case: it is upper-cased
    (other characters are kept and reported by the preparer)."""
    return _SPACES.sub(" ", text).strip().upper()
