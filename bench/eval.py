"""Evaluation from the embedding cache against the seed code's way, and retrieval at scale.

  suite     the synth suite (zero-shot on synth_cls, retrieval on synth val under both protocols)
            computed from the cache (`evaluate` with a new recipe: embeddings are a cache hit,
            the metrics are computed) vs re-encoding every image and prompt on every call as the
            seed code does (read + decode each image file, preprocess, forward; encode every
            prompt and caption). Both score float16-rounded unit vectors with the same metric
            code, so the numbers must agree; the ratio of times is printed.
  retrieval R@K both directions over N images x 5N captions of synthetic float16 unit vectors
            memory-mapped from .npy files as the cache stores them: time and peak memory
            (tracemalloc: numpy's allocations; the score blocks are BLOCK x candidates).

    python bench/eval.py [--images 200] [--calls 2] [--model tiny-vit|ViT-B-32] [--ret-images 10000]
                         [--ret-captions 50000]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def unit16(x: np.ndarray) -> np.ndarray:
    """As the cache stores vectors: L2-normalised in float32, rounded to float16."""
    x = np.asarray(x, dtype=np.float32)
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float16).astype(np.float32)


def seed_style_suite(model, synth: Path) -> dict[str, float]:
    """One evaluation call the seed code's way: everything re-encoded from the raw files."""
    from clipstore.eval import metrics
    from clipstore.features.prompts import template_set

    def encode_files(paths):
        out = []
        for i in range(0, len(paths), 64):
            pixels = torch.stack([model.preprocess(Image.open(p).convert("RGB")) for p in paths[i:i + 64]])
            out.append(model.encode_images(pixels).numpy())
        return unit16(np.concatenate(out))

    def encode_texts(texts):
        return unit16(np.concatenate([model.encode_texts(texts[i:i + 256]).numpy() for i in range(0, len(texts), 256)]))

    results = {}
    # zero-shot: the class folders, one prompt per class, mean over the template set
    classes = sorted(p.name for p in (synth / "classification").iterdir() if p.is_dir())
    files = [(c, f) for c in classes for f in sorted((synth / "classification" / c).iterdir())]
    images = encode_files([f for _, f in files])
    templates = template_set("aerial")
    texts = [p for c in classes for p in templates.prompts(c)]
    prompts = model.encode_texts(texts).numpy()
    prompts = prompts / np.linalg.norm(prompts, axis=1, keepdims=True)     # the mean is over float32 unit vectors
    class_vecs = unit16(prompts.reshape(len(classes), len(templates.templates), -1).mean(axis=1))
    zs = metrics.zeroshot(images, class_vecs, np.array([classes.index(c) for c, _ in files]))
    results["synth_cls/top1"] = zs.metrics()["top1"]
    # retrieval: the val images and captions from the Karpathy file
    entries = json.loads((synth / "captions" / "dataset.json").read_text())["images"]
    val = [e for e in entries if e["split"] == "val"]
    images = encode_files([synth / "captions" / "images" / e["filename"] for e in val])
    texts = [s["raw"] for e in val for s in e["sentences"]]
    caption_image = np.array([i for i, e in enumerate(val) for _ in e["sentences"]])
    captions = encode_texts(texts)
    for protocol in ("all", "one-caption"):
        scored = metrics.retrieval(images, captions, caption_image, protocol, 0)
        results[f"synth/{protocol}/mR"] = scored.metrics()["mR"]
    return results


def cached_suite(store, model, label: str) -> dict[str, float]:
    from clipstore.eval.run import evaluate
    from clipstore.eval.suites import resolve
    from clipstore.eval.compare import run_metrics
    out = evaluate(store, model, resolve(store, "synth").tasks, label=label, keep_going=True)
    rows = run_metrics(store, out.artifact, ("top1", "mR"))
    return {f"{r['corpus']}/top1" if r["metric"] == "top1" else f"{r['corpus']}/{r['protocol']}/mR": r["value"]
            for r in rows}


