"""On-disk format of an embeddings artifact: the contract between the stage that writes
vectors (embed) and every stage that reads them (index, knn, pseudo-labels, train, eval).

An embeddings artifact holds, per committed part:
  - `embedding_items/<part>.parquet`: one row per vector (declared table, a SQL view), and
  - `vectors/<part>.npy`: float16, shape (rows, dim), L2-normalised; row i <-> items row i.
The norm before normalisation is kept in the items table, and every row names its artifact, the
model that embedded it and the tower fingerprint, so the rows of several models stay apart in
SQL. Readers memory-map the .npy files, so opening a cache copies nothing; `matrix()`
concatenates only when there are several parts. Vectors must be finite: a NaN/Inf output is
refused before its part is written. Reading across artifacts: features/vectorset.py."""

from __future__ import annotations

from dataclasses import dataclass
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clipstore.warehouse.errors import ClipstoreError, InputError
from clipstore.warehouse.parquet import table_spec, write_table
from clipstore.warehouse.store import Artifact, ArtifactBuilder, Store

ITEMS = pa.schema([
    ("artifact_id", pa.string()), # the embeddings artifact (several share the SQL view)
    ("model", pa.string()),       # the model that embedded the row (its name: tiny-vit, ViT-B-32@openai, ...)
    ("fingerprint", pa.string()), # the tower fingerprint the artifact is keyed on (image or text tower)
    ("item_id", pa.string()),     # image_id, caption_id, keyword/concept id, or prompt id
    ("modality", pa.string()),    # image | caption | keyword | concept | classname | prompt (per-template rows)
    ("view", pa.int32()),         # 0 = the plain eval view; 1.. = augmented views (spec + seed in the recipe)
    ("corpus", pa.string()),
    ("sample_id", pa.string()),   # the sample the item came from, when there is one
    ("text", pa.string()),        # the exact string embedded, for text modalities
    ("norm", pa.float32()),       # L2 norm before normalisation
    ("row", pa.int64()),          # row in this part's vectors file
    ("part", pa.int32()),
])
VECTOR_DTYPE = np.float16
EMBEDDING_TABLES = {"embedding_items": table_spec(ITEMS)}  # vectors/ parts are files, not a SQL view


