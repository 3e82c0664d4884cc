"""Cached features for a locked tower. They are valid exactly when the tower that made them is
frozen and unchanged: the cache is keyed on the tower's fingerprint (features/models.py), the
trainer embeds with the run's starting weights, the tower stays frozen for the whole run, and
every checkpoint re-checks that its weights still digest as they did. `embed` computes only the
items the cache lacks (an image embedded for an earlier round is read, not encoded again)."""

from __future__ import annotations

import numpy as np
import torch

from clipstore.features.embed import embed
from clipstore.features.identity import IMAGE_TOWER, TEXT_TOWER, weight_digests
from clipstore.features.models import ModelSpec, load_model
from clipstore.features.vectorset import vector_set
from clipstore.warehouse.errors import ClipstoreError
from clipstore.warehouse.store import Artifact, Store


def _take(store: Store, arts: list[Artifact], modality: str, ids: list[str]) -> torch.Tensor:
    vs = vector_set(store, arts, modality=modality)
    rows = vs.rows_of(ids)
    if (rows < 0).any():
        raise ClipstoreError(f"{int((rows < 0).sum())} of {len(ids)} {modality} items have no cached vector",
                             fix="re-run the training command (the cache is filled first)")
    return torch.from_numpy(np.ascontiguousarray(vs.take(rows)))


def _embedded(store: Store, before: dict[str, int], arts: list[Artifact]) -> int:
    return sum(a.counts.get("vectors", 0) - before.get(a.artifact_id, 0) for a in arts)


def fill(store: Store, spec: ModelSpec, cached: tuple[str, ...], labeled, unlabeled, keywords, *,
         fingerprints: dict[str, str], write: bool, artifact_ids: dict | None = None,
         progress: bool = False) -> tuple[dict, dict, dict]:
    """(banks, report, artifact ids): the unit vectors the locked towers would compute.
    `write` (rank 0) brings the caches up to date with `embed`; the other processes open the
    artifacts rank 0 names (`artifact_ids`). Every artifact read must be keyed on the tower
    fingerprint of the model being trained (`fingerprints`: tower -> fingerprint)."""
    banks, report, ids = {}, {}, {}
    if not cached:
        return banks, report, ids
    model = load_model(spec) if write else None
    before = {a.artifact_id: a.counts.get("vectors", 0) for a in store.list("embeddings")}

    def cache(key: str, **kwargs) -> list[Artifact]:
        if write:
            arts = embed(store, model=model, wait=True, progress=progress, **kwargs)
            report[key] = {"artifacts": [a.artifact_id for a in arts], "embedded": _embedded(store, before, arts),
                           "vectors": sum(a.counts.get("vectors", 0) for a in arts)}
        else:
            arts = [store.get(i) for i in artifact_ids[key]]
        tower = IMAGE_TOWER if key == "image" else TEXT_TOWER
        stale = [a.artifact_id for a in arts if a.params.get("fingerprint") != fingerprints[tower]]
        if stale:
            raise ClipstoreError(f"cached {key} features {', '.join(stale)} were made by another {tower} tower than "
                                 "the one this run locks", fix="report this: the trainer embeds with its own weights")
        ids[key] = [a.artifact_id for a in arts]
        return arts

    if IMAGE_TOWER in cached:
        corpora = sorted(set(labeled.corpora) | set(unlabeled.corpora if unlabeled is not None else []))
        arts = cache("image", corpus=corpora, modality="image")
        banks["image"] = _take(store, arts, "image", labeled.image_ids)
        if unlabeled is not None:
            banks["unlabeled"] = _take(store, arts, "image", unlabeled.image_ids)
    if TEXT_TOWER in cached:
        arts = cache("caption", corpus=sorted(set(labeled.corpora)), modality="caption")
        banks["caption"] = _take(store, arts, "caption", labeled.caption_ids)
        if keywords is not None:
            arts = cache("keyword", vocab=keywords.vocab.artifact_id, modality="keyword")
            banks["keyword"] = _take(store, arts, "keyword", keywords.ids)
    return banks, report, ids


def frozen_digests(state: dict[str, torch.Tensor], cached: tuple[str, ...]) -> dict[str, str]:
    """The weight digests of the locked towers (what their caches' fingerprints cover)."""
    digests = weight_digests(state)
    return {t: digests[t] for t in cached}
