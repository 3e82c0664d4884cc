"""FAISS indexes over an embeddings artifact, built by factory string, with measured recall.

An index artifact (kind "index", name `<embeddings name>.<factory>`) holds one part:
  - `faiss_index/000000.faiss`: the trained index, serialized by FAISS (a file part, no SQL view);
  - `index_items/000000.parquet`: index row -> item (declared table `index_items`).
Its recipe pins the embeddings artifact's version and holds the selection (modality, view), the
factory string and the search parameters, so an unchanged request is a no-op and new embedding
parts give a new index.

The metric is always the inner product (the vectors are L2-normalised: cosine similarity).
Every index records in its stats the recall@k it reaches against exact search (features/knn.py)
on a seeded sample of its own vectors used as queries, each query's own row left out on both
sides; `Flat` is exact and measures 1.0. FAISS's GPU build is used when the installed FAISS has
one and a GPU is visible; the stored index is always the CPU form."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import faiss
import numpy as np
import pyarrow as pa

from clipstore.features.knn import exact_knn, recall_at_k
from clipstore.features.vectors import Embeddings, open_embeddings
from clipstore.warehouse.errors import ClipstoreError, InputError
from clipstore.warehouse.parquet import read_parquet, table_spec, write_table
from clipstore.warehouse.store import Artifact, ArtifactBuilder, Store

INDEX_ITEMS = pa.schema([
    ("artifact_id", pa.string()),   # the index artifact, so that several indexes share one SQL view
    ("row", pa.int64()),            # the label FAISS returns
    ("item_id", pa.string()), ("modality", pa.string()), ("view", pa.int32()),
    ("corpus", pa.string()), ("sample_id", pa.string()),
])
INDEX_TABLES = {"index_items": table_spec(INDEX_ITEMS)}
STAGE_VERSION = 1                   # bump when the same inputs would give another index or recall
INDEX_FILE = "faiss_index"          # the serialized index: a file part, not a declared table
FACTORY_EXAMPLES = "Flat (exact), IVF256,Flat, HNSW32, IVF64,PQ16"


@dataclass
class Built:
    index: faiss.Index              # the CPU index (what is stored)
    searcher: faiss.Index           # the index to search: its GPU copy when there is one
    device: str
    train_s: float
    add_s: float
    training_note: str | None = None


# ---- building and searching --------------------------------------------------------------------
def make_index(vectors: np.ndarray, factory: str, *, nprobe: int | None = None,
               ef_search: int | None = None) -> Built:
    """Create an index from a FAISS factory string, train it on `vectors` and add them."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    index = _create(factory, x.shape[1])
    note = _check_training_size(index, factory, len(x))
    set_search_params(index, nprobe=nprobe, ef_search=ef_search)  # refuse a parameter that does not apply, early
    _skip_polysemous_training(index)
    searcher, device = _to_gpu(index)
    try:
        t0 = time.perf_counter()
        if not searcher.is_trained:
            searcher.train(x)
        t1 = time.perf_counter()
        searcher.add(x)
        t2 = time.perf_counter()
    except RuntimeError as exc:
        raise InputError(f"FAISS could not build {factory!r} on {len(x)} vectors of dimension {x.shape[1]}: "
                         f"{_faiss_message(exc)}",
                         fix=f"choose another factory string, e.g. {FACTORY_EXAMPLES}") from None
    if searcher is not index:
        index = faiss.index_gpu_to_cpu(searcher)
        set_search_params(searcher, nprobe=nprobe, ef_search=ef_search)
        set_search_params(index, nprobe=nprobe, ef_search=ef_search)
    return Built(index, searcher, device, t1 - t0, t2 - t1, note)


