"""ReCLIP label propagation (features/pseudolabels/reclip.py) against a dense reference written the
way the public code does it — dense (N+C)² affinity, torch.topk + scatter, dense normalisation,
scipy CG class by class on the dense system — and against textbook facts about the projection."""

import tracemalloc

import numpy as np
import pytest
import torch
from scipy.sparse.linalg import cg as scipy_cg

from clipstore.features.pseudolabels.reclip import (affinity_graph, class_basis, class_projection, project,
                                                     propagate, read_out)


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def synthetic(n_per_class: int, n_classes: int, d: int, noise: float, seed: int):
    """Class texts share one strong direction (the prompt) plus a class part; images carry the
    class part, a modality offset and noise. Returns (images, labels, classes)."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.normal(size=(n_classes, d)))
    prompt, gap = unit(rng.normal(size=d)), unit(rng.normal(size=d))
    classes = unit(2.0 * prompt + centres)
    labels = np.repeat(np.arange(n_classes), n_per_class)
    images = unit(centres[labels] + 0.8 * gap + noise * rng.normal(size=(len(labels), d)) / np.sqrt(d))
    order = rng.permutation(len(labels))
    return images[order].astype(np.float32), labels[order], classes.astype(np.float32)


def dense_reference(images, classes, k=20, alpha=0.99, iters=20, rtol=1e-6):
    """The public code's steps, dense, in float64 where it solves."""
    t = torch.tensor(classes.T, dtype=torch.float32)
    u, _, _ = torch.svd(t)
    proj = u[:, 1:] @ u[:, 1:].T
    pts = torch.cat([torch.tensor(classes), torch.tensor(images)]) @ proj
    pts = torch.nn.functional.normalize(pts, dim=-1)
    n = len(pts)
    a = (pts @ pts.T + 1) / 2
    a = a * (1 - torch.eye(n))
    val, idx = torch.topk(a, k, dim=1)
    top = torch.zeros_like(a).scatter_(1, idx, val)
    w = ((top + top.T) / 2).double()
    d = w.sum(1) ** -0.5
    nw = (d[:, None] * w * d[None, :]).numpy()
    system = np.eye(n) - alpha * nw
    c = len(classes)
    z = np.stack([scipy_cg(system, np.eye(n)[:, j], rtol=rtol, maxiter=iters)[0] for j in range(c)], axis=1)
    return z[c:]


def test_projection_drops_the_first_singular_direction_and_keeps_the_rest_of_the_span():
    rng = np.random.default_rng(0)
    classes = unit(3 * unit(rng.normal(size=16)) + rng.normal(size=(6, 16)))
    p = class_projection(classes)
    t = classes.T
    span = t @ np.linalg.inv(t.T @ t) @ t.T                  # orthogonal projector onto span(T)
    vals, vecs = np.linalg.eigh(t @ t.T)
    u1 = vecs[:, -1]                                          # top left singular vector of T
    np.testing.assert_allclose(p, span - np.outer(u1, u1), atol=1e-10)
    np.testing.assert_allclose(p @ p, p, atol=1e-10)
    assert round(np.trace(p)) == 5
    v = unit(rng.normal(size=(4, 16)))
    x = project(np.concatenate([u1[None], v]), class_basis(classes))
    assert x.shape == (5, 5) and np.abs(x[0]).max() < 1e-6   # coordinates in the 5-dim span; u1 projects to 0
    full = unit(v @ p)                                        # the d-dim renormalised projections
    np.testing.assert_allclose(x[1:] @ x[1:].T, full @ full.T, atol=1e-6)


def test_graph_is_symmetric_normalised_and_sparse():
    rng = np.random.default_rng(1)
    pts = unit(rng.normal(size=(500, 12))).astype(np.float32)
    w = affinity_graph(pts, 10, device="cpu")
    assert w.nnz <= 2 * 500 * 10
    assert abs(w - w.T).max() < 1e-12
    assert w.diagonal().max() == 0
    # D^-1/2 W D^-1/2 has spectral radius 1 (eigenvector D^1/2 1)
    top = np.linalg.eigvalsh(w.toarray()).max()
    assert abs(top - 1) < 1e-9


