"""What an evaluation reads from the corpus tables: labelled images with their class names, and
the images and captions of a split. Every check that makes an evaluation impossible raises here,
before any model runs, with a message that says what the corpus has instead."""

from __future__ import annotations

from dataclasses import dataclass

from clipstore.warehouse.errors import InputError
from clipstore.warehouse.sql import Session
from clipstore.warehouse.store import Artifact, Store

RAW, NORMALISED, CORPUS_NAMES = "raw", "normalised", "corpus"


def corpus_artifact(store: Store, name: str) -> Artifact:
    return store.corpora([name])[name]


def _rows(session: Session, table: str, sql: str, params: dict) -> list[dict]:
    return session.query(sql, params).to_pylist() if table in session.tables() else []


@dataclass
class LabelledImages:
    corpus: str
    split: str                    # "all" or a split name
    sample_ids: list[str]
    image_ids: list[str]
    labels: list[int]             # index into class_names
    class_names: list[str]        # the names prompted, in class order (merged when two classes share one)
    corpus_names: list[str]       # the corpus's own display names, same order (what the cache embeds)
    names: str                    # raw | normalised | corpus (no classnames vocabulary covers the corpus)
    names_vocab: str | None       # the classnames vocabulary used for normalised names


def _normalised_names(session: Session, corpus: str) -> tuple[str, str, dict[str, str]] | None:
    """(vocab id, vocab name, class -> normalised name) from a current `classnames` vocabulary
    covering the corpus that actually normalises (not every rule verbatim); with several, the
    alphabetically first by name, so the choice is stable."""
    rows = _rows(session, "classnames",
                 "SELECT c.vocab_id, v.vocab, c.class, c.name, c.rule FROM classnames c "
                 "JOIN vocabularies v USING (vocab_id) WHERE c.corpus = $corpus ORDER BY c.vocab_id, c.class",
                 {"corpus": corpus})
    by_vocab: dict[str, tuple[str, dict[str, str], bool]] = {}
    for r in rows:
        vocab, mapping, verbatim = by_vocab.get(r["vocab_id"], (r["vocab"], {}, True))
        mapping[r["class"]] = r["name"]
        by_vocab[r["vocab_id"]] = (vocab, mapping, verbatim and r["rule"] == "verbatim")
    usable = sorted((vocab, vid, mapping) for vid, (vocab, mapping, verbatim) in by_vocab.items() if not verbatim)
    if not usable:
        return None
    vocab, vid, mapping = usable[0]     # several: the alphabetically first name, so the choice is stable
    return vid, vocab, mapping


def labelled_images(session: Session, corpus: str, split: str | None, raw_names: bool) -> LabelledImages:
    classes = _rows(session, "classes", "SELECT class, class_index, name FROM classes WHERE corpus = $corpus "
                                        "ORDER BY class_index", {"corpus": corpus})
    if not classes:
        raise InputError(f"corpus {corpus} has no classes: zero-shot classification needs class labels",
                         fix="pass a classification corpus (imagefolder, rsicd_cls, or a caption corpus whose "
                             "entries carry a class), or evaluate it with `clipstore eval retrieval`")
    where = "corpus = $corpus AND class IS NOT NULL" + (" AND split = $split" if split else "")
    params = {"corpus": corpus, **({"split": split} if split else {})}
    samples = _rows(session, "samples", f"SELECT sample_id, image_id, class, has_image FROM samples WHERE {where} "
                                        "ORDER BY source_index, sample_id", params)
    if not samples:
        raise InputError(f"corpus {corpus} has no labelled samples" + (f" in split {split!r}" if split else ""),
                         fix=_splits_fix(session, corpus))
    with_image = [s for s in samples if s["has_image"]]
    if not with_image:
        raise InputError(f"corpus {corpus} has {len(samples)} labelled samples but none has its image on disk: "
                         "image embeddings are missing and cannot be computed",
                         fix="re-ingest the corpus with its image folder (--images DIR)")
    normalised = None if raw_names else _normalised_names(session, corpus)
    names_kind = RAW if raw_names else (NORMALISED if normalised else CORPUS_NAMES)
    display, prompted, index_of, class_to = [], [], {}, {}
    for c in classes:
        corpus_name = c["name"] or c["class"]
        name = normalised[2].get(c["class"], corpus_name) if normalised else corpus_name
        if name not in index_of:       # two classes that read the same are one class to a prompt
            index_of[name] = len(prompted)
            prompted.append(name)
            display.append(corpus_name)
        class_to[c["class"]] = index_of[name]
    return LabelledImages(corpus, split or "all", [s["sample_id"] for s in with_image],
                          [s["image_id"] for s in with_image], [class_to[s["class"]] for s in with_image],
                          prompted, display, names_kind, normalised[1] if normalised else None)


@dataclass
class CaptionedImages:
    corpus: str
    split: str
    sample_ids: list[str]
    image_ids: list[str]
    caption_ids: list[str]
    caption_image: list[int]      # index into sample_ids of each caption's image
    caption_only: int             # samples of the split without an image (not evaluated)


def _splits_fix(session: Session, corpus: str) -> str:
    rows = _rows(session, "samples", "SELECT split, count(*) AS n, count(*) FILTER (WHERE has_image) AS images "
                                     "FROM samples WHERE corpus = $corpus GROUP BY split ORDER BY split",
                 {"corpus": corpus})
    have = ", ".join(f"{r['split']} ({r['n']} samples, {r['images']} with images)" for r in rows) or "no samples"
    return f"corpus {corpus} has: {have}; pick one of those splits"


def captioned_images(session: Session, corpus: str, split: str) -> CaptionedImages:
    """The images of a split ("all": every sample) and their captions, in source order."""
    in_split = "TRUE" if split == "all" else "s.split = $split"
    params = {"corpus": corpus, **({} if split == "all" else {"split": split})}
    samples = _rows(session, "samples", "SELECT sample_id, image_id, has_image FROM samples s "
                                        f"WHERE corpus = $corpus AND {in_split} ORDER BY source_index, sample_id",
                    params)
    if not samples:
        raise InputError(f"caption corpus {corpus} has no split {split!r}", fix=_splits_fix(session, corpus))
    with_image = [s for s in samples if s["has_image"]]
    if not with_image:
        raise InputError(f"split {split!r} of corpus {corpus} has {len(samples)} samples but none has its image on "
                         "disk: image embeddings are missing and cannot be computed",
                         fix="re-ingest the corpus with its image folder (--images DIR)")
    index = {s["sample_id"]: i for i, s in enumerate(with_image)}
    captions = _rows(session, "captions", "SELECT c.caption_id, c.sample_id FROM captions c "
                                          "JOIN samples s USING (corpus, sample_id) "
                                          f"WHERE c.corpus = $corpus AND {in_split} "
                                          "ORDER BY s.source_index, c.sample_id, c.ordinal", params)
    captions = [c for c in captions if c["sample_id"] in index]
    have = {c["sample_id"] for c in captions}
    if len(have) < len(with_image):
        raise InputError(f"{len(with_image) - len(have)} images of split {split!r} of corpus {corpus} have no caption",
                         fix="retrieval needs a caption per image: check the corpus's caption file")
    return CaptionedImages(corpus, split, [s["sample_id"] for s in with_image], [s["image_id"] for s in with_image],
                           [c["caption_id"] for c in captions], [index[c["sample_id"]] for c in captions],
                           len(samples) - len(with_image))
