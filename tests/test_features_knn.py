"""Exact kNN (blocked matmul + top-k) against a plain NumPy reference, and the kNN graph artifact:
exact by default, approximate through a FAISS index with its recall recorded, idempotent."""

from __future__ import annotations

import numpy as np
import pytest

from clipstore.features.graph import build_knn_graph, load_knn_graph
from clipstore.features.knn import exact_knn, recall_at_k, self_knn
from clipstore.features.vectors import EMBEDDING_TABLES, commit_vectors, load_embeddings
from clipstore.warehouse.errors import InputError
from clipstore.warehouse.sql import query


def reference_knn(queries, database, k, exclude_self=False):
    """What a researcher writes: all similarities, then a stable argsort (ties: lowest row first)."""
    sims = np.asarray(queries, np.float32) @ np.asarray(database, np.float32).T
    if exclude_self:
        np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(sims, order, axis=1)


def clustered(n, d, seed, centers=20, noise=0.3):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, d))
    x = c[rng.integers(0, centers, n)] + noise * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


def separated(sims, k, gap=1e-5):
    """Rows whose top k+1 similarities are pairwise further apart than float rounding."""
    return (np.abs(np.diff(sims[:, :k + 1], axis=1)) > gap).all(axis=1)


# ---- exact kNN --------------------------------------------------------------------------------
@pytest.mark.parametrize("memory_mb, db_block", [(256, 1 << 17), (0.05, 700), (1, 333)])
def test_exact_knn_equals_the_numpy_reference_across_block_sizes(memory_mb, db_block):
    x = clustered(2500, 48, seed=1)
    q = clustered(300, 48, seed=2)
    idx, sims = exact_knn(q, x, 15, memory_mb=memory_mb, db_block=db_block)
    ref_idx, ref_sims = reference_knn(q, x, 16)
    assert idx.dtype == np.int64 and sims.dtype == np.float32 and idx.shape == (300, 15)
    np.testing.assert_allclose(sims, ref_sims[:, :15], atol=2e-6)
    clear = separated(ref_sims, 15)
    assert clear.mean() > 0.9  # the comparison below covers most rows
    assert (idx[clear] == ref_idx[clear, :15]).all()
    # every other row differs only by swapping near-equal neighbors
    true_sims = np.take_along_axis(q.astype(np.float32) @ x.astype(np.float32).T, idx, 1)
    assert np.abs(true_sims - ref_sims[:, :15]).max() < 2e-6


def test_self_knn_excludes_each_row_and_clamps_k():
    x = clustered(1200, 32, seed=3)
    idx, sims = self_knn(x, 10, db_block=500)
    ref_idx, ref_sims = reference_knn(x, x, 11, exclude_self=True)
    assert not (idx == np.arange(1200)[:, None]).any()
    clear = separated(ref_sims, 10)
    assert (idx[clear] == ref_idx[clear, :10]).all()
    small = x[:4]
    idx, sims = self_knn(small, 10)
    assert idx.shape == (4, 3)  # k clamped to n - 1
    assert [sorted(r) for r in idx.tolist()] == [[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]]
    idx, _ = exact_knn(small, small[:2], 5)
    assert idx.shape == (4, 2)


@pytest.mark.parametrize("memory_mb, db_block", [(256, 1 << 17), (0.2, 4000), (1, 333), (0.01, 97)])
@pytest.mark.parametrize("half", [False, True])
def test_symmetric_self_knn_equals_the_query_by_query_search(memory_mb, db_block, half):
    """self_knn multiplies each pair of row blocks once and reads the scores both ways; the result
    is exact_knn's, last uneven block, exact duplicates and float16 candidates included (up to
    float32 rounding, which depends on the shape of the product)."""
    base = clustered(1000, 24, seed=8)
    x = np.concatenate([base, base[:30]])   # 30 exact duplicates
    want_idx, want_sims = exact_knn(x, x, 13, self_rows=np.arange(len(x)), half=half, memory_mb=memory_mb,
                                    db_block=db_block)
    idx, sims = self_knn(x, 12, half=half, memory_mb=memory_mb, db_block=db_block)
    np.testing.assert_allclose(sims, want_sims[:, :12], atol=1e-6)
    clear = separated(want_sims, 12)   # a duplicate's two copies tie up to rounding: not compared
    assert clear.mean() > 0.5 and (idx[clear] == want_idx[clear, :12]).all()
    assert (sims[1000:, 0] > 0.999).all() and (idx[1000:, 0] == np.arange(30)).all()   # its original


