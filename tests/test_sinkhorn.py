"""The log-domain Sinkhorn solver against POT (`ot.sinkhorn`, `ot.bregman.sinkhorn_log`), the
independent reference, in S-CLIP's setting (ε = 0.01, 10 iterations) and beyond."""

import warnings

import numpy as np
import ot
import pytest
import torch

from clipstore.ops.sinkhorn import RowBlocks, sinkhorn, solve


def unit(rng, n, d):
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def pot(fn, a, b, cost, eps, iters):
    with warnings.catch_warnings():   # POT warns that 10 iterations do not converge: that is the setting
        warnings.simplefilter("ignore")
        return fn(a, b, cost, eps, numItermax=iters, stopThr=0.0)


@pytest.fixture
def problem():
    rng = np.random.default_rng(0)
    u, x = unit(rng, 64, 16), unit(rng, 48, 16)
    return u, x, 1.0 - u @ x.T


@pytest.mark.parametrize("reference", [ot.sinkhorn, ot.bregman.sinkhorn_log])
@pytest.mark.parametrize("eps,iters", [(0.01, 10), (0.05, 3), (0.1, 50)])
def test_plan_equals_pot_float64(problem, reference, eps, iters):
    _, _, cost = problem
    a, b = np.full(64, 1 / 64), np.full(48, 1 / 48)
    expected = pot(reference, a, b, cost, eps, iters)
    got = sinkhorn(torch.tensor(cost), eps, iters=iters).numpy()
    assert np.abs(got - expected).max() < 1e-12
    np.testing.assert_allclose(got.sum(1), a, rtol=1e-12)   # rows are exact after the last update


def test_float32_seed_setting_within_1e6(problem):
    _, _, cost = problem
    expected = pot(ot.bregman.sinkhorn_log, np.full(64, 1 / 64), np.full(48, 1 / 48), cost, 0.01, 10)
    got = sinkhorn(torch.tensor(cost, dtype=torch.float32), 0.01, iters=10).double().numpy()
    assert np.isfinite(got).all()
    assert np.abs(got - expected).max() < 1e-6


def test_plain_float32_sinkhorn_underflows_where_log_domain_does_not(problem):
    # why the log domain: exp(-C/0.01) in float32 loses rows whose costs all exceed ~1.04
    _, _, cost = problem
    kernel = np.exp(-cost.astype(np.float32) / np.float32(0.01))
    assert (kernel == 0).any()
    assert torch.isfinite(sinkhorn(torch.tensor(cost + 0.5, dtype=torch.float32), 0.01)).all()


def test_given_marginals(problem):
    _, _, cost = problem
    rng = np.random.default_rng(1)
    a, b = rng.random(64) + 0.1, rng.random(48) + 0.1
    a, b = a / a.sum(), b / b.sum()
    expected = pot(ot.bregman.sinkhorn_log, a, b, cost, 0.05, 20)
    got = sinkhorn(torch.tensor(cost), 0.05, a=torch.tensor(a), b=torch.tensor(b), iters=20).numpy()
    assert np.abs(got - expected).max() < 1e-12


def test_batched_equals_one_by_one():
    rng = np.random.default_rng(2)
    costs = np.stack([1.0 - unit(rng, 32, 8) @ unit(rng, 32, 8).T for _ in range(4)])
    batched = sinkhorn(torch.tensor(costs), 0.01, iters=10).numpy()
    for i, cost in enumerate(costs):
        expected = pot(ot.bregman.sinkhorn_log, np.full(32, 1 / 32), np.full(32, 1 / 32), cost, 0.01, 10)
        assert np.abs(batched[i] - expected).max() < 1e-12


def test_tolerance_stops_early_and_converges(problem):
    _, _, cost = problem
    sol = solve(torch.tensor(cost), 0.1, iters=10_000, tol=1e-10)
    assert sol.iterations < 10_000 and sol.marginal_error < 1e-10
    expected = ot.bregman.sinkhorn_log(np.full(64, 1 / 64), np.full(48, 1 / 48), cost, 0.1, numItermax=10_000,
                                       stopThr=1e-12)
    assert np.abs(sol.plan(torch.tensor(cost)).numpy() - expected).max() < 1e-9


def test_row_blocks_equal_dense(problem):
    u, x, cost = problem
    dense = sinkhorn(torch.tensor(cost), 0.01, iters=10).numpy()
    for source in (RowBlocks.dense(torch.tensor(cost)), RowBlocks.cosine(torch.tensor(u), torch.tensor(x))):
        sol = solve(source, 0.01, iters=10, block_rows=7)
        rows = [(i0, r.numpy()) for i0, r in sol.rows(block_rows=5)]
        assert [i0 for i0, _ in rows] == list(range(0, 64, 5))
        assert np.abs(np.concatenate([r for _, r in rows]) - dense).max() < 1e-12