def set_search_params(index: faiss.Index, *, nprobe: int | None = None, ef_search: int | None = None) -> dict:
    """Apply nprobe (IVF) and efSearch (HNSW) where given; return the values in effect."""
    space = faiss.GpuParameterSpace() if _is_gpu(index) else faiss.ParameterSpace()
    for name, value in (("nprobe", nprobe), ("efSearch", ef_search)):
        if value is None:
            continue
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}")
        try:
            space.set_index_parameter(index, name, int(value))
        except RuntimeError:
            raise InputError(f"{name} does not apply to a {type(faiss.downcast_index(index)).__name__} index",
                             fix="nprobe is for IVF indexes, ef_search for HNSW ones") from None
    return search_params(index)


def search_params(index: faiss.Index) -> dict:
    out = {"nprobe": None, "ef_search": None}
    try:
        out["nprobe"] = int(faiss.extract_index_ivf(index).nprobe)
    except RuntimeError:
        pass
    hnsw = _hnsw(index)
    if hnsw is not None:
        out["ef_search"] = int(hnsw.hnsw.efSearch)
    return out


def search(index: faiss.Index, queries: np.ndarray, k: int, *, nprobe: int | None = None,
           ef_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(rows int64 (nq, k), sims float32 (nq, k)); rows are -1 where the index found fewer than k."""
    if nprobe is not None or ef_search is not None:
        set_search_params(index, nprobe=nprobe, ef_search=ef_search)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if q.ndim != 2 or q.shape[1] != index.d:
        raise InputError(f"queries of shape {q.shape} do not fit an index of dimension {index.d}",
                         fix="search with vectors from the same model as the index")
    sims, rows = index.search(q, int(k))
    return rows.astype(np.int64), sims.astype(np.float32)


def search_others(index: faiss.Index, queries: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Search queries that are rows of the index for their k nearest *other* rows."""
    found, sims = search(index, queries, k + 1)
    is_self = found == rows[:, None]
    # a query whose own row was not returned drops its last (worst) result instead
    is_self[~is_self.any(axis=1), -1] = True
    keep = ~is_self
    return found[keep].reshape(len(found), k), sims[keep].reshape(len(found), k)


def measure_recall(searcher: faiss.Index, vectors: np.ndarray, k: int, n_queries: int, seed: int = 0) -> dict:
    """recall@k of `searcher` against exact search, on a seeded sample of its own vectors as
    queries, each query's own row excluded (the kNN-graph setting)."""
    n = len(vectors)
    k = min(k, n - 1)
    if k < 1:
        return {"recall": 1.0, "k": k, "queries": 0, "seed": seed, "search_ms_per_query": None}
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(n_queries, n), replace=False))
    queries = np.asarray(vectors[rows], dtype=np.float32)
    _, exact_sims = exact_knn(queries, vectors, k, self_rows=rows)
    t0 = time.perf_counter()
    found, _ = search_others(searcher, queries, rows, k)
    ms = (time.perf_counter() - t0) * 1000 / len(rows)
    return {"recall": recall_at_k(found, queries, vectors, exact_sims), "k": k, "queries": len(rows),
            "seed": seed, "search_ms_per_query": round(ms, 4),
            "definition": "share of results whose exact similarity reaches the exact k-th (ties count); "
                          "own row excluded"}


# ---- the artifact -------------------------------------------------------------------------------
def build_index(store: Store, embeddings_ref: str, factory: str = "Flat", *, modality: str | None = None,
                view: int | None = 0, nprobe: int | None = None, ef_search: int | None = None,
                recall_k: int = 10, recall_queries: int = 1000, seed: int = 0, wait: bool = False) -> Artifact:
    """Build (or return, when this recipe exists) the FAISS index of an embeddings artifact.
    `modality`/`view` select the vectors (None: all); view 0 is the plain, un-augmented view."""
    if not isinstance(factory, str) or not factory.strip():
        raise InputError("an index needs a FAISS factory string", fix=f"e.g. {FACTORY_EXAMPLES}")
    for name, value in (("recall_k", recall_k), ("recall_queries", recall_queries)):
        if not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}")
    with store.writing(wait=wait):
        art = store.get(embeddings_ref, kind="embeddings")
        params = {"embeddings": art.artifact_id, "modality": modality, "view": view, "factory": factory,
                  "metric": "inner_product", "nprobe": nprobe, "ef_search": ef_search, "recall_k": recall_k,
                  "recall_queries": recall_queries, "seed": seed}
        name = f"{art.name}.{factory}" + _selection_suffix(modality, view)
        builder = store.produce(kind="index", name=name, stage="index", version=STAGE_VERSION, params=params,
                                inputs=[art], tables=INDEX_TABLES, config=params)
        if isinstance(builder, Artifact):   # a no-op: no vector is read
            return builder
        with builder.failing_on_error():
            items, vectors = selected_vectors(open_embeddings(store, art), modality, view)
            return _build(store, builder, items, vectors, factory, nprobe, ef_search, recall_k, recall_queries, seed)


