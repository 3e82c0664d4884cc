"""`clipstore pseudolabel concepts`: concept pseudo-labels (`pseudo_concepts`, producer `zeroshot`).

Per unlabeled image of a split: its logits over a concept vocabulary (`mine concepts`) and its
top concepts (SemiCLIP uses the top 3 as the target and the top 4 for surrogate captions),
keyed by the vocabulary's stable concept ids. This producer scores the cached image embeddings
against the cached concept prompt embeddings ("a photo includes {noun}.", `embed --modality
concept --vocab V`) of the same model (scoring.py); SemiCLIP's trained concept classifier is to
be a second producer of the same table, told apart by the `producer` column.

`logits[i]` is the concept of the vocabulary's i-th entry in (rank, concept_id) order — the order
of `SELECT concept_id FROM concepts WHERE vocab_id = ... ORDER BY rank, concept_id`.

Incremental: the recipe is the split, the image tower, the vocabulary version and its concept
vectors, the top and the logit scale — not the unlabeled set — so new unlabeled images add only
their rows. The audit measures the top concepts' precision against the concepts of the image's
own captions (`image_concepts` of the same vocabulary, held back from the computation)."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from clipstore.features.items import CONCEPT, vocab_artifact
from clipstore.features.pseudolabels.audit import calibration_rows, register_audit
from clipstore.features.pseudolabels.common import check_finite, check_pool, default_name, produce_pseudolabels
from clipstore.features.pseudolabels.common import logit_scale as resolve_logit_scale
from clipstore.features.pseudolabels.common import resolve_vectors
from clipstore.features.pseudolabels.scoring import score_concepts
from clipstore.features.pseudolabels.tables import FLOATS, STRINGS, pseudo_schema
from clipstore.features.vectors import open_embeddings
from clipstore.warehouse.errors import InputError, NotFoundError
from clipstore.warehouse.hashing import digest
from clipstore.warehouse.sql import Session
from clipstore.warehouse.store import Artifact, Store

PRODUCER = "zeroshot"
CLI_ORDER = 50
TOP = 3

PSEUDO_CONCEPTS = pseudo_schema([
    ("image_id", pa.string()),
    ("sample_id", pa.string()),
    ("corpus", pa.string()),
    ("concept_ids", STRINGS),             # the top concepts, best first (stable ids: mining/tables.py)
    ("concepts", STRINGS),                # the same, as text
    ("scores", FLOATS),                   # their logits, aligned
    ("confidence", pa.float32()),         # the top concept's softmax probability over the vocabulary
    ("logits", FLOATS),                   # every concept's logit, in the vocabulary's (rank, concept_id) order
])
CONCEPT_TABLES = {"pseudo_concepts": PSEUDO_CONCEPTS}


def concepts(store: Store, *, split: str, vocab: str, model=None, embeddings: list[str] | None = None,
             concept_embeddings: str | None = None, top: int = TOP, logit_scale: float | None = None,
             name: str | None = None, batch_size: int = 64, workers: int | None = None, wait: bool = False,
             progress: bool = True) -> Artifact:
    """Concept logits and top concepts for the unlabeled images of `split` (see the module doc)."""
    vocab_art = vocab_artifact(store, vocab)
    if "concepts" not in vocab_art.tables:
        raise InputError(f"vocabulary {vocab_art.name} holds no concepts (it is a {vocab_art.params.get('method')} "
                         "vocabulary)", fix="pass a concept vocabulary: clipstore mine concepts --split S ... "
                                            "(`clipstore ls --kind vocab`: concepts.*)")
    entries = _vocab_concepts(store, vocab_art)
    check_pool(top, len(entries), f"vocabulary {vocab_art.name}", option="--top")
    _check_vocab_corpora(store, vocab_art, split)
    loaded = None
    if model is not None:
        from clipstore.features.checkpoint_artifacts import resolve_model_spec
        from clipstore.features.models import LoadedModel, load_model
        loaded = model if isinstance(model, LoadedModel) else load_model(resolve_model_spec(store, model))
    vectors = resolve_vectors(store, split=split, model=loaded, embeddings=embeddings, batch_size=batch_size,
                              workers=workers, wait=wait, progress=progress)
    if loaded is not None:
        from clipstore.features.embed import embed
        [concept_art] = embed(store, model=loaded, vocab=vocab_art.artifact_id, modality=CONCEPT,
                              batch_size=batch_size, wait=wait, progress=progress)
    else:
        concept_art = _concept_embeddings(store, concept_embeddings, vocab_art, vectors.model_fingerprint)
    model_fp = concept_art.stats.get("model_fingerprint")
    if vectors.model_fingerprint is not None and model_fp != vectors.model_fingerprint:
        raise InputError(f"the image embeddings come from model {vectors.model_name} "
                         f"({str(vectors.model_fingerprint)[:12]}) but the concept embeddings {concept_art.name} from "
                         f"{concept_art.stats.get('model')} ({str(model_fp)[:12]})",
                         fix="pass embeddings of one model only, or --model SPEC to use (and fill) that model's caches")
    concept_vectors, concept_digest = _concept_vectors(store, concept_art, entries, vocab_art)
    scale = resolve_logit_scale(logit_scale, vectors.logit_scale)
    params = {"split": vectors.split.name, "tower_fingerprint": vectors.tower_fingerprint,
              "vocab": vocab_art.artifact_id, "concept_vectors": concept_digest, "top": top, "logit_scale": scale}
    lineage = {**vectors.lineage(), "vocab_id": vocab_art.artifact_id,
               "embeddings_ids": vectors.embeddings_ids + [concept_art.artifact_id]}
    ids = np.asarray([e[0] for e in entries], dtype=object)
    texts = np.asarray([e[1] for e in entries], dtype=object)

    def build(run) -> None:
        u = vectors.unlabeled
        by_id = {item: r for r, item in enumerate(u.column("item_id"))}
        rows = np.asarray([by_id[i] for i in run.todo], dtype=np.int64)
        if not len(rows):
            return
        scores = score_concepts(u.vectors[rows], concept_vectors, top, scale=scale)
        run.write({"pseudo_concepts": pa.table({
            "image_id": pa.array(run.todo, pa.string()),
            "sample_id": pa.array(np.asarray(u.column("sample_id"), dtype=object)[rows].tolist(), pa.string()),
            "corpus": pa.array(np.asarray(u.column("corpus"), dtype=object)[rows].tolist(), pa.string()),
            "concept_ids": pa.array(ids[scores.top].tolist(), STRINGS),
            "concepts": pa.array(texts[scores.top].tolist(), STRINGS),
            "scores": pa.array(list(scores.top_logits), FLOATS),
            "confidence": pa.array(scores.confidence),
            "logits": pa.array(list(scores.logits), FLOATS)})})
        run.stats.update({"vocab": vocab_art.artifact_id, "concepts": len(entries), "top": top, "logit_scale": scale})

    return produce_pseudolabels(store, producer=PRODUCER,
                                name=name or default_name(split, "concepts", vectors.model_name), params=params,
                                tables=CONCEPT_TABLES, lineage=lineage, build=build,
                                sources=vectors.embeddings + [vectors.split, vocab_art, concept_art],
                                wanted=vectors.unlabeled.column("item_id"), wait=wait)


# ---- inputs -----------------------------------------------------------------------------------------
def _vocab_concepts(store: Store, vocab: Artifact) -> list[tuple[str, str]]:
    """(concept_id, concept) of the vocabulary version, in (rank, concept_id) order."""
    with Session(store) as session:
        rows = session.query("SELECT concept_id, concept FROM concepts WHERE vocab_id = $vocab "
                             "ORDER BY rank, concept_id", {"vocab": vocab.artifact_id}).to_pylist()
    if not rows:
        raise InputError(f"vocabulary {vocab.name} has no concepts", where=vocab.artifact_id,
                         fix="mine a wider scope (clipstore mine concepts ... --min-images 2)")
    return [(r["concept_id"], r["concept"]) for r in rows]


def _check_vocab_corpora(store: Store, vocab: Artifact, split: str) -> None:
    """A vocabulary mined from other corpora than the split's says nothing about its images."""
    from clipstore.features.embed import split_corpora
    mined = set(vocab.params.get("corpora") or [])
    have = set(split_corpora(store, split))
    if mined and not mined & have:
        raise InputError(f"vocabulary {vocab.name} was mined from {', '.join(sorted(mined))}, none of which is in "
                         f"split {split!r} ({', '.join(sorted(have))})", where=vocab.artifact_id,
                         fix=f"mine the split's concepts: clipstore mine concepts --split {split} --role labeled, "
                             f"then pass --vocab concepts.{split}.labeled")


