"""`clipstore neighbors SAMPLE_ID`: the images and captions nearest to one sample's image.

The sample's image is looked up in the current image embeddings artifacts (view 0). Its nearest
images are searched over the vector set of every current image embeddings artifact of the same
image-tower fingerprint (so corpora embedded separately are searched together, each image once),
its nearest captions over the caption embeddings of the same model's text tower. Search is exact
(features/knn.py)."""

from __future__ import annotations

import numpy as np

from clipstore.features.checkpoint_artifacts import find_checkpoint
from clipstore.features.knn import exact_knn
from clipstore.features.models import NAME_DIGEST_CHARS
from clipstore.features.vectorset import VectorSet, vector_set
from clipstore.warehouse.errors import InputError, NotFoundError
from clipstore.warehouse.sql import Session
from clipstore.warehouse.store import Artifact, Store


def neighbors(store: Store, sample_id: str, k: int = 5, *, model: str | None = None) -> dict:
    """The k nearest images (sample_id, corpus, class, similarity) and k nearest captions (text,
    similarity) of one sample's image; `model` (a model name, a fingerprint prefix or a checkpoint
    artifact) picks among several embeddings of that image, otherwise the newest is used."""
    if not isinstance(k, int) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}", fix="e.g. --k 5")
    model = _model_name(store, model)
    with Session(store) as session:
        sample = _sample(session, sample_id)
        image_arts = _embeddings_of(store, "image", model)
        owners = [a for a in image_arts if vector_set(store, [a]).row_of(sample["image_id"]) is not None]
        if not owners:
            raise NotFoundError(_not_embedded_message(sample, model, bool(image_arts)), where=str(store.root),
                                fix=f"embed its images: `clipstore embed --model {model or 'SPEC'} "
                                    f"--corpus {sample['corpus']}`")
        chosen = owners[-1]                                   # the newest
        fingerprint = chosen.params.get("fingerprint")
        same_model = [a for a in image_arts if a.params.get("fingerprint") == fingerprint]
        images_set = vector_set(store, same_model)            # every corpus this image tower embedded
        own = images_set.row_of(sample["image_id"])
        query = np.asarray(images_set.take([own]), dtype=np.float32)
        images = [{"sample_id": r["sample_id"], "corpus": r["corpus"], "image_id": r["item_id"],
                   "similarity": r["similarity"]} for r in _nearest(query, images_set, k, own_row=own)]
        known = _sample_info(session, [r["sample_id"] for r in images])
        for r in images:
            r["class"], r["source_key"] = known.get(r["sample_id"], (None, None))
        text_fingerprint = _text_fingerprint(chosen)
        caption_arts = _embeddings_of(store, "caption", fingerprint=text_fingerprint) if text_fingerprint else []
        captions = (_distinct_texts(_nearest(query, vector_set(store, caption_arts, modality="caption"), 10 * k),
                                    k, sample_id) if caption_arts else [])
    notes = [f"also embedded by {_model_label(a)} ({a.artifact_id}): pass --model to use it"
             for a in owners if a.params.get("fingerprint") != fingerprint]
    if not caption_arts:
        notes.append(f"no caption embeddings for this model: `clipstore embed --model "
                     f"{chosen.stats.get('model') or 'SPEC'} --corpus {sample['corpus']}` with captions "
                     "gives them")
    return {"sample_id": sample_id, "corpus": sample["corpus"], "image_id": sample["image_id"],
            "class": sample["class"], "split": sample["split"], "model": chosen.stats.get("model"),
            "fingerprint": fingerprint, "embeddings": [a.artifact_id for a in same_model],
            "caption_embeddings": [a.artifact_id for a in caption_arts],
            "images": images, "captions": captions, "notes": notes}


