"""`clipstore pseudolabel ot`: S-CLIP's caption-level pseudo-labels by optimal transport, global
over the labeled bank, as `pseudo_captions` rows.

S-CLIP (`ot_plan` in the public code) transports a batch of unlabeled images onto the labeled
images of the batch: cost C = 1 − u·x between unit image vectors, entropic regularisation
ε = 1/s with s the model's logit scale, uniform marginals, 10 Sinkhorn iterations, and each row
of the plan normalised to sum 1 is the soft target over the labeled captions. Here the plan is
over every unlabeled image × every labeled image of the split at once (clipstore.ops.sinkhorn:
row blocks within a memory budget, kernel blocks cached within `--memory`), and each row keeps
its `--top` labeled images, renormalised. confidence = the row's largest normalised weight,
entropy = the entropy of the whole normalised row. `--solver pot` runs POT's `ot.sinkhorn` in
float64 on the dense cost instead (memory n × m × 8 bytes twice), for comparison.

Recipe-pinned: every row depends on every image through the marginals, so new unlabeled or
labeled images give a new version, computed in full."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from clipstore.features.pseudolabels.common import (ROWS_PER_PART, caption_rows, check_pool, default_name, entropy,
                                                     logit_scale as _scale, produce_pseudolabels, resolve_vectors,
                                                     sample_captions, top_k)
from clipstore.features.pseudolabels.tables import PSEUDO_CAPTIONS
from clipstore.warehouse.errors import InputError
from clipstore.warehouse.hashing import digest
from clipstore.warehouse.store import Artifact, Store

CLI_ORDER = 20
SOLVERS = ("torch", "pot")
DEFAULT_TOP = 5
DEFAULT_ITERS = 10          # S-CLIP's numItermax
DEFAULT_MEMORY = 1 << 30    # kernel bytes kept between iterations


def transport_labels(store: Store, *, split: str, model=None, embeddings: list[str] | None = None,
                     top: int = DEFAULT_TOP, epsilon: float | None = None, logit_scale: float | None = None,
                     iters: int = DEFAULT_ITERS, solver: str = "torch", memory: int = DEFAULT_MEMORY,
                     name: str | None = None, batch_size: int = 64, workers: int | None = None, wait: bool = False,
                     progress: bool = True) -> Artifact:
    """Global caption-level OT pseudo-labels of `split`'s unlabeled images (see the module doc)."""
    if solver not in SOLVERS:
        raise InputError(f"unknown solver {solver!r}", fix=f"use one of: {', '.join(SOLVERS)}")
    if not isinstance(iters, int) or iters < 1:
        raise InputError(f"--iters must be a positive integer, got {iters!r}", fix="S-CLIP uses --iters 10")
    if epsilon is not None and not (isinstance(epsilon, (int, float)) and 0 < epsilon < float("inf")):
        raise InputError(f"--epsilon must be a positive number, got {epsilon!r}", fix="e.g. --epsilon 0.01")
    check_pool(top, 1 << 62, "the labeled pool")
    vectors = resolve_vectors(store, split=split, model=model, embeddings=embeddings, batch_size=batch_size,
                              workers=workers, wait=wait, progress=progress)
    check_pool(top, len(vectors.labeled), f"the labeled pool of split {split!r}")
    eps = float(epsilon) if epsilon is not None else 1.0 / _scale(logit_scale, vectors.logit_scale)
    captions = sample_captions(store, vectors.labeled.keys)
    params = {**vectors.recipe(), "labeled_captions": digest(sorted([list(k), v] for k, v in captions.items())),
              "top": top, "epsilon": eps, "iters": iters, "solver": solver}

    def build(run) -> None:
        started = time.monotonic()
        u, lab = vectors.unlabeled.vectors, vectors.labeled.vectors
        tables, solved = [], {}
        for i0, rows in _plan_rows(u, lab, eps, iters, solver, memory, solved):
            block = np.arange(i0, i0 + len(rows))
            match, weights = top_k(rows, top)
            sims = np.einsum("ij,ij->i", u[block], lab[match[:, 0]])
            tables.append(caption_rows(vectors, block, match, weights, rows.max(axis=1), entropy(rows), sims,
                                       captions))
            if sum(t.num_rows for t in tables) >= ROWS_PER_PART:
                run.write({"pseudo_captions": pa.concat_tables(tables)})
                tables = []
        if tables:
            run.write({"pseudo_captions": pa.concat_tables(tables)})
        run.stats.update({"epsilon": eps, "iters": iters, "solver": solver, "labeled": len(lab), "unlabeled": len(u),
                          "excluded": vectors.excluded, "model": vectors.model_name,
                          "marginal_error": solved.get("marginal_error"),
                          "seconds": round(time.monotonic() - started, 3)})

    return produce_pseudolabels(store, producer="ot", name=name or default_name(split, "ot", vectors.model_name),
                                params=params, tables={"pseudo_captions": PSEUDO_CAPTIONS}, lineage=vectors.lineage(),
                                build=build, sources=[vectors.split, *vectors.embeddings],
                                config={"memory": memory}, wait=wait)


