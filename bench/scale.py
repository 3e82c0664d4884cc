"""Scale-out: ingest and embed locally and on Ray (1 and 2 workers), side by side in one run, on
the real UC Merced images (2,100 JPEGs, ingested as an imagefolder corpus like UCM-CLS), then the
projected wall time of 1 M and 100 M images on N nodes from the per-item costs measured here.

  local          `ingest` / `embed` on this machine (processes of its own)
  Ray, w         `--ray` on a Ray cluster of this machine's cores (started here, on 127.0.0.1),
                 `--workers w`: w part tasks at a time (ingest), w model replicas sharing the cores
                 (embed); the driver is this process, its job's workers warm (as in a pipeline
                 that runs several stages): what Ray adds to a run. A new CLI command is a new Ray
                 job whose workers start cold: that cost is measured apart (`CLI`). Each embed run
                 starts its actor pool (a model load per replica): that is in its time.

Every contender writes the same artifacts (the Ray ones are checked against the local ones).
Overhead = Ray time / local time - 1 at the same number of cores.

    python bench/scale.py [--images 2100] [--model ViT-B-32] [--repeat 2] [--node-cores 16]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CLIPSTORE_SHARED_DATA", REPO.parent / "shared" / "data"))
UCM = DATA / "ucmerced_landuse_full" / "Images"
SHARD = 1000   # the default --shard-size: one part (one Ray block) per 1,000 images


def corpus(root: Path, n: int) -> Path:
    """The first n images (class by class) of the 2,100, as an imagefolder corpus."""
    files = sorted(UCM.glob("*/*.jpg"))
    if not files:
        sys.exit(f"no UC Merced images under {UCM} (set CLIPSTORE_SHARED_DATA)")
    if n >= len(files):
        return UCM
    for f in files[:n]:
        (root / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, root / f.parent.name / f.name)
    return root


def start_cluster(tmp: Path) -> tuple[float, dict]:
    """A Ray cluster of this machine's cores on 127.0.0.1 (no usage statistics, token in tmp)."""
    token = tmp / "auth_token"
    token.write_text(secrets.token_hex(16))
    env = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN_PATH": str(token)}
    os.environ.update(env)
    t0 = time.perf_counter()
    import ray
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, _temp_dir=str(tmp / "ray"),
             logging_level=logging.WARNING, log_to_driver=False)
    return time.perf_counter() - t0, {**env, "address": ray.get_runtime_context().gcs_address}


def block_overhead(n: int = 200) -> float:
    """Seconds Ray Data adds per block (per part): n empty tasks against one."""
    from clipstore.warehouse.raydata import _identity, map_rows

    def run(k: int) -> float:
        t0 = time.perf_counter()
        list(map_rows(iter([{"part": i} for i in range(k)]), _identity, window=k))
        return time.perf_counter() - t0
    run(2)
    return (run(n) - run(1)) * (os.cpu_count() or 1) / (n - 1)   # per block, per core


class Timer:
    """Wraps a function (a module or class attribute) and sums the seconds spent in it: the
    driver's own serial work, which no number of nodes shortens. `count(args)`: how many parts
    a call handles."""

    def __init__(self, owner, name: str, count=lambda args: 1):
        self.owner, self.name, self.seconds, self.parts, self.calls_made = owner, name, 0.0, 0, 0
        self.original = getattr(owner, name)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return self.original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0
                self.parts += count(args)
                self.calls_made += 1
        setattr(owner, name, timed)

    def close(self) -> "Timer":
        setattr(self.owner, self.name, self.original)
        return self


class DriverTimers:
    """The driver's per-part costs during one run: writing an embed part's files, publishing a
    part's files (fsync, rename) and the catalog transactions (several parts each under load)."""

    def __init__(self):
        from clipstore.features import embed as embed_module
        from clipstore.warehouse import fs
        from clipstore.warehouse.store import ArtifactBuilder
        self.write = Timer(embed_module, "_commit_shard")
        self.publish = Timer(fs, "publish")
        self.commit = Timer(ArtifactBuilder, "commit_parts", count=lambda args: len(args[1]))

    def close(self) -> dict:
        for t in (self.write, self.publish, self.commit):
            t.close()
        parts = max(1, self.commit.parts)
        return {"write": self.write.seconds / max(1, self.write.parts), "publish": self.publish.seconds / parts,
                "transaction": (self.commit.seconds - self.publish.seconds) / max(1, self.commit.calls_made)}


def run_seconds(store: Path, stage: str) -> float:
    import duckdb
    with duckdb.connect(str(store / "catalog.duckdb"), read_only=True) as con:
        return con.execute("SELECT duration_s FROM runs WHERE stage = ? AND status = 'done' "
                           "ORDER BY started_at DESC LIMIT 1", [stage]).fetchone()[0]


