"""Caption x keyword matrix: which vocabulary entries occur in which caption.

S-CLIP's rule is `" " + k + " " in " " + c + " "` on raw strings: case-sensitive, so "Parking lot"
misses "parking lot", and "trees," misses "trees". Here both sides are reduced first:
- a keyword's *keyword form*: its lower-case word tokens (runs of letters and digits) joined by
  single spaces ("High-Rise  Buildings" -> "high rise buildings");
- a caption's *caption form*: the same tokens, but phrase punctuation (, . ; : ! ? brackets,
  quotes) stays a boundary, written " | ", that no keyword spans: "a river, lake" does not
  contain "river lake". Hyphens, apostrophes, slashes and underscores only separate tokens.
The rule applied to these forms is the definition of a match.

The matcher is vectorised: every caption is tokenised once, tokens become integer ids, and
n-grams get compact integer ids level by level (an n-gram id is the rank of the pair (id of its
first n-1 tokens, id of its last token) among all such pairs), so that membership of a keyword
is a `searchsorted` over integers. There is no loop over caption x keyword pairs."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from itertools import chain

import numpy as np
import pyarrow as pa

from clipstore.mining.tables import CAPTION_KEYWORDS, IMAGE_KEYWORDS

_TOKEN = re.compile(r"[^\W_]+")      # letters and digits of any script
_PHRASE_BREAK = re.compile(r"[^\w\s'’/-]+")   # punctuation other than - ' ’ / _ ends a phrase
_SPACES = re.compile(r"\s+")


def normalise_keyword(text: str) -> str:
    """A keyword's stored form (and the text behind its keyword_id): NFC, lower-case, single
    spaces. Punctuation inside a keyword ("high-rise") is kept; only matching ignores it."""
    return _SPACES.sub(" ", unicodedata.normalize("NFC", text)).strip().lower()


def match_tokens(text: str) -> list[str]:
    return _TOKEN.findall(unicodedata.normalize("NFC", text).lower())


def phrases(text: str) -> list[list[str]]:
    """The tokens of a caption, cut at phrase punctuation; empty phrases dropped."""
    found = (match_tokens(part) for part in _PHRASE_BREAK.split(unicodedata.normalize("NFC", text)))
    return [p for p in found if p]


def keyword_form(text: str) -> str:
    """`keyword_form("High-Rise  Buildings")` is "high rise buildings"."""
    return " ".join(match_tokens(text))


def caption_form(text: str) -> str:
    """`caption_form("Green trees, a road.")` is "green trees | a road"."""
    return " | ".join(" ".join(p) for p in phrases(text))


def match_keywords(texts: Sequence[str], keywords: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(text index, keyword index) of every keyword occurring in every text, unique pairs sorted
    by text and then keyword index. Keywords without any token never match."""
    token_ids: dict[str, int] = {}
    caption_phrases = [phrases(t) for t in texts]
    phrase_caption = np.fromiter((i for i, ps in enumerate(caption_phrases) for _ in ps), np.int64)
    all_phrases = list(chain.from_iterable(caption_phrases))
    lengths = np.fromiter(map(len, all_phrases), np.int64, len(all_phrases))
    flat = chain.from_iterable(all_phrases)
    tokens = np.fromiter((token_ids.setdefault(t, len(token_ids)) for t in flat), np.int64, int(lengths.sum()))
    keyword_tokens = [[token_ids.get(t, -1) for t in match_tokens(k)] for k in keywords]
    keyword_len = np.fromiter(map(len, keyword_tokens), np.int64, len(keyword_tokens))
    if tokens.size == 0 or not keyword_len.any():
        return np.empty(0, np.int64), np.empty(0, np.int64)

    n_tokens, vocab = tokens.size, max(len(token_ids), 1)
    text_of = np.repeat(phrase_caption, lengths)
    end_of = np.repeat(np.cumsum(lengths), lengths)      # one past the last token of each token's phrase
    position = np.arange(n_tokens, dtype=np.int64)
    max_len = int(keyword_len.max())
    # keyword token matrix, -1 padded; a token absent from every text (-1) can never match
    padded = np.full((len(keywords), max_len), -1, np.int64)
    for i, ids in enumerate(keyword_tokens):
        padded[i, :len(ids)] = ids

    gram = tokens.copy()                    # compact id of the n-gram starting at each position
    keyword_gram = padded[:, 0].copy()      # compact id of each keyword's first n tokens (-1: none)
    hits_text, hits_keyword = [], []
    for n in range(1, max_len + 1):
        if n > 1:
            fits = (position + n <= end_of) & (gram >= 0)   # n-grams never cross a phrase boundary
            pair = gram[fits] * vocab + tokens[position[fits] + n - 1]
            if pair.size == 0:
                break                       # no phrase is n tokens long: no longer keyword can match
            levels, inverse = np.unique(pair, return_inverse=True)
            gram = np.full(n_tokens, -1, np.int64)
            gram[fits] = inverse
            alive = (keyword_len >= n) & (keyword_gram >= 0) & (padded[:, n - 1] >= 0)
            wanted = keyword_gram * vocab + padded[:, n - 1]
            at = np.searchsorted(levels, wanted)
            found = alive & (levels[np.minimum(at, levels.size - 1)] == wanted)
            keyword_gram = np.where(found, at, -1)
        complete = np.flatnonzero((keyword_len == n) & (keyword_gram >= 0))
        if complete.size:
            t, k = _join(gram, keyword_gram[complete], complete)
            hits_text.append(text_of[t])
            hits_keyword.append(k)
    if not hits_text:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    n_keywords = len(keywords)
    pairs = np.unique(np.concatenate(hits_text) * n_keywords + np.concatenate(hits_keyword))
    return pairs // n_keywords, pairs % n_keywords


