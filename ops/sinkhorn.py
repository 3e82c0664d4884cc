"""Entropic optimal transport by Sinkhorn iterations in the log domain (torch).

S-CLIP's caption-level OT uses ε = 1/s ≈ 0.01 on costs in [0, 2]: the kernel exp(−C/ε) holds
values down to e^−200, which float32 flushes to zero and plain Sinkhorn then divides by. In the
log domain the iterations only ever take log-sum-exps, which stay finite at any ε.

One solver serves both callers:
  - the trainer's per-batch OT: `sinkhorn(cost, ε)` on a (..., n, m) tensor (batched over the
    leading dimensions, on the tensor's device), returning the plan; gradients flow through the
    iterations only with `stop_gradient=False`;
  - the global OT over a whole unlabeled × labeled bank: `solve(RowBlocks(...), ε)` streams the
    cost in row blocks (`block_rows` sized to a memory budget), so neither the kernel nor the plan
    is ever materialised; `Potentials.rows(i0, i1)` then yields plan rows block by block.

Iterations follow POT's order (`ot.sinkhorn`, `ot.bregman.sinkhorn_log`): the column potential is
updated first, the row potential last, so after any number of iterations the rows of the plan sum
exactly to `a` and the columns approximately to `b`. With a tolerance, iteration stops once the
column marginal's L1 error falls below it (checked every iteration: it comes free with the fused
block pass)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

DEFAULT_BLOCK_BYTES = 256 << 20   # working memory for one cost block in the global mode


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

    @classmethod
    def dense(cls, cost: torch.Tensor) -> "RowBlocks":
        return cls(cost.shape[0], cost.shape[1], lambda i0, i1: cost[i0:i1], cost.device, cost.dtype)

    @classmethod
    def cosine(cls, queries: torch.Tensor, bank: torch.Tensor) -> "RowBlocks":
        bank_t = bank.T.contiguous()
        return cls(queries.shape[0], bank.shape[0], lambda i0, i1: 1.0 - queries[i0:i1] @ bank_t,
                   queries.device, queries.dtype)


@dataclass
class Potentials:
    """The solution's log-domain dual variables: plan_ij = exp(−C_ij/ε + f_i + g_j)."""

    f: torch.Tensor          # (..., n)
    g: torch.Tensor          # (..., m)
    epsilon: float
    iterations: int
    marginal_error: float    # L1 error of the returned plan's column marginal (its rows are exact)
    source: RowBlocks | None = None

    def plan(self, cost: torch.Tensor) -> torch.Tensor:
        return torch.exp(-cost / self.epsilon + self.f[..., :, None] + self.g[..., None, :])

    def rows(self, block_rows: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """(first row, plan rows) block by block, for a solution computed from `RowBlocks`."""
        src = self.source
        step = block_rows or _block_rows(src.m, src.dtype)
        for i0 in range(0, src.n, step):
            i1 = min(src.n, i0 + step)
            yield i0, torch.exp(-src.block(i0, i1) / self.epsilon + self.f[i0:i1, None] + self.g[None, :])


def sinkhorn(cost: torch.Tensor, epsilon: float, *, a: torch.Tensor | None = None, b: torch.Tensor | None = None,
             iters: int = 10, tol: float | None = None, stop_gradient: bool = True) -> torch.Tensor:
    """The entropic OT plan for `cost` (..., n, m) with marginals `a` (..., n) and `b` (..., m)
    (uniform when omitted). See the module doc."""
    with torch.set_grad_enabled(torch.is_grad_enabled() and not stop_gradient):
        c = cost.detach() if stop_gradient else cost
        return solve(c, epsilon, a=a, b=b, iters=iters, tol=tol).plan(c)


def solve(cost: torch.Tensor | RowBlocks, epsilon: float, *, a: torch.Tensor | None = None,
          b: torch.Tensor | None = None, iters: int = 10, tol: float | None = None,
          block_rows: int | None = None) -> Potentials:
    """Sinkhorn potentials for a dense cost tensor (one block, batched over leading dims) or a
    `RowBlocks` source (2-D, streamed in blocks of `block_rows` rows)."""
    if not epsilon > 0:
        raise ValueError(f"sinkhorn: epsilon must be > 0, got {epsilon}")
    if iters < 1:
        raise ValueError(f"sinkhorn: iters must be >= 1, got {iters}")
    source = cost if isinstance(cost, RowBlocks) else None
    if source is None:
        n, m, device, dtype = cost.shape[-2], cost.shape[-1], cost.device, cost.dtype
        batch = cost.shape[:-2]
        blocks = [(0, n)]
        block = lambda i0, i1: cost[..., i0:i1, :]  # noqa: E731
    else:
        n, m, device, dtype, batch = source.n, source.m, source.device, source.dtype, ()
        step = block_rows or _block_rows(m, dtype)
        blocks = [(i0, min(n, i0 + step)) for i0 in range(0, n, step)]
        block = source.block
    log_a = _log_marginal(a, batch, n, device, dtype)
    log_b = _log_marginal(b, batch, m, device, dtype)
    inv_eps = 1.0 / epsilon

    # One pass over the blocks updates f block by block (given g; f = 0 before the first g) and
    # accumulates the column log-sum-exp with the new f, which is what the next g needs: one cost
    # read per iteration.
    def sweep(g: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        fs, column_parts = [], []
        for i0, i1 in blocks:
            scaled = block(i0, i1) * -inv_eps
            if g is None:
                f_blk = torch.zeros((*batch, i1 - i0), device=device, dtype=dtype)
            else:
                f_blk = log_a[..., i0:i1] - torch.logsumexp(scaled + g[..., None, :], dim=-1)
            fs.append(f_blk)
            column_parts.append(torch.logsumexp(scaled + f_blk[..., :, None], dim=-2))
        f_all = fs[0] if len(fs) == 1 else torch.cat(fs, dim=-1)
        lse = column_parts[0] if len(column_parts) == 1 else torch.logsumexp(torch.stack(column_parts), dim=0)
        return f_all, lse

    _, lse = sweep(None)
    g = log_b - lse
    error, done = math.inf, 0
    for it in range(iters):
        f, lse = sweep(g)
        done = it + 1
        # column marginal of the plan with (f, g): exp(g + lse) should equal b
        error = float((torch.exp(g + lse) - torch.exp(log_b)).detach().abs().sum(dim=-1).max())
        if done == iters or (tol is not None and error < tol):
            break
        g = log_b - lse
    return Potentials(f, g, epsilon, done, error, source)


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
