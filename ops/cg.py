"""Batched conjugate gradients (torch): many right-hand sides of one symmetric positive-definite
system solved together, each column with its own step sizes, on the tensors' device.

Label propagation solves (I − αW) Z = Y for every class at once: one sparse product per
iteration serves all C columns, where scipy's `scipy.sparse.linalg.cg` solves one vector at a
time. Each column follows scipy's iteration exactly (no preconditioner, x0 = 0 unless given):
the convergence test ‖r‖ < max(atol, rtol·‖b‖) comes at the start of an iteration, a column that
passes it is frozen (its x stops changing) while the others go on, and a zero right-hand side
returns zeros. So column j after `maxiter` iterations is what `cg(A, b[:, j], rtol=…, atol=…,
maxiter=…)` returns, to floating-point rounding.

`A` is a dense or sparse (CSR/COO) torch matrix, or a callable mapping an (n, m) tensor to
A @ it (e.g. `lambda p: p - alpha * (w @ p)`, which never forms I − αW)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch


@dataclass
class CGResult:
    """`x` (n,) or (n, m) like `b`; per column: `iterations` done, `converged` (the tolerance was
    met), `residual` ‖b − A x‖ as the recurrence tracks it."""

    x: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor
    residual: torch.Tensor


def cg(a: torch.Tensor | Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, *, x0: torch.Tensor | None = None,
       rtol: float = 1e-5, atol: float = 0.0, maxiter: int | None = None) -> CGResult:
    """Solve A x = b for every column of `b` (see the module doc); defaults as scipy's."""
    if rtol < 0 or atol < 0:
        raise ValueError(f"cg: rtol and atol must be >= 0, got rtol={rtol}, atol={atol}")
    matvec = a if callable(a) and not isinstance(a, torch.Tensor) else (lambda p: a @ p)
    vector = b.ndim == 1
    bb = b[:, None] if vector else b
    if bb.ndim != 2:
        raise ValueError(f"cg: b must be (n,) or (n, m), got shape {tuple(b.shape)}")
    n, m = bb.shape
    maxiter = 10 * n if maxiter is None else int(maxiter)
    if maxiter < 0:
        raise ValueError(f"cg: maxiter must be >= 0, got {maxiter}")
    b_norm = torch.linalg.vector_norm(bb, dim=0)
    threshold = torch.clamp(rtol * b_norm, min=atol)
    if x0 is None:
        x = torch.zeros_like(bb)
        r = bb.clone()
    else:
        x = (x0[:, None] if vector else x0).clone().to(bb.dtype)
        r = bb - matvec(x)
    zero_rhs = b_norm == 0          # scipy returns b itself (zeros) for these
    x = torch.where(zero_rhs[None, :], torch.zeros_like(x), x)
    done = zero_rhs.clone()
    iterations = torch.zeros(m, dtype=torch.int64, device=bb.device)
    p = torch.zeros_like(bb)
    rho_prev = torch.ones(m, dtype=bb.dtype, device=bb.device)
    first = True
    for _ in range(maxiter):
        done |= torch.linalg.vector_norm(r, dim=0) < threshold
        active = ~done
        if not bool(active.any()):
            break
        rho = (r * r).sum(dim=0)
        beta = torch.where(active, rho / torch.where(active, rho_prev, 1.0), 0.0) if not first else None
        p = r.clone() if first else r + beta * p
        first = False
        q = matvec(p)
        pq = (p * q).sum(dim=0)
        step = torch.where(active, rho / torch.where(active, pq, 1.0), 0.0)
        x = x + step * p            # step is 0 for frozen columns
        r = r - step * q
        rho_prev = torch.where(active, rho, rho_prev)
        iterations += active.to(torch.int64)
    residual = torch.linalg.vector_norm(r, dim=0)
    converged = done | (residual < threshold)
    if vector:
        x = x[:, 0]
    return CGResult(x, iterations, converged, residual)


def sparse_from_scipy(matrix, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
                      ) -> torch.Tensor:
    """A scipy.sparse matrix as a torch sparse CSR tensor on `device` (for `cg` on a GPU)."""
    csr = matrix.tocsr()
    with warnings.catch_warnings():   # torch calls its sparse CSR support "beta"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(torch.from_numpy(csr.indptr.astype(np.int64)),
                                       torch.from_numpy(csr.indices.astype(np.int64)),
                                       torch.from_numpy(np.asarray(csr.data)).to(dtype), size=csr.shape,
                                       device=device, check_invariants=False)
