"""`clipstore mine keywords`: a ranked YAKE vocabulary over the captions of a scope, matched
against captions so that every image gets its candidate keyword set (S-CLIP; docs/mining.md).

S-CLIP's recipe: YAKE, English, n-grams up to 2, dedup 0.9, top 300, over the training captions
taken as one text; rank = YAKE's priority order, and yake-50/100/200 are prefixes of yake-300.

YAKE's document here: every normalised caption (lower-case, no trailing " .") becomes one sentence
"<text>." and the sentences are joined by spaces. Two details matter:
- the period must touch the last word: YAKE's sentence splitter (segtok) ends a sentence at
  "trees. a" but not at RSICD's raw "trees . a", and YAKE's sentence-spread feature then sees one
  sentence per caption instead of one giant sentence;
- identical captions are kept by default: how often annotators say something is exactly the
  salience YAKE measures, and the public lists were mined from the full caption list (on the
  RS-ALL train captions, 42 of the public yake-50 entries are in this top 50; deduplicated
  captions give 37). `unique_captions=True` mines each distinct caption once instead.
Both choices are recorded in the recipe.

`compat="sclip"` reproduces the public lists as closely as the data allows (docs/keywords-compat.md):
yake 0.4, which S-CLIP used, computed its default `seqm` dedup as a Levenshtein ratio (1 - edit
distance / longer length), which is what yake 0.7 calls `levs`; 0.7's `seqm` is a different
heuristic that scores "green tree" / "green trees" 0 (their last characters differ), so both
survive. The mode uses `levs` and, when no scope is given, S-CLIP's: the train captions of RSICD,
UCM and Sydney, in that order."""

from __future__ import annotations

import importlib.metadata
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from clipstore.mining.matching import keyword_matrix, match_tokens, normalise_keyword
from clipstore.mining.scope import Scope, parse_corpus_splits, resolve_match_scope, resolve_scope, scope_captions
from clipstore.mining.tables import KEYWORD_VOCAB_TABLES, SCHEMAS
from clipstore.mining.vocab import begin_vocab, publish_vocab, vocab_name, vocabulary_row
from clipstore.warehouse.errors import ClipstoreError, InputError
from clipstore.warehouse.hashing import text_id
from clipstore.warehouse.store import Artifact, ArtifactBuilder, Store

DEDUP_FUNCS = ("seqm", "jaro", "levs")   # what yake 0.7 implements (any other name silently means levs)
_LETTER = re.compile(r"[^\W\d_]")
DOCUMENT = {"unit": "caption", "text": "normalised", "sentence": "<text>.", "join": " "}
COMPAT_MODES = ("sclip",)
SCLIP_DEDUP = "levs"                                   # what yake 0.4's default `seqm` computed
SCLIP_SCOPE = ("rsicd:train", "ucm_captions:train", "sydney_captions:train")   # torchrs split="train"


@dataclass(frozen=True)
class YakeSettings:
    top: int = 300
    ngram: int = 2
    dedup_lim: float = 0.9
    dedup_func: str = "seqm"
    window: int = 1
    language: str = "en"

    def check(self) -> None:
        if not isinstance(self.top, int) or self.top < 1:
            raise InputError(f"--top {self.top!r} must be a positive number of keywords", fix="e.g. --top 300")
        if not isinstance(self.ngram, int) or not 1 <= self.ngram <= 6:
            raise InputError(f"--ngram {self.ngram!r} is outside 1..6", fix="S-CLIP uses --ngram 2")
        if not isinstance(self.dedup_lim, (int, float)) or not 0 < self.dedup_lim <= 1:
            raise InputError(f"--dedup-lim {self.dedup_lim!r} is outside (0, 1]",
                             fix="0.9 is YAKE's default; 1 turns deduplication off")
        if self.dedup_func not in DEDUP_FUNCS:
            raise InputError(f"unknown --dedup-func {self.dedup_func!r}", fix=f"use one of: {', '.join(DEDUP_FUNCS)}")
        if not isinstance(self.window, int) or self.window < 1:
            raise InputError(f"--window {self.window!r} must be a positive integer", fix="YAKE's default is 1")
        languages = yake_languages()
        if self.language[:2].lower() not in languages:
            raise InputError(f"YAKE has no stop-word list for language {self.language!r}",
                             fix=f"use one of: {', '.join(sorted(languages))}")

    def extractor_args(self) -> dict:
        """The keyword arguments given to yake.KeywordExtractor, all snake_case: yake 0.7 silently
        ignores the camelCase names (dedupLim, windowsSize) that older code passes."""
        return {"lan": self.language, "n": self.ngram, "dedup_lim": float(self.dedup_lim),
                "dedup_func": self.dedup_func, "window_size": self.window, "top": self.top}


def yake_languages() -> set[str]:
    import yake
    folder = Path(yake.__file__).parent / "core" / "StopwordsList"
    return {p.stem.removeprefix("stopwords_") for p in folder.glob("stopwords_*.txt")} - {"noLang"}


def yake_version() -> str:
    return importlib.metadata.version("yake")