def _concept_embeddings(store: Store, ref: str | None, vocab: Artifact, model_fp: str | None) -> Artifact:
    if ref is not None:
        art = store.get(ref, kind="embeddings")
        if art.params.get("modality") != CONCEPT:
            raise InputError(f"{art.name} holds {art.params.get('modality')} embeddings, not concepts",
                             fix=f"pass the concept embeddings of {vocab.name}: clipstore embed --modality concept "
                                 f"--vocab {vocab.name} --model M")
        return art
    found = [a for a in store.current_all("embeddings") if a.params.get("modality") == CONCEPT
             and a.params.get("vocab") == vocab.name and a.stats.get("model_fingerprint") == model_fp]
    if not found:
        raise NotFoundError(f"no concept embeddings of vocabulary {vocab.name} from the model of these image "
                            "embeddings",
                            where=str(store.root),
                            fix=f"pass --model SPEC (embeds them), or: clipstore embed --modality concept --vocab "
                                f"{vocab.name} --model M, or name them with --concept-embeddings ID")
    return found[-1]


def _concept_vectors(store: Store, art: Artifact, entries: list[tuple[str, str]], vocab: Artifact):
    emb = open_embeddings(store, art)
    items, vectors = emb.select(modality=CONCEPT)
    row = {item: i for i, item in enumerate(items.column("item_id").to_pylist())}
    missing = [c for cid, c in entries if cid not in row]
    if missing:
        raise InputError(f"{len(missing)} of the {len(entries)} concepts of {vocab.name} have no vector in {art.name} "
                         f"(e.g. {missing[0]!r})",
                         fix=f"embed them: clipstore embed --modality concept --vocab {vocab.name} --model M, "
                             "or pass --model SPEC")
    rows = [row[cid] for cid, _ in entries]
    out = np.asarray(vectors[rows], dtype=np.float32)
    picked = items.take(pa.array(rows, pa.int64()))
    check_finite(out, picked.append_column("embeddings_id", pa.array([art.artifact_id] * len(rows), pa.string())),
                 f"concept vectors of {vocab.name}")
    return out, digest([art.artifact_id, [cid for cid, _ in entries], digest(out.tobytes().hex())])


