"""Self-kNN (k nearest other vectors for every vector), side by side in one run:

  naive            the loop a researcher writes: per query, a full NumPy dot product with the
                   float32 database, then argsort (timed on --naive-queries queries and
                   extrapolated to all n; the report says so)
  clipstore exact  features/knn.py: blocked matmul + torch.topk over the float16 vectors as stored,
                   query blocks against all rows (exact_knn) and the symmetric self-kNN (self_knn),
                   which multiplies each pair of row blocks once
  faiss Flat       faiss IndexFlatIP (exact), for reference
  IVF / HNSW       faiss approximate indexes built by features/index.py: build + search time and
                   recall@k against the exact result over all n queries

The vectors are clustered (random centres, a low-dimensional variation within each cluster and
isotropic noise; L2-normalised float16), not uniform noise: in uniform noise at d=512 every point
is nearly equidistant from every other, so "nearest" means little and the recall of approximate
indexes says nothing about real embeddings.

    python bench/knn.py [--n 50000] [--d 512] [--k 20] [--naive-queries 300]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def clustered_vectors(n: int, d: int, clusters: int, latent: int, spread: float, noise: float,
                      seed: int) -> np.ndarray:
    """Each cluster: a random centre, a random `latent`-dimensional variation around it (a class
    whose images differ in a few ways) and isotropic noise; L2-normalised float16. With the
    defaults a vector's 20 nearest neighbors have cosine 0.69-0.80, like CLIP image embeddings."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    bases = rng.standard_normal((clusters, latent, d)).astype(np.float32) * (spread / np.sqrt(latent))
    which = rng.integers(0, clusters, n)
    x = centres[which] + noise * rng.standard_normal((n, d)).astype(np.float32)
    for c in range(clusters):  # one cluster at a time keeps memory at n x d
        members = np.flatnonzero(which == c)
        x[members] += rng.standard_normal((len(members), latent)).astype(np.float32) @ bases[c]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float16)


def naive_knn(x32: np.ndarray, k: int, rows: np.ndarray) -> np.ndarray:
    out = np.empty((len(rows), k), dtype=np.int64)
    for j, i in enumerate(rows):
        sims = x32 @ x32[i]
        sims[i] = -np.inf
        out[j] = np.argsort(-sims)[:k]
    return out


def timed(fn, *args, **kw):
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=50_000)
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--clusters", type=int, default=50)
    p.add_argument("--latent", type=int, default=16, help="dimensions of variation within a cluster")
    p.add_argument("--spread", type=float, default=1.0, help="scale of that variation (centres: unit normal)")
    p.add_argument("--noise", type=float, default=0.3, help="isotropic per-dimension noise")
    p.add_argument("--naive-queries", type=int, default=300, help="queries the naive loop is timed on")
    p.add_argument("--ivf", default="IVF256,Flat")
    p.add_argument("--nprobe", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--hnsw", default="HNSW32")
    p.add_argument("--ef-search", type=int, nargs="+", default=[64, 128])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import faiss
    import torch

    from clipstore.features.index import make_index, search_others, set_search_params
    from clipstore.features.knn import exact_knn, recall_at_k, self_knn

    n, k = args.n, args.k
    x = clustered_vectors(n, args.d, args.clusters, args.latent, args.spread, args.noise, args.seed)
    x32 = x.astype(np.float32)
    print(f"{n:,} x {args.d} float16 vectors in {args.clusters} clusters, k={k}, "
          f"{os.cpu_count()} CPU cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"faiss {faiss.__version__}, device {'cuda' if torch.cuda.is_available() else 'cpu'}")
    all_rows = np.arange(n)
    rows: list[dict] = []

    # naive loop, on a sample of queries, extrapolated
    sample = np.random.default_rng(args.seed).choice(n, size=min(args.naive_queries, n), replace=False)
    naive_found, t = timed(naive_knn, x32, k, sample)
    naive_total = t * n / len(sample)
    rows.append({"method": f"naive NumPy loop (timed on {len(sample)} queries, x{n / len(sample):.0f})",
                 "build": 0.0, "search": naive_total, "recall": None})

    (query_idx, _), t = timed(exact_knn, x, x, k, self_rows=all_rows)
    rows.append({"method": "clipstore exact_knn (query blocks x all rows)", "build": 0.0, "search": t,
                 "recall": 1.0})
    (exact_idx, exact_sims), t = timed(self_knn, x, k)
    rows.append({"method": "clipstore self_knn (symmetric: each block pair once)", "build": 0.0, "search": t,
                 "recall": recall_at_k(query_idx, x32, x, exact_sims)})
    agree = np.mean([len(set(a) & set(b)) / k for a, b in zip(naive_found.tolist(), exact_idx[sample].tolist())])
    print(f"naive and clipstore exact agree on {agree:.4f} of the sampled neighbors")

    def approximate(factory: str, settings: list[dict]) -> None:
        built, build_s = timed(make_index, x, factory)
        for setting in settings:
            set_search_params(built.searcher, **setting)
            (found, _), search_s = timed(search_others, built.searcher, x32, all_rows, k)
            label = " ".join([f"faiss {factory}"] + [f"{key}={v}" for key, v in setting.items()])
            rows.append({"method": label, "build": build_s, "search": search_s,
                         "recall": recall_at_k(found, x32, x, exact_sims)})
            build_s = 0.0  # the build counts once, on the first setting

    approximate("Flat", [{}])
    approximate(args.ivf, [{"nprobe": v} for v in args.nprobe])
    approximate(args.hnsw, [{"ef_search": v} for v in args.ef_search])

    print_table(rows, naive_total, n)
    return {"rows": rows, "naive_extrapolated_s": naive_total}


def print_table(rows: list[dict], naive_total: float, n: int) -> None:
    head = (f"{'method':<58} {'build s':>8} {'search s':>9} {'total s':>8} {'queries/s':>10} {'recall@k':>9} "
            f"{'vs naive':>9}")
    print()
    print(head)
    print("-" * len(head))
    for r in rows:
        total = r["build"] + r["search"]
        recall = "-" if r["recall"] is None else f"{r['recall']:.4f}"
        print(f"{r['method']:<58} {r['build']:>8.2f} {r['search']:>9.2f} {total:>8.2f} {n / r['search']:>10,.0f} "
              f"{recall:>9} {naive_total / total:>8.1f}x")
    print("\nbuild s: index training + adding (counted once per index); search s: all n queries, own row excluded;"
          "\nvs naive: naive total / this total; recall@k: ties with the exact k-th similarity count as hits.")


if __name__ == "__main__":
    main()