def yake_document(texts: list[str], unique_captions: bool = False) -> tuple[str, int]:
    """(document, captions used): one sentence per non-empty caption; see the module docstring."""
    kept = [t for t in texts if t and _LETTER.search(t)]     # junk captions (" .", "1 .") have no word
    if unique_captions:
        kept = list(dict.fromkeys(kept))
    return " ".join(t if t[-1] in ".!?" else f"{t}." for t in kept), len(kept)


def run_yake(settings: YakeSettings, document: str) -> list[tuple[str, float]]:
    import yake
    extractor = yake.KeywordExtractor(**settings.extractor_args())
    found = extractor.extract_keywords(document)
    if document and not found:
        # yake logs and swallows its own exceptions, returning nothing
        raise ClipstoreError(f"YAKE found no keyword in {len(document):,} characters of captions (only stop words?)",
                             fix="check the captions (`clipstore sql \"SELECT text FROM captions LIMIT 20\"`); "
                                 "run with --ngram 1 or another --language to narrow the cause")
    return [(kw, float(score)) for kw, score in found]


def ranked_entries(found: list[tuple[str, float | None]]) -> tuple[list[str], list[float | None], list[str]]:
    """(keywords, scores, dropped): normalised keywords in rank order, the first of any that
    normalise alike kept, and entries without a letter or digit dropped (they can never match)."""
    keywords, scores, dropped, seen = [], [], [], set()
    for raw, score in found:
        keyword = normalise_keyword(raw)
        if keyword in seen or not match_tokens(keyword):
            dropped.append(raw)
            continue
        seen.add(keyword)
        keywords.append(keyword)
        scores.append(score)
    return keywords, scores, dropped


def mine_keywords(store: Store, *, split: str | None = None, role: str | None = None,
                  corpora: list[str] | None = None, source_split: str | None = None, top: int = 300, ngram: int = 2,
                  dedup_lim: float = 0.9,
                  dedup_func: str | None = None, window: int = 1, language: str = "en", unique_captions: bool = False,
                  compat: str | None = None, match_split: str | None = None, match_role: str | None = None,
                  match_corpora: list[str] | None = None, name: str | None = None, wait: bool = False,
                  progress: bool = True) -> Artifact:
    """Mine (or return, when this recipe over these input versions exists) a YAKE vocabulary over
    the captions of `--split S --role R` or `--corpus A ...` (`NAME:SPLIT` keeps one source split
    of that corpus), and match it against every caption of the match scope (default: all captions
    of the scope's corpora, every role). `compat="sclip"`: see the module docstring."""
    if compat is not None and compat not in COMPAT_MODES:
        raise InputError(f"unknown compatibility mode {compat!r}", fix=f"use one of: {', '.join(COMPAT_MODES)}")
    if compat == "sclip":
        if dedup_func not in (None, SCLIP_DEDUP):
            raise InputError(f"--compat sclip deduplicates with {SCLIP_DEDUP!r} (yake 0.4's seqm), "
                             f"not --dedup-func {dedup_func}", fix="drop --dedup-func, or drop --compat")
        dedup_func = SCLIP_DEDUP
        if not split and not corpora:
            corpora = list(SCLIP_SCOPE)
    settings = YakeSettings(top, ngram, dedup_lim, dedup_func or "seqm", window, language)
    settings.check()
    corpora, source_splits = parse_corpus_splits(list(corpora or []))
    with store.writing(wait=wait):
        scope = resolve_scope(store, split=split, role=role, corpora=corpora, source_split=source_split,
                              source_splits=source_splits)
        match_scope = resolve_match_scope(store, split=match_split, role=match_role, corpora=match_corpora,
                                          default=scope)
        params = {"method": "yake", "yake": settings.extractor_args(), "yake_version": yake_version(),
                  "document": {**DOCUMENT, "unique_captions": unique_captions}, "match": match_scope.params()}
        if compat:  # only when set, so recipes made before the option keep their ids
            params["compat"] = compat
        default_name = vocab_name("keywords", scope.label) + (f".{compat}" if compat else "")
        builder = begin_vocab(store, "keywords", name or default_name, params, scope,
                              KEYWORD_VOCAB_TABLES, extra_inputs=match_scope.input_ids)
        if isinstance(builder, Artifact):   # this recipe completed before: nothing to do
            return builder
        with builder.failing_on_error():
            return _mine(store, builder, scope, match_scope, settings, unique_captions, progress)


