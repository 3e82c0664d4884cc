"""`clipstore mine classnames`: a keyword vocabulary of scene-class names from classification
corpora (ucm_cls, rsicd_cls, whu_rs19, rsscn7, aid, resisc45, ...), merged without duplicates.

The public code prompts with raw folder names ("denseresidential", "footballField", "aGrass").
Here each raw name goes through a normalisation table, recorded row by row in `classnames` with
the rule that applied, in this order:
  ordinal_prefix  RSSCN7's one-letter ordering prefix: `aGrass` -> `Grass`. Detected per corpus,
                  never per name: every class is <lower letter><Upper...> and the letters run
                  a, b, c, ... in class order (a single "iPhone" class is left alone).
  snake_case      `baseball_diamond` -> `baseball diamond`
  camel_case      `footballField` -> `football Field`, `BareLand` -> `Bare Land`
  lowercase       `Airport` -> `airport` (keywords are case-folded everywhere)
  segmented       `denseresidential` -> `dense residential`: a run-together word that is no
                  English word is split into the fewest dictionary words (ties: the likelier
                  words). The dictionary is spaCy's English lemma tables (spacy-lookups-data:
                  ~110k lemmas and inflected forms); word probabilities from its lexeme table.
                  Known words stay whole (`chaparral`, `overpass`, `farmland`).
  override        a user-given raw -> name mapping (e.g. keep `playfields` whole, as S-CLIP's
                  hand-merged list does; the dictionary has no `playfield`).
With `normalise=False` names are taken verbatim (rule `verbatim`), only case-folded.
The same normalised name from several classes or corpora is one keyword; the vocabulary is in
alphabetical order, as S-CLIP's class-name lists are."""

from __future__ import annotations

import gzip
import importlib.metadata
import json
import re
from collections import Counter
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from clipstore.mining.keywords import write_keyword_vocab
from clipstore.mining.matching import normalise_keyword
from clipstore.mining.scope import Scope, resolve_match_scope, resolve_scope
from clipstore.mining.tables import CLASSNAME_VOCAB_TABLES
from clipstore.mining.vocab import begin_vocab, vocab_name
from clipstore.warehouse.errors import InputError
from clipstore.warehouse.hashing import text_id
from clipstore.warehouse.sql import Session
from clipstore.warehouse.store import Artifact, Store

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_ORDINAL = re.compile(r"^[a-z][A-Z]")
MIN_SEGMENTED_LENGTH = 6   # shorter unknown tokens are acronyms or odd words, not run-together phrases
MIN_PIECE_LENGTH = 2       # no one-letter pieces ("a", "i"), which would split almost anything


# ---- the word list --------------------------------------------------------------------------
def _lookups_file(name: str) -> Path:
    import spacy_lookups_data
    return Path(spacy_lookups_data.__file__).parent / "data" / name


def _load(name: str):
    with gzip.open(_lookups_file(name), "rt", encoding="utf-8") as f:
        return json.load(f)


@cache
def english_words() -> frozenset[str]:
    """Lower-case alphabetic English lemmas and inflected forms from spaCy's lookup tables."""
    index = _load("en_lemma_index.json.gz")          # {"noun": [...], "verb": [...], ...}
    lookup = _load("en_lemma_lookup.json.gz")        # inflected form -> lemma
    words = {w for forms in index.values() for w in forms} | set(lookup) | set(lookup.values())
    return frozenset(w for w in words if w.isalpha() and w.islower() and len(w) >= MIN_PIECE_LENGTH)


@cache
def word_log_probs() -> dict[str, float]:
    probs = _load("en_lexeme_prob.json.gz")
    words = english_words()
    return {w: p for w, p in probs.items() if w in words}


def words_version() -> str:
    return importlib.metadata.version("spacy-lookups-data")


def segment(token: str) -> list[str] | None:
    """The split of a run-together lower-case token into the fewest dictionary words (ties: the
    highest summed log probability), or None when no split into two or more words exists."""
    words, log_prob = english_words(), word_log_probs()
    unknown = min(log_prob.values(), default=-20.0) - 1.0
    n = len(token)
    best: list[tuple[int, float, tuple[str, ...]] | None] = [None] * (n + 1)
    best[0] = (0, 0.0, ())
    for end in range(1, n + 1):
        for start in range(max(0, end - 30), end - MIN_PIECE_LENGTH + 1):
            piece, before = token[start:end], best[start]
            if before is None or piece not in words:
                continue
            cand = (before[0] + 1, before[1] - log_prob.get(piece, unknown), before[2] + (piece,))
            if best[end] is None or cand[:2] < best[end][:2]:
                best[end] = cand
    found = best[n]
    return list(found[2]) if found is not None and found[0] >= 2 else None


# ---- the normalisation table ----------------------------------------------------------------
def has_ordinal_prefixes(classes: list[str]) -> bool:
    """RSSCN7-style `aGrass bField cIndustry ...`: every class carries the next letter."""
    return (len(classes) >= 3 and all(_ORDINAL.match(c) for c in classes)
            and [c[0] for c in classes] == [chr(ord("a") + i) for i in range(len(classes))])


