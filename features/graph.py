"""The self-kNN graph of a set of vectors, materialised once and reused by near-duplicate audit,
label propagation and optimal transport.

The vectors are one embeddings artifact (`build_knn_graph`), or a vector set across several
(features/vectorset.py: `build_set_graph`, and `build_split_graph` which embeds a split's or
several corpora's missing items first), so one graph can span RS-ALL's three corpora, or labeled
RS-ALL with unlabeled RESISC45.

A graph artifact (kind "knn") holds the declared tables
  - `knn_nodes(artifact_id, row, item_id, corpus, sample_id, role, embeddings_id)`: one row per
    node; `role` is the node's split role (null for a graph over whole artifacts) and
    `embeddings_id` the artifact its vector came from;
  - `knn_edges(artifact_id, src_row, dst_row, rank, src_id, dst_id, sim, src_sample_id, dst_sample_id)`:
    each node's k nearest other nodes, rank 0 the nearest (sparse: k rows per node).
Exact by default (`exact=True` in stats). With `method=<FAISS factory>` the neighbors come from
a FAISS index of the same vectors (for one artifact an index artifact, built or reused), and the
graph's own recall@k against exact search is measured and recorded. A node's own row is never
its neighbor; k is clamped to n - 1; an approximate index that finds fewer than k neighbors
leaves those edges out (counted). `load_knn_graph` reads a graph back as a `KnnGraph` (nodes,
neighbor rows and similarities as arrays, a scipy.sparse CSR view). See docs/vector-sets.md."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from clipstore.features.index import (build_index, load_index, make_index, measure_recall, search_others,
                                      selected_vectors)
from clipstore.features.items import CORPUS_MODALITIES, IMAGE
from clipstore.features.knn import self_knn, self_knn_block
from clipstore.features.vectors import open_embeddings
from clipstore.features.vectorset import vector_set
from clipstore.warehouse.errors import ClipstoreError, InputError, NotFoundError
from clipstore.warehouse.parquet import commit_part_tables, read_parquet, table_spec
from clipstore.warehouse.store import Artifact, ArtifactBuilder, Store

NODES = pa.schema([
    ("artifact_id", pa.string()), ("row", pa.int64()), ("item_id", pa.string()),
    ("corpus", pa.string()), ("sample_id", pa.string()),
    ("role", pa.string()),            # the node's split role; null when the graph is not over a split
    ("embeddings_id", pa.string()),   # the embeddings artifact holding the node's vector
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
RAY_MIN_ROWS = 1024                 # --ray: rows per task at least (a task's start costs ~10 ms)
STAGE_VERSION = 1                   # bump when the same inputs would give another graph


def build_knn_graph(store: Store, embeddings_ref: str, k: int = 20, *, modality: str | None = "image",
                    view: int = 0, method: str = "exact", nprobe: int | None = None,
                    ef_search: int | None = None, recall_queries: int = RECALL_QUERIES, seed: int = 0,
                    wait: bool = False) -> Artifact:
    """Build (or return, when this recipe exists) the k-nearest-neighbor graph of one modality
    and view of an embeddings artifact. `method` is "exact" or a FAISS factory string."""
    _check_graph_args(k, view)
    index_art = None
    if method != "exact":  # the index is an artifact of its own: built once, reused, in the lineage
        index_art = build_index(store, embeddings_ref, method, modality=modality, view=view, nprobe=nprobe,
                                ef_search=ef_search, recall_k=k, recall_queries=recall_queries, seed=seed, wait=wait)
    with store.writing(wait=wait):
        art = store.get(embeddings_ref, kind="embeddings")
        emb_id = art.artifact_id
        params = {"embeddings": emb_id, "modality": modality, "view": view, "k": k, "method": method,
                  "index": index_art.artifact_id if index_art else None,
                  "recall_queries": recall_queries if index_art else None, "seed": seed if index_art else None}
        inputs = [art] + ([index_art] if index_art else [])
        builder = store.produce(kind="knn", name=_graph_name(store, art, k, modality, view, method), stage="knn",
                                version=STAGE_VERSION, params=params, inputs=inputs, tables=GRAPH_TABLES,
                                config=params)
        if isinstance(builder, Artifact):   # a no-op: no vector is read
            return builder
        with builder.failing_on_error():
            items, vectors = selected_vectors(open_embeddings(store, art), modality, view)
            if len(vectors) < 2:
                raise InputError(f"a kNN graph needs at least two vectors; the selection has {len(vectors)}",
                                 where=emb_id, fix="embed more items first")
            k_used = min(k, len(vectors) - 1)
            if index_art is None:
                neighbors, sims = self_knn(vectors, k_used)
                quality = {"exact": True, "recall": 1.0}
            else:
                neighbors, sims, quality = _approximate(store, index_art, vectors, k_used, recall_queries, seed)
            nodes = _nodes(builder.artifact_id, items, [None] * items.num_rows, [emb_id] * items.num_rows)
            return _write(builder, nodes, neighbors, sims, k, k_used, quality)


# ---- graphs over vector sets ---------------------------------------------------------------------
def build_set_graph(store: Store, embeddings: list[str | Artifact], k: int = 20, *, modality: str = IMAGE,
                    view: int = 0, split: str | None = None, roles: list[str] | None = None,
                    method: str = "exact", nprobe: int | None = None, ef_search: int | None = None,
                    recall_queries: int = RECALL_QUERIES, seed: int = 0, name: str | None = None,
                    wait: bool = False, ray: str | None = None) -> Artifact:
    """Build (or return, when this recipe exists) the kNN graph over the vector set of these
    embeddings artifacts (one tower fingerprint), optionally restricted to a split's roles.
    The recipe pins every artifact's version (and the split's), so new vectors give a new graph.
    `ray` (an address, see warehouse/raydata.py): an exact graph's rows are searched in Ray
    tasks over blocks of rows, the matrix put once in the object store; the driver writes the
    same graph (same recipe, same artifact). An approximate `method` still searches here."""
    _check_graph_args(k, view)
    with store.writing(wait=wait):
        arts = [store.get(e, kind="embeddings") if isinstance(e, str) else e for e in embeddings]
        ids = [a.artifact_id for a in arts]
        split_art = store.current("split", split) if split else None
        if split and split_art is None:
            raise NotFoundError(f"no split {split!r} in the store", where=str(store.root),
                                fix="make it first: clipstore split NAME --corpus A ...")
        params = {"embeddings": ids, "fingerprint": arts[0].params.get("fingerprint") if arts else None,
                  "split": split, "split_artifact": split_art.artifact_id if split_art else None,
                  "roles": sorted(roles) if roles else None, "modality": modality, "view": view, "k": k,
                  "method": method, "nprobe": nprobe, "ef_search": ef_search,
                  "recall_queries": recall_queries if method != "exact" else None,
                  "seed": seed if method != "exact" else None}
        inputs = arts + ([split_art] if split_art else [])   # produce pins their versions
        builder = store.produce(kind="knn", name=name or _set_graph_name(arts, split, roles, modality, view, k, method),
                                stage="knn", version=STAGE_VERSION, params=params, inputs=inputs,
                                tables=GRAPH_TABLES, config=params)
        if isinstance(builder, Artifact):   # a no-op: no vector is read
            return builder
        with builder.failing_on_error():
            vset = vector_set(store, arts, modality=modality, view=view, split=split, roles=roles)
            if len(vset) < 2:
                raise InputError(f"a kNN graph needs at least two vectors; the selection has {len(vset)}",
                                 where=", ".join(ids), fix="embed more items, or widen --role")
            vectors = vset.matrix()        # one matrix for the search (a copy when the set spans parts)
            k_used = min(k, len(vset) - 1)
            if method == "exact":
                quality = {"exact": True, "recall": 1.0}
                if ray is None:
                    neighbors, sims = self_knn(vectors, k_used)
                else:   # where it ran is provenance, not recipe: the same artifact either way
                    neighbors, sims, quality["ray_blocks"] = _exact_on_ray(ray, vectors, k_used)
            else:
                neighbors, sims, quality = _approximate_in_memory(vectors, method, k_used, nprobe, ef_search,
                                                                  recall_queries, seed)
            items = vset.items
            nodes = _nodes(builder.artifact_id, items, items.column("role"), items.column("embeddings_id"))
            extra = {"corpora": _counts(items.column("corpus").to_pylist()),
                     "roles": _counts(items.column("role").to_pylist()) if split else None,
                     "split": split, "fingerprint": vset.fingerprint}
            return _write(builder, nodes, neighbors, sims, k, k_used, {**quality, **extra})


def build_split_graph(store: Store, model, k: int = 20, *, split: str | None = None,
                      corpora: list[str] | None = None, roles: list[str] | None = None, modality: str = IMAGE,
                      method: str = "exact", nprobe: int | None = None, ef_search: int | None = None,
                      seed: int = 0, batch_size: int = 64, workers: int | None = None, wait: bool = False,
                      progress: bool = True) -> Artifact:
    """The kNN graph of one model's `modality` vectors over a split's corpora (labeled, unlabeled,
    val and test; `roles` narrows it) or over whole corpora, embedding what is missing first
    (each image once per image tower). `model`: a ModelSpec (a checkpoint artifact id too) or a
    LoadedModel."""
    from clipstore.features.embed import embed   # embed imports torch workers; only this entry point needs it
    if not split and not corpora:
        raise InputError("a graph over corpora needs --split NAME or --corpus NAME (repeatable)",
                         fix="e.g. clipstore knn --split rs_all --model tiny-vit --k 20")
    if split and corpora:
        raise InputError("a graph is over a split (--split) or over whole corpora (--corpus), not both",
                         fix="drop one; a split over other corpora is made with `clipstore split`")
    if roles and not split:
        raise InputError("--role selects roles of a split", fix="add --split NAME")
    if modality not in CORPUS_MODALITIES:
        raise InputError(f"a graph over corpora is over images or captions, not {modality}",
                         fix="use --modality image or caption; a vocabulary's graph: --embeddings ID")
    arts = embed(store, model=model, corpus=list(corpora or []), split=split, modality=modality,
                 batch_size=batch_size, workers=workers, wait=wait, progress=progress)
    model_name = arts[0].stats.get("model") if arts else None
    scope = split or "+".join(corpora)
    name = f"{scope}.{modality}.{model_name}.knn{k}" + (f".{'+'.join(sorted(roles))}" if roles else "")
    if method != "exact":
        name += f".{method}"
    return build_set_graph(store, arts, k, modality=modality, split=split, roles=roles, method=method,
                           nprobe=nprobe, ef_search=ef_search, seed=seed, name=name, wait=wait)


def _check_graph_args(k, view) -> None:
    if not isinstance(k, int) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}", fix="e.g. --k 20")
    if view is None:
        raise InputError("a kNN graph is over one view (an item's other views would be its nearest neighbors)",
                         fix="pass view=0 (the plain view) or the number of one augmented view")


def _counts(values: list) -> dict:
    out: dict = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: str(kv[0])))


def _set_graph_name(arts: list[Artifact], split: str | None, roles, modality: str, view: int, k: int,
                    method: str) -> str:
    model = (arts[0].stats.get("model") or str(arts[0].params.get("fingerprint"))[:12]) if arts else "none"
    scope = split or "+".join(str(a.params.get("corpus") or a.name) for a in arts)
    name = f"{scope}.{modality}.{model}.knn{k}" + (f".{'+'.join(sorted(roles))}" if roles else "")
    name += f".view{view}" if view else ""
    return name if method == "exact" else f"{name}.{method}"


def _exact_on_ray(address: str, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, int]:
    """self_knn's result, its rows searched in Ray tasks (self_knn_block) over blocks of rows:
    about four blocks per cluster CPU, at least RAY_MIN_ROWS rows each. Each task multiplies its
    rows by the whole matrix, i.e. twice self_knn's products (it shares each pair of blocks)."""
    from clipstore.warehouse.raydata import cluster_resources, map_blocks, session
    n = len(vectors)
    with session(address):
        cpus = max(1, int(cluster_resources().get("CPU", 1)))
        size = max(RAY_MIN_ROWS, -(-n // (4 * cpus)))
        blocks = [(s, min(n, s + size), k) for s in range(0, n, size)]
        found = map_blocks(_search_block, np.ascontiguousarray(vectors, dtype=np.float32), blocks)
    return np.concatenate([f[0] for f in found]), np.concatenate([f[1] for f in found]), len(blocks)


def _search_block(vectors: np.ndarray, block: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    start, stop, k = block
    return self_knn_block(vectors, (start, stop), k)


def _approximate_in_memory(vectors: np.ndarray, method: str, k: int, nprobe, ef_search, recall_queries: int,
                           seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Neighbors from a FAISS index built here over the set (the set is not one artifact, so the
    index is not stored); its recall@k against exact search is measured the same way."""
    built = make_index(vectors, method, nprobe=nprobe, ef_search=ef_search)
    neighbors, sims = search_others(built.searcher, np.asarray(vectors, dtype=np.float32), np.arange(len(vectors)), k)
    sims = np.where(neighbors >= 0, sims, -np.inf).astype(np.float32)
    recall = measure_recall(built.searcher, vectors, k, recall_queries, seed)
    return neighbors, sims, {"exact": False, "recall": recall["recall"], "recall_detail": recall,
                             "index": None, "factory": method}


# ---- reading a graph back --------------------------------------------------------------------------
@dataclass
class KnnGraph:
    """A kNN graph read back: `nodes` (one row per node, in row order: row, item_id, corpus,
    sample_id, role, embeddings_id), `neighbors` (n, k) int64 node rows best first (-1: a missing
    edge of an approximate graph), `sims` (n, k) float32 (-inf where missing)."""

    artifact: Artifact
    nodes: pa.Table
    neighbors: np.ndarray
    sims: np.ndarray

    def __len__(self) -> int:
        return self.nodes.num_rows

    @property
    def k(self) -> int:
        return int(self.neighbors.shape[1])

    @property
    def ids(self) -> np.ndarray:
        return np.asarray(self.nodes.column("item_id").to_pylist(), dtype=object)

    def row_of(self, item_id: str) -> int | None:
        hits = np.flatnonzero(self.ids == item_id)
        return int(hits[0]) if len(hits) else None

    def edges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(src rows, dst rows, sims) of the present edges, in (src, rank) order."""
        src = np.repeat(np.arange(len(self), dtype=np.int64), self.k)
        dst, sim = self.neighbors.ravel(), self.sims.ravel()
        keep = dst >= 0
        return src[keep], dst[keep], sim[keep]

    def csr(self):
        """The graph as a scipy.sparse CSR matrix (n, n) of similarities: row i holds node i's
        edges (not symmetrised; `g + g.T` or `g.maximum(g.T)` for an undirected one)."""
        from scipy.sparse import csr_matrix
        src, dst, sim = self.edges()
        return csr_matrix((sim, (src, dst)), shape=(len(self), len(self)), dtype=np.float32)


def load_knn_graph(store: Store, ref: str) -> KnnGraph:
    """A complete kNN graph artifact (id or name) as a KnnGraph."""
    art = store.get(ref, kind="knn")
    if art.kind != "knn":
        raise ClipstoreError(f"{art.artifact_id} is a {art.kind} artifact, not a kNN graph",
                             fix="pass an id from `clipstore ls --kind knn`")
    if art.status != "complete":
        raise ClipstoreError(f"kNN graph {art.artifact_id} is not complete (its run stopped)",
                             fix="run the same `clipstore knn` command again to finish it")
    nodes = read_parquet(store.table_paths(art, "knn_nodes"))
    for f in NODES:   # graphs written before a column existed read it as null
        if f.name not in nodes.column_names:
            nodes = nodes.append_column(f, pa.nulls(nodes.num_rows, f.type))
    nodes = nodes.select([n for n in NODES.names if n != "artifact_id"]).sort_by("row")
    edges = read_parquet(store.table_paths(art, "knn_edges"), columns=["src_row", "dst_row", "rank", "sim"])
    n, k = nodes.num_rows, int(art.stats["k"])
    neighbors = np.full((n, k), -1, dtype=np.int64)
    sims = np.full((n, k), -np.inf, dtype=np.float32)
    if edges.num_rows:
        src, rank = edges.column("src_row").to_numpy(), edges.column("rank").to_numpy()
        neighbors[src, rank] = edges.column("dst_row").to_numpy()
        sims[src, rank] = edges.column("sim").to_numpy()
    return KnnGraph(art, nodes, neighbors, sims)


def _approximate(store: Store, index_art: Artifact, vectors: np.ndarray, k: int, recall_queries: int,
                 seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    index, _ = load_index(store, index_art.artifact_id)
    if index.ntotal != len(vectors):
        raise ClipstoreError(f"index {index_art.artifact_id} holds {index.ntotal} vectors, "
                             f"the selection {len(vectors)}",
                             fix="rebuild the index for these embeddings")
    queries = np.asarray(vectors, dtype=np.float32)
    neighbors, sims = search_others(index, queries, np.arange(len(vectors)), k)
    sims = np.where(neighbors >= 0, sims, -np.inf).astype(np.float32)
    recall = measure_recall(index, vectors, k, recall_queries, seed)
    return neighbors, sims, {"exact": index_art.stats.get("exact", False), "recall": recall["recall"],
                              "recall_detail": recall, "index": index_art.artifact_id,
                              "factory": index_art.stats.get("factory")}


def _write(builder: ArtifactBuilder, nodes: pa.Table, neighbors: np.ndarray, sims: np.ndarray, k_asked: int,
           k: int, quality: dict) -> Artifact:
    n = nodes.num_rows
    ids, sample_ids = nodes.column("item_id"), nodes.column("sample_id")
    for part, start in enumerate(range(0, max(n, 1), NODES_PER_PART)):
        if builder.is_committed(part):  # a killed run's committed parts stay
            continue
        stop = min(n, start + NODES_PER_PART)
        tables = {"knn_edges": (_edges(builder.artifact_id, ids, sample_ids, neighbors[start:stop],
                                       sims[start:stop], start), EDGES)}
        if part == 0:
            tables["knn_nodes"] = (nodes, NODES)
        commit_part_tables(builder, part, tables)
    missing = int((neighbors < 0).sum())
    stats = {**quality, "k": k, "k_requested": k_asked, "nodes": n, "edges": n * k - missing,
             "missing_edges": missing, "sim_mean": float(sims[neighbors >= 0].mean()) if n * k > missing else None}
    counts = {"nodes": n, "edges": n * k - missing}
    return builder.finish(counts, stats, summary={**counts, "k": k, "exact": quality["exact"],
                                                  "recall": quality["recall"]})


def _nodes(graph_id: str, items: pa.Table, roles, embeddings_ids) -> pa.Table:
    n = items.num_rows
    return pa.table({"artifact_id": pa.array([graph_id] * n, pa.string()),
                     "row": pa.array(np.arange(n, dtype=np.int64)), "item_id": items.column("item_id"),
                     "corpus": items.column("corpus"), "sample_id": items.column("sample_id"),
                     "role": pa.array(roles, pa.string()) if isinstance(roles, list) else roles,
                     "embeddings_id": pa.array(embeddings_ids, pa.string()) if isinstance(embeddings_ids, list)
                     else embeddings_ids}, schema=NODES)


def _edges(graph_id: str, ids: pa.ChunkedArray, sample_ids: pa.ChunkedArray, neighbors: np.ndarray,
           sims: np.ndarray, first_row: int) -> pa.Table:
    rows, k = neighbors.shape
    src = np.repeat(np.arange(first_row, first_row + rows, dtype=np.int64), k)
    rank = np.tile(np.arange(k, dtype=np.int32), rows)
    dst, sim = neighbors.ravel(), sims.ravel()
    keep = dst >= 0
    src, rank, dst, sim = src[keep], rank[keep], dst[keep], sim[keep]
    return pa.table({"artifact_id": pa.array([graph_id] * len(src), pa.string()),
                     "src_row": pa.array(src), "dst_row": pa.array(dst), "rank": pa.array(rank),
                     "src_id": ids.take(pa.array(src)), "dst_id": ids.take(pa.array(dst)),
                     "sim": pa.array(sim, pa.float32()),
                     "src_sample_id": sample_ids.take(pa.array(src)),
                     "dst_sample_id": sample_ids.take(pa.array(dst))}, schema=EDGES)


def _graph_name(store: Store, art: Artifact, k: int, modality: str | None, view: int, method: str) -> str:
    """`<embeddings>.knn<k>`, plus the modality when the artifact holds several, a non-plain view,
    and the factory of an approximate graph. Read from the items' modality column only: the
    name is part of the recipe, which must be known before any vector is read."""
    name = f"{art.name}.knn{k}"
    if modality and len(_modalities(store, art)) > 1:
        name += f".{modality}"
    if view != 0:
        name += f".view{view}"
    return name if method == "exact" else f"{name}.{method}"


def _modalities(store: Store, art: Artifact) -> set[str]:
    paths = store.table_paths(art, "embedding_items")
    return set(read_parquet(paths, columns=["modality"]).column("modality").to_pylist()) if paths else set()