def test_gradient_only_without_stop_gradient(problem):
    _, _, cost = problem
    c = torch.tensor(cost, requires_grad=True)
    assert not sinkhorn(c, 0.05).requires_grad
    plan = sinkhorn(c, 0.05, stop_gradient=False)
    (plan * torch.tensor(cost)).sum().backward()
    assert c.grad is not None and torch.isfinite(c.grad).all() and c.grad.abs().sum() > 0


@pytest.mark.parametrize("kwargs,match", [({"epsilon": 0.0}, "epsilon"), ({"epsilon": 0.1, "iters": 0}, "iters"),
                                          ({"epsilon": 0.1, "a": torch.ones(3)}, "marginal")])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        solve(torch.zeros(4, 5), **kwargs)


def test_log_domain_fallback_equals_pot(problem):
    from clipstore.ops.sinkhorn import _log_marginal, _solve_log
    _, _, cost = problem
    c = torch.tensor(cost)
    la, lb = _log_marginal(None, (), 64, c.device, c.dtype), _log_marginal(None, (), 48, c.device, c.dtype)
    sol = _solve_log(c, 0.01, la, lb, 10, None)
    expected = pot(ot.bregman.sinkhorn_log, np.full(64, 1 / 64), np.full(48, 1 / 48), cost, 0.01, 10)
    assert np.abs(sol.plan(c).numpy() - expected).max() < 1e-12


@pytest.mark.parametrize("cache_bytes", [1 << 30, 0, 64 * 48 * 8 * 2])
def test_global_mode_converges_like_pot_whatever_is_cached(problem, cache_bytes):
    """Many iterations at ε = 0.01 (the scalings grow and are absorbed again) with the kernel
    cached, recomputed, or half of it cached."""
    u, x, cost = problem
    expected = ot.bregman.sinkhorn_log(np.full(64, 1 / 64), np.full(48, 1 / 48), cost, 0.01, numItermax=5000,
                                       stopThr=1e-11)
    sol = solve(RowBlocks.cosine(torch.tensor(u), torch.tensor(x)), 0.01, iters=5000, tol=1e-11, block_rows=16,
                cache_bytes=cache_bytes)
    got = np.concatenate([r.numpy() for _, r in sol.rows()])
    assert sol.marginal_error < 1e-11 and np.abs(got - expected).max() < 1e-9


def test_global_float32_rows_normalised_like_pot(problem):
    u, x, cost = problem
    expected = pot(ot.sinkhorn, np.full(64, 1 / 64), np.full(48, 1 / 48), cost, 0.01, 10)
    sol = solve(RowBlocks.cosine(torch.tensor(u, dtype=torch.float32), torch.tensor(x, dtype=torch.float32)), 0.01)
    rows = np.concatenate([r.double().numpy() for _, r in sol.rows(normalise=True)])
    np.testing.assert_allclose(rows.sum(axis=1), 1.0, atol=1e-6)
    assert np.abs(rows - expected / expected.sum(axis=1, keepdims=True)).max() < 1e-4


def test_scalings_folded_back_into_the_kernel_change_nothing(problem, monkeypatch):
    """Force a re-absorption every few iterations (safe range |log v| < 0.5): same plans."""
    import clipstore.ops.sinkhorn as sk
    u, x, cost = problem
    expected = pot(ot.sinkhorn, np.full(64, 1 / 64), np.full(48, 1 / 48), cost, 0.01, 300)
    monkeypatch.setitem(sk._SAFE_LOG, torch.float64, 0.5)
    calls = []
    absorb = sk._absorb
    monkeypatch.setattr(sk, "_absorb", lambda *a: calls.append(1) or absorb(*a))
    sol = solve(RowBlocks.cosine(torch.tensor(u), torch.tensor(x)), 0.01, iters=300, tol=0.0, block_rows=16,
                cache_bytes=64 * 48 * 8 * 2)
    assert len(calls) > 3
    assert np.abs(np.concatenate([r.numpy() for _, r in sol.rows()]) - expected).max() < 1e-12
    dense = solve(torch.tensor(cost), 0.01, iters=300, tol=0.0)
    assert np.abs(dense.plan(torch.tensor(cost)).numpy() - expected).max() < 1e-12
