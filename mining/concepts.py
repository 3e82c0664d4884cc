"""`clipstore mine concepts`: the SemiCLIP concept vocabulary and every image's concept targets.

Vocabulary (SemiCLIP): the noun lemmas of the captions of the scope's images (a split role,
labeled by default, or whole corpora); an image counts a noun once however many of its captions
name it. A noun is kept when it
  - occurs in at least `min_images` images (SemiCLIP's cmin = 5),
  - has at least `min_length` characters (SemiCLIP: more than 2),
  - is not a generic noun of the stop-list (`DEFAULT_STOPLIST`, replaceable), and
  - has a document frequency below `max_df` (0.3). With df_rule="images" (default, the correct
    rule) df = n_images / number of images in the scope; with df_rule="vocab" it is the public
    code's quirk, n_images / vocabulary size, the vocabulary being the nouns that pass the three
    filters above. The quirk drops every noun in 0.3 x |V| images or more, which on a few
    hundred nouns removes the most common concepts.
With `phrases=True` multi-word noun phrases ("tennis court") compete too, under the same rules;
a phrase whose head noun is stop-listed is kept only as a noun compound ("parking lot", where
"parking" is a noun too), not after adjectives ("large number", "different size"). SemiCLIP
uses nouns only (the default).

Targets: `caption_concepts` and `image_concepts` (multi-hot in long form) are written for every
captioned sample of the scope's corpora, in all roles, so unlabeled, val and test images get
concept targets too where they have captions; images without captions get none (stats say how
many). Captions are parsed once per corpus into the terms cache (`clipstore.mining.terms`), so
adding a corpus parses only that corpus's captions."""

from __future__ import annotations

import time
from collections import Counter, defaultdict

from clipstore.mining.nlp import DEFAULT_MODEL
from clipstore.mining.scope import Scope, resolve_scope, scope_captions
from clipstore.mining.tables import CONCEPT_VOCAB_TABLES
from clipstore.mining.terms import CaptionMapper, TermParser, TermsConfig, build_terms, read_terms
from clipstore.mining.vocab import begin_vocab, publish_vocab, vocab_name, vocabulary_row
from clipstore.warehouse.errors import InputError
from clipstore.warehouse.hashing import text_id
from clipstore.warehouse.sql import Session
from clipstore.warehouse.store import Artifact, Store

DF_RULES = ("images", "vocab")
METHOD = "semiclip-nouns"
# SemiCLIP's generic nouns (lot, zone, top, left, way, number, side, view, picture, piece(s),
# kind(s), size(s), style(s), type(s)) and more of the same sort seen in RS captions: words for
# position, amount, shape and the picture itself, which name no visual concept.
DEFAULT_STOPLIST = frozenset("""
lot lots zone zones top left right way ways number numbers side sides view views picture pictures
piece pieces kind kinds size sizes style styles type types
part parts middle edge edges corner corners front back bottom end ends inside outside
amount plenty group groups row rows series set sort sorts variety couple pair
place places position positions direction directions distance
shape shapes form forms color colors colour colours pattern patterns texture
image images photo photos scene scenes one ones thing things
""".split())


def mine_concepts(store: Store, *, split: str | None = None, role: str | None = None,
                  corpora: list[str] | None = None, min_images: int = 5, min_length: int = 3, max_df: float = 0.3,
                  df_rule: str = "images", stoplist: set[str] | list[str] | None = None, phrases: bool = False,
                  model: str | None = DEFAULT_MODEL, require_trained: bool = False, workers: int | None = None,
                  name: str | None = None, wait: bool = False, progress: bool = True) -> Artifact:
    """Mine (or return, when these inputs and settings were mined already) a concept vocabulary."""
    if role and not split:
        raise InputError(f"role {role!r} needs a split: a role is part of a split",
                         fix="add --split NAME, or drop --role to mine whole corpora")
    role = role or ("labeled" if split else None)
    stop = _check(min_images, min_length, max_df, df_rule, stoplist)
    settings = {"min_images": min_images, "min_length": min_length, "max_df": max_df, "df_rule": df_rule,
                "stoplist": sorted(stop), "phrases": phrases}
    with store.writing(wait=wait):
        scope = resolve_scope(store, split=split, role=role, corpora=corpora)
        parser = TermParser(TermsConfig(model=model), require_trained=require_trained)
        started = time.monotonic()
        terms, parsed = {}, {}
        with CaptionMapper(parser.config, workers, parser=parser) as mapper:  # one set of helpers for all
            for corpus in scope.corpora:  # parse what is new in each corpus first (a no-op when nothing is)
                terms[corpus], run = build_terms(store, corpus, mapper, progress=progress)
                parsed[corpus] = run["parsed_captions"]
        terms_ids = [a.artifact_id for a in terms.values()]
        params = {**settings, "terms": {c: a.artifact_id for c, a in terms.items()},  # pinned as inputs
                  "extractor": parser.info["mode"]}
        builder = begin_vocab(store, "concepts", name or vocab_name("concepts", scope.label), params, scope,
                              CONCEPT_VOCAB_TABLES, extra_inputs=terms_ids)
        if isinstance(builder, Artifact):   # this recipe completed before: nothing to do
            return builder
        with builder.failing_on_error():
            tables, stats = build_tables(store, scope, terms, settings, builder.artifact_id)
            tables["vocabularies"] = [vocabulary_row(builder, "concepts", scope.label, METHOD,
                                                     {**settings, "extractor": parser.info},
                                                     len(tables["concepts"]))]
            stats["extractor"] = parser.info
            summary = {"concepts": len(tables["concepts"]), "parsed_captions": parsed,
                       "seconds": round(time.monotonic() - started, 3)}
            return publish_vocab(store, builder, tables, stats=stats, summary=summary)


