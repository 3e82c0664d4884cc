"""`clipstore neighbors SAMPLE_ID`: the images and captions nearest to one sample's image.

The sample's image is looked up in the current image embeddings artifacts (view 0). Its nearest
images are searched over every current image embeddings artifact of the same model fingerprint
(so corpora embedded separately are searched together), its nearest captions over every caption
embeddings artifact of that fingerprint. Search is exact (features/knn.py)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from clipstore.features.knn import exact_knn
from clipstore.features.vectors import Embeddings, load_embeddings
from clipstore.warehouse.errors import InputError, NotFoundError
from clipstore.warehouse.sql import Session
from clipstore.warehouse.store import Artifact, Store


def neighbors(store: Store, sample_id: str, k: int = 5, *, model: str | None = None) -> dict:
    """The k nearest images (sample_id, corpus, class, similarity) and k nearest captions (text,
    similarity) of one sample's image; `model` (a model spec or fingerprint prefix) picks among
    several embeddings of that image, otherwise the newest is used."""
    if not isinstance(k, int) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}", fix="e.g. --k 5")
    with Session(store) as session:
        sample = _sample(session, sample_id)
        image_sets = _embeddings_of(store, "image", model)
        owners = [e for e in image_sets if e.row_of(sample["image_id"]) is not None]
        if not owners:
            raise NotFoundError(_not_embedded_message(sample, model, bool(image_sets)), where=str(store.root),
                                fix=f"embed its images: `clipstore embed --model {model or 'SPEC'} "
                                    f"--corpus {sample['corpus']}`")
        chosen = owners[-1]                                   # the newest
        fingerprint = chosen.artifact.params.get("fingerprint")
        query = np.asarray(chosen.vectors[chosen.row_of(sample["image_id"])], dtype=np.float32)[None]
        same_model = [e for e in image_sets if e.artifact.params.get("fingerprint") == fingerprint]
        images = [{"sample_id": r["sample_id"], "corpus": r["corpus"], "image_id": r["item_id"],
                   "similarity": r["similarity"]} for r in _nearest(query, same_model, k, exclude=sample["image_id"])]
        known = _sample_info(session, [r["sample_id"] for r in images])
        for r in images:
            r["class"], r["source_key"] = known.get(r["sample_id"], (None, None))
        caption_sets = _embeddings_of(store, "caption", fingerprint=fingerprint) if fingerprint else []
        captions = _distinct_texts(_nearest(query, caption_sets, 10 * k), k, sample_id)
    notes = [f"also embedded by {_model_label(e.artifact)} ({e.artifact.artifact_id}): pass --model to use it"
             for e in owners if e.artifact.params.get("fingerprint") != fingerprint]
    if not caption_sets:
        notes.append(f"no caption embeddings for this model: `clipstore embed --model "
                     f"{chosen.artifact.params.get('model') or 'SPEC'} --corpus {sample['corpus']}` with captions "
                     "gives them")
    return {"sample_id": sample_id, "corpus": sample["corpus"], "image_id": sample["image_id"],
            "class": sample["class"], "split": sample["split"], "model": chosen.artifact.params.get("model"),
            "fingerprint": fingerprint, "embeddings": [e.artifact.artifact_id for e in same_model],
            "caption_embeddings": [e.artifact.artifact_id for e in caption_sets],
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


class _Set:
    """One embeddings artifact restricted to one modality, view 0."""

    def __init__(self, emb: Embeddings, modality: str):
        self.artifact: Artifact = emb.artifact
        self.items, self.vectors = emb.select(modality=modality, view=0)
        self.ids = self.items.column("item_id").to_pylist()
        self._rows = {item: i for i, item in enumerate(self.ids)}

    def row_of(self, item_id: str) -> int | None:
        return self._rows.get(item_id)


def _embeddings_of(store: Store, modality: str, model: str | None = None,
                   fingerprint: str | None = None) -> list[_Set]:
    """Current embeddings artifacts holding `modality`, oldest first, optionally of one model
    (spec or fingerprint prefix) or exactly one fingerprint."""
    out = []
    for art in sorted(store.current_all("embeddings"), key=lambda a: (a.created_at, a.artifact_id)):
        declared = art.params.get("modality")
        if declared is not None and declared != modality:
            continue
        if model is not None and not _matches(art, model):
            continue
        if fingerprint is not None and art.params.get("fingerprint") != fingerprint:
            continue
        s = _Set(load_embeddings(store, art.artifact_id), modality)
        if s.items.num_rows:
            out.append(s)
    return out


def _matches(art: Artifact, model: str) -> bool:
    return art.params.get("model") == model or str(art.params.get("fingerprint") or "").startswith(model)


def _nearest(query: np.ndarray, sets: list[_Set], k: int, exclude: str | None = None) -> list[dict]:
    """Exact top-k over several sets; an item present in several sets counts once."""
    seen: set[str] = {exclude} if exclude else set()
    tables, blocks = [], []
    for s in sets:
        keep = [i for i, item in enumerate(s.ids) if not (item in seen or seen.add(item))]
        if keep:
            tables.append(s.items.take(pa.array(keep)))
            blocks.append(np.asarray(s.vectors[keep], dtype=np.float32))
    if not blocks:
        return []
    items = pa.concat_tables(tables)
    rows, sims = exact_knn(query, np.concatenate(blocks), k)
    columns = {c: items.column(c).to_pylist() for c in ("item_id", "sample_id", "corpus", "text")}
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
    return str(art.params.get("model") or (art.params.get("fingerprint") or "an unnamed model")[:16])


def _not_embedded_message(sample: dict, model: str | None, any_embeddings: bool) -> str:
    what = f"with model {model!r} " if model else ""
    if not any_embeddings:
        return (f"no image embeddings {what}in the store, so sample {sample['sample_id']!r} "
                f"({sample['corpus']}) has no neighbours yet")
    return f"the image of sample {sample['sample_id']!r} ({sample['corpus']}) is not embedded {what}yet"