def bench_suite(n_images: int, calls: int, model_name: str) -> None:
    from clipstore.eval.cache import model_of
    from clipstore.ingest.pipeline import ingest
    from clipstore.ingest.synth import write_synthetic
    from clipstore.warehouse.store import Store
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_synthetic(tmp / "synth", seed=0, n_images=n_images, size=64)
        store = Store(tmp / "store")
        ingest(store, "karpathy", tmp / "synth" / "captions", name="synth", progress=False)
        ingest(store, "imagefolder", tmp / "synth" / "classification", name="synth_cls", progress=False)
        from clipstore.features.models import ModelSpec
        model = model_of(ModelSpec(model_name, pretrained=None if model_name.startswith("tiny") else "random"))
        t = time.perf_counter()
        cached_suite(store, model, "warmup")          # fills the cache: the only encoding
        cold_s = time.perf_counter() - t
        t = time.perf_counter()
        for i in range(calls):
            cached = cached_suite(store, model, f"call{i}")   # a new recipe each call: metrics recomputed
        cached_s = (time.perf_counter() - t) / calls
        t = time.perf_counter()
        for _ in range(calls):
            seed = seed_style_suite(model, tmp / "synth")
        seed_s = (time.perf_counter() - t) / calls
    diff = max(abs(cached[k] - seed[k]) for k in seed)
    print(f"suite synth ({n_images} captioned images + {n_images // 5} classification images, {model_name}, "
          f"{torch.get_num_threads()} threads)")
    print(f"  first call (embeds into the cache)      {cold_s:8.2f} s")
    print(f"  per call from the cache                 {cached_s:8.2f} s")
    print(f"  per call re-encoding (seed code's way)  {seed_s:8.2f} s")
    print(f"  ratio re-encoding / cache               {seed_s / cached_s:8.2f} x")
    print(f"  same results: max |difference| = {diff:.4f} points over {sorted(seed)}")
    if diff > 1e-6:
        print("  WARNING: results differ", file=sys.stderr)


def bench_retrieval(n_images: int, n_captions: int, dim: int = 512) -> None:
    from clipstore.eval import metrics
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        base = unit16(rng.standard_normal((n_images, dim)))
        caption_image = np.sort(np.concatenate([np.arange(n_images), rng.integers(0, n_images, n_captions - n_images)]))
        noisy = unit16(base[caption_image] + 4.0 * rng.standard_normal((n_captions, dim)) / np.sqrt(dim))
        for name, arr in (("images", base), ("captions", noisy)):
            paths[name] = Path(tmp) / f"{name}.npy"
            np.save(paths[name], arr.astype(np.float16))
        images = np.load(paths["images"], mmap_mode="r")
        captions = np.load(paths["captions"], mmap_mode="r")
        tracemalloc.start()
        t = time.perf_counter()
        result = {p: metrics.retrieval(images, captions, caption_image, p, seed=0).metrics() for p in
                  ("all", "one-caption")}
        seconds = time.perf_counter() - t
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    print(f"retrieval {n_images:,} images x {n_captions:,} captions (dim {dim}, float16 memory-mapped)")
    print(f"  both protocols, both directions: {seconds:.1f} s, peak memory {peak / 2**20:.0f} MiB "
          f"(vectors on disk {(n_images + n_captions) * dim * 2 / 2**20:.0f} MiB)")
    for p, m in result.items():
        print(f"  {p:<12} i2t R@1 {m['i2t_R@1']:.1f}  t2i R@1 {m['t2i_R@1']:.1f}  mR {m['mR']:.1f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200, help="captioned synth images (default %(default)s)")
    ap.add_argument("--calls", type=int, default=2, help="evaluation calls timed per method (default %(default)s)")
    ap.add_argument("--model", default="tiny-vit", help="tiny-vit, or an open_clip architecture with a random "
                                                       "init, e.g. ViT-B-32 (default %(default)s)")
    ap.add_argument("--ret-images", type=int, default=10000)
    ap.add_argument("--ret-captions", type=int, default=50000)
    args = ap.parse_args(argv)
    bench_suite(args.images, args.calls, args.model)
    bench_retrieval(args.ret_images, args.ret_captions)
    return 0


if __name__ == "__main__":
    sys.exit(main())
