"""FAISS index artifacts: built by factory string from an embeddings artifact, stored, loaded back
with identical search results, and carrying a recall@k measured against exact search."""

from __future__ import annotations

import numpy as np
import pytest

from clipstore.features.index import build_index, load_index, make_index, measure_recall, search
from clipstore.features.knn import exact_knn
from clipstore.features.vectors import EMBEDDING_TABLES, commit_vectors, load_embeddings
from clipstore.warehouse.errors import InputError, NotFoundError
from clipstore.warehouse.sql import query
from clipstore.warehouse.store import Store


def clustered(n, d, seed, centers=40, noise=0.6):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, d))
    x = c[rng.integers(0, centers, n)] + noise * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """A store with one embeddings artifact of 3,000 clustered vectors in two parts."""
    store = Store(tmp_path_factory.mktemp("index") / "store")
    x = clustered(3000, 32, seed=0)
    items = [{"item_id": f"img{i:05d}", "modality": "image", "view": 0, "corpus": "c", "sample_id": f"s{i}",
              "text": None} for i in range(len(x))]
    with store.writing():
        builder = store.produce(kind="embeddings", name="emb", stage="embed", version=1,
                                params={"fingerprint": "fp", "model": "test", "modality": "image"},
                                tables=EMBEDDING_TABLES, reuse=False)
        commit_vectors(builder, 0, items[:1800], x[:1800])
        commit_vectors(builder, 1, items[1800:], x[1800:])
        emb = builder.finish({"vectors": len(x)})
    return store, emb, load_embeddings(store, emb.artifact_id).matrix()


def run_statuses(store, artifact_id):
    with store.connect() as con:
        return [r[0] for r in con.execute("SELECT status FROM runs WHERE artifact_id = ? ORDER BY started_at",
                                          [artifact_id]).fetchall()]


def test_flat_index_is_exact_and_round_trips(indexed):
    store, emb, x = indexed
    art = build_index(store, emb.artifact_id, "Flat", recall_queries=500)
    assert art.kind == "index" and art.name == "emb.Flat" and art.inputs == [emb.artifact_id]
    assert art.stats["exact"] is True and art.stats["recall_at_10"] == 1.0
    assert art.stats["recall"]["queries"] == 500 and art.stats["ntotal"] == 3000

    index, ids = load_index(store, art.artifact_id)
    assert ids.tolist() == [f"img{i:05d}" for i in range(3000)]
    rows, sims = search(index, x[:200], 10)
    exact_rows, exact_sims = exact_knn(x[:200], x, 10)
    np.testing.assert_allclose(sims, exact_sims, atol=1e-5)
    assert (rows[:, 0] == np.arange(200)).all()   # each vector finds itself first
    assert np.mean(rows == exact_rows) > 0.99     # the rest differ only where sims tie within rounding

    items = query(store, "SELECT row, item_id, sample_id FROM index_items WHERE artifact_id = ? ORDER BY row",
                  [art.artifact_id])
    assert items.column("item_id").to_pylist() == ids.tolist() and items.column("row").to_pylist() == list(range(3000))


def test_ivf_recall_is_measured_and_reproduced_by_the_stored_index(indexed):
    store, emb, x = indexed
    art = build_index(store, emb.artifact_id, "IVF64,Flat", nprobe=1, recall_queries=1000)
    assert art.name == "emb.IVF64,Flat" and art.stats["exact"] is False and art.stats["nprobe"] == 1
    recall = art.stats["recall_at_10"]
    assert 0.5 < recall < 1.0

    index, _ = load_index(store, art.artifact_id)
    assert faiss_nprobe(index) == 1            # the recorded search parameter comes back
    # the recall was measured on the index in memory before it was stored: the stored one agrees
    assert measure_recall(index, x, 10, 1000, seed=0)["recall"] == recall
    in_memory = make_index(x, "IVF64,Flat", nprobe=1)
    assert (search(index, x[:300], 10)[0] == search(in_memory.index, x[:300], 10)[0]).all()
    # probing every list is exhaustive, hence exact
    full = build_index(store, emb.artifact_id, "IVF64,Flat", nprobe=64, recall_queries=300)
    assert full.artifact_id != art.artifact_id and full.stats["recall_at_10"] == 1.0


def faiss_nprobe(index):
    import faiss
    return faiss.extract_index_ivf(index).nprobe


def test_hnsw_and_pq_record_their_parameters(indexed):
    store, emb, _ = indexed
    hnsw = build_index(store, emb.artifact_id, "HNSW16", ef_search=24, recall_k=5, recall_queries=300)
    assert hnsw.stats["ef_search"] == 24 and hnsw.stats["nprobe"] is None
    assert 0.8 < hnsw.stats["recall_at_5"] <= 1.0 and hnsw.stats["recall"]["k"] == 5
    pq = build_index(store, emb.artifact_id, "IVF16,PQ8", nprobe=4, recall_queries=300)
    assert pq.stats["index_type"] == "IndexIVFPQ" and pq.stats["recall_at_10"] < 0.9  # lossy codes


def test_same_request_is_a_noop(indexed):
    store, emb, _ = indexed
    first = build_index(store, emb.artifact_id, "HNSW8", recall_queries=100)
    again = build_index(store, "emb", "HNSW8", recall_queries=100)  # by name this time
    assert again.artifact_id == first.artifact_id and again.stats == first.stats
    assert run_statuses(store, first.artifact_id) == ["done", "noop"]


def test_a_noop_reads_no_vector_file(indexed, monkeypatch):
    store, emb, _ = indexed
    first = build_index(store, emb.artifact_id, "Flat", recall_queries=50)
    opened = []
    real_load = np.load
    monkeypatch.setattr(np, "load", lambda f, *a, **kw: opened.append(str(f)) or real_load(f, *a, **kw))
    again = build_index(store, emb.artifact_id, "Flat", recall_queries=50)
    assert again.noop and again.artifact_id == first.artifact_id and opened == []
    other = build_index(store, emb.artifact_id, "Flat", recall_queries=60)   # new work does read them
    assert not other.noop and sum(f.endswith(".npy") for f in opened) == 2


def test_bad_requests_are_clear_errors(indexed):
    store, emb, _ = indexed
    with pytest.raises(InputError, match="could not parse index string") as err:
        build_index(store, emb.artifact_id, "IVFX,Flat")
    assert "HNSW32" in err.value.fix
    with pytest.raises(InputError, match="4096 lists but only 3000 vectors") as err:
        build_index(store, emb.artifact_id, "IVF4096,Flat")
    assert "IVF54,Flat" in err.value.fix
    with pytest.raises(InputError, match="nprobe does not apply to a IndexHNSWFlat"):
        build_index(store, emb.artifact_id, "HNSW8", nprobe=4)
    with pytest.raises(InputError, match="multiple of the number of subquantizers"):
        build_index(store, emb.artifact_id, "IVF8,PQ7")
    with pytest.raises(InputError, match="no vectors for modality='caption'"):
        build_index(store, emb.artifact_id, "Flat", modality="caption")
    with pytest.raises(NotFoundError, match="no embeddings 'nope'"):
        build_index(store, "nope")
    with pytest.raises(InputError, match="recall_queries must be a positive integer"):
        build_index(store, emb.artifact_id, recall_queries=0)
    failed = [a for a in store.list("index") if a.status != "complete"]
    assert all(not store.parts(a.artifact_id) for a in failed)  # nothing half-written is visible