# ---- audit ------------------------------------------------------------------------------------------
@register_audit("pseudo_concepts")
def audit_concepts(store: Store, rows: pa.Table) -> tuple[dict, list[dict]]:
    """Precision (and recall) of the top concepts against the concepts of the image's own
    captions in the same vocabulary; the chance level of k concepts drawn at random, the
    precision of always answering the vocabulary's k most frequent concepts; precision by confidence."""
    vocab_ids = sorted(set(rows.column("vocab_id").to_pylist()))
    with Session(store) as session:
        tables = session.tables()
        truth_rows = session.query("SELECT vocab_id, corpus, sample_id, concept_id FROM image_concepts "
                                   "WHERE list_contains($v, vocab_id)", {"v": vocab_ids}) \
            if "image_concepts" in tables else None
        ranked = session.query("SELECT vocab_id, concept_id FROM concepts WHERE list_contains($v, vocab_id) "
                               "ORDER BY vocab_id, rank, concept_id", {"v": vocab_ids}) \
            if "concepts" in tables else None
    truth: dict = {}
    if truth_rows is not None:
        for v, c, s, cid in zip(*(truth_rows.column(n).to_pylist() for n in ("vocab_id", "corpus", "sample_id",
                                                                           "concept_id"))):
            truth.setdefault((v, c, s), set()).add(cid)
    order: dict = {}
    if ranked is not None:
        for v, cid in zip(ranked.column("vocab_id").to_pylist(), ranked.column("concept_id").to_pylist()):
            order.setdefault(v, []).append(cid)
    keys = list(zip(rows.column("vocab_id").to_pylist(), rows.column("corpus").to_pylist(),
                    rows.column("sample_id").to_pylist()))
    predicted = [list(p or []) for p in rows.column("concept_ids").to_pylist()]
    known = [truth.get(k) for k in keys]
    has = np.asarray([t is not None for t in known], dtype=bool)
    k_of = np.asarray([len(p) for p in predicted], dtype=np.int64)
    hits = np.asarray([len(set(p) & t) if t else 0 for p, t in zip(predicted, known)], dtype=np.int64)
    n_true = np.asarray([len(t) if t else 0 for t in known], dtype=np.int64)
    prior = np.asarray([len(set(order.get(k[0], [])[:len(p)]) & t) if t else 0
                        for k, p, t in zip(keys, predicted, known)], dtype=np.int64)
    sizes = np.asarray([len(order.get(k[0], [])) or 1 for k in keys], dtype=np.float64)
    confidence = rows.column("confidence").to_numpy(zero_copy_only=False)
    precision = hits / np.maximum(k_of, 1)

    def ratio(a, b) -> float | None:
        return round(float(a.sum() / b.sum()), 4) if has.any() and b.sum() else None

    summary = {"precision": ratio(hits[has], k_of[has]), "chance": round(float(np.mean(n_true[has] / sizes[has])), 4)
               if has.any() else None, "frequent_concepts_precision": ratio(prior[has], k_of[has]),
               "recall": ratio(hits[has], n_true[has]), "rows": rows.num_rows, "with_concept_truth": int(has.sum()),
               "top": int(k_of.max()) if len(k_of) else 0,
               "mean_confidence": round(float(confidence.mean()), 4) if len(confidence) else None}
    calibration = calibration_rows("concept_precision", confidence[has], precision[has]) if has.any() else []
    return summary, calibration


