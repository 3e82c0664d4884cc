"""The pixel cache against decoding the shards, for reading images and for embedding them.

On a corpus of distinct real UC Merced images (stored as PNG, 256x256), cached at tiny-vit's eval
preprocessing (64x64, shortest side + center crop, bicubic):
  decode      read + decode + resize from the shard tars, one process: what every epoch costs without a cache
  fill        `clipstore pixels` end to end (workers, parts, catalog): the one-off cost of the cache
  read        random batches gathered from the memory-mapped cache, one process (+ normalised: as embed)
  epoch       a trainer's augmented epoch: cache + TrainAugment (random resized crop + flip on tensors)
              vs decode + open_clip's PIL train transform, one process each
  embed       tiny-vit `clipstore embed` from the shards (--pixel-cache off) vs from the cache, against
              the forward pass on pre-made tensors (the bound no pipeline beats); vectors compared

    python bench/pixels.py [--images 1500] [--batch-size 64] [--workers N]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def _bench_embed():
    """bench/embed.py's corpus writer and forward bound (one corpus recipe for both benchmarks)."""
    spec = importlib.util.spec_from_file_location("bench_embed", REPO / "bench" / "embed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rate(fn, n_per_call: int, min_seconds: float) -> float:
    """Items/s of fn() called repeatedly for at least min_seconds (after one warm-up call)."""
    fn()
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < min_seconds:
        fn()
        done += n_per_call
    return done / (time.perf_counter() - started)


def decoded(refs):
    """The stored images, decoded from their shard tars (each tar opened once)."""
    from clipstore.warehouse.shards import decode
    handles = {}
    try:
        for ref in refs:
            if ref.shard not in handles:
                handles[ref.shard] = open(ref.shard, "rb")
            yield decode(handles[ref.shard], ref)
    finally:
        for tar in handles.values():
            tar.close()


def decode_rate(refs, spec, min_seconds: float) -> float:
    chunk = refs[:200]
    return rate(lambda: [spec.prepare(image) for image in decoded(chunk)], len(chunk), min_seconds)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1500, help="corpus size (distinct images)")
    parser.add_argument("--batch-size", type=int, default=64, help="embed batch size")
    parser.add_argument("--train-batch", type=int, default=256, help="batch of the read and epoch timings")
    parser.add_argument("--shard-size", type=int, default=100)
    parser.add_argument("--workers", type=int, default=None, help="decode workers (default: as the stages choose)")
    parser.add_argument("--min-seconds", type=float, default=3.0, help="how long to time each rate")
    args = parser.parse_args(argv)

    from clipstore.features.embed import _normalisation, embed, model_pixel_spec, start_worker_server
    from clipstore.features.models import ModelSpec, build_model, load_model
    from clipstore.features.pixels import cache_pixels
    from clipstore.features.vectors import load_embeddings
    from clipstore.ingest.pipeline import ingest
    from clipstore.warehouse.pixel_tensors import TrainAugment, to_model_input
    from clipstore.warehouse.pixels import open_pixel_cache
    from clipstore.warehouse.shards import corpus_images
    from clipstore.warehouse.sql import Session
    from clipstore.warehouse.store import Store

    bench = _bench_embed()
    start_worker_server()
    model = load_model(ModelSpec("tiny-vit", device="cpu"))
    spec = model_pixel_spec(model)
    n, out = args.images, {}
    with tempfile.TemporaryDirectory(prefix="clipstore-bench-pixels-") as tmp:
        work = Path(tmp)
        bench.write_corpus(work / "corpus", n)
        shards, cached = Store(work / "shards"), Store(work / "cached")
        for s in (shards, cached):
            ingest(s, "karpathy", work / "corpus", name="bench", shard_size=args.shard_size, progress=False)
        with Session(cached) as session:
            refs = corpus_images(cached, session, cached.current("corpus", "bench"))
        files = sorted((work / "corpus" / "images").glob("*.tif"), key=lambda p: int(p.stem))

        decode_now = lambda: decode_rate(refs, spec, args.min_seconds)  # noqa: E731
        out["decode"] = decode_now()
        t0 = time.perf_counter()
        [px] = cache_pixels(cached, corpus="bench", model=model, workers=args.workers, progress=False)
        out["fill"] = n / (time.perf_counter() - t0)
        cache = open_pixel_cache(cached, px)
        rng = np.random.default_rng(0)
        b = args.train_batch
        out["read"] = rate(lambda: cache.gather(rng.integers(0, len(cache), b)), b, args.min_seconds)
        mean, std = _normalisation(model)
        out["read_norm"] = rate(lambda: to_model_input(cache.gather(rng.integers(0, len(cache), b)), mean, std),
                                b, args.min_seconds)

        # a trainer's augmented batches: tensors from the cache vs PIL from the shards
        augment = TrainAugment.from_preprocess(model.identity["preprocess"])
        gen = torch.Generator().manual_seed(0)
        out["epoch_cache"] = rate(lambda: augment(cache.gather(rng.integers(0, len(cache), b)), generator=gen),
                                  b, args.min_seconds)
        train_transform = build_model(ModelSpec("tiny-vit", device="cpu"), train=True).preprocess
        chunk = refs[:b]

        out["epoch_decode"] = rate(lambda: torch.stack([train_transform(i) for i in decoded(chunk)]), len(chunk),
                                   args.min_seconds)

        # embedding: shards vs cache vs the forward bound
        fwd = bench.forward_bound(model, files, args.batch_size, args.min_seconds)
        t0 = time.perf_counter()
        [a] = embed(shards, model=model, corpus="bench", batch_size=args.batch_size, workers=args.workers,
                    pixel_cache="off", progress=False)
        out["embed_shards"] = n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        [c] = embed(cached, model=model, corpus="bench", batch_size=args.batch_size, workers=args.workers,
                    pixel_cache="use", progress=False)
        out["embed_cache"] = n / (time.perf_counter() - t0)
        out["forward"] = max(fwd, bench.forward_bound(model, files, args.batch_size, args.min_seconds))
        # rates are timed again at the end and the better kept: a load spike on a shared machine
        # during one timing would otherwise flatter the ratios against it
        out["decode"] = max(out["decode"], decode_now())
        va, vc = load_embeddings(shards, a.artifact_id), load_embeddings(cached, c.artifact_id)
        assert va.ids == vc.ids
        diff = float(np.abs(va.matrix().astype(np.float32) - vc.matrix().astype(np.float32)).max())
        mib = px.stats["bytes"] / 2**20

    print(f"\npixel cache: {n} UC Merced images at {spec.slug} ({mib:.0f} MiB), torch {torch.__version__}, "
          f"cpu x{os.cpu_count()}, {torch.get_num_threads()} threads\n")
    rows = [
        ("decode + resize from shards, 1 process", out["decode"], ""),
        ("fill the cache (`clipstore pixels`, end to end)", out["fill"], f"{out['fill'] / out['decode']:.2f}x decode"),
        (f"read from the cache, batches of {b}", out["read"], f"{out['read'] / out['decode']:.0f}x decode"),
        ("read + normalise (as embed)", out["read_norm"], f"{out['read_norm'] / out['decode']:.0f}x decode"),
        ("augmented epoch: decode + PIL train transform", out["epoch_decode"], ""),
        ("augmented epoch: cache + TrainAugment", out["epoch_cache"],
         f"{out['epoch_cache'] / out['epoch_decode']:.1f}x PIL"),
        ("tiny-vit forward on pre-made tensors (bound)", out["forward"], ""),
        ("tiny-vit embed from shards (--pixel-cache off)", out["embed_shards"],
         f"{out['embed_shards'] / out['forward']:.2f}x forward"),
        ("tiny-vit embed from the pixel cache", out["embed_cache"],
         f"{out['embed_cache'] / out['forward']:.2f}x forward, {out['embed_cache'] / out['embed_shards']:.1f}x shards"),
    ]
    print(f"| {'measure':<50} | {'images/s':>9} | ratio |")
    print(f"|{'-' * 52}|{'-' * 11}|-------|")
    for name, value, ratio in rows:
        print(f"| {name:<50} | {value:>9,.0f} | {ratio} |")
    print(f"\nvectors from the cache vs from the shards: max |difference| {diff:g} (float16 unit vectors)")


if __name__ == "__main__":
    sys.exit(main())
