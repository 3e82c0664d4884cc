"""The one place where evaluation touches the features stage: model loading, the embedding cache
(`embed`, `load_embeddings`) and class prompts. Only public features functions are used, so a
change of that API is a change here."""

from __future__ import annotations

import numpy as np

from clipstore.features.embed import embed
from clipstore.features.checkpoint_artifacts import resolve_model_spec
from clipstore.features.models import LoadedModel, ModelSpec, load_model
from clipstore.features.prompts import TemplateSet, template_set
from clipstore.features.vectors import load_embeddings
from clipstore.warehouse.errors import ClipstoreError
from clipstore.warehouse.store import Artifact, Store

__all__ = ["LoadedModel", "ModelSpec", "model_of", "cached", "vectors_by_id", "class_vectors_from_cache",
           "templates_of"]


def model_of(store: Store, model: ModelSpec | LoadedModel | str) -> LoadedModel:
    """The loaded model a spec names; `--model <checkpoint artifact>` resolves through the store."""
    if isinstance(model, LoadedModel):
        return model
    spec = ModelSpec(model) if isinstance(model, str) else model
    return load_model(resolve_model_spec(store, spec))


def templates_of(name_or_path: str) -> TemplateSet:
    return template_set(name_or_path)


def cached(store: Store, model: LoadedModel, corpus: str, modalities: tuple[str, ...], templates: str | None = None,
           class_names: tuple[str, ...] = (), progress: bool = False, wait: bool = False) -> dict[str, Artifact]:
    """The embeddings artifacts (by modality) of a corpus, embedding only what is missing (a cache
    hit runs no model pass). One embed call for all modalities: one catalog session. `class_names`:
    display names to prompt besides the corpus's own (normalised names), cached alike."""
    kwargs = {"templates": templates} if templates is not None else {}
    if class_names:
        kwargs["class_names"] = list(class_names)
    arts = embed(store, model=model, corpus=corpus, modality=modalities, progress=progress, wait=wait, **kwargs)
    return dict(zip(modalities, arts))


def vectors_by_id(store: Store, artifact: Artifact, ids: list[str], modality: str, what: str) -> np.ndarray:
    """float32 unit vectors of the given item ids (plain view), in the order given."""
    emb = load_embeddings(store, artifact.artifact_id)
    items, matrix = emb.select(modality=modality, view=0)
    row_of = {item_id: i for i, item_id in enumerate(items.column("item_id").to_pylist())}
    missing = [i for i in ids if i not in row_of]
    if missing:
        raise ClipstoreError(f"{len(missing)} {what} of {len(ids)} have no vector in {artifact.name}",
                             where=artifact.artifact_id, fix="re-run the embedding of this corpus "
                             f"(`clipstore embed --corpus ... --modality {modality}`)")
    return np.asarray(matrix[np.asarray([row_of[i] for i in ids], dtype=np.int64)], dtype=np.float32)


def class_vectors_from_cache(store: Store, artifact: Artifact, names: list[str]) -> np.ndarray:
    """The cached class vectors (mean prompt embedding per class), looked up by class display name."""
    emb = load_embeddings(store, artifact.artifact_id)
    items, matrix = emb.select(modality="classname", view=0)
    row_of = {text: i for i, text in enumerate(items.column("text").to_pylist())}
    missing = [n for n in names if n not in row_of]
    if missing:
        raise ClipstoreError(f"classes {', '.join(missing[:5])} have no prompt vector in {artifact.name}",
                             where=artifact.artifact_id, fix="re-run `clipstore embed --modality classname`")
    return np.asarray(matrix[[row_of[n] for n in names]], dtype=np.float32)