def _check(min_images, min_length, max_df, df_rule, stoplist) -> frozenset[str]:
    if df_rule not in DF_RULES:
        raise InputError(f"unknown df rule {df_rule!r}",
                         fix="use 'images' (df = n_images / images, correct) or 'vocab' (the public code's "
                             "n_images / vocabulary size)")
    if not isinstance(min_images, int) or min_images < 1:
        raise InputError(f"min_images {min_images!r} must be a positive whole number", fix="e.g. --min-images 5")
    if not isinstance(min_length, int) or min_length < 1:
        raise InputError(f"min_length {min_length!r} must be a positive whole number", fix="e.g. --min-length 3")
    if not isinstance(max_df, (int, float)) or not max_df > 0:  # NaN fails too
        raise InputError(f"max_df {max_df!r} must be above 0", fix="e.g. --max-df 0.3")
    if stoplist is None:
        return DEFAULT_STOPLIST
    if isinstance(stoplist, str) or not all(isinstance(w, str) for w in stoplist):
        raise InputError("the stop-list must be a collection of words",
                         fix="e.g. stoplist=DEFAULT_STOPLIST | {'building'}")
    return frozenset(w.strip().lower() for w in stoplist if w.strip())


def build_tables(store: Store, scope: Scope, terms: dict[str, Artifact], settings: dict,
                 vocab_id: str) -> tuple[dict, dict]:
    """The concepts, caption_concepts and image_concepts rows, and the stats behind them."""
    kinds = ("noun", "noun_phrase") if settings["phrases"] else ("noun",)
    with Session(store) as session:
        captions = scope_captions(store, resolve_scope(store, corpora=list(scope.corpora)), session)
        vocab_samples = _scope_samples(session, scope)
        classes = session.query("SELECT sample_id, class FROM samples WHERE list_contains($corpora, corpus)",
                                {"corpora": list(scope.corpora)})
        class_of = dict(zip(classes.column("sample_id").to_pylist(), classes.column("class").to_pylist()))
    caption_terms = _caption_terms(store, terms, kinds)
    caption_rows = captions.select(["corpus", "caption_id", "sample_id", "image_id"]).to_pylist()

    sample_terms: dict[str, set[str]] = defaultdict(set)
    for c in caption_rows:
        sample_terms[c["sample_id"]] |= caption_terms.get((c["caption_id"], c["sample_id"]), set())
    images = [s for s in dict.fromkeys(c["sample_id"] for c in caption_rows) if s in vocab_samples]
    n_images = Counter(t for s in images for t in sample_terms[s])
    chosen, report = select_concepts(n_images, len(images), settings, _compounds(caption_terms.values()))

    concepts = [{"vocab_id": vocab_id, "concept_id": text_id("concept", c), "concept": c, "rank": rank,
                 "n_images": n_images[c], "df": df} for rank, (c, df) in enumerate(chosen, start=1)]
    concept_id = {r["concept"]: r["concept_id"] for r in concepts}
    caption_concepts, image_concepts, on = [], [], defaultdict(set)
    for c in caption_rows:
        found = sorted(concept_id[t] for t in caption_terms.get((c["caption_id"], c["sample_id"]), ())
                       if t in concept_id)
        caption_concepts += [{"vocab_id": vocab_id, "caption_id": c["caption_id"], "concept_id": k,
                              "corpus": c["corpus"], "sample_id": c["sample_id"]} for k in found]
        on[(c["corpus"], c["sample_id"], c["image_id"])].update(found)
    for (corpus, sample, image), ids in on.items():
        image_concepts += [{"vocab_id": vocab_id, "corpus": corpus, "sample_id": sample, "image_id": image,
                            "concept_id": k} for k in sorted(ids)]
    class_concepts = _class_concepts(vocab_id, on, class_of, {r["concept_id"]: r["concept"] for r in concepts})
    stats = {**report, "vocabulary_images": len(images),
             "targets": {"covers": "every captioned sample of the scope's corpora, all roles",
                         "captioned_samples": len(on),
                         "samples_with_concepts": sum(1 for ids in on.values() if ids),
                         "samples_without_image": sum(1 for (_, _, image) in on if image is None)}}
    return {"concepts": concepts, "caption_concepts": caption_concepts, "image_concepts": image_concepts,
            "class_concepts": class_concepts}, stats


