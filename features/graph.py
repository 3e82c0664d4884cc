"""The self-kNN graph of an embeddings artifact, materialised once and reused by near-duplicate
audit, label propagation and optimal transport.

A graph artifact (kind "knn") holds the declared tables
  - `knn_nodes(artifact_id, row, item_id, corpus, sample_id)`: one row per node, and
  - `knn_edges(artifact_id, src_row, dst_row, rank, src_id, dst_id, sim, src_sample_id, dst_sample_id)`:
    each node's k nearest other nodes, rank 0 the nearest (sparse: k rows per node).
Exact by default (`exact=True` in stats). With `method=<FAISS factory>` the neighbours come from
an index artifact built (or reused) for the same vectors, and the graph's own recall@k against
exact search is measured and recorded. A node's own row is never its neighbour; k is clamped to
n - 1; an approximate index that finds fewer than k neighbours leaves those edges out (counted)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from clipstore.features.index import build_index, load_index, measure_recall, search_others, selected_vectors
from clipstore.features.knn import self_knn
from clipstore.features.vectors import Embeddings, load_embeddings
from clipstore.warehouse.errors import ClipstoreError, InputError
from clipstore.warehouse.parquet import commit_part_tables, read_parquet, table_spec
from clipstore.warehouse.store import Artifact, ArtifactBuilder, Store

NODES = pa.schema([
    ("artifact_id", pa.string()), ("row", pa.int64()), ("item_id", pa.string()),
    ("corpus", pa.string()), ("sample_id", pa.string()),
])
EDGES = pa.schema([
    ("artifact_id", pa.string()),   # the graph, so that several graphs share one SQL view
    ("src_row", pa.int64()), ("dst_row", pa.int64()), ("rank", pa.int32()),
    ("src_id", pa.string()), ("dst_id", pa.string()), ("sim", pa.float32()),
    ("src_sample_id", pa.string()), ("dst_sample_id", pa.string()),
])
GRAPH_TABLES = {"knn_nodes": table_spec(NODES), "knn_edges": table_spec(EDGES)}
NODES_PER_PART = 50_000             # one edges part per this many source nodes (k rows each)
RECALL_QUERIES = 1000


def build_knn_graph(store: Store, embeddings_ref: str, k: int = 20, *, modality: str | None = "image",
                    view: int = 0, method: str = "exact", nprobe: int | None = None,
                    ef_search: int | None = None, recall_queries: int = RECALL_QUERIES, seed: int = 0,
                    wait: bool = False) -> Artifact:
    """Build (or return, when this recipe exists) the k-nearest-neighbour graph of one modality
    and view of an embeddings artifact. `method` is "exact" or a FAISS factory string."""
    if not isinstance(k, int) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}", fix="e.g. --k 20")
    if view is None:
        raise InputError("a kNN graph is over one view (an item's other views would be its nearest neighbours)",
                         fix="pass view=0 (the plain view) or the number of one augmented view")
    index_art = None
    if method != "exact":  # the index is an artifact of its own: built once, reused, in the lineage
        index_art = build_index(store, embeddings_ref, method, modality=modality, view=view, nprobe=nprobe,
                                ef_search=ef_search, recall_k=k, recall_queries=recall_queries, seed=seed, wait=wait)
    with store.writing(wait=wait):
        emb = load_embeddings(store, embeddings_ref)
        items, vectors = selected_vectors(emb, modality, view)
        if len(vectors) < 2:
            raise InputError(f"a kNN graph needs at least two vectors; the selection has {len(vectors)}",
                             where=emb.artifact.artifact_id, fix="embed more items first")
        emb_id = emb.artifact.artifact_id
        params = {"embeddings": emb_id, "embeddings_version": store.versions([emb_id])[emb_id],
                  "modality": modality, "view": view, "k": k, "method": method,
                  "index": index_art.artifact_id if index_art else None,
                  "recall_queries": recall_queries if index_art else None, "seed": seed if index_art else None}
        inputs = [emb_id] + ([index_art.artifact_id] if index_art else [])
        builder = store.begin(kind="knn", name=_graph_name(emb, k, modality, view, method),
                              stage="knn", params=params, inputs=inputs, tables=GRAPH_TABLES, config=params)
        with builder.failing_on_error():
            if (done := builder.reuse_if_complete()) is not None:
                return done
            k_used = min(k, len(vectors) - 1)
            if index_art is None:
                neighbours, sims = self_knn(vectors, k_used)
                quality = {"exact": True, "recall": 1.0}
            else:
                neighbours, sims, quality = _approximate(store, index_art, vectors, k_used, recall_queries, seed)
            return _write(builder, items, neighbours, sims, k, k_used, quality)


def load_knn_graph(store: Store, ref: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(node item ids (n,) object array, neighbour rows (n, k) int64, sims (n, k) float32), rows
    best first; a missing edge (approximate graphs only) is row -1 with similarity -inf."""
    art = store.get(ref, kind="knn")
    if art.kind != "knn":
        raise ClipstoreError(f"{art.artifact_id} is a {art.kind} artifact, not a kNN graph",
                             fix="pass an id from `clipstore ls --kind knn`")
    if art.status != "complete":
        raise ClipstoreError(f"kNN graph {art.artifact_id} is not complete (its run stopped)",
                             fix="run the same `clipstore knn` command again to finish it")
    nodes = read_parquet(store.table_paths(art, "knn_nodes"), columns=["row", "item_id"]).sort_by("row")
    edges = read_parquet(store.table_paths(art, "knn_edges"), columns=["src_row", "dst_row", "rank", "sim"])
    n, k = nodes.num_rows, int(art.stats["k"])
    neighbours = np.full((n, k), -1, dtype=np.int64)
    sims = np.full((n, k), -np.inf, dtype=np.float32)
    if edges.num_rows:
        src, rank = edges.column("src_row").to_numpy(), edges.column("rank").to_numpy()
        neighbours[src, rank] = edges.column("dst_row").to_numpy()
        sims[src, rank] = edges.column("sim").to_numpy()
    return np.asarray(nodes.column("item_id").to_pylist(), dtype=object), neighbours, sims