def render_neighbors(result: dict) -> str:
    """A plain-text report of `neighbors()` for the terminal."""
    head = (f"sample {result['sample_id']}  corpus {result['corpus']}  class {result['class'] or '-'}  "
            f"split {result['split'] or '-'}\nmodel {result['model'] or '-'}  fingerprint "
            f"{(result['fingerprint'] or '-')[:16]}")
    lines = [head, "", f"nearest images ({len(result['images'])}):"]
    lines += [f"  {r['similarity']:.4f}  {r['corpus']}/{r['source_key'] or '?'}  class {r['class'] or '-'}  "
              f"sample {r['sample_id']}" for r in result["images"]]
    lines += ["", f"nearest captions ({len(result['captions'])}):"]
    lines += [f"  {c['similarity']:.4f}{' *' if c['own'] else '  '} {c['text']}"
              + (f"  (x{c['shared_by']})" if c.get("shared_by", 1) > 1 else "") for c in result["captions"]]
    if any(c["own"] for c in result["captions"]):
        lines.append("  (* = a caption of this sample)")
    lines += [f"note: {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


# ---- lookups ----------------------------------------------------------------------------------
def _sample(session: Session, sample_id: str) -> dict:
    if "samples" not in session.tables():
        raise NotFoundError("no corpus in the store yet", fix="ingest one first (`clipstore ingest FORMAT PATH`)")
    rows = session.query('SELECT corpus, sample_id, image_id, "class", split FROM samples WHERE sample_id = ?',
                         [sample_id]).to_pylist()
    if not rows:
        raise NotFoundError(f"no sample {sample_id!r} in the store",
                            fix='find sample ids with `clipstore sql "SELECT sample_id, corpus, source_key '
                                'FROM samples LIMIT 10"`')
    sample = rows[0]
    if sample["image_id"] is None:
        raise InputError(f"sample {sample_id!r} of corpus {sample['corpus']!r} has no image (caption-only entry)",
                         fix="ask for a sample with an image")
    return sample


def _sample_info(session: Session, sample_ids: list[str]) -> dict[str, tuple[str | None, str | None]]:
    """sample_id -> (class, source_key)."""
    ids = [s for s in sample_ids if s]
    if not ids:
        return {}
    rows = session.query('SELECT sample_id, "class", source_key FROM samples WHERE list_contains(?, sample_id)', [ids])
    return {r["sample_id"]: (r["class"], r["source_key"]) for r in rows.to_pylist()}


def _embeddings_of(store: Store, modality: str, model: str | None = None,
                   fingerprint: str | None = None) -> list[Artifact]:
    """Current embeddings artifacts of `modality` with vectors, oldest first, optionally of one
    model (name or fingerprint prefix) or exactly one tower fingerprint."""
    out = []
    for art in sorted(store.current_all("embeddings"), key=lambda a: (a.created_at, a.artifact_id)):
        declared = art.params.get("modality")
        if declared is not None and declared != modality:
            continue
        if model is not None and not _matches(art, model):
            continue
        if fingerprint is not None and art.params.get("fingerprint") != fingerprint:
            continue
        if len(vector_set(store, [art], modality=modality)):
            out.append(art)
    return out


def _model_name(store: Store, model: str | None) -> str | None:
    """A checkpoint artifact (id or name) stands for the model its weights make: `arch@digest`."""
    if model is None:
        return None
    art = find_checkpoint(store, model)
    if art is None:
        return model
    return f"{art.stats.get('arch')}@{str(art.stats.get('weights_sha256'))[:NAME_DIGEST_CHARS]}"


def _text_fingerprint(image_art: Artifact) -> str | None:
    """The text tower of the model that made these image embeddings (caches made before the
    towers were fingerprinted apart share one whole-model fingerprint)."""
    towers = image_art.stats.get("tower_fingerprints") or {}
    return towers.get("text") or image_art.params.get("fingerprint")


def _matches(art: Artifact, model: str) -> bool:
    return model in (art.stats.get("model"), art.params.get("model")) or any(
        str(art.params.get(key) or art.stats.get(key) or "").startswith(model)
        for key in ("fingerprint", "model_fingerprint"))


def _nearest(query: np.ndarray, vset: VectorSet, k: int, own_row: int | None = None) -> list[dict]:
    """Exact top-k of one query over a vector set (each item once), its own row left out."""
    if not len(vset):
        return []
    self_rows = None if own_row is None else np.asarray([own_row])
    rows, sims = exact_knn(query, vset.matrix(), k, self_rows=self_rows)
    columns = {c: vset.items.column(c).to_pylist() for c in ("item_id", "sample_id", "corpus", "text")}
    return [{"item_id": columns["item_id"][r], "sample_id": columns["sample_id"][r], "corpus": columns["corpus"][r],
             "text": columns["text"][r], "similarity": float(s)} for r, s in zip(rows[0].tolist(), sims[0].tolist())]


def _distinct_texts(found: list[dict], k: int, sample_id: str) -> list[dict]:
    """The k best distinct caption texts (RS corpora repeat captions across many images), each with
    how many of the found captions share it."""
    by_text: dict[str, dict] = {}
    for r in found:
        hit = by_text.get(r["text"])
        if hit is None:
            by_text[r["text"]] = {"text": r["text"], "similarity": r["similarity"], "caption_id": r["item_id"],
                                  "sample_id": r["sample_id"], "corpus": r["corpus"], "shared_by": 1,
                                  "own": r["sample_id"] == sample_id}  # one of the sample's own captions
        else:
            hit["shared_by"] += 1
            hit["own"] = hit["own"] or r["sample_id"] == sample_id
    return list(by_text.values())[:k]


def _model_label(art: Artifact) -> str:
    named = art.stats.get("model") or art.params.get("model")
    return str(named or (art.params.get("fingerprint") or "an unnamed model")[:16])


def _not_embedded_message(sample: dict, model: str | None, any_embeddings: bool) -> str:
    what = f"with model {model!r} " if model else ""
    if not any_embeddings:
        return (f"no image embeddings {what}in the store, so sample {sample['sample_id']!r} "
                f"({sample['corpus']}) has no neighbors yet")
    return f"the image of sample {sample['sample_id']!r} ({sample['corpus']}) is not embedded {what}yet"
