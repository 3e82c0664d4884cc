"""`clipstore pseudolabel nn`: each unlabeled image's nearest labeled image(s) (S-CLIP's hard-NN
and soft-NN baselines, `hard_nn` / `soft_nn` in the public code), as `pseudo_captions` rows.

Similarity is the cosine between unit image vectors. The row distribution is
p = softmax(s · cos(u, labeled)) with s the model's logit scale (soft NN's target):
  - hard (`nn`): matches = [the most similar labeled image], weights = [1];
  - soft (`soft_nn`, `--soft`): the `--top` labeled images of p, weights renormalised to sum 1.
Both record confidence = max p and entropy = H(p) of the full row, and the cosine of the best match.

Incremental: a row depends only on its image's vector and the labeled bank, so the recipe pins
the bank (which labeled vectors, their captions) and not the unlabeled set; new unlabeled images
(a grown corpus, a new split version with more) compute only their rows, and images that left the
unlabeled role make the version be recomputed."""

from __future__ import annotations

import time

import numpy as np

from clipstore.features.pseudolabels.common import (ROWS_PER_PART, caption_rows, check_pool, default_name, entropy,
                                                     logit_scale as _scale, produce_pseudolabels, resolve_vectors,
                                                     sample_captions, top_k)
from clipstore.features.pseudolabels.tables import PSEUDO_CAPTIONS
from clipstore.warehouse.hashing import digest
from clipstore.warehouse.store import Artifact, Store

CLI_ORDER = 10
DEFAULT_TOP = 5
BLOCK_ELEMENTS = 1 << 23     # similarities held at once (rows × labeled), float64: 64 MiB


def nearest_labels(store: Store, *, split: str, model=None, embeddings: list[str] | None = None, soft: bool = False,
                   top: int = DEFAULT_TOP, logit_scale: float | None = None, name: str | None = None,
                   batch_size: int = 64, workers: int | None = None, wait: bool = False,
                   progress: bool = True) -> Artifact:
    """Hard (or, with `soft`, soft) nearest-labeled-image pseudo-labels of `split`'s unlabeled
    images from `model`'s vectors (embedding what is missing) or from `embeddings` artifacts."""
    if soft:
        check_pool(top, 1 << 62, "the labeled pool")          # the type check now, the size once it is known
    vectors = resolve_vectors(store, split=split, model=model, embeddings=embeddings, batch_size=batch_size,
                              workers=workers, wait=wait, progress=progress)
    if soft:
        check_pool(top, len(vectors.labeled), f"the labeled pool of split {split!r}")
    scale = _scale(logit_scale, vectors.logit_scale)
    producer = "soft_nn" if soft else "nn"
    captions = sample_captions(store, vectors.labeled.keys)
    params = {"split": split, "tower_fingerprint": vectors.tower_fingerprint, "labeled": vectors.labeled.digest,
              "labeled_captions": digest(sorted([list(k), v] for k, v in captions.items())),
              "soft": soft, "top": top if soft else 1, "logit_scale": scale}
    ids = vectors.unlabeled.column("item_id")
    row_of = {i: r for r, i in enumerate(ids)}

    def build(run) -> None:
        started = time.monotonic()
        rows = np.asarray([row_of[i] for i in run.todo], dtype=np.int64)
        bank = vectors.labeled.vectors
        step = max(1, BLOCK_ELEMENTS // max(len(bank), 1))
        out = []
        for i0 in range(0, len(rows), step):
            block = rows[i0:i0 + step]
            sims = vectors.unlabeled.vectors[block] @ bank.T
            p = _softmax(sims, scale)
            if soft:
                match, weights = top_k(p, top)
            else:
                match = np.argmax(sims, axis=1)[:, None]      # ties: the lower labeled row (np.argmax)
                weights = np.ones((len(block), 1), dtype=np.float32)
            best = np.take_along_axis(sims, match[:, :1], axis=1)[:, 0]
            out.append(caption_rows(vectors, block, match, weights, p.max(axis=1), entropy(p), best, captions))
            if sum(t.num_rows for t in out) >= ROWS_PER_PART:
                run.write({"pseudo_captions": _concat(out)})
                out = []
        if out:
            run.write({"pseudo_captions": _concat(out)})
        run.stats.update({"logit_scale": scale, "labeled": len(bank), "unlabeled": len(ids),
                          "excluded": vectors.excluded, "model": vectors.model_name,
                          "seconds": round(time.monotonic() - started, 3)})

    return produce_pseudolabels(store, producer=producer,
                                name=name or default_name(split, producer, vectors.model_name), params=params,
                                tables={"pseudo_captions": PSEUDO_CAPTIONS}, lineage=vectors.lineage(), build=build,
                                sources=[vectors.split, *vectors.embeddings], wanted=ids, wait=wait)


def _softmax(sims: np.ndarray, scale: float) -> np.ndarray:
    z = np.asarray(sims, dtype=np.float64) * scale
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _concat(tables):
    import pyarrow as pa
    return pa.concat_tables(tables)


def add_parser(sub, cli) -> None:
    s = sub.add_parser("nn", help="nearest labeled image(s) of each unlabeled image: hard NN, or soft NN with --soft",
                       description="Caption-level pseudo-labels (pseudo_captions) from the nearest labeled images by "
                                   "cosine: hard NN keeps the nearest one; --soft keeps the --top of softmax(s·cos) "
                                   "renormalised. Incremental: new unlabeled images compute only their rows.")
    cli.add_vector_options(s)
    g = s.add_argument_group("labels")
    g.add_argument("--soft", action="store_true", help="soft NN: the top labeled images weighted by softmax(s·cos) "
                                                        "(default: hard NN, one match)")
    g.add_argument("--top", type=int, default=DEFAULT_TOP,
                   help="labeled images kept per row with --soft (default: %(default)s)")

    def cmd(args) -> None:
        t0 = time.monotonic()
        art = nearest_labels(cli.store(args), soft=args.soft, top=args.top, logit_scale=args.logit_scale,
                             name=args.name, **cli.vector_kwargs(args))
        cli.done(f"pseudolabel {art.stats.get('producer')} {art.name}", art, t0)

    s.set_defaults(func=cmd)