# ---- CLI --------------------------------------------------------------------------------------------
def add_parser(sub, cli) -> None:
    p = sub.add_parser("concepts", help="concept logits and top concepts for a split's unlabeled images",
                       description="Score each unlabeled image's cached embedding against the cached concept prompt "
                                   "embeddings ('a photo includes {noun}.') of a concept vocabulary: logits over "
                                   "the vocabulary and the top concepts, keyed by concept id. Table pseudo_concepts, "
                                   "producer zeroshot. Incremental: new unlabeled images add only their rows.")
    cli.add_vector_options(p)
    g = p.add_argument_group("concepts")
    g.add_argument("--vocab", required=True, help="concept vocabulary, name or id (e.g. concepts.rs_all.labeled); "
                                                  "required")
    g.add_argument("--top", type=int, default=TOP,
                   help="concepts kept per image (SemiCLIP: 3 for the target, 4 for surrogate captions) "
                        "(default: %(default)s)")
    g.add_argument("--concept-embeddings", metavar="ID",
                   help="concept embeddings artifact with --embeddings (default: the cache of the images' model)")
    p.set_defaults(func=cmd_concepts)


def cmd_concepts(args) -> None:
    from clipstore.cli_pseudolabel import done, store, vector_kwargs
    t0 = time.monotonic()
    art = concepts(store(args), **vector_kwargs(args), vocab=args.vocab, concept_embeddings=args.concept_embeddings,
                   top=args.top, logit_scale=args.logit_scale, name=args.name)
    done("pseudolabel concepts", art, t0)