def test_ties_go_to_the_lowest_rows_in_every_block_layout():
    # small integer vectors: inner products are exact, so ties are real and plentiful
    v = np.random.default_rng(4).integers(-1, 2, size=(600, 6)).astype(np.float32)
    ref_idx, _ = reference_knn(v, v, 9, exclude_self=True)
    for memory_mb, db_block in ((256, 1 << 17), (0.01, 97)):
        idx, _ = self_knn(v, 9, memory_mb=memory_mb, db_block=db_block)
        assert (idx == ref_idx).all()
    dup = np.repeat(np.eye(3, dtype=np.float32), 4, axis=0)  # 4 copies of 3 vectors
    idx, sims = exact_knn(dup[[0, 5]], dup, 6)
    assert idx.tolist() == [[0, 1, 2, 3, 4, 5], [4, 5, 6, 7, 0, 1]]
    assert sims.tolist() == [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0]]


def test_float16_candidates_rescored_in_float32_match_the_reference():
    x = clustered(2000, 64, seed=5)
    idx, sims = self_knn(x, 10, half=True)
    ref_idx, ref_sims = reference_knn(x, x, 11, exclude_self=True)
    np.testing.assert_allclose(sims, ref_sims[:, :10], atol=2e-6)
    clear = separated(ref_sims, 10)
    assert (idx[clear] == ref_idx[clear, :10]).all()


def test_bad_inputs_are_clear_errors():
    x = clustered(50, 8, seed=6)
    with pytest.raises(InputError, match="dimension 8 but the database 9"):
        exact_knn(x, np.zeros((5, 9), np.float32), 3)
    with pytest.raises(InputError, match="k must be a positive integer"):
        exact_knn(x, x, 0)
    bad = x.astype(np.float32)
    bad[3, 2] = np.nan
    with pytest.raises(InputError, match="NaN or infinite") as err:
        self_knn(bad, 3)
    assert err.value.fix
    with pytest.raises(InputError, match="2-d float array"):
        exact_knn(np.arange(8), x, 2)


def test_recall_counts_ties_and_missing_results():
    db = np.array([[1, 0], [1, 0], [0, 1], [0.6, 0.8]], np.float32)
    q = np.array([[1, 0]], np.float32)
    _, exact_sims = exact_knn(q, db, 2)                       # rows 0 and 1, both sim 1
    assert recall_at_k(np.array([[1, 0]]), q, db, exact_sims) == 1.0
    assert recall_at_k(np.array([[0, 3]]), q, db, exact_sims) == 0.5
    assert recall_at_k(np.array([[0, -1]]), q, db, exact_sims) == 0.5


# ---- the kNN graph artifact ---------------------------------------------------------------------
def make_embeddings(store, name, vectors, modality="image", parts=1, sample_prefix="s"):
    """An embeddings artifact in the on-disk format of features/vectors.py, made directly."""
    n = len(vectors)
    items = [{"item_id": f"{modality[:3]}{i:05d}", "modality": modality, "view": 0, "corpus": "c",
              "sample_id": f"{sample_prefix}{i:05d}", "text": None} for i in range(n)]
    params = {"fingerprint": f"fp-{name}", "model": "test", "modality": modality, "corpus": "c", "views": 1}
    with store.writing():
        builder = store.produce(kind="embeddings", name=name, stage="embed", version=1, params=params,
                                tables=EMBEDDING_TABLES, reuse=False)
        bounds = np.linspace(0, n, parts + 1).astype(int)
        for part, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
            commit_vectors(builder, part, items[a:b], vectors[a:b])
        return builder.finish({"vectors": n})


def test_exact_graph_round_trips_through_the_store_and_sql(store):
    x = clustered(900, 32, seed=7)
    emb = make_embeddings(store, "img", x, parts=3)
    graph = build_knn_graph(store, emb.artifact_id, k=8)
    assert graph.kind == "knn" and graph.stats["exact"] is True and graph.stats["recall"] == 1.0
    assert graph.counts == {"nodes": 900, "edges": 7200} and graph.inputs == [emb.artifact_id]

    g = load_knn_graph(store, graph.artifact_id)
    ids, neighbors, sims = g.ids, g.neighbors, g.sims
    unit = load_embeddings(store, emb.artifact_id).matrix()
    ref_idx, ref_sims = self_knn(unit, 8)
    assert ids.tolist() == [f"ima{i:05d}" for i in range(900)]
    assert (neighbors == ref_idx).all() and (sims == ref_sims).all()

    edges = query(store, "SELECT * FROM knn_edges ORDER BY src_row, rank")
    assert edges.num_rows == 7200
    row = edges.slice(9, 1).to_pylist()[0]  # node 1, rank 1
    assert (row["src_id"], row["dst_id"], row["rank"]) == ("ima00001", ids[neighbors[1, 1]], 1)
    assert row["src_sample_id"] == "s00001" and row["dst_sample_id"] == f"s{neighbors[1, 1]:05d}"
    assert row["sim"] == pytest.approx(float(sims[1, 1]))
    assert query(store, "SELECT count(*) AS n FROM knn_edges WHERE src_id = dst_id").column("n")[0].as_py() == 0