def _join(gram: np.ndarray, keyword_gram: np.ndarray, keyword_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position, keyword) for every position whose n-gram id equals a keyword's id; several
    keywords may share one id ("high-rise" and "high rise")."""
    order = np.argsort(keyword_gram, kind="stable")
    ids, keyword_index = keyword_gram[order], keyword_index[order]
    positions = np.flatnonzero(np.isin(gram, ids))
    left = np.searchsorted(ids, gram[positions], "left")
    right = np.searchsorted(ids, gram[positions], "right")
    counts = right - left
    pos = np.repeat(positions, counts)
    # index of each repeated entry within its [left, right) run
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return pos, keyword_index[np.repeat(left, counts) + offsets]


def keyword_matrix(vocab_id: str, captions: pa.Table, keyword_ids: Sequence[str],
                   keywords: Sequence[str]) -> tuple[pa.Table, pa.Table, dict]:
    """The `caption_keywords` rows (sparse matrix) and `image_keywords` rows (per sample: the union
    over its captions, keyword ids in rank order; samples with no match get an empty list) for
    captions(corpus, caption_id, sample_id, image_id, text), with keywords given in rank order."""
    texts = captions.column("text").to_pylist()
    cap, kw = match_keywords(texts, keywords)
    ids = pa.array(list(keyword_ids), pa.string())
    caption_keywords = pa.table({
        "vocab_id": pa.array([vocab_id] * cap.size, pa.string()),
        "caption_id": captions.column("caption_id").take(pa.array(cap)),
        "keyword_id": ids.take(pa.array(kw)),
        "corpus": captions.column("corpus").take(pa.array(cap)),
        "sample_id": captions.column("sample_id").take(pa.array(cap)),
    }, schema=CAPTION_KEYWORDS)

    # samples in order of their first caption; candidate set = unique (sample, keyword) pairs, rank order
    codes: dict[str, int] = {}
    sample_of_caption = np.fromiter((codes.setdefault(s, len(codes)) for s in captions.column("sample_id").to_pylist()),
                                    np.int64, len(texts))
    n_samples = len(codes)
    first_caption = np.full(n_samples, len(texts), np.int64)
    np.minimum.at(first_caption, sample_of_caption, np.arange(len(texts), dtype=np.int64))
    n_keywords = max(len(keywords), 1)
    pairs = np.unique(sample_of_caption[cap] * n_keywords + kw)
    pair_sample, pair_keyword = pairs // n_keywords, pairs % n_keywords
    counts = np.bincount(pair_sample, minlength=n_samples).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    candidate_lists = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()),
                                               ids.take(pa.array(pair_keyword, pa.int64())))
    rows = pa.array(first_caption)
    captions_per_sample = np.bincount(sample_of_caption, minlength=n_samples).astype(np.int32)
    hit_per_sample = np.bincount(sample_of_caption[np.unique(cap)], minlength=n_samples).astype(np.int32)
    image_keywords = pa.table({
        "vocab_id": pa.array([vocab_id] * n_samples, pa.string()),
        "corpus": captions.column("corpus").take(rows),
        "sample_id": captions.column("sample_id").take(rows),
        "image_id": captions.column("image_id").take(rows),
        "keyword_ids": candidate_lists,
        "n_keywords": pa.array(counts, pa.int32()),
        "n_captions": pa.array(captions_per_sample, pa.int32()),
        "n_captions_with_keyword": pa.array(hit_per_sample, pa.int32()),
    }, schema=IMAGE_KEYWORDS)

    covered = np.unique(cap)
    stats = {"captions": len(texts), "captions_with_keyword": int(covered.size), "pairs": int(cap.size),
             "samples": n_samples, "samples_with_candidates": int((counts > 0).sum()),
             "mean_candidates_per_sample": round(float(counts.mean()), 3) if n_samples else 0.0,
             "keywords_matched": int(np.unique(kw).size), "keywords": len(keywords)}
    return caption_keywords, image_keywords, stats