def _plan_rows(u: np.ndarray, lab: np.ndarray, eps: float, iters: int, solver: str, memory: int, solved: dict):
    """(first row, row-normalised plan rows as float64 numpy) block by block."""
    if solver == "pot":
        import warnings

        import ot
        cost = 1.0 - u.astype(np.float64) @ lab.astype(np.float64).T
        with warnings.catch_warnings():       # POT warns that 10 iterations do not converge: that is the setting
            warnings.simplefilter("ignore")
            plan = ot.sinkhorn(np.full(len(u), 1 / len(u)), np.full(len(lab), 1 / len(lab)), cost, eps,
                               numItermax=iters, stopThr=0.0)
        solved["marginal_error"] = float(np.abs(plan.sum(axis=0) - 1 / len(lab)).sum())
        plan /= plan.sum(axis=1, keepdims=True)
        step = max(1, (1 << 22) // max(len(lab), 1))
        for i0 in range(0, len(u), step):
            yield i0, plan[i0:i0 + step]
        return
    import torch

    from clipstore.ops.sinkhorn import RowBlocks, solve
    sol = solve(RowBlocks.cosine(torch.from_numpy(u), torch.from_numpy(lab)), eps, iters=iters, cache_bytes=memory)
    solved["marginal_error"] = sol.marginal_error
    for i0, rows in sol.rows(normalise=True):
        yield i0, rows.double().numpy()


def _memory(text: str) -> int:
    """A byte size: 512M, 2G, 1000000."""
    import argparse
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    text = text.strip().upper().removesuffix("B")
    try:
        return int(float(text[:-1]) * units[text[-1]]) if text and text[-1] in units else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 512M, 2G)") from None


def add_parser(sub, cli) -> None:
    s = sub.add_parser("ot", help="S-CLIP caption-level pseudo-labels: entropic OT, global over the labeled bank",
                       description="Caption-level pseudo-labels (pseudo_captions) from the entropic OT plan between "
                                   "every unlabeled and every labeled image of the split (cost 1 − cos, ε = 1/s, "
                                   "uniform marginals, S-CLIP's 10 iterations); each row's --top labeled images, "
                                   "renormalised. A new unlabeled or labeled image gives a new version.")
    cli.add_vector_options(s)
    g = s.add_argument_group("transport")
    g.add_argument("--top", type=int, default=DEFAULT_TOP, help="labeled images kept per row (default: %(default)s)")
    g.add_argument("--epsilon", type=float, help="entropic regularisation ε (default: 1 / the logit scale)")
    g.add_argument("--iters", type=int, default=DEFAULT_ITERS, help="Sinkhorn iterations (default: %(default)s)")
    g.add_argument("--solver", choices=SOLVERS, default="torch",
                   help="torch: clipstore's streaming log-stabilised solver; pot: POT's ot.sinkhorn in float64 on "
                        "the dense cost (default: %(default)s)")
    g.add_argument("--memory", type=_memory, default=DEFAULT_MEMORY, metavar="SIZE",
                   help="kernel bytes kept between iterations by the torch solver; beyond it blocks are recomputed "
                        "(default: 1G)")

    def cmd(args) -> None:
        t0 = time.monotonic()
        art = transport_labels(cli.store(args), top=args.top, epsilon=args.epsilon, logit_scale=args.logit_scale,
                               iters=args.iters, solver=args.solver, memory=args.memory, name=args.name,
                               **cli.vector_kwargs(args))
        cli.done(f"pseudolabel ot {art.name}", art, t0)

    s.set_defaults(func=cmd)
