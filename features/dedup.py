"""Near-duplicate audit: pairs of items whose embeddings are almost identical (cosine >= a
threshold), across corpora and splits. Exact byte duplicates are audited at ingest
(`audit_duplicate_images`); this finds the re-encoded, re-scaled or brightness-shifted copies
that byte hashes miss and that inflate retrieval scores when they straddle train and test.

An audit artifact (kind "audit", name `<graph name>.near_duplicates`) is read off the image kNN
graph (built or reused by `build_knn_graph`), so the pairs are the graph's edges at or above the
threshold, each unordered pair once (a = the smaller item id). Table
`near_duplicates(artifact_id, modality, a_item_id, b_item_id, a_sample_id, b_sample_id, a_corpus,
b_corpus, sim)`. The SQL view `audit_near_duplicates` joins it with the split manifests and flags
pairs whose two sides sit in different roles (labeled/unlabeled vs val/test = leakage).

A node whose k-th neighbor is itself above the threshold may have more near duplicates than
the graph holds: such nodes are counted in stats (`saturated_nodes`) with the k to ask for."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from clipstore.features.graph import build_knn_graph, load_knn_graph
from clipstore.warehouse.errors import InputError
from clipstore.warehouse.parquet import commit_part_tables, table_spec
from clipstore.warehouse.store import Artifact, Store

DEFAULT_THRESHOLD = 0.95
NEAR_DUPLICATES = pa.schema([
    ("artifact_id", pa.string()), ("modality", pa.string()),
    ("a_item_id", pa.string()), ("b_item_id", pa.string()),
    ("a_sample_id", pa.string()), ("b_sample_id", pa.string()),
    ("a_corpus", pa.string()), ("b_corpus", pa.string()),
    ("sim", pa.float32()),
])
AUDIT_TABLES = {"near_duplicates": table_spec(NEAR_DUPLICATES)}
STAGE_VERSION = 1   # bump when the same graph and threshold would give other pairs


def audit_near_duplicates(store: Store, ref: str, threshold: float = DEFAULT_THRESHOLD, *, k: int = 20,
                          modality: str = "image", view: int = 0, method: str = "exact",
                          wait: bool = False) -> Artifact:
    """Near-duplicate pairs of an embeddings artifact (its kNN graph is built or reused with
    `k`, `modality`, `view`, `method`) or of an existing kNN graph artifact `ref`."""
    if not isinstance(threshold, (int, float)) or not -1.0 <= threshold <= 1.0:  # NaN fails too
        raise InputError(f"threshold {threshold!r} is not a cosine similarity in [-1, 1]",
                         fix="pass e.g. --threshold 0.95 (higher = only closer copies)")
    source = store.get(ref)
    if source.kind == "embeddings":
        graph = build_knn_graph(store, source.artifact_id, k, modality=modality, view=view, method=method, wait=wait)
    elif source.kind == "knn":
        graph = source
    else:
        raise InputError(f"{source.artifact_id} is a {source.kind} artifact; the audit reads embeddings or a kNN graph",
                         fix="pass an id from `clipstore ls --kind embeddings` or `--kind knn`")
    with store.writing(wait=wait):
        params = {"graph": graph.artifact_id, "threshold": float(threshold)}
        builder = store.produce(kind="audit", name=f"{graph.name}.near_duplicates", stage="near_duplicates",
                                version=STAGE_VERSION, params=params, inputs=[graph], tables=AUDIT_TABLES,
                                config=params)
        if isinstance(builder, Artifact):
            return builder
        with builder.failing_on_error():
            pairs, stats = near_duplicate_pairs(store, graph, float(threshold))
            if not builder.is_committed(0):
                table = pairs.append_column("artifact_id", pa.array([builder.artifact_id] * pairs.num_rows,
                                                                    pa.string())).select(NEAR_DUPLICATES.names)
                commit_part_tables(builder, 0, {"near_duplicates": (table, NEAR_DUPLICATES)})
            counts = {"pairs": pairs.num_rows}
            return builder.finish(counts, stats, summary={**counts, "threshold": threshold,
                                                          "cross_corpus": stats["cross_corpus_pairs"]})


def near_duplicate_pairs(store: Store, graph: Artifact, threshold: float) -> tuple[pa.Table, dict]:
    """The graph's edges with sim >= threshold as unordered pairs (without artifact_id), and stats."""
    knn = load_knn_graph(store, graph.artifact_id)
    ids, neighbors, sims = knn.ids, knn.neighbors, knn.sims
    a_rows, b_rows, pair_sims = _unordered_pairs(ids, neighbors, sims, threshold)
    sample_ids, corpora = knn.nodes.column("sample_id"), knn.nodes.column("corpus")
    a_corpus, b_corpus = corpora.take(pa.array(a_rows)), corpora.take(pa.array(b_rows))
    pairs = pa.table({
        "modality": pa.array([graph.params.get("modality")] * len(a_rows), pa.string()),
        "a_item_id": pa.array(ids[a_rows].tolist(), pa.string()),
        "b_item_id": pa.array(ids[b_rows].tolist(), pa.string()),
        "a_sample_id": sample_ids.take(pa.array(a_rows)), "b_sample_id": sample_ids.take(pa.array(b_rows)),
        "a_corpus": a_corpus, "b_corpus": b_corpus, "sim": pa.array(pair_sims, pa.float32())})
    k = knn.k
    saturated = int((sims[:, -1] >= threshold).sum())
    stats = {"threshold": threshold, "pairs": pairs.num_rows,
             "cross_corpus_pairs": sum(a != b for a, b in zip(a_corpus.to_pylist(), b_corpus.to_pylist())),
             "items_involved": len(set(a_rows.tolist()) | set(b_rows.tolist())), "nodes": len(ids),
             "graph": graph.artifact_id, "k": k, "exact": bool(graph.stats.get("exact")),
             "graph_recall": graph.stats.get("recall"), "saturated_nodes": saturated,
             "saturated_fix": f"{saturated} items have all {k} graph neighbors at or above the threshold and may "
                              "have more near duplicates: rebuild with a larger k" if saturated else None}
    return pairs, stats


def _unordered_pairs(ids: np.ndarray, neighbors: np.ndarray, sims: np.ndarray,
                     threshold: float) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """(a rows, b rows, sims) of each pair once, a = the smaller item id, ordered by sim desc then
    ids; both directions may be edges: the pair keeps the larger sim."""
    src = np.repeat(np.arange(len(ids)), neighbors.shape[1])
    dst, sim = neighbors.ravel(), sims.ravel()
    near = (dst >= 0) & (sim >= threshold)
    src, dst, sim = src[near], dst[near], sim[near]
    swap = ids[src] > ids[dst]
    a, b = np.where(swap, dst, src), np.where(swap, src, dst)
    best: dict[tuple[int, int], float] = {}
    for pair, s in zip(zip(a.tolist(), b.tolist()), sim.tolist()):
        best[pair] = max(s, best.get(pair, -np.inf))
    ordered = sorted(best.items(), key=lambda p: (-p[1], ids[p[0][0]], ids[p[0][1]]))
    return (np.array([p[0] for p, _ in ordered], dtype=np.int64), np.array([p[1] for p, _ in ordered], dtype=np.int64),
            [s for _, s in ordered])