def normalise_class_name(raw: str, *, ordinal_prefix: bool = False) -> tuple[str, str]:
    """(normalised name, rule) of one raw class name; see the module docstring for the rules."""
    steps, name = [], raw.strip()
    if ordinal_prefix:
        name = name[1:]
        steps.append("ordinal_prefix")
    if "_" in name:
        name = name.replace("_", " ")
        steps.append("snake_case")
    camel = _CAMEL.sub(" ", name)
    if camel != name:
        name = camel
        steps.append("camel_case")
    if name.lower() != name:
        name = name.lower()
        steps.append("lowercase")
    words = []
    for word in name.split():
        pieces = None
        if word.isalpha() and len(word) >= MIN_SEGMENTED_LENGTH and word not in english_words():
            pieces = segment(word)
        words.extend(pieces or [word])
        if pieces:
            steps.append("segmented")
    return normalise_keyword(" ".join(words)), "+".join(dict.fromkeys(steps)) or "unchanged"


@dataclass(frozen=True)
class ClassName:
    corpus: str
    cls: str          # the corpus's class key (folder or list-file name), as in samples.class
    raw_name: str     # the corpus's display name at ingest (presets may already drop RSSCN7's prefix)
    name: str         # the normalised name = the keyword
    rule: str


def name_table(classes: list[dict], normalise: bool = True,
               overrides: dict[str, str] | None = None) -> list[ClassName]:
    """The normalisation table of classes(corpus, class, name) rows, corpora kept apart."""
    overrides = {k: normalise_keyword(v) for k, v in (overrides or {}).items()}
    by_corpus: dict[str, list[dict]] = {}
    for row in classes:
        by_corpus.setdefault(row["corpus"], []).append(row)
    table = []
    for corpus, rows in by_corpus.items():
        ordinal = normalise and has_ordinal_prefixes([r["class"] for r in rows])
        for r in rows:
            raw = r["class"]
            if raw in overrides:
                name, rule = overrides[raw], "override"
            elif normalise:
                name, rule = normalise_class_name(raw, ordinal_prefix=ordinal)
            else:
                name, rule = normalise_keyword(raw), "verbatim"
            table.append(ClassName(corpus, raw, r.get("name") or raw, name, rule))
    return table


# ---- the stage ------------------------------------------------------------------------------
def read_classes(store: Store, scope: Scope) -> list[dict]:
    corpora = list(scope.corpora)
    with Session(store) as session:
        if "classes" in session.tables():
            rows = session.query("SELECT corpus, class, class_index, name FROM classes "
                                 "WHERE list_contains($corpora, corpus) "
                                 "ORDER BY list_position($corpora, corpus), class_index",
                                 {"corpora": corpora}).to_pylist()
        else:
            rows = []
    without = [c for c in corpora if not any(r["corpus"] == c for r in rows)]
    if without:
        raise InputError(f"corpus {', '.join(map(repr, without))} has no class list",
                         fix="class names come from classification corpora (imagefolder presets ucm_cls, whu_rs19, "
                             "rsscn7, aid, resisc45; rsicd_cls; fashion class variants)")
    return rows


def mine_classnames(store: Store, corpora: list[str], *, normalise: bool = True,
                    overrides: dict[str, str] | None = None, name: str | None = None,
                    match_split: str | None = None, match_role: str | None = None,
                    match_corpora: list[str] | None = None, wait: bool = False) -> Artifact:
    """Build (or return, when it exists for these corpus versions) the merged class-name
    vocabulary of `corpora`; with a match scope, also its caption x keyword matrix."""
    if not corpora:
        raise InputError("name the classification corpora to take class names from",
                         fix="e.g. --corpus ucm_cls --corpus rsicd_cls")
    overrides = dict(overrides or {})
    empty = [raw for raw, to in overrides.items() if not normalise_keyword(to)]
    if empty:
        raise InputError(f"override for {empty[0]!r} maps it to an empty name", fix="give RAW=NAME with a name")
    with store.writing(wait=wait):
        scope = resolve_scope(store, corpora=corpora)
        classes = read_classes(store, scope)
        unknown = sorted(set(overrides) - {r["class"] for r in classes})
        if unknown:
            raise InputError(f"override for {', '.join(map(repr, unknown))}: no such class in "
                             f"{', '.join(scope.corpora)}", fix="overrides are keyed by the raw class name")
        match_scope = resolve_match_scope(store, split=match_split, role=match_role, corpora=match_corpora)
        params = {"method": "classnames", "normalise": normalise, "overrides": dict(sorted(overrides.items())),
                  "segmentation_words": f"spacy-lookups-data {words_version()} en lemma tables" if normalise else None,
                  "order": "alphabetical", "match": match_scope.params() if match_scope else None}
        builder = begin_vocab(store, "classnames", name or vocab_name("classnames", scope.label), params, scope,
                              CLASSNAME_VOCAB_TABLES, extra_inputs=match_scope.input_ids if match_scope else [])
        if isinstance(builder, Artifact):   # this recipe completed before: nothing to do
            return builder
        with builder.failing_on_error():
            table = name_table(classes, normalise, overrides)
            keywords = sorted({c.name for c in table})
            classname_rows = [{"vocab_id": builder.artifact_id, "keyword_id": text_id("keyword", c.name),
                               "corpus": c.corpus, "class": c.cls, "raw_name": c.raw_name, "name": c.name,
                               "rule": c.rule} for c in table]
            sources: dict[str, list[str]] = {}
            for c in table:
                sources.setdefault(c.name, []).append(f"{c.corpus}/{c.cls}")
            stats = {"classes": len(table), "rules": dict(Counter(c.rule for c in table)),
                     "merged": {k: v for k, v in sorted(sources.items()) if len(v) > 1}}
            return write_keyword_vocab(store, builder, kind="classnames", scope_label=scope.label,
                                       method="classnames", keywords=keywords,
                                       scores=[None] * len(keywords), source="classname", match_scope=match_scope,
                                       extra_tables={"classnames": classname_rows}, stats=stats)

