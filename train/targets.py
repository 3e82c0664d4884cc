"""S-CLIP's label sources, read through SQL: the keyword vocabulary with its caption x keyword
matrix (the mining stage's `keywords` and `caption_keywords` tables), and the global OT table
`pseudo_captions` (one row per unlabeled image: `image_id`, `matches` (labeled image ids),
`weights` (summing to 1), `match_caption_ids` (the matched caption of each), `confidence`)."""

from __future__ import annotations

import numpy as np
import torch

from clipstore.train.data import CaptionTargets, Items, Keywords
from clipstore.warehouse.errors import InputError, NotFoundError
from clipstore.warehouse.sql import Session
from clipstore.warehouse.store import Artifact, Store

PSEUDO_CAPTIONS = "pseudo_captions"


def default_vocab(split: str | None, corpus: str | None) -> str:
    """The vocabulary `mine keywords --split S --role labeled` (or `--corpus C`) names."""
    return f"keywords.{split}.labeled" if split else f"keywords.{corpus}"


def _current(store: Store, art: Artifact, what: str) -> None:
    """SQL views show the current version of each name: refuse another version, saying how to use it."""
    current = store.current(art.kind, art.name)
    if current is None or current.artifact_id != art.artifact_id:
        raise InputError(f"{what} {art.artifact_id} is not the current version of {art.name}: SQL reads the "
                         "current one", fix=f"make it current: clipstore versions {art.kind}:{art.name} --use "
                                            f"{art.artifact_id}")


def read_keywords(store: Store, ref: str, labeled: Items) -> Keywords:
    """The vocabulary's keywords in rank order and, per labeled caption row, the keywords it contains."""
    try:
        vocab = store.get(ref, kind="vocab")
    except NotFoundError:
        have = ", ".join(sorted(a.name for a in store.current_all("vocab"))) or "none yet"
        raise NotFoundError(f"no keyword vocabulary {ref!r} for S-CLIP's keyword loss (vocabularies: {have})",
                            where=str(store.root),
                            fix="mine it (clipstore mine keywords --split S --role labeled), pass --vocab NAME, "
                                "or train without it: --no-keyword-loss") from None
    _current(store, vocab, "vocabulary")
    with Session(store) as session:
        if "keywords" not in vocab.tables:
            raise InputError(f"vocabulary {vocab.name} holds no keywords", fix="pass a keyword vocabulary (--vocab)")
        kw = session.query("SELECT keyword_id, keyword FROM keywords WHERE vocab_id = $v ORDER BY rank",
                           {"v": vocab.artifact_id}).to_pylist()
        pairs = session.query("SELECT caption_id, keyword_id FROM caption_keywords WHERE vocab_id = $v",
                              {"v": vocab.artifact_id}).to_pylist() if "caption_keywords" in session.tables() else []
    if not kw:
        raise InputError(f"vocabulary {vocab.name} is empty", fix="mine a vocabulary with keywords")
    column = {r["keyword_id"]: j for j, r in enumerate(kw)}
    row = {c: i for i, c in enumerate(labeled.caption_ids)}
    matrix = torch.zeros(len(labeled.caption_ids), len(kw), dtype=torch.bool)
    for p in pairs:
        i, j = row.get(p["caption_id"]), column.get(p["keyword_id"])
        if i is not None and j is not None:
            matrix[i, j] = True
    return Keywords(vocab, [r["keyword_id"] for r in kw], [r["keyword"] for r in kw], matrix)


def read_caption_targets(store: Store, ref: str, labeled: Items, unlabeled: Items) -> CaptionTargets:
    """Per unlabeled item, the labeled caption rows the global OT table matches it to and their
    weights; an image without a row has no target (its caption term is 0)."""
    art = store.get(ref)
    if PSEUDO_CAPTIONS not in art.tables:
        raise InputError(f"{art.artifact_id} ({art.kind}) holds no {PSEUDO_CAPTIONS} table",
                         fix="pass the artifact the pseudo-label stage wrote the global OT table into")
    _current(store, art, "caption targets")
    with Session(store) as session:
        columns = set(session.query(f"SELECT * FROM {PSEUDO_CAPTIONS} LIMIT 0").column_names)
        where = "WHERE artifact_id = $a" if "artifact_id" in columns else ""
        rows = session.query(f"SELECT image_id, matches, weights, match_caption_ids FROM {PSEUDO_CAPTIONS} {where}",
                             {"a": art.artifact_id} if where else None).to_pylist()
    caption_row = {c: i for i, c in enumerate(labeled.caption_ids)}
    labeled_images = set(labeled.image_ids)
    by_image = {}
    for r in rows:
        matches, weights, captions = r["matches"] or [], r["weights"] or [], r["match_caption_ids"] or []
        if not (len(matches) == len(weights) == len(captions)):
            raise InputError(f"{PSEUDO_CAPTIONS} row of image {r['image_id']}: {len(matches)} matches, "
                             f"{len(weights)} weights, {len(captions)} caption ids", where=art.artifact_id,
                             fix="each match needs its weight and its caption id")
        missing = [c for c, m in zip(captions, matches) if c not in caption_row or m not in labeled_images]
        if missing:
            raise InputError(f"{PSEUDO_CAPTIONS} matches image {r['image_id']} to captions outside this run's labeled "
                             f"items (e.g. {missing[0]})", where=art.artifact_id,
                             fix="use caption targets computed for this split's labeled role")
        by_image[r["image_id"]] = (np.asarray([caption_row[c] for c in captions], dtype=np.int64),
                                   np.asarray(weights, dtype=np.float32))
    empty = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))
    found = [by_image.get(i, empty) for i in unlabeled.image_ids]
    if not any(len(f[0]) for f in found):
        raise InputError(f"{art.artifact_id} has no target for any unlabeled image of this split",
                         fix="compute the caption targets over this split's unlabeled role")
    return CaptionTargets(art, [f[0] for f in found], [f[1] for f in found])
