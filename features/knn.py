"""Exact k-nearest-neighbor search by inner product: a blocked matrix product and `torch.topk`.

At clipstore's scale (up to a few million vectors) exact search is cheap, so it is the default
everywhere and the yardstick that every approximate index is measured against.

- Blocks: the database is cut into blocks of at most `DB_BLOCK` rows and the queries into blocks
  sized so that one block of scores stays under `memory_mb`; a running top-k per query is merged
  block after block, so memory does not grow with the database.
- Precision: float32 products on the CPU. On a GPU the products run in float16 (tensor cores) to
  pick `k + margin` candidates per query, which are then re-scored in float32, so the returned
  similarities are float32 values either way.
- Ties: equal similarities are ordered by ascending database row, and the k-th place goes to
  the lowest rows among those tied there (on the float32 path this holds for the whole row;
  on the float16 path, among the candidates). Results are therefore deterministic.
- Self-matches: `self_rows[i]` is the database row of query i, left out of its results (the
  self-kNN graph). A query row's duplicates (other rows with the same vector) are kept.
- The self-kNN graph (`self_knn`) uses the symmetry of the similarity matrix: each pair of row
  blocks is multiplied once and its scores, read by rows and by columns, serve both blocks, for
  about half the products of `exact_knn(x, x)` and the same result.
- k larger than what exists: k is clamped to the number of database rows a query may return,
  so the result has `min(k, n - excluded)` columns."""

from __future__ import annotations

import math

import numpy as np
import torch

from clipstore.warehouse.errors import InputError

