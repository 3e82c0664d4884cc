"""`pseudolabel classes --ray` equals the local run (slow tier, on the session's `ray_cluster`):
the missing images embedded by Ray actors, the exact graph over the split's labeled and unlabeled
images searched by Ray tasks over blocks of rows, and the vote committed by the driver give the
local artifact's graph and `pseudo_classes` rows."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from clipstore.features import graph as graph_module
from clipstore.features.graph import load_knn_graph
from clipstore.features.models import ModelSpec, load_model
from clipstore.features.pseudolabels.classes import classes
from clipstore.ingest.pipeline import ingest
from clipstore.ingest.splits import make_split
from clipstore.ingest.synth import write_synthetic
from clipstore.warehouse.sql import query
from clipstore.warehouse.store import Store

pytestmark = pytest.mark.slow

COLUMNS = ("image_id", "sample_id", "corpus", "label", "confidence", "classes", "probs", "voters")


def synthetic_stores(root):
    """Two copies of one store: the synthetic captioned corpus (classes) and a 30 % labeled split."""
    write_synthetic(root / "synth", seed=0, n_images=80, size=32)
    store = Store(root / "local")
    ingest(store, "karpathy", root / "synth" / "captions", name="synth", workers=1, progress=False)
    make_split(store, "s", corpora=["synth"], labeled_ratio=0.3, seed=0)
    shutil.copytree(root / "local", root / "ray")
    return store, Store(root / "ray")


def rows(store, art):
    got = query(store, "SELECT * FROM pseudo_classes WHERE artifact_id = ? ORDER BY image_id",
                [art.artifact_id]).to_pylist()
    return [{c: r[c] for c in COLUMNS} for r in got]


def test_classes_on_ray_equal_the_local_run(ray_cluster, tmp_path, monkeypatch):
    tiny = load_model(ModelSpec("tiny-vit"))
    local_store, ray_store = synthetic_stores(tmp_path)
    local = classes(local_store, split="s", model=tiny, k=5, workers=0, progress=False)
    # several row blocks (16 rows each), not one task holding the whole graph
    monkeypatch.setattr(graph_module, "RAY_MIN_ROWS", 16)
    remote = classes(ray_store, split="s", model=tiny, k=5, progress=False, ray=ray_cluster.address)
    assert remote.stats["audit"] == local.stats["audit"]

    g_local, g_ray = load_knn_graph(local_store, local.stats["graph"]), load_knn_graph(ray_store, remote.stats["graph"])
    assert g_ray.artifact.stats["ray_blocks"] == -(-len(g_ray) // 16) > 1
    assert g_ray.nodes.column("item_id").to_pylist() == g_local.nodes.column("item_id").to_pylist()
    np.testing.assert_array_equal(g_ray.neighbors, g_local.neighbors)
    np.testing.assert_allclose(g_ray.sims, g_local.sims, rtol=0, atol=1e-6)

    a, b = rows(local_store, local), rows(ray_store, remote)
    assert len(a) == len(b) == local.counts["pseudo_classes"] > 40
    for x, y in zip(a, b):
        assert {c: x[c] for c in COLUMNS if c not in ("confidence", "probs")} == \
               {c: y[c] for c in COLUMNS if c not in ("confidence", "probs")}
        assert y["confidence"] == pytest.approx(x["confidence"], abs=1e-6)
        assert y["probs"] == pytest.approx(x["probs"], abs=1e-6)
    # the same recipe again on Ray: a no-op
    assert classes(ray_store, split="s", model=tiny, k=5, progress=False, ray=ray_cluster.address).noop
