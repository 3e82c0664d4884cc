"""Entropic optimal transport by Sinkhorn iterations in the log domain (torch).

S-CLIP's caption-level OT uses ε = 1/s ≈ 0.01 on costs in [0, 2]: the kernel exp(−C/ε) holds
values down to e^−200, which float32 flushes to zero and plain Sinkhorn then divides by. In the
log domain the iterations only ever take log-sum-exps, which stay finite at any ε.

One solver serves both callers:
  - the trainer's per-batch OT: `sinkhorn(cost, ε)` on a (..., n, m) tensor (batched over the
    leading dimensions, on the tensor's device), returning the plan; gradients flow through the
    iterations only with `stop_gradient=False`;
  - the global OT over a whole unlabeled × labeled bank: `solve(RowBlocks(...), ε)` reads the
    cost in row blocks (`block_rows` sized to a working-memory budget) and keeps at most
    `cache_bytes` of kernel blocks between iterations; blocks beyond that budget are recomputed
    from the source each iteration, so the full kernel or plan is never required in memory;
    `Potentials.rows()` then yields plan rows block by block.

The global mode is log-stabilised scaling (absorption, Schmitzer 2019): the first iteration runs
in the log domain (column log-sum-exp with f = 0, then the row update), and its potentials are
absorbed into the kernel, K̂_ij = exp(−C_ij/ε + g_j − m_i) with m_i the row maximum, so every
row of K̂ has its largest entry equal to 1 and every column sums to at least b_j: no row or
column can underflow, and what float32 flushes to zero is below 1e-38 of a row's largest entry.
The remaining iterations are then plain scaling updates v = b / K̂ᵀu, u = a / K̂v: two
matrix-vector products per iteration over a block that stays in cache, instead of two
exponentials over the whole cost per iteration. Same iterates as the log domain (and POT);
should the scalings leave a safe range (many iterations), they are absorbed again.

Iterations follow POT's order (`ot.sinkhorn`, `ot.bregman.sinkhorn_log`): the column potential is
updated first, the row potential last, so after any number of iterations the rows of the plan sum
exactly to `a` and the columns approximately to `b`. With a tolerance, iteration stops once the
column marginal's L1 error falls below it (checked every iteration: it comes free with the fused
block pass)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

DEFAULT_BLOCK_BYTES = 256 << 20   # working memory for one cost block in the global mode
DEFAULT_CACHE_BYTES = 1 << 30     # kernel blocks kept between iterations in the global mode


@dataclass
class RowBlocks:
    """A cost matrix of shape (n, m) read in row blocks: `block(i0, i1)` returns rows [i0, i1).

    Use `RowBlocks.dense(cost)` for a cost already in memory, or `RowBlocks.cosine(queries, bank)`
    for `1 − q·x` computed from (normalised) features block by block (the full cost is never held)."""

    n: int
    m: int
    block: Callable[[int, int], torch.Tensor]
    device: torch.device
    dtype: torch.dtype
    # −C/ε for rows [i0, i1) in a fresh tensor, when the source computes it in one pass (cosine)
    scaled_block: Callable[[int, int, float], torch.Tensor] | None = None

    @classmethod
    def dense(cls, cost: torch.Tensor) -> "RowBlocks":
        return cls(cost.shape[0], cost.shape[1], lambda i0, i1: cost[i0:i1], cost.device, cost.dtype)

    @classmethod
    def cosine(cls, queries: torch.Tensor, bank: torch.Tensor) -> "RowBlocks":
        bank_t = bank.T.contiguous()
        bias = torch.full((1, bank.shape[0]), -1.0, device=queries.device, dtype=queries.dtype)

        def scaled(i0: int, i1: int, inv_eps: float) -> torch.Tensor:
            # (q·x − 1)/ε straight out of the matrix product: one pass, no temporaries
            return torch.addmm(bias, queries[i0:i1], bank_t, beta=inv_eps, alpha=inv_eps)

        return cls(queries.shape[0], bank.shape[0], lambda i0, i1: 1.0 - queries[i0:i1] @ bank_t,
                   queries.device, queries.dtype, scaled)

    def scaled(self, i0: int, i1: int, inv_eps: float) -> torch.Tensor:
        """−C/ε of rows [i0, i1), a fresh tensor the caller may overwrite."""
        if self.scaled_block is not None:
            return self.scaled_block(i0, i1, inv_eps)
        return self.block(i0, i1) * -inv_eps


@dataclass
class Potentials:
    """The solution's log-domain dual variables: plan_ij = exp(−C_ij/ε + f_i + g_j). A global
    solution also holds its absorbed kernel (the cached blocks) and scalings, so that its plan
    rows come without recomputing the cost."""

    f: torch.Tensor          # (..., n)
    g: torch.Tensor          # (..., m)
    epsilon: float
    iterations: int
    marginal_error: float    # L1 error of the returned plan's column marginal (its rows are exact)
    source: RowBlocks | None = None
    kernel: "_Kernel | None" = field(default=None, repr=False)
    u: torch.Tensor | None = field(default=None, repr=False)    # plan = diag(u) K̂ diag(v)
    v: torch.Tensor | None = field(default=None, repr=False)

    def plan(self, cost: torch.Tensor) -> torch.Tensor:
        return torch.exp(-cost / self.epsilon + self.f[..., :, None] + self.g[..., None, :])

    def rows(self, block_rows: int | None = None, normalise: bool = False) -> Iterator[tuple[int, torch.Tensor]]:
        """(first row, plan rows) block by block, for a solution computed from `RowBlocks`; with
        `normalise`, each row divided by its sum (the row-stochastic soft target)."""
        src, kernel = self.source, self.kernel
        if kernel is not None and block_rows in (None, kernel.blocks[0][1] - kernel.blocks[0][0]):
            for k, (i0, i1) in enumerate(kernel.blocks):
                scaled = kernel.block(k) * self.v
                if normalise:
                    yield i0, scaled / scaled.sum(dim=1, keepdim=True)
                else:
                    yield i0, scaled * self.u[i0:i1, None]
            return
        step = block_rows or _block_rows(src.m, src.dtype)
        for i0 in range(0, src.n, step):
            i1 = min(src.n, i0 + step)
            rows = torch.exp(-src.block(i0, i1) / self.epsilon + self.f[i0:i1, None] + self.g[None, :])
            yield i0, rows / rows.sum(dim=1, keepdim=True) if normalise else rows


def sinkhorn(cost: torch.Tensor, epsilon: float, *, a: torch.Tensor | None = None, b: torch.Tensor | None = None,
             iters: int = 10, tol: float | None = None, stop_gradient: bool = True) -> torch.Tensor:
    """The entropic OT plan for `cost` (..., n, m) with marginals `a` (..., n) and `b` (..., m)
    (uniform when omitted). See the module doc."""
    with torch.set_grad_enabled(torch.is_grad_enabled() and not stop_gradient):
        c = cost.detach() if stop_gradient else cost
        return solve(c, epsilon, a=a, b=b, iters=iters, tol=tol).plan(c)


def solve(cost: torch.Tensor | RowBlocks, epsilon: float, *, a: torch.Tensor | None = None,
          b: torch.Tensor | None = None, iters: int = 10, tol: float | None = None,
          block_rows: int | None = None, cache_bytes: int | None = DEFAULT_CACHE_BYTES) -> Potentials:
    """Sinkhorn potentials for a dense cost tensor (one block, batched over leading dims, log
    domain) or a `RowBlocks` source (2-D, blocks of `block_rows` rows, at most `cache_bytes` of
    kernel kept between iterations; see the module doc)."""
    if not epsilon > 0:
        raise ValueError(f"sinkhorn: epsilon must be > 0, got {epsilon}")
    if iters < 1:
        raise ValueError(f"sinkhorn: iters must be >= 1, got {iters}")
    if isinstance(cost, RowBlocks):
        return _solve_blocks(cost, epsilon, a, b, iters, tol, block_rows, cache_bytes)
    return _solve_dense(cost, epsilon, a, b, iters, tol)


def _solve_dense(cost: torch.Tensor, epsilon: float, a, b, iters: int, tol) -> Potentials:
    """The batched dense case, by the same absorption as the global mode: iteration 1 in the log
    domain, the rest as batched matrix-vector scaling on K̂ (a few small kernels per iteration
    instead of two log-sum-exps, which is what a 64 × 64 call costs on a CPU)."""
    n, m, device, dtype = cost.shape[-2], cost.shape[-1], cost.device, cost.dtype
    batch = cost.shape[:-2]
    log_a = _log_marginal(a, batch, n, device, dtype)
    log_b = _log_marginal(b, batch, m, device, dtype)
    a_, b_ = torch.exp(log_a), torch.exp(log_b)
    scaled = cost * (-1.0 / epsilon)
    g = log_b - torch.logsumexp(scaled, dim=-2)          # iteration 1: f = 0, then g, then f below

    def absorb(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        k = scaled + g[..., None, :]
        top = k.detach().amax(dim=-1, keepdim=True)       # cancels in the plan: no gradient needed
        k = _exp(k - top)
        return k, top[..., 0], a_ / k.sum(dim=-1)

    kernel, row_max, u = absorb(g)
    v = torch.ones_like(b_)
    safe = _SAFE_LOG.get(dtype, 60.0)
    done = 1
    # Without a tolerance nothing is checked inside the loop (each check is a device sync and, at
    # 64 × 64, costs as much as an iteration): the scalings cannot leave float range in a few
    # iterations (K̂ ≥ e^-60), and should they have, the log domain recomputes the solution.
    while done < iters:
        column = (u[..., None, :] @ kernel)[..., 0, :]
        if tol is not None:
            if float((v * column - b_).detach().abs().sum(dim=-1).max()) < tol:
                break
            log_v = torch.log(b_ / column)
            if not bool(torch.isfinite(log_v).all()) or float(log_v.detach().abs().max()) > safe:
                g = g + log_v                             # fold the scalings into the kernel
                kernel, row_max, u = absorb(g)
                v = torch.ones_like(v)
                done += 1
                continue
        v = b_ / column
        u = a_ / (kernel @ v[..., :, None])[..., 0]
        done += 1
    f, g = torch.log(u) - row_max, g + torch.log(v)
    if not (bool(torch.isfinite(f).all()) and bool(torch.isfinite(g).all())):
        return _solve_log(cost, epsilon, log_a, log_b, iters, tol)
    column = (u[..., None, :] @ kernel)[..., 0, :]
    error = float((v * column - b_).detach().abs().sum(dim=-1).max())
    return Potentials(f, g, epsilon, done, error)


def _solve_log(cost: torch.Tensor, epsilon: float, log_a, log_b, iters: int, tol) -> Potentials:
    """Plain log-domain Sinkhorn (POT's order): the fallback of the dense case."""
    scaled = cost * (-1.0 / epsilon)

    def sweep(g: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        f = torch.zeros_like(log_a) if g is None else log_a - torch.logsumexp(scaled + g[..., None, :], dim=-1)
        return f, torch.logsumexp(scaled + f[..., :, None], dim=-2)

    _, lse = sweep(None)
    g = log_b - lse
    error, done = math.inf, 0
    for it in range(iters):
        f, lse = sweep(g)
        done = it + 1
        error = float((torch.exp(g + lse) - torch.exp(log_b)).detach().abs().sum(dim=-1).max())
        if done == iters or (tol is not None and error < tol):
            break
        g = log_b - lse
    return Potentials(f, g, epsilon, done, error)


SUB_BLOCK_BYTES = 1 << 20        # kernel rows per matrix-vector pair: stays in cache between the two products
_SAFE_LOG = {torch.float32: 60.0, torch.float64: 500.0}   # |log| of a scaling beyond which it is absorbed


@dataclass
class _Kernel:
    """The absorbed kernel of a RowBlocks source: K̂ = exp(−C/ε + g − m_i), blocks cached up to a budget."""

    source: RowBlocks
    inv_eps: float
    blocks: list[tuple[int, int]]
    g: torch.Tensor                  # absorbed column potential
    row_max: torch.Tensor            # m_i
    cached: dict
    budget: int

    def block(self, k: int) -> torch.Tensor:
        hit = self.cached.get(k)
        if hit is not None:
            return hit
        i0, i1 = self.blocks[k]
        kernel = self.source.scaled(i0, i1, self.inv_eps)
        kernel += self.g
        kernel -= self.row_max[i0:i1, None]
        return _exp_(kernel)

    def keep(self, k: int, kernel: torch.Tensor) -> None:
        size = kernel.numel() * kernel.element_size()
        if size <= self.budget:
            self.cached[k] = kernel
            self.budget -= size


def _solve_blocks(source: RowBlocks, epsilon: float, a, b, iters: int, tol, block_rows, cache_bytes) -> Potentials:
    n, m, device, dtype = source.n, source.m, source.device, source.dtype
    step = block_rows or _block_rows(m, dtype)
    blocks = [(i0, min(n, i0 + step)) for i0 in range(0, n, step)]
    a_ = torch.exp(_log_marginal(a, (), n, device, dtype))
    log_b = _log_marginal(b, (), m, device, dtype)
    b_ = torch.exp(log_b)
    inv_eps = 1.0 / epsilon
    budget = int(cache_bytes or 0)

    # iteration 1, log domain: g = log b − LSE_i(−C/ε) (f = 0); the scaled cost blocks are kept
    # (within the budget) to become the absorbed kernel in place
    col_max = torch.full((m,), -math.inf, device=device, dtype=dtype)
    col_sum = torch.zeros(m, device=device, dtype=dtype)
    scaled: dict[int, torch.Tensor] = {}
    work = None
    for k, (i0, i1) in enumerate(blocks):
        e = source.scaled(i0, i1, inv_eps)
        top = torch.maximum(col_max, e.amax(dim=0))
        work = e.new_empty(e.shape) if work is None or work.shape != e.shape else work
        col_sum = col_sum * torch.exp(col_max - top) + _exp_(torch.sub(e, top, out=work)).sum(dim=0)
        col_max = top
        size = e.numel() * e.element_size()
        if size <= budget:
            scaled[k] = e
            budget -= size
    g = log_b - (col_max + torch.log(col_sum))
    kernel = _Kernel(source, inv_eps, blocks, g, torch.empty(n, device=device, dtype=dtype), {}, int(cache_bytes or 0))
    u, column = _absorb(kernel, scaled, a_)
    v = torch.ones(m, device=device, dtype=dtype)
    done, error = 1, math.inf
    safe = _SAFE_LOG.get(dtype, 60.0)
    while True:
        # the column marginal of the plan after the last row update: v ⊙ K̂ᵀu (its rows are exact)
        error = float((v * column - b_).abs().sum())
        if done == iters or (tol is not None and error < tol):
            break
        v = b_ / column
        if not bool(torch.isfinite(v).all()) or float(v.log().abs().max()) > safe:
            # the scalings left the safe range: fold them into the kernel and rebuild it from the source
            kernel.g = kernel.g + torch.log(v)
            kernel.cached, kernel.budget = {}, int(cache_bytes or 0)
            u, column = _absorb(kernel, {}, a_)
            v = torch.ones_like(v)
        else:
            u, column = _scale_rows(kernel, v, a_)
        done += 1
    f = torch.log(u) - kernel.row_max
    return Potentials(f, kernel.g + torch.log(v), epsilon, done, error, source, kernel, u, v)


def _absorb(kernel: _Kernel, scaled: dict, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Build K̂ from the scaled cost (cached blocks in place, others from the source) with the row
    update u = a / K̂·1; returns (u, K̂ᵀu)."""
    source = kernel.source
    u = torch.empty(source.n, device=source.device, dtype=source.dtype)
    column = torch.zeros(source.m, device=source.device, dtype=source.dtype)
    for k, (i0, i1) in enumerate(kernel.blocks):
        e = scaled.pop(k, None)
        if e is None:
            e = source.scaled(i0, i1, kernel.inv_eps)
        e += kernel.g
        top = e.amax(dim=1)
        kernel.row_max[i0:i1] = top
        e -= top[:, None]
        _exp_(e)
        u[i0:i1] = a[i0:i1] / e.sum(dim=1)
        column.addmv_(e.T, u[i0:i1])
        kernel.keep(k, e)
    return u, column


def _scale_rows(kernel: _Kernel, v: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One scaling iteration's row update u = a / K̂v and the column products K̂ᵀu, fused: each
    sub-block of rows is read once for both products."""
    source = kernel.source
    u = torch.empty(source.n, device=source.device, dtype=source.dtype)
    column = torch.zeros(source.m, device=source.device, dtype=source.dtype)
    sub = max(1, SUB_BLOCK_BYTES // (source.m * torch.empty((), dtype=source.dtype).element_size()))
    for k, (i0, i1) in enumerate(kernel.blocks):
        block = kernel.block(k)
        for s0 in range(0, i1 - i0, sub):
            rows = block[s0:s0 + sub]
            u_rows = a[i0 + s0:i0 + s0 + len(rows)] / torch.mv(rows, v)
            u[i0 + s0:i0 + s0 + len(rows)] = u_rows
            column.addmv_(rows.T, u_rows)
    return u, column


# Exponents are clamped from below before exp: SLEEF's exp takes a slow path (x20) for results
# below the normal range, and products of such entries with the scalings would be subnormal too.
# Relative to a row's (or, in the first pass, a column's) largest entry, 1, what the clamp adds is
# at most m·e^-60 ≈ 1e-23 per row: far below float32 resolution.
_EXP_FLOOR = {torch.float32: -60.0, torch.float16: -10.0, torch.bfloat16: -60.0}


def _exp_(x: torch.Tensor) -> torch.Tensor:
    floor = _EXP_FLOOR.get(x.dtype)
    if floor is not None:
        x.clamp_min_(floor)
    return x.exp_()


def _exp(x: torch.Tensor) -> torch.Tensor:
    """`_exp_` without writing into x (autograd may need it)."""
    floor = _EXP_FLOOR.get(x.dtype)
    return (x.clamp_min(floor) if floor is not None else x).exp()


def _log_marginal(weights, batch, size: int, device, dtype) -> torch.Tensor:
    if weights is None:
        return torch.full((*batch, size), -math.log(size), device=device, dtype=dtype)
    w = torch.as_tensor(weights, device=device, dtype=dtype)
    if w.shape[-1] != size:
        raise ValueError(f"sinkhorn: marginal of length {w.shape[-1]} for a cost dimension of {size}")
    if bool((w < 0).any()):
        raise ValueError("sinkhorn: marginals must be non-negative")
    return torch.log(w).expand(*batch, size) if batch else torch.log(w)


def _block_rows(m: int, dtype: torch.dtype, budget: int = DEFAULT_BLOCK_BYTES) -> int:
    # a block holds the cost rows plus two same-sized temporaries (scaled + exp inside logsumexp)
    itemsize = torch.empty((), dtype=dtype).element_size()
    return max(1, budget // (3 * m * itemsize))