def _build(store: Store, builder: ArtifactBuilder, items: pa.Table, vectors: np.ndarray, factory: str,
           nprobe, ef_search, recall_k: int, recall_queries: int, seed: int) -> Artifact:
    timings: dict = {}
    if builder.is_committed(0):  # a killed run committed the index but did not finish
        [(_, _, index_file)] = builder.committed_parts(INDEX_FILE)   # pending: not yet visible to readers
        index = faiss.read_index(str(index_file))
        set_search_params(index, nprobe=nprobe, ef_search=ef_search)
        searcher, device = _to_gpu(index)
        timings["resumed"] = True
    else:
        built = make_index(vectors, factory, nprobe=nprobe, ef_search=ef_search)
        index, searcher, device = built.index, built.searcher, built.device
        timings.update(train_s=round(built.train_s, 3), add_s=round(built.add_s, 3), training_note=built.training_note)
        _commit(builder, index, items)
    exact = _is_exact(index)
    recall = measure_recall(searcher, vectors, recall_k, recall_queries, seed)
    stats = {"factory": factory, "index_type": type(faiss.downcast_index(index)).__name__, "metric": "inner_product",
             "exact": exact, "device": device, "dim": int(index.d), "ntotal": int(index.ntotal),
             **search_params(index), f"recall_at_{recall['k']}": recall["recall"], "recall": recall, **timings}
    counts = {"vectors": int(index.ntotal)}
    return builder.finish(counts, stats, summary={**counts, "recall": recall["recall"], "exact": exact})


def _commit(builder: ArtifactBuilder, index: faiss.Index, items: pa.Table) -> None:
    tmp = builder.temp_dir("part-000000")
    index_file, items_file = tmp / "000000.faiss", tmp / "000000.parquet"
    faiss.write_index(index, str(index_file))
    n = items.num_rows
    table = pa.table({"artifact_id": pa.array([builder.artifact_id] * n, pa.string()),
                      "row": pa.array(np.arange(n, dtype=np.int64)),
                      **{c: items.column(c) for c in ("item_id", "modality", "view", "corpus", "sample_id")}},
                     schema=INDEX_ITEMS)
    write_table(table, items_file)
    builder.commit_part(0, {INDEX_FILE: (index_file, n), "index_items": (items_file, n)})


def load_index(store: Store, ref: str) -> tuple[faiss.Index, np.ndarray]:
    """(the FAISS index with its recorded search parameters, item ids by row as an object array)."""
    art = store.get(ref, kind="index")
    if art.kind != "index":
        raise ClipstoreError(f"{art.artifact_id} is a {art.kind} artifact, not an index",
                             fix="pass an id from `clipstore ls --kind index`")
    index, ids = _read_index(store, art.artifact_id)
    set_search_params(index, nprobe=art.stats.get("nprobe"), ef_search=art.stats.get("ef_search"))
    return index, ids


def _read_index(store: Store, artifact_id: str) -> tuple[faiss.Index, np.ndarray]:
    files = store.table_paths(artifact_id, INDEX_FILE)
    if not files:
        raise ClipstoreError(f"index artifact {artifact_id} has no index file",
                             fix="rebuild it with `clipstore index --embeddings ID --factory F`")
    index = faiss.read_index(str(files[0]))
    items = read_parquet(store.table_paths(artifact_id, "index_items"), columns=["row", "item_id"]).sort_by("row")
    return index, np.asarray(items.column("item_id").to_pylist(), dtype=object)