def normalise(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(L2-normalised float16 vectors, float32 norms); computed in float32 so fp16 never overflows."""
    v = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1)
    unit = v / np.maximum(norms, 1e-12)[:, None]
    return unit.astype(VECTOR_DTYPE), norms.astype(np.float32)


def check_finite(vectors: np.ndarray, what: str) -> None:
    """Refuse NaN/Inf model outputs: normalised, they would be stored as NaN vectors that poison
    every search and mean. Raised before anything of the batch's part is written."""
    v = np.asarray(vectors)
    finite = np.isfinite(v).all(axis=1) if v.ndim == 2 else np.isfinite(v)
    if not finite.all():
        raise InputError(f"the model produced NaN or infinite embeddings for {int((~finite).sum())} of {len(v)} "
                         f"{what}; nothing of this part was stored",
                         fix="check the weights (a diverged checkpoint?) and --precision (fp16 can overflow: "
                             "try bf16 or fp32)")


def commit_vectors(builder: ArtifactBuilder, part: int, items: list[dict], vectors: np.ndarray, *,
                   model: str | None = None, fingerprint: str | None = None) -> int:
    """Publish one part: items (dicts with ITEMS columns except artifact_id/norm/row/part) and their
    raw vectors (any float dtype, one row per item). Returns the number of rows."""
    if len(items) != len(vectors):
        raise ClipstoreError(f"{len(items)} items but {len(vectors)} vectors in part {part}")
    check_finite(vectors, "items")
    unit, norms = normalise(vectors)
    return commit_unit_vectors(builder, part, items, unit, norms, model=model, fingerprint=fingerprint)


def commit_unit_vectors(builder: ArtifactBuilder, part: int, items: list[dict], unit: np.ndarray,
                        norms: np.ndarray, *, model: str | None = None, fingerprint: str | None = None) -> int:
    """Publish one part of already normalised float16 vectors with their norms (vectors copied
    from another artifact keep their bytes and norms)."""
    if not (len(items) == len(unit) == len(norms)):
        raise ClipstoreError(f"{len(items)} items, {len(unit)} vectors and {len(norms)} norms in part {part}")
    base = {"artifact_id": builder.artifact_id, "model": model, "fingerprint": fingerprint}
    rows = [{**base, **it, "norm": float(n), "row": i, "part": part} for i, (it, n) in enumerate(zip(items, norms))]
    tmp = builder.temp_dir(f"part-{part:06d}")
    items_file, vectors_file = tmp / f"{part:06d}.parquet", tmp / f"{part:06d}.npy"
    write_table(pa.Table.from_pylist(rows, schema=ITEMS), items_file)
    np.save(vectors_file, np.ascontiguousarray(unit, dtype=VECTOR_DTYPE))
    builder.commit_part(part, {"embedding_items": (items_file, len(rows)), "vectors": (vectors_file, len(rows))})
    return len(rows)


@dataclass
class Embeddings:
    """A read view of one embeddings artifact: items in part order and memory-mapped vectors."""

    artifact: Artifact
    items: pa.Table
    parts: list[np.ndarray]        # one read-only float16 memmap per part

    @property
    def dim(self) -> int:
        return int(self.parts[0].shape[1]) if self.parts else 0

    def __len__(self) -> int:
        return self.items.num_rows

    @property
    def ids(self) -> list[str]:
        return self.items.column("item_id").to_pylist()

    def matrix(self) -> np.ndarray:
        """All vectors, (n, dim) float16: the memmap itself when there is one part."""
        if len(self.parts) == 1:
            return self.parts[0]
        if not self.parts:
            return np.zeros((0, 0), dtype=VECTOR_DTYPE)
        return np.concatenate(self.parts, axis=0)

    def select(self, **equal) -> tuple[pa.Table, np.ndarray]:
        """Items whose columns equal the given values (e.g. modality="image", view=0) and their vectors."""
        mask = np.ones(len(self), dtype=bool)
        for column, value in equal.items():
            mask &= np.asarray(self.items.column(column).to_numpy(zero_copy_only=False) == value)
        idx = np.flatnonzero(mask)
        return self.items.take(pa.array(idx)), self.matrix()[idx]


def load_embeddings(store: Store, ref: str) -> Embeddings:
    """Open an embeddings artifact by id or name without copying its vectors."""
    art = store.get(ref, kind="embeddings")
    if art.kind != "embeddings":
        raise ClipstoreError(f"{art.artifact_id} is a {art.kind} artifact, not embeddings",
                             fix="pass an id from `clipstore ls --kind embeddings`")
    return open_embeddings(store, art)


def open_embeddings(store: Store, art: Artifact, parts: dict | None = None) -> Embeddings:
    """The read view of an embeddings artifact; `parts` (from `store.all_parts`) saves a catalog
    read when opening several. Items of parts written before a column existed read it as null."""
    if parts is None:
        parts = store.all_parts([art.artifact_id])
    item_files = [p for _, p, _ in parts.get((art.artifact_id, "embedding_items"), [])]
    vector_files = [p for _, p, _ in parts.get((art.artifact_id, "vectors"), [])]
    tables = [_with_schema(pq.read_table(str(p))) for p in item_files]
    items = pa.concat_tables(tables) if tables else ITEMS.empty_table()
    return Embeddings(art, items, [np.load(str(p), mmap_mode="r") for p in vector_files])


def _with_schema(table: pa.Table) -> pa.Table:
    for f in ITEMS:
        if f.name not in table.column_names:
            table = table.append_column(f, pa.nulls(table.num_rows, f.type))
    return table.select(ITEMS.names).cast(ITEMS)
