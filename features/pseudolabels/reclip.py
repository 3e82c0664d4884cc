"""ReCLIP's label propagation (Hu et al., WACV 2024) on cached embeddings, in O(N·k) memory.

1. Projection. T (d × C) holds the class text embeddings (each the renormalised mean over a
   template set). With T = U S Vᵀ, the first singular direction is what every class prompt
   shares ("a satellite photo of ..."), not what tells classes apart; P = Σ_{i≥2} u_i u_iᵀ drops
   it. Image and class vectors are multiplied by P and renormalised. P x lies in the span of
   u_2..u_r (r = min(d, C)), so each vector is held as its r − 1 coordinates B ᵀx there (B = the
   u_i, i ≥ 2): the same norms and inner products as the d-dimensional P x, from d/(r − 1) times
   fewer numbers (44 instead of 512 for 45 classes).
2. Graph. Nodes: the C class anchors (rows 0..C−1), then the N images. Each node's k nearest
   other nodes by inner product of the projected vectors (features/knn.py `exact_knn`),
   affinity (x·y + 1)/2 ∈ [0, 1]; W = (A + Aᵀ)/2 of those top-k affinities (zero diagonal),
   normalised D^−1/2 W D^−1/2. W is a scipy CSR matrix with at most 2(N+C)k entries: the dense
   (N+C)² affinity of the public code is never built.
3. Diffusion. (I − αW) Z = Y with Y one-hot on the anchors (Y[c, c] = 1), α = 0.99, solved by
   conjugate gradients for every class column: 20 iterations, rtol 1e-6 (the public code's
   settings), in float64. The batched `clipstore.ops.cg` does all classes with one sparse
   product per iteration — on a GPU with torch's sparse CSR, on the CPU with scipy's CSR
   product; each column takes exactly the steps of scipy.sparse.linalg.cg, which
   `solver="scipy"` runs class by class (the reference; on a shared CPU its per-vector BLAS calls
   cost more than the products).
4. Read-out per image: label = argmax_c Z_ic (ties: the lowest class), distribution = max(Z, 0)
   renormalised, confidence = 1 − H(distribution)/log C (ReCLIP's entropy confidence). An image
   that no anchor reaches (a graph component without anchors) has Z = 0: label −1, confidence 0."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

# torch (through features.knn and ops.cg) is imported where it is used: the CLI discovers this
# module's producer at start-up, and `clipstore` must answer (or refuse) before torch loads

ALPHA = 0.99          # ReCLIP's diffusion weight
K = 20                # neighbours per node
CG_ITERS = 20
CG_RTOL = 1e-6


@dataclass
class Propagation:
    """Per image (rows in the order given): `scores` Z (N, C), `labels` (−1: unreached),
    `distribution`, `confidence`; and what the solve did."""

    scores: np.ndarray
    labels: np.ndarray
    distribution: np.ndarray
    confidence: np.ndarray
    k: int                 # neighbours per node actually used (k clamped to N + C − 1)
    edges: int             # non-zeros of the symmetrised W
    iterations: int        # CG iterations, the most any class needed
    converged: int         # classes whose CG met the tolerance
    solver: str            # "batched", "torch" or "scipy"


def class_basis(class_vectors: np.ndarray) -> np.ndarray:
    """B (d × (r − 1), float64): the left singular vectors u_2..u_r of T = class_vectors.T."""
    t = np.asarray(class_vectors, dtype=np.float64).T                  # (d, C)
    u, _, _ = np.linalg.svd(t, full_matrices=False)                    # u: (d, min(d, C)), singular values descending
    return u[:, 1:]


def class_projection(class_vectors: np.ndarray) -> np.ndarray:
    """P (d × d) = Σ_{i≥2} u_i u_iᵀ = B Bᵀ (see the module doc)."""
    basis = class_basis(class_vectors)
    return basis @ basis.T


def project(vectors: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """The renormalised projections of unit rows, as coordinates in the basis B (float32,
    (n, r − 1)): inner products between them are those of the renormalised P x. A row (almost)
    along the dropped direction becomes 0 rather than its rounding noise blown up to length 1."""
    x = np.asarray(vectors, dtype=np.float32) @ basis.astype(np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.where(norms > 1e-6, x / np.maximum(norms, 1e-6), 0.0).astype(np.float32)


def affinity_graph(points: np.ndarray, k: int = K, *, device: str | None = None) -> sp.csr_matrix:
    """D^−1/2 W D^−1/2 of the symmetrised top-k affinity graph of these (unit) rows, float64 CSR."""
    n = len(points)
    from clipstore.features.knn import default_device, exact_knn
    # exact_knn, not self_knn: at the few dimensions of the class span the products are cheap and
    # self_knn's many small blocks cost more in top-k merges than they save (measured: 2.5x slower)
    neighbors, sims = exact_knn(points, points, k, self_rows=np.arange(n), device=device or default_device())
    rows = np.repeat(np.arange(n, dtype=np.int64), neighbors.shape[1])
    keep = neighbors.ravel() >= 0
    affinity = (sims.ravel().astype(np.float64) + 1.0) / 2.0
    top = sp.csr_matrix((affinity[keep], (rows[keep], neighbors.ravel()[keep])), shape=(n, n))
    w = ((top + top.T) * 0.5).tocsr()
    degree = np.asarray(w.sum(axis=1)).ravel()
    inv_sqrt = np.where(degree > 0, 1.0 / np.sqrt(np.maximum(degree, 1e-300)), 0.0)
    d = sp.diags(inv_sqrt)
    return (d @ w @ d).tocsr()


def diffuse(w: sp.csr_matrix, y: np.ndarray, *, alpha: float = ALPHA, iters: int = CG_ITERS, rtol: float = CG_RTOL,
            solver: str | None = None, device: str | None = None) -> tuple[np.ndarray, int, int, str]:
    """Z (n, C) float64 solving (I − αW) Z = Y; returns (Z, iterations, converged columns, solver).
    `solver`: "torch" (ops.cg with torch's sparse product on `device`), "batched" (ops.cg with
    scipy's CSR product, CPU), "scipy" (scipy.sparse.linalg.cg class by class); default: torch on
    a GPU, batched on the CPU."""
    import torch

    from clipstore.features.knn import default_device
    from clipstore.ops.cg import cg, sparse_from_scipy
    device = device or default_device()
    solver = solver or ("torch" if device.startswith("cuda") else "batched")
    n, c = y.shape
    if solver == "scipy":
        from scipy.sparse.linalg import cg as scipy_cg
        system = (sp.identity(n, format="csr", dtype=np.float64) - alpha * w).tocsr()
        columns, iterations, converged = [], 0, 0
        for j in range(c):
            count = [0]
            z, info = scipy_cg(system, y[:, j].astype(np.float64), rtol=rtol, maxiter=iters,
                               callback=lambda _x, count=count: count.__setitem__(0, count[0] + 1))
            columns.append(z)
            iterations, converged = max(iterations, count[0]), converged + (info == 0)
        return np.stack(columns, axis=1), iterations, converged, solver
    rhs = torch.from_numpy(np.asarray(y, dtype=np.float64))
    if solver == "batched":
        w64 = w.astype(np.float64).tocsr()
        with _one_thread():
            result = cg(lambda p: p - alpha * torch.from_numpy(w64 @ p.numpy()), rhs, rtol=rtol, maxiter=iters)
    elif solver == "torch":
        wt = sparse_from_scipy(w, device=device, dtype=torch.float64)
        result = cg(lambda p: p - alpha * (wt @ p), rhs.to(device), rtol=rtol, maxiter=iters)
    else:
        raise ValueError(f"unknown solver {solver!r}: batched, torch or scipy")
    return (result.x.cpu().numpy(), int(result.iterations.max()) if c else 0, int(result.converged.sum()),
            solver)


@contextmanager
def _one_thread():
    """The CG's element-wise steps on (n, C) arrays are memory-bound: extra CPU threads only add
    synchronisation, and on a shared machine their waits dominate (measured: 4x slower)."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def read_out(z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, distribution, confidence) from Z rows (see the module doc)."""
    n, c = z.shape
    positive = np.maximum(z, 0.0)
    mass = positive.sum(axis=1, keepdims=True)
    reached = mass[:, 0] > 0
    dist = np.divide(positive, mass, out=np.zeros_like(positive), where=mass > 0)
    labels = np.where(reached, z.argmax(axis=1) if c else -1, -1).astype(np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(dist > 0, dist * np.log(dist), 0.0).sum(axis=1)
    confidence = 1.0 - entropy / np.log(c) if c > 1 else np.ones(n)
    confidence = np.where(reached, confidence, 0.0)
    return labels, dist.astype(np.float32), confidence.astype(np.float32)


def propagate(images: np.ndarray, classes: np.ndarray, *, k: int = K, alpha: float = ALPHA, iters: int = CG_ITERS,
              rtol: float = CG_RTOL, solver: str | None = None, device: str | None = None) -> Propagation:
    """ReCLIP pseudo-labels for `images` (N, d) from class text embeddings `classes` (C, d)."""
    images, classes = np.asarray(images), np.asarray(classes)
    c = len(classes)
    basis = class_basis(classes)
    points = np.concatenate([project(classes, basis), project(images, basis)])
    w = affinity_graph(points, k, device=device)
    y = np.zeros((len(points), c))
    y[np.arange(c), np.arange(c)] = 1.0
    z, iterations, converged, used = diffuse(w, y, alpha=alpha, iters=iters, rtol=rtol, solver=solver, device=device)
    scores = z[c:]
    labels, dist, confidence = read_out(scores)
    return Propagation(scores.astype(np.float32), labels, dist, confidence, k=int(min(k, len(points) - 1)),
                       edges=int(w.nnz), iterations=iterations, converged=converged, solver=used)