# ---- selection ----------------------------------------------------------------------------------
def selected_vectors(emb: Embeddings, modality: str | None, view: int | None) -> tuple[pa.Table, np.ndarray]:
    """The items (and their vectors) of one modality and view; None selects all."""
    equal = {k: v for k, v in (("modality", modality), ("view", view)) if v is not None}
    items, vectors = emb.select(**equal) if equal else (emb.items, emb.matrix())
    if items.num_rows == 0:
        have = sorted({(m, v) for m, v in zip(emb.items.column("modality").to_pylist(),
                                              emb.items.column("view").to_pylist())})
        listed = ", ".join(f"{m}/view {v}" for m, v in have) or "nothing"
        raise InputError(f"embeddings {emb.artifact.artifact_id} hold no vectors for modality={modality!r} "
                         f"view={view!r} (they hold: {listed})",
                         fix="pick a modality and view the artifact holds, or embed that modality first")
    return items, vectors


def _selection_suffix(modality: str | None, view: int | None) -> str:
    return (f".{modality}" if modality else "") + ("" if view == 0 else f".view{'all' if view is None else view}")


# ---- FAISS helpers ------------------------------------------------------------------------------
def _create(factory: str, dim: int) -> faiss.Index:
    try:
        return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise InputError(f"FAISS does not accept the factory string {factory!r} for dimension {dim}: "
                         f"{_faiss_message(exc)}", fix=f"use e.g. {FACTORY_EXAMPLES}") from None


def _check_training_size(index: faiss.Index, factory: str, n: int) -> str | None:
    """Refuse fewer training vectors than lists; note (for stats) fewer than FAISS advises."""
    try:
        nlist = faiss.extract_index_ivf(index).nlist
    except RuntimeError:
        return None
    if n < nlist:
        suggestion = max(1, int(np.sqrt(n)))
        raise InputError(f"{factory!r} has {nlist} lists but only {n} vectors to train them",
                         fix=f"use fewer lists (e.g. IVF{suggestion},Flat) or Flat, which is exact and fast "
                             "at this size")
    advised = 39 * nlist  # FAISS's k-means warns below 39 points per centroid
    return f"trained on {n} vectors; FAISS advises at least {advised} for {nlist} lists" if n < advised else None


def _skip_polysemous_training(index: faiss.Index) -> None:
    """IVF-PQ trains polysemous codes by default (minutes of simulated annealing); they only serve
    Hamming-threshold search, which is never switched on here."""
    try:
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    except RuntimeError:
        return
    if hasattr(ivf, "do_polysemous_training"):
        ivf.do_polysemous_training = False


def _is_exact(index: faiss.Index) -> bool:
    return isinstance(faiss.downcast_index(index), faiss.IndexFlat)


def _hnsw(index: faiss.Index):
    inner = faiss.downcast_index(index)
    return inner if hasattr(inner, "hnsw") else None


_GPU_RESOURCES: list = []  # FAISS GPU indexes must not outlive their resources: keep one for the process


def _to_gpu(index: faiss.Index) -> tuple[faiss.Index, str]:
    if not (hasattr(faiss, "index_cpu_to_gpu") and faiss.get_num_gpus() > 0):
        return index, "cpu"
    if not _GPU_RESOURCES:
        _GPU_RESOURCES.append(faiss.StandardGpuResources())
    try:
        return faiss.index_cpu_to_gpu(_GPU_RESOURCES[0], 0, index), "gpu"
    except RuntimeError:  # HNSW and a few others have no GPU form
        return index, "cpu"


def _is_gpu(index: faiss.Index) -> bool:
    return type(faiss.downcast_index(index)).__name__.startswith("Gpu")


def _faiss_message(exc: RuntimeError) -> str:
    """FAISS errors start with a C++ location; keep the part a user can act on."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return re.sub(r"^Error in .*? at \S+:\d+: ", "", text)