def part_digests(store: Path) -> list:
    import duckdb
    with duckdb.connect(str(store / "catalog.duckdb"), read_only=True) as con:
        return con.execute("SELECT table_name, part, sha256 FROM parts ORDER BY ALL").fetchall()


def cli_seconds(*args: str, env: dict | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "clipstore", "-q", *args], check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, **(env or {})})
    return time.perf_counter() - t0


def enumerate_seconds(source: Path, n: int) -> float:
    """The driver's pass over the source per entry (listing, a stat per image, the state)."""
    from clipstore.ingest.adapters import IngestOptions, get_adapter
    from clipstore.ingest.pipeline import _pending
    t0 = time.perf_counter()
    count = sum(1 for _ in _pending(get_adapter("imagefolder").open(source, IngestOptions()).records, {}))
    return (time.perf_counter() - t0) / max(1, count)


def driver_bytes_per_image(store: Path) -> float:
    """Memory the embed driver holds per image (the image list it reads from the store)."""
    from clipstore.features.items import corpus_artifact
    from clipstore.warehouse.shards import corpus_images
    from clipstore.warehouse.sql import Session
    from clipstore.warehouse.store import Store
    s = Store(store)
    with Session(s) as session:
        tracemalloc.start()
        refs = corpus_images(s, session, corpus_artifact(s, "ucm"))
        size, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return size / max(1, len(refs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2100, help="images (default %(default)s: all of UC Merced)")
    ap.add_argument("--model", default="ViT-B-32", help="architecture embedded, random init (default %(default)s)")
    ap.add_argument("--batch-size", type=int, default=64, help="embed batch size (default %(default)s)")
    ap.add_argument("--repeat", type=int, default=2, help="rounds; each figure is the best round (default %(default)s)")
    ap.add_argument("--node-cores", type=int, default=16, help="cores per node in the projection (default %(default)s)")
    args = ap.parse_args()
    if not UCM.is_dir():
        sys.exit(f"no UC Merced images under {UCM} (set CLIPSTORE_SHARED_DATA)")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")   # the comparison is on this machine's cores
    from clipstore.features.embed import embed
    from clipstore.features.models import ModelSpec, load_model
    from clipstore.ingest.pipeline import ingest

    cores = os.cpu_count() or 1
    spec = ModelSpec(model=args.model, pretrained=None if args.model.startswith("tiny") else "random")
    best: dict[str, float] = {}
    keep = lambda key, t: best.__setitem__(key, min(t, best.get(key, t)))  # noqa: E731
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="clipstore-scale-") as tmp:
        tmp = Path(tmp)
        source = corpus(tmp / "corpus", args.images)
        n = sum(1 for _ in source.glob("*/*.jpg"))
        best["cluster_start"], cluster = start_cluster(tmp)
        ray_address = cluster["address"]
        best["block"] = block_overhead()
        warm = corpus(tmp / "warm", 40)
        ingest(tmp / "warm-store", "imagefolder", warm, name="ucm", progress=False, ray=ray_address)
        embed(tmp / "warm-store", model=spec, corpus="ucm", progress=False, ray=ray_address)   # first use of each
        best["enumerate"] = enumerate_seconds(source, n)
        model = load_model(spec)   # the local runs get it loaded, as the CLI has it before the run starts
        for r in range(args.repeat):   # interleaved rounds, best of: load spikes hit every contender alike
            for mode, w in (("local", 1), ("local", cores), ("ray", 1), ("ray", cores)):
                key = f"{mode}{w}"
                store = tmp / f"r{r}-{key}"
                if mode == "ray":   # this driver's workers warm (embed's actors may have replaced them)
                    ingest(tmp / f"r{r}-warm{w}", "imagefolder", warm, name="ucm", progress=False, ray=ray_address)
                timers = DriverTimers()
                ingest(store, "imagefolder", source, name="ucm", workers=w, progress=False,
                       ray=ray_address if mode == "ray" else None)
                driver = timers.close()
                keep(f"ingest_{key}", run_seconds(store, "ingest"))
                if mode == "ray":
                    keep("publish_ingest", driver["publish"])
                    keep("transaction", driver["transaction"])
                    assert part_digests(store) == part_digests(tmp / f"r{r}-local1"), "Ray and local parts differ"
            cold = tmp / f"r{r}-cli"
            keep("cli_local", cli_seconds("--store", str(cold / "local"), "ingest", "imagefolder", str(source),
                                          "--name", "ucm"))
            keep("cli_ray", cli_seconds("--store", str(cold / "ray"), "ingest", "imagefolder", str(source), "--name",
                                        "ucm", "--ray", ray_address, env=cluster))
            for mode, w in (("local", cores), ("ray", 1), ("ray", cores)):
                key = f"{mode}{w}"
                store = tmp / f"r{r}-{key}"
                timers = DriverTimers()
                if mode == "local":
                    embed(store, model=model, corpus="ucm", batch_size=args.batch_size, progress=False)
                else:
                    embed(store, model=spec, corpus="ucm", batch_size=args.batch_size, workers=w, progress=False,
                          ray=ray_address)
                driver = timers.close()
                keep(f"embed_{key}", run_seconds(store, "embed"))
                if mode == "ray":
                    keep("write_embed", driver["write"])
                    keep("publish_embed", driver["publish"])
            loads.append(os.getloadavg()[0])
        best["driver_bytes"] = driver_bytes_per_image(tmp / "r0-local1")
        import ray
        ray.shutdown()
    report(best, n, cores, args, max(loads))