def _approximate(store: Store, index_art: Artifact, vectors: np.ndarray, k: int, recall_queries: int,
                 seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    index, _ = load_index(store, index_art.artifact_id)
    if index.ntotal != len(vectors):
        raise ClipstoreError(f"index {index_art.artifact_id} holds {index.ntotal} vectors, "
                             f"the selection {len(vectors)}",
                             fix="rebuild the index for these embeddings")
    queries = np.asarray(vectors, dtype=np.float32)
    neighbours, sims = search_others(index, queries, np.arange(len(vectors)), k)
    sims = np.where(neighbours >= 0, sims, -np.inf).astype(np.float32)
    recall = measure_recall(index, vectors, k, recall_queries, seed)
    return neighbours, sims, {"exact": index_art.stats.get("exact", False), "recall": recall["recall"],
                              "recall_detail": recall, "index": index_art.artifact_id,
                              "factory": index_art.stats.get("factory")}


def _write(builder: ArtifactBuilder, items: pa.Table, neighbours: np.ndarray, sims: np.ndarray, k_asked: int,
           k: int, quality: dict) -> Artifact:
    n = items.num_rows
    ids, sample_ids = items.column("item_id"), items.column("sample_id")
    done = {p for p, _, _ in builder.committed_parts()}  # a killed run's committed parts stay
    for part, start in enumerate(range(0, max(n, 1), NODES_PER_PART)):
        if part in done:
            continue
        stop = min(n, start + NODES_PER_PART)
        tables = {"knn_edges": (_edges(builder.artifact_id, ids, sample_ids, neighbours[start:stop],
                                       sims[start:stop], start), EDGES)}
        if part == 0:
            tables["knn_nodes"] = (_nodes(builder.artifact_id, items), NODES)
        commit_part_tables(builder, part, tables)
    missing = int((neighbours < 0).sum())
    stats = {**quality, "k": k, "k_requested": k_asked, "nodes": n, "edges": n * k - missing,
             "missing_edges": missing, "sim_mean": float(sims[neighbours >= 0].mean()) if n * k > missing else None}
    builder.write_file("stats.json", json.dumps(stats, indent=1, sort_keys=True))
    counts = {"nodes": n, "edges": n * k - missing}
    return builder.finish(counts, stats, summary={**counts, "k": k, "exact": quality["exact"],
                                                  "recall": quality["recall"]})


def _nodes(graph_id: str, items: pa.Table) -> pa.Table:
    n = items.num_rows
    return pa.table({"artifact_id": pa.array([graph_id] * n, pa.string()),
                     "row": pa.array(np.arange(n, dtype=np.int64)), "item_id": items.column("item_id"),
                     "corpus": items.column("corpus"), "sample_id": items.column("sample_id")}, schema=NODES)


def _edges(graph_id: str, ids: pa.ChunkedArray, sample_ids: pa.ChunkedArray, neighbours: np.ndarray,
           sims: np.ndarray, first_row: int) -> pa.Table:
    rows, k = neighbours.shape
    src = np.repeat(np.arange(first_row, first_row + rows, dtype=np.int64), k)
    rank = np.tile(np.arange(k, dtype=np.int32), rows)
    dst, sim = neighbours.ravel(), sims.ravel()
    keep = dst >= 0
    src, rank, dst, sim = src[keep], rank[keep], dst[keep], sim[keep]
    return pa.table({"artifact_id": pa.array([graph_id] * len(src), pa.string()),
                     "src_row": pa.array(src), "dst_row": pa.array(dst), "rank": pa.array(rank),
                     "src_id": ids.take(pa.array(src)), "dst_id": ids.take(pa.array(dst)),
                     "sim": pa.array(sim, pa.float32()),
                     "src_sample_id": sample_ids.take(pa.array(src)),
                     "dst_sample_id": sample_ids.take(pa.array(dst))}, schema=EDGES)


def _graph_name(emb: Embeddings, k: int, modality: str | None, view: int, method: str) -> str:
    """`<embeddings>.knn<k>`, plus the modality when the artifact holds several, a non-plain view,
    and the factory of an approximate graph."""
    name = f"{emb.artifact.name}.knn{k}"
    if modality and len(set(emb.items.column("modality").to_pylist())) > 1:
        name += f".{modality}"
    if view != 0:
        name += f".view{view}"
    return name if method == "exact" else f"{name}.{method}"