DB_BLOCK = 1 << 17              # database rows per block
DEFAULT_MEMORY_MB = 256         # budget for one block of scores
FP16_MARGIN = 16                # extra candidates per query kept before the float32 re-score
CPU_SELF_BLOCK = 2048           # self_knn's square blocks on a CPU: the transposed top-k stays in cache


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def exact_knn(queries: np.ndarray, database: np.ndarray, k: int, *, self_rows: np.ndarray | None = None,
              device: str | None = None, half: bool | None = None, memory_mb: float = DEFAULT_MEMORY_MB,
              db_block: int = DB_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """The k database rows of largest inner product with each query.

    Returns (indices int64 (nq, k'), sims float32 (nq, k')), best first, k' = min(k, rows a
    query may return). `half` (default: on CUDA only) computes candidate scores in float16;
    `memory_mb` and `db_block` bound the size of one block of scores."""
    queries, database = _as_matrix(queries, "queries"), _as_matrix(database, "database")
    if queries.shape[1] != database.shape[1]:
        raise InputError(f"queries have dimension {queries.shape[1]} but the database {database.shape[1]}",
                         fix="search vectors made by the same model (same embedding size)")
    _check_k(k)
    if self_rows is not None:
        self_rows = np.asarray(self_rows, dtype=np.int64)
        if self_rows.shape != (len(queries),):
            raise InputError(f"self_rows needs one database row per query ({len(queries)}), got {self_rows.shape}")
    n_q, n_db = len(queries), len(database)
    k = int(min(k, n_db - (1 if self_rows is not None else 0)))
    if n_q == 0 or k <= 0:
        return np.zeros((n_q, max(k, 0)), dtype=np.int64), np.zeros((n_q, max(k, 0)), dtype=np.float32)

    device = device or default_device()
    half = device.startswith("cuda") if half is None else half
    best_idx = torch.empty((n_q, 0), dtype=torch.int64)
    best_sim = torch.empty((n_q, 0), dtype=torch.float32)
    db_block = min(n_db, db_block)
    score_bytes = 2 if half else 4
    q_block = int(max(1, min(n_q, memory_mb * 2**20 // (db_block * score_bytes))))
    for d0 in range(0, n_db, db_block):
        block = torch.from_numpy(np.asarray(database[d0:d0 + db_block], dtype=np.float32)).to(device)
        block_half = block.half() if half else None
        parts_idx, parts_sim = [], []
        for q0 in range(0, n_q, q_block):
            q = torch.from_numpy(np.asarray(queries[q0:q0 + q_block], dtype=np.float32)).to(device)
            own = None if self_rows is None else torch.from_numpy(self_rows[q0:q0 + q_block] - d0).to(device)
            scores = q.half() @ block_half.T if half else q @ block.T
            idx, sim = _block_topk(scores, q, block, k, own, rescore=half)
            parts_idx.append(idx.cpu() + d0)
            parts_sim.append(sim.cpu())
        best_idx, best_sim = _merge(best_idx, best_sim, torch.cat(parts_idx), torch.cat(parts_sim), k)
    return best_idx.numpy(), best_sim.numpy()


def self_knn(vectors: np.ndarray, k: int, *, device: str | None = None, half: bool | None = None,
             memory_mb: float = DEFAULT_MEMORY_MB, db_block: int = DB_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k nearest other rows (the kNN graph): what `exact_knn(vectors, vectors, k,
    self_rows=arange(n))` returns, from half the products (see the module doc). Square blocks
    of rows hold at most `db_block` rows and one block of scores stays under `memory_mb`."""
    x = _as_matrix(vectors, "vectors")
    _check_k(k)
    n = len(x)
    k = int(min(k, n - 1))
    if n == 0 or k <= 0:
        return np.zeros((n, max(k, 0)), dtype=np.int64), np.zeros((n, max(k, 0)), dtype=np.float32)
    device = device or default_device()
    half = device.startswith("cuda") if half is None else half
    cap = db_block if device.startswith("cuda") else CPU_SELF_BLOCK
    size = int(max(1, min(n, db_block, cap, math.isqrt(int(memory_mb * 2**20 / (2 if half else 4))))))
    starts = list(range(0, n, size))
    best = [(torch.empty((min(size, n - s), 0), dtype=torch.int64), torch.empty((min(size, n - s), 0)))
            for s in starts]

    def add(block: int, idx: torch.Tensor, sim: torch.Tensor, offset: int) -> None:
        best[block] = _merge(*best[block], idx.cpu() + offset, sim.cpu(), k)

    # Row block r sees column blocks in ascending order (0..r-1 through the transposed scores of
    # earlier rows of this loop, then r, r+1, ...), so merging keeps ties on the lowest rows.
    for bi, a0 in enumerate(starts):
        a, a_half = _device_rows(x, a0, size, device, half)
        for bj in range(bi, len(starts)):
            b0 = starts[bj]
            b, b_half = (a, a_half) if bj == bi else _device_rows(x, b0, size, device, half)
            scores = a_half @ b_half.T if half else a @ b.T
            if bj == bi:
                add(bi, *_block_topk(scores, a, a, k, torch.arange(len(a), device=a.device), rescore=half), b0)
                continue
            add(bi, *_block_topk(scores, a, b, k, None, rescore=half), b0)
            add(bj, *_block_topk(scores.T.contiguous(), b, a, k, None, rescore=half), a0)
    return torch.cat([i for i, _ in best]).numpy(), torch.cat([s for _, s in best]).numpy()


def self_knn_block(vectors: np.ndarray, rows: tuple[int, int], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows [start, stop) of `self_knn(vectors, k)`: those rows' k nearest other rows in the whole
    matrix (one block of the graph, e.g. one Ray task: features/graph.py). Same tie rule (ascending
    row), so the blocks stacked give self_knn's neighbours; the similarities agree within float32
    rounding (the products are cut into other blocks)."""
    start, stop = rows
    return exact_knn(vectors[start:stop], vectors, k, self_rows=np.arange(start, stop, dtype=np.int64))


def _device_rows(x: np.ndarray, start: int, size: int, device: str, half: bool):
    rows = torch.from_numpy(np.asarray(x[start:start + size], dtype=np.float32)).to(device)
    return rows, rows.half() if half else None


def recall_at_k(found: np.ndarray, queries: np.ndarray, database: np.ndarray, exact_sims: np.ndarray,
                tolerance: float = 1e-5, chunk: int = 2048) -> float:
    """Share of the k results per query that belong to the exact top-k, counting ties: a result
    is right when its true similarity reaches the exact k-th similarity (within `tolerance`),
    so an index that returns one of several equally near items is not penalised.
    `found` (nq, k) holds database rows, -1 for missing results (FAISS pads with -1)."""
    if found.size == 0:
        return 1.0
    k = found.shape[1]
    hits = 0
    for start in range(0, len(found), chunk):  # (chunk, k, dim) floats at a time
        rows = found[start:start + chunk]
        q = np.asarray(queries[start:start + chunk], dtype=np.float32)
        vecs = np.asarray(database[np.clip(rows, 0, None).ravel()], dtype=np.float32).reshape(*rows.shape, -1)
        true_sims = np.einsum("qd,qkd->qk", q, vecs)
        kth = exact_sims[start:start + chunk, k - 1:k]
        hits += int(((rows >= 0) & (true_sims >= kth - tolerance)).sum())
    return hits / found.size


# ---- internals --------------------------------------------------------------------------------
def _check_k(k) -> None:
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}", fix="pass e.g. k=10")


def _as_matrix(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x) if not isinstance(x, np.ndarray) else x
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.floating):
        raise InputError(f"{what} must be a 2-d float array, got shape {x.shape} of {x.dtype}",
                         fix="pass one vector per row (e.g. Embeddings.matrix())")
    if x.size and not np.isfinite(x).all():
        raise InputError(f"{what} contain NaN or infinite values",
                         fix="re-embed the items; a finite vector per row is required")
    return x


def _block_topk(scores: torch.Tensor, q: torch.Tensor, block: torch.Tensor, k: int, own: torch.Tensor | None,
                rescore: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of one query block against one database block from their scores (float32, or
    float16 with `rescore`: candidates re-scored exactly), ordered (-sim, row)."""
    n = block.shape[0]
    if own is not None:  # rows outside this block fall outside [0, n) and are left alone
        inside = (own >= 0) & (own < n)
        scores[inside.nonzero().squeeze(1), own[inside]] = -torch.inf
    # one extra candidate shows whether a value ties with the k-th (float32) or gives the
    # float16 scores room for rounding
    take = min(n, k + (FP16_MARGIN if rescore else 1))
    sims, idx = torch.topk(scores, take, dim=1)
    if rescore:  # re-score the float16 candidates exactly
        sims = torch.einsum("qd,qcd->qc", q, block[idx])
        if own is not None:
            sims = torch.where(idx == own[:, None], torch.full_like(sims, -torch.inf), sims)
    elif take > k:
        _fill_boundary_ties(scores, sims, idx, k)
    idx, sims = _order(idx, sims)
    return idx[:, :k], sims[:, :k]


def _fill_boundary_ties(scores: torch.Tensor, sims: torch.Tensor, idx: torch.Tensor, k: int) -> None:
    """topk picks arbitrarily among values tied at the k-th place; give those places to the
    lowest rows instead. Only rows whose (k+1)-th value equals the k-th are touched (rare)."""
    crowded = (sims[:, k] == sims[:, k - 1]).nonzero().squeeze(1)
    for r in crowded.tolist():
        kth = sims[r, k - 1]
        rows = (scores[r] >= kth).nonzero().squeeze(1)          # ascending rows
        order = torch.sort(scores[r, rows], descending=True, stable=True).indices[:k]
        idx[r, :k], sims[r, :k] = rows[order], scores[r, rows[order]]
        sims[r, k:] = -torch.inf  # the extra candidate must not come back into the top k


def _order(idx: torch.Tensor, sims: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each row by similarity, descending, ties by ascending index."""
    by_idx = torch.argsort(idx, dim=1)
    idx, sims = idx.gather(1, by_idx), sims.gather(1, by_idx)
    by_sim = torch.sort(sims, dim=1, descending=True, stable=True).indices
    return idx.gather(1, by_sim), sims.gather(1, by_sim)


def _merge(best_idx: torch.Tensor, best_sim: torch.Tensor, idx: torch.Tensor, sims: torch.Tensor,
           k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Running top-k over database blocks. Earlier blocks hold lower rows, so a stable sort of
    [best, new] keeps the (-sim, row) order."""
    if best_idx.shape[1] == 0:
        return idx, sims
    all_idx, all_sim = torch.cat([best_idx, idx], dim=1), torch.cat([best_sim, sims], dim=1)
    order = torch.sort(all_sim, dim=1, descending=True, stable=True).indices[:, :k]
    return all_idx.gather(1, order), all_sim.gather(1, order)