@pytest.mark.parametrize("solver", ["scipy", "batched", "torch"])
def test_matches_the_dense_public_style_reference(solver):
    images, _, classes = synthetic(60, 5, 32, noise=3.0, seed=2)
    ref = dense_reference(images, classes, k=20)
    got = propagate(images, classes, k=20, solver=solver, device="cpu")
    np.testing.assert_allclose(got.scores, ref, rtol=1e-4, atol=1e-6)
    assert (got.labels == ref.argmax(1)).all()
    assert got.iterations == 20 and got.solver == solver
    assert got.edges <= 2 * (300 + 5) * 20


def test_the_three_solvers_agree():
    images, _, classes = synthetic(80, 6, 24, noise=4.0, seed=3)
    a = propagate(images, classes, solver="scipy", device="cpu")
    assert propagate(images, classes, device="cpu").solver == "batched"     # the CPU default
    for solver in ("batched", "torch"):
        b = propagate(images, classes, solver=solver, device="cpu")
        assert (a.labels == b.labels).all()
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(a.confidence, b.confidence, atol=1e-6)


def test_class_structure_gives_accurate_labels_and_shuffled_classes_chance():
    images, labels, classes = synthetic(100, 8, 64, noise=2.0, seed=4)
    got = propagate(images, classes)
    assert (got.labels == labels).mean() > 0.95
    # images that carry no class (shuffled vectors: labels no longer follow them)
    shuffled = got.labels[np.random.default_rng(5).permutation(len(labels))]
    assert abs((shuffled == labels).mean() - 1 / 8) < 0.06
    # confidence says which labels to trust: the confident half is at least as accurate
    confident = got.confidence >= np.median(got.confidence)
    assert (got.labels[confident] == labels[confident]).mean() >= (got.labels == labels).mean()


def test_read_out_distribution_confidence_and_unreached_rows():
    z = np.array([[2.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, -1e-9, 0.0], [1.0, 1.0, 1.0]])
    labels, dist, conf = read_out(z)
    assert labels.tolist() == [0, -1, 0, 0]
    np.testing.assert_allclose(dist[0], [0.5, 0.25, 0.25])
    np.testing.assert_allclose(dist[2], [1, 0, 0])
    h = -(0.5 * np.log(0.5) + 2 * 0.25 * np.log(0.25))
    np.testing.assert_allclose(conf, [1 - h / np.log(3), 0, 1, 0], atol=1e-6)


def test_an_image_cluster_no_anchor_reaches_gets_no_label():
    rng = np.random.default_rng(6)
    images, _, classes = synthetic(30, 3, 16, noise=0.3, seed=6)
    basis = class_basis(classes)
    # 15 images, after projection, tightly around the point opposite every other node: their 5
    # nearest neighbours are each other, and no other node counts them among its own
    opposite = -unit(np.mean(project(np.concatenate([classes, images]), basis), 0))
    island = ((opposite + 0.01 * rng.normal(size=(15, len(opposite)))) @ basis.T).astype(np.float32)
    got = propagate(np.concatenate([images, island]), classes, k=5)
    assert (got.labels[-15:] == -1).all() and (got.confidence[-15:] == 0).all()
    reached = (got.scores > 0).any(axis=1)
    assert ((got.labels >= 0) == reached).all() and reached[:-15].any()


def test_memory_stays_linear_in_nodes():
    # 6,000 nodes: the dense float32 (N+C)² affinity alone would be 144 MB
    images, _, classes = synthetic(600, 10, 32, noise=3.0, seed=7)
    tracemalloc.start()
    propagate(images, classes, k=20, device="cpu")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    n = len(images) + len(classes)
    assert peak < n * n * 4 / 10
