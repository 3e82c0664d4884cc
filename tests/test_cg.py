"""Batched torch CG (clipstore.ops.cg) against scipy.sparse.linalg.cg, the independent reference,
column by column: same iterates after a fixed number of iterations, same early stops."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import cg as scipy_cg

from clipstore.ops.cg import cg, sparse_from_scipy


def propagation_system(n: int, k: int, alpha: float, seed: int) -> sp.csr_matrix:
    """I − αW with W the symmetrically normalised kNN affinity of random points: the system label
    propagation solves (symmetric positive definite for α < 1)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    s = (x @ x.T + 1) / 2
    np.fill_diagonal(s, 0)
    idx = np.argsort(-s, axis=1)[:, :k]
    rows = np.repeat(np.arange(n), k)
    w = sp.csr_matrix((s[rows, idx.ravel()], (rows, idx.ravel())), shape=(n, n))
    w = (w + w.T) / 2
    d = 1 / np.sqrt(np.asarray(w.sum(axis=1)).ravel())
    w = sp.diags(d) @ w @ sp.diags(d)
    return sp.csr_matrix(sp.eye(n) - alpha * w)


def reference(a, b: np.ndarray, **kw) -> np.ndarray:
    return np.stack([scipy_cg(a, b[:, j], **kw)[0] for j in range(b.shape[1])], axis=1)


@pytest.mark.parametrize("maxiter", [1, 5, 20])
def test_fixed_iterations_match_scipy_per_column(maxiter):
    a = propagation_system(300, 10, 0.99, seed=0)
    rng = np.random.default_rng(1)
    b = rng.normal(size=(300, 7))
    expected = reference(a, b, rtol=1e-12, maxiter=maxiter)
    got = cg(sparse_from_scipy(a, dtype=torch.float64), torch.from_numpy(b), rtol=1e-12, maxiter=maxiter)
    np.testing.assert_allclose(got.x.numpy(), expected, rtol=1e-9, atol=1e-12)
    assert got.iterations.tolist() == [maxiter] * 7


def test_one_hot_right_hand_sides_as_label_propagation_uses_them():
    # ReCLIP's setting: Y one-hot on the first C rows (the class anchors), α = 0.99, 20 iterations
    n, c = 400, 6
    a = propagation_system(n, 12, 0.99, seed=2)
    y = np.zeros((n, c))
    y[np.arange(c), np.arange(c)] = 1
    expected = reference(a, y, rtol=1e-6, maxiter=20)
    got = cg(sparse_from_scipy(a, dtype=torch.float64), torch.from_numpy(y), rtol=1e-6, maxiter=20)
    np.testing.assert_allclose(got.x.numpy(), expected, rtol=1e-9, atol=1e-12)


def test_columns_stop_at_their_own_tolerance():
    # column 0 is an eigenvector (CG converges in one step), column 1 is zero, column 2 is hard:
    # the first two freeze, the third keeps iterating, each as scipy does alone
    a = propagation_system(200, 8, 0.9, seed=3)
    vals, vecs = np.linalg.eigh(a.toarray())
    rng = np.random.default_rng(4)
    b = np.stack([vecs[:, 5], np.zeros(200), rng.normal(size=200)], axis=1)
    for j in range(3):
        got = cg(sparse_from_scipy(a, dtype=torch.float64), torch.from_numpy(b), rtol=1e-8, maxiter=200)
        x, info = scipy_cg(a, b[:, j], rtol=1e-8, maxiter=200)
        np.testing.assert_allclose(got.x[:, j].numpy(), x, rtol=1e-8, atol=1e-12)
        assert bool(got.converged[j]) == (info == 0)
    assert got.iterations[0] == 1 and got.iterations[1] == 0 and got.iterations[2] > 5
    np.testing.assert_allclose(a @ got.x.numpy()[:, 2], b[:, 2], atol=1e-6)


def test_dense_matrix_callable_and_vector_forms_agree():
    a = propagation_system(150, 6, 0.95, seed=5)
    dense = torch.from_numpy(a.toarray())
    b = torch.from_numpy(np.random.default_rng(6).normal(size=150))
    x_ref, _ = scipy_cg(a, b.numpy(), rtol=1e-10, maxiter=30)
    for operator in (dense, lambda p: dense @ p, sparse_from_scipy(a, dtype=torch.float64)):
        got = cg(operator, b, rtol=1e-10, maxiter=30)
        assert got.x.shape == (150,)
        np.testing.assert_allclose(got.x.numpy(), x_ref, rtol=1e-9, atol=1e-12)


def test_initial_guess():
    a = propagation_system(120, 6, 0.9, seed=7)
    rng = np.random.default_rng(8)
    b, x0 = rng.normal(size=120), rng.normal(size=120)
    x_ref, _ = scipy_cg(a, b, x0=x0, rtol=1e-10, maxiter=4)
    got = cg(sparse_from_scipy(a, dtype=torch.float64), torch.from_numpy(b), x0=torch.from_numpy(x0),
             rtol=1e-10, maxiter=4)
    np.testing.assert_allclose(got.x.numpy(), x_ref, rtol=1e-9, atol=1e-12)


def test_float32_stays_close_to_float64_reference():
    a = propagation_system(500, 10, 0.99, seed=9)
    y = np.zeros((500, 5))
    y[np.arange(5), np.arange(5)] = 1
    expected = reference(a, y, rtol=1e-6, maxiter=20)
    got = cg(sparse_from_scipy(a, dtype=torch.float32), torch.from_numpy(y).float(), rtol=1e-6, maxiter=20)
    assert np.abs(got.x.numpy() - expected).max() < 1e-4 * np.abs(expected).max()
    assert (got.x.numpy().argmax(1) == expected.argmax(1)).mean() > 0.99


def test_bad_arguments():
    with pytest.raises(ValueError, match="rtol"):
        cg(torch.eye(3), torch.ones(3), rtol=-1)
    with pytest.raises(ValueError, match="shape"):
        cg(torch.eye(3), torch.ones(3, 1, 1))
