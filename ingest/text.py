"""Caption text: the normalised form stored beside the verbatim raw text, and junk detection."""

import re

_SPACES = re.compile(r"\s+")
_WORD = re.compile(r"[^\W\d_]{2,}")  # a word of two or more letters, in any script


def normalise_caption(raw: str) -> str:
    """Lower-case, collapse white space, drop a trailing ' .' or '.' (RSICD/UCM end with ' .')."""
    text = _SPACES.sub(" ", raw).strip().lower()
    while text.endswith("."):
        text = text[:-1].rstrip()
    return text


def is_junk_caption(raw: str) -> bool:
    """No real word at all: RSICD's ' .' and '1 .' captions."""
    return _WORD.search(raw) is None