def _class_concepts(vocab_id: str, on: dict, class_of: dict, names: dict) -> list[dict]:
    """Per (corpus, class, concept): images of the class with the concept on, and that share of
    the class's captioned images."""
    class_images: Counter = Counter()
    hits: Counter = Counter()
    for (corpus, sample, _), ids in on.items():
        cls = class_of.get(sample)
        if cls is None:
            continue
        class_images[(corpus, cls)] += 1
        hits.update((corpus, cls, k) for k in ids)
    return [{"vocab_id": vocab_id, "corpus": corpus, "class": cls, "concept_id": k, "concept": names[k],
             "n_images": n, "class_images": class_images[(corpus, cls)], "df": n / class_images[(corpus, cls)]}
            for (corpus, cls, k), n in sorted(hits.items())]


def select_concepts(n_images: Counter, total_images: int, settings: dict,
                    compounds: set[str] = frozenset()) -> tuple[list[tuple[str, float]], dict]:
    """(concept, df) kept, ranked by n_images then name, and what each rule removed."""
    stop = set(settings["stoplist"])
    frequent = {t for t, n in n_images.items() if n >= settings["min_images"]}
    long_enough = {t for t in frequent if len(t) >= settings["min_length"]}
    # a phrase whose head is a generic noun is as generic as the head ("different size"),
    # unless it is a noun compound ("parking lot")
    vocabulary = {t for t in long_enough if t not in stop and (t in compounds or t.rsplit(" ", 1)[-1] not in stop)}
    denominator = total_images if settings["df_rule"] == "images" else len(vocabulary)
    df = {t: n_images[t] / denominator for t in vocabulary} if denominator else {}
    kept = [t for t in vocabulary if df[t] < settings["max_df"]]
    kept.sort(key=lambda t: (-n_images[t], t))
    report = {"candidates": len(n_images), "below_min_images": len(n_images) - len(frequent),
              "too_short": len(frequent) - len(long_enough), "stop_listed": sorted(long_enough - vocabulary),
              "df_rule": settings["df_rule"], "df_denominator": denominator,
              "too_frequent": sorted(set(vocabulary) - set(kept), key=lambda t: (-n_images[t], t))}
    return [(t, df[t]) for t in kept], report


def _compounds(term_sets) -> set[str]:
    """Phrases seen with a noun right before their head: "parking lot" where "parking" is a noun."""
    found = set()
    for terms in term_sets:
        for term in terms:
            words = term.split()
            if len(words) >= 2 and words[-2] in terms:
                found.add(term)
    return found


def _scope_samples(session: Session, scope: Scope) -> set[str]:
    """The images the vocabulary is mined over: the split role's samples, or every sample."""
    if not scope.split:
        return set(session.query("SELECT sample_id FROM samples WHERE list_contains($c, corpus)",
                                 {"c": list(scope.corpora)}).column("sample_id").to_pylist())
    table = session.query("SELECT sample_id FROM splits WHERE split = $s AND role = $r",
                          {"s": scope.split, "r": scope.role})
    return set(table.column("sample_id").to_pylist())


def _caption_terms(store: Store, terms: dict[str, Artifact], kinds: tuple[str, ...]) -> dict[tuple, set[str]]:
    out: dict[tuple, set[str]] = defaultdict(set)
    for artifact in terms.values():
        table = read_terms(store, artifact, kinds)
        for caption, sample, term in zip(*(table.column(c).to_pylist() for c in ("caption_id", "sample_id", "term"))):
            out[(caption, sample)].add(term)
    return out