def report(b: dict, n: int, cores: int, args, load: float) -> None:
    print(f"scale benchmark: {n} real UC Merced JPEGs (imagefolder, UCM-CLS classes), {cores} cores, "
          f"embed {args.model} (random init) batch {args.batch_size}, best of {args.repeat} rounds, "
          f"load average up to {load:.1f}")
    print(f"  Ray: cluster start {b['cluster_start']:.1f} s (once), {b['block'] * 1000:.1f} ms per block "
          f"(= per part of {SHARD} images)")
    print(f"  {'':<26} {'local 1':>10} {f'local {cores}':>10} {'Ray 1':>10} {f'Ray {cores}':>10} {'Ray overhead':>13}")
    for stage, keys in (("ingest", ("local1", f"local{cores}", "ray1", f"ray{cores}")),
                        ("embed", (None, f"local{cores}", "ray1", f"ray{cores}"))):
        t = [b[f"{stage}_{k}"] if k else None for k in keys]
        print(f"  {stage + ' run (s)':<26} {_cells(t, lambda x: x)} {t[3] / t[1] - 1:12.0%}")
        print(f"  {stage + ' images/s':<26} {_cells(t, lambda x: n / x)}")
    print(f"  {'ingest, whole CLI (s)':<26} {'':>10} {b['cli_local']:10.2f} {'':>10} {b['cli_ray']:10.2f} "
          f"{b['cli_ray'] / b['cli_local'] - 1:12.0%}   (a new Ray job: its workers start cold)")
    print(f"  Ray {cores} vs Ray 1: ingest x{b['ingest_ray1'] / b[f'ingest_ray{cores}']:.2f}, "
          f"embed x{b['embed_ray1'] / b[f'embed_ray{cores}']:.2f}")

    # per-item costs, measured above
    c_ingest = b["ingest_ray1"] / n                           # core-seconds per image in a part task
    c_embed = b[f"embed_ray{cores}"] * cores / n               # core-seconds per image in the replicas
    d_ingest = b["enumerate"] + b["publish_ingest"] / SHARD    # the driver's serial seconds per image
    d_embed = (b["write_embed"] + b["publish_embed"]) / SHARD
    print(f"  measured per image: ingest {c_ingest * 1000:.2f} core-ms in a task, embed {c_embed * 1000:.1f} core-ms "
          f"in a replica; the driver: {b['enumerate'] * 1e6:.0f} us to enumerate an entry, per part "
          f"{b['publish_ingest'] * 1000:.0f} ms to publish an ingest part's files, "
          f"{(b['write_embed'] + b['publish_embed']) * 1000:.0f} ms to write and publish an embed part, "
          f"{b['transaction'] * 1000:.0f} ms per catalog transaction (shared by the parts ready together); "
          f"the embed driver holds {b['driver_bytes']:.0f} B per image")
    print(f"projected wall time on N nodes of {args.node_cores} cores like these (assumptions: docs/scale.md)")
    print(f"  {'images':>8} {'nodes':>6} {'ingest':>10} {'bound by':>9} {'embed (CPU)':>12} {'bound by':>9}")
    for total in (1_000_000, 100_000_000):
        for nodes in (1, 10, 100):
            slots = nodes * args.node_cores
            rows = []
            for work, serial in ((total * c_ingest / slots, total * d_ingest),
                                 (total * c_embed / slots, total * d_embed)):
                rows += [_human(max(work, serial) + b["cluster_start"]), "driver" if serial > work else "workers"]
            print(f"  {total:>8.0e} {nodes:>6} {rows[0]:>10} {rows[1]:>9} {rows[2]:>12} {rows[3]:>9}")
    print(json.dumps({k: round(v, 6) for k, v in b.items()}))


def _cells(values: list, f) -> str:
    return " ".join(f"{f(x):10.2f}" if x else f"{'':>10}" for x in values)


def _human(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


if __name__ == "__main__":
    main()