def test_graph_is_idempotent_and_changes_with_its_recipe(store):
    emb = make_embeddings(store, "img", clustered(300, 16, seed=8))
    first = build_knn_graph(store, emb.artifact_id, k=5)
    again = build_knn_graph(store, emb.artifact_id, k=5)
    assert again.artifact_id == first.artifact_id
    with store.connect() as con:
        statuses = [r[0] for r in con.execute("SELECT status FROM runs WHERE artifact_id = ? ORDER BY started_at",
                                              [first.artifact_id]).fetchall()]
    assert statuses == ["done", "noop"]
    other = build_knn_graph(store, emb.artifact_id, k=6)
    assert other.artifact_id != first.artifact_id and other.stats["k"] == 6
    clamped = build_knn_graph(store, emb.artifact_id, k=1000)
    assert clamped.stats["k"] == 299 and clamped.stats["k_requested"] == 1000


def refuse_vector_reads(monkeypatch):
    """Make reading any .npy vector file fail the test (a no-op must not open one)."""
    real_load = np.load

    def load(file, *args, **kwargs):
        if str(file).endswith(".npy"):
            raise AssertionError(f"a vector file was read: {file}")
        return real_load(file, *args, **kwargs)
    monkeypatch.setattr(np, "load", load)


def test_a_repeated_graph_is_a_noop_that_reads_no_vectors(store, monkeypatch):
    emb = make_embeddings(store, "img", clustered(400, 16, seed=11), parts=2)
    exact = build_knn_graph(store, emb.artifact_id, k=5)
    approx = build_knn_graph(store, emb.artifact_id, k=5, method="Flat", recall_queries=50)
    assert not exact.noop and not approx.noop
    refuse_vector_reads(monkeypatch)
    again = build_knn_graph(store, emb.artifact_id, k=5)
    again_approx = build_knn_graph(store, emb.artifact_id, k=5, method="Flat", recall_queries=50)
    assert again.noop and again.artifact_id == exact.artifact_id and again.counts == exact.counts
    assert again_approx.noop and again_approx.artifact_id == approx.artifact_id
    with pytest.raises(AssertionError, match="a vector file was read"):   # the guard does catch a real read
        build_knn_graph(store, emb.artifact_id, k=6)


def test_approximate_graph_records_its_measured_recall(store):
    x = clustered(2000, 32, seed=9, centers=40, noise=0.6)
    emb = make_embeddings(store, "img", x)
    graph = build_knn_graph(store, emb.artifact_id, k=10, method="IVF32,Flat", nprobe=1, recall_queries=400)
    assert graph.stats["exact"] is False
    assert 0.2 < graph.stats["recall"] < 1.0
    index_id = graph.stats["index"]
    assert sorted(graph.inputs) == sorted([emb.artifact_id, index_id])
    assert store.get(index_id).kind == "index"
    neighbors = load_knn_graph(store, graph.artifact_id).neighbors
    exact_idx, _ = self_knn(load_embeddings(store, emb.artifact_id).matrix(), 10)
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(neighbors.tolist(), exact_idx.tolist())])
    # the recorded recall (a 400-query sample, ties counted) estimates the graph's true recall
    assert abs(overlap - graph.stats["recall"]) < 0.05
    assert not (neighbors == np.arange(2000)[:, None]).any()


def test_graph_selects_one_modality_and_refuses_what_is_not_there(store):
    x = clustered(200, 16, seed=10)
    with store.writing():
        builder = store.produce(kind="embeddings", name="mixed", stage="embed", version=1,
                                params={"modality": "mixed"}, tables=EMBEDDING_TABLES, reuse=False)
        items = [{"item_id": f"{m}{i}", "modality": m, "view": 0, "corpus": "c", "sample_id": f"s{i}", "text": None}
                 for m in ("img", "cap") for i in range(100)]
        for it in items:
            it["modality"] = {"img": "image", "cap": "caption"}[it["modality"]]
        commit_vectors(builder, 0, items, x)
        emb = builder.finish({"vectors": 200})
    graph = build_knn_graph(store, emb.artifact_id, k=4, modality="caption")
    assert graph.counts["nodes"] == 100 and graph.name == "mixed.knn4.caption"
    ids = load_knn_graph(store, graph.artifact_id).ids
    assert all(i.startswith("cap") for i in ids)
    with pytest.raises(InputError, match="no vectors for modality='keyword'") as err:
        build_knn_graph(store, emb.artifact_id, k=4, modality="keyword")
    assert "caption/view 0" in str(err.value) and "image/view 0" in str(err.value)
    with pytest.raises(InputError, match="k must be a positive integer"):
        build_knn_graph(store, emb.artifact_id, k=0)