def _mine(store: Store, builder: ArtifactBuilder, scope: Scope, match_scope: Scope, settings: YakeSettings,
          unique_captions: bool, progress: bool) -> Artifact:
    with Steps(progress, f"mine keywords {scope.label}", 3) as steps:
        captions = scope_captions(store, scope)
        document, n_used = yake_document(captions.column("text").to_pylist(), unique_captions)
        if n_used == 0:
            raise InputError(f"scope {scope.label} has no captions to mine",
                             fix="pick a split role or corpora with captions (`clipstore sql \"SELECT corpus, "
                                 "count(*) FROM captions GROUP BY corpus\"`)")
        steps.next(f"YAKE over {n_used:,} captions")
        started = time.monotonic()
        keywords, scores, dropped = ranked_entries(run_yake(settings, document))
        stats = {"captions": captions.num_rows, "captions_mined": n_used, "document_chars": len(document),
                 "dropped": dropped, "yake_seconds": round(time.monotonic() - started, 3), "top": keywords[:20]}
        # the default match scope is the mined captions themselves: read them once
        same = not scope.filtered and match_scope.corpora == scope.corpora
        return write_keyword_vocab(store, builder, kind="keywords", scope_label=scope.label, method="yake",
                                   keywords=keywords, scores=scores, source="yake", match_scope=match_scope,
                                   match_captions=captions if same else None, stats=stats, steps=steps)


class Steps:
    """A step counter on stderr for runs made of a few long steps (YAKE is one call): the bar
    counts finished steps and names the running one."""

    def __init__(self, enabled: bool, desc: str, total: int):
        from tqdm import tqdm
        self.bar = tqdm(total=total, desc=desc, unit="step", leave=False, disable=not enabled, dynamic_ncols=True)
        self.running = False

    def next(self, what: str) -> None:
        if self.running:
            self.bar.update()
        self.running = True
        self.bar.set_postfix_str(what)

    def __enter__(self) -> "Steps":
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()


def keyword_rows(vocab_id: str, keywords: list[str], scores: list[float | None], source: str) -> pa.Table:
    ids = [text_id("keyword", k) for k in keywords]
    return pa.table({"vocab_id": [vocab_id] * len(keywords), "keyword_id": ids, "keyword": keywords,
                     "rank": list(range(1, len(keywords) + 1)), "score": scores,
                     "n_words": [len(k.split()) for k in keywords], "source": [source] * len(keywords),
                     "n_captions": [None] * len(keywords), "n_images": [None] * len(keywords)},
                    schema=SCHEMAS["keywords"])


def with_frequencies(keywords: pa.Table, caption_keywords: pa.Table) -> pa.Table:
    """Fill n_captions / n_images: how many matched captions and samples contain each keyword."""
    counts = caption_keywords.group_by("keyword_id").aggregate([("caption_id", "count"),
                                                                 ("sample_id", "count_distinct")])
    n_captions = dict(zip(counts.column("keyword_id").to_pylist(), counts.column("caption_id_count").to_pylist()))
    n_images = dict(zip(counts.column("keyword_id").to_pylist(),
                        counts.column("sample_id_count_distinct").to_pylist()))
    ids = keywords.column("keyword_id").to_pylist()
    columns = {name: keywords.column(name) for name in keywords.column_names}
    columns["n_captions"] = pa.array([n_captions.get(k, 0) for k in ids], pa.int64())
    columns["n_images"] = pa.array([n_images.get(k, 0) for k in ids], pa.int64())
    return pa.table(columns).select(SCHEMAS["keywords"].names).cast(SCHEMAS["keywords"])


def write_keyword_vocab(store: Store, builder: ArtifactBuilder, *, kind: str, scope_label: str, method: str,
                        keywords: list[str], scores: list[float | None], source: str,
                        match_scope: Scope | None, match_captions: pa.Table | None = None,
                        extra_tables: dict | None = None, stats: dict | None = None,
                        steps: Steps | None = None) -> Artifact:
    """Publish a keyword vocabulary (keywords in rank order) with its caption x keyword matrix
    over the match scope (whose captions may be passed in when already read), and complete the
    artifact."""
    vocab_id = builder.artifact_id
    keyword_table = keyword_rows(vocab_id, keywords, scores, source)
    if match_scope is not None:
        if steps:
            steps.next(f"matching {len(keywords)} keywords")
        captions = match_captions if match_captions is not None else scope_captions(store, match_scope)
        started = time.monotonic()
        caption_keywords, image_keywords, match_stats = keyword_matrix(
            vocab_id, captions, keyword_table.column("keyword_id").to_pylist(), keywords)
        keyword_table = with_frequencies(keyword_table, caption_keywords)
        match_stats["seconds"] = round(time.monotonic() - started, 3)
        match_stats["scope"] = match_scope.label
    else:
        caption_keywords = SCHEMAS["caption_keywords"].empty_table()
        image_keywords = SCHEMAS["image_keywords"].empty_table()
        match_stats = None
    if steps:
        steps.next("writing")
    params = builder.recipe["params"]   # everything the recipe holds, scope versions included
    tables = {"vocabularies": [vocabulary_row(builder, kind, scope_label, method, params, len(keywords))],
              "keywords": keyword_table, **(extra_tables or {}),
              "caption_keywords": caption_keywords, "image_keywords": image_keywords}
    stats = {**(stats or {}), "keywords": len(keywords), "match": match_stats}
    return publish_vocab(store, builder, tables, stats=stats,
                         summary={"keywords": len(keywords), "caption_keyword_pairs": caption_keywords.num_rows,
                                  "samples": image_keywords.num_rows})

