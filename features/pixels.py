"""`clipstore pixels`: the pixel cache. One `pixels` artifact per (corpus, PixelSpec): every image of
the corpus decoded once, resized / cropped / padded as the spec says, and stored as uint8 rows in
memory-mappable .npy parts (format and reader: warehouse/pixels.py). Epochs of a trainer and runs of
embed then read bytes instead of decoding PNG/JPEG.

Like the embedding cache, the artifact grows with its corpus: the recipe is (corpus name, spec), not
the corpus's version, and a run adds only the images it does not hold yet. An image that another
pixels artifact of the same spec already holds (another corpus sharing it) is copied, not decoded.
Work is cut into parts of at most PART_ROWS images (and PART_BYTES) within one shard; worker
processes decode a part each, straight into its .npy file, and the main process commits the parts
in order as they finish. A run killed at any point keeps the parts it committed, and the next run
does the rest. See docs/pixels.md."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clipstore.warehouse.errors import ClipstoreError, InputError
from clipstore.warehouse.hashing import canonical_json
from clipstore.warehouse.lock import check_writable
from clipstore.warehouse.parquet import write_table
from clipstore.warehouse.pixels import KIND, PIXEL_ITEMS, PIXEL_TABLES, PixelSpec, cache_params
from clipstore.warehouse.shards import StoredImage, corpus_images, decode
from clipstore.warehouse.sql import Session
from clipstore.warehouse.store import Artifact, ArtifactBuilder, Store
from clipstore.warehouse.workers import process_pool

STAGE_VERSION = 1            # bump when the same images and spec would give other bytes
PART_ROWS = 1024             # images per part at most ...
PART_BYTES = 64 << 20        # ... and pixel bytes per part at most (a 224x224 part holds 445)
IN_PROCESS_IMAGES = 256      # starting workers costs about as much as decoding this many here


@dataclass(frozen=True)
class Item:
    """One image of a part: where to decode it from, or the row of another cache to copy."""

    image_id: str
    sample_id: str
    offset: int
    size: int
    width: int
    height: int
    donor: str | None = None     # a .npy part of another pixels artifact of the same spec
    donor_row: int = 0


@dataclass(frozen=True)
class PartTask:
    part: int
    shard: str
    items: tuple[Item, ...]
    spec: PixelSpec
    out: str                     # the .npy file to fill (in the run's temp folder)


def fill_part(task: PartTask) -> tuple[int, int, int]:
    """Decode (or copy) a part's images into its .npy file; returns (part, decoded, copied). Runs in
    a worker process: the rows go straight to disk, nothing comes back through a pipe."""
    out = np.lib.format.open_memmap(task.out, mode="w+", dtype=np.uint8,
                                    shape=(len(task.items), task.spec.height, task.spec.width, 3))
    decoded = copied = 0
    donors: dict[str, np.ndarray] = {}
    with open(task.shard, "rb") as tar:
        for row, item in enumerate(task.items):
            if item.donor is not None:
                if item.donor not in donors:
                    donors[item.donor] = np.load(item.donor, mmap_mode="r")
                out[row] = donors[item.donor][item.donor_row]
                copied += 1
                continue
            ref = StoredImage(item.image_id, item.sample_id, Path(task.shard), item.offset, item.size)
            try:
                out[row] = task.spec.prepare(decode(tar, ref))
            except Exception as exc:   # reported by the main process with the shard and image
                raise ClipstoreError(f"cannot decode image {item.image_id} at byte {item.offset}: {exc}",
                                     where=task.shard, fix="re-ingest the corpus (the shard may be damaged)") from None
            decoded += 1
    out.flush()
    del out
    return task.part, decoded, copied


def resolve_spec(store: Store, *, size: int | None = None, model=None, resize_mode: str = "shortest",
                 interpolation: str = "bicubic", fill_color: int = 0) -> PixelSpec:
    """The spec asked for: a square `size` with the given options, or a model's eval preprocessing
    (`model`: a LoadedModel, a ModelSpec or an architecture / checkpoint-artifact name)."""
    if (size is None) == (model is None):
        raise InputError("say which preprocessing to cache: --size N or --model SPEC (one of them)",
                         fix="--model takes size, resize mode and interpolation from the model's eval transform")
    if model is None:
        return PixelSpec.square(size, resize_mode=resize_mode, interpolation=interpolation, fill_color=fill_color)
    from clipstore.features.models import LoadedModel
    if not isinstance(model, LoadedModel):
        from clipstore.features.checkpoint_artifacts import resolve_model_spec
        from clipstore.features.models import ModelSpec, load_model
        spec = ModelSpec(model=model, device="cpu") if isinstance(model, str) else model
        model = load_model(resolve_model_spec(store, spec))
    return PixelSpec.from_preprocess(model.identity["preprocess"])


def cache_pixels(store: Store | str | Path, *, corpus: str | list[str] | None = None, split: str | None = None,
                 size: int | None = None, model=None, resize_mode: str = "shortest", interpolation: str = "bicubic",
                 fill_color: int = 0, workers: int | None = None, wait: bool = False,
                 progress: bool = True) -> list[Artifact]:
    """Bring the pixel cache of each corpus (`corpus`: one or several; `split`: every corpus of that
    split) up to date for one spec (`size` + options, or `model`'s eval preprocessing); returns one
    pixels artifact per corpus. See the module doc."""
    store = store if isinstance(store, Store) else Store(store)
    check_writable(store.root, wait=wait)
    if workers is not None and workers < 0:
        raise InputError(f"--workers must be >= 0, got {workers}")
    spec = resolve_spec(store, size=size, model=model, resize_mode=resize_mode, interpolation=interpolation,
                        fill_color=fill_color)
    names = [corpus] if isinstance(corpus, str) else list(corpus or [])
    if split:
        from clipstore.features.embed import split_corpora
        names += split_corpora(store, split)
    names = list(dict.fromkeys(names))
    if not names:
        raise InputError("no corpus to cache", fix="pass --corpus NAME (repeatable) or --split NAME")
    arts = store.corpora(names)
    with store.writing(wait=wait):
        with Session(store) as session:
            work = [(arts[n], corpus_images(store, session, arts[n]), _sizes(session, n)) for n in names]
        return [_run(store, art, refs, sizes, spec, workers, progress) for art, refs, sizes in work]


def _sizes(session: Session, corpus: str) -> dict[str, tuple[int, int]]:
    if "images" not in session.tables():
        return {}
    rows = session.query("SELECT image_id, any_value(width) AS w, any_value(height) AS h FROM images "
                         "WHERE corpus = $corpus GROUP BY image_id", {"corpus": corpus}).to_pylist()
    return {r["image_id"]: (r["w"], r["h"]) for r in rows}


def _run(store: Store, corpus: Artifact, refs: list[StoredImage], sizes: dict, spec: PixelSpec,
         workers: int | None, progress: bool) -> Artifact:
    import PIL
    params = cache_params(corpus.name, spec)
    version = store.version_digests([corpus.artifact_id])[corpus.artifact_id]   # reported only
    config = {**params, "workers": workers, "source_artifact": corpus.artifact_id, "source_version": version}
    # the corpus is lineage, not recipe: the cache grows with it (as embed's does)
    builder = store.produce(kind=KIND, name=f"{corpus.name}.pixels.{spec.slug}", stage="pixels",
                            version=STAGE_VERSION, params=params, sources=[corpus], tables=PIXEL_TABLES,
                            config=config, reuse=False)
    with builder.failing_on_error():
        started = time.monotonic()
        have = _held_ids(builder)
        pending = [r for r in refs if r.image_id not in have]
        donors = _donor_rows(store, builder.artifact_id, spec, {r.image_id for r in pending})
        tasks = _tasks(builder, pending, sizes, donors, spec)
        decoded, copied = _fill(builder, corpus.name, tasks, workers, progress)
        seconds = time.monotonic() - started
        rows = len(have) + decoded + copied
        counts = {"images": rows, "height": spec.height, "width": spec.width}
        stats = {"spec": spec.recipe(), "pillow": PIL.__version__, "bytes": rows * spec.row_bytes,
                 "source": {corpus.artifact_id: version}}
        summary = {"decoded": decoded, "copied": copied, "images": rows, "seconds": round(seconds, 3),
                   "per_second": round(decoded / seconds, 1) if decoded and seconds > 0 else None}
        return builder.finish(counts=counts, stats=stats, summary=summary, noop=decoded + copied == 0)


def _held_ids(builder: ArtifactBuilder) -> set[str]:
    held: set[str] = set()
    for path, _ in builder.committed_rows("pixel_items"):
        held.update(pq.read_table(str(path), columns=["image_id"]).column("image_id").to_pylist())
    return held


def _donor_rows(store: Store, own_id: str, spec: PixelSpec, wanted: set[str]) -> dict[str, tuple[str, int]]:
    """image_id -> (.npy part, row) in another complete pixels artifact of the same spec."""
    found: dict[str, tuple[str, int]] = {}
    if not wanted:
        return found
    want = canonical_json(spec.recipe())
    donors = [a for a in store.list(KIND) if a.artifact_id != own_id and a.status == "complete"
              and canonical_json(a.params.get("pixels")) == want]
    if not donors:
        return found
    parts = store.all_parts([a.artifact_id for a in donors])
    for art in donors:
        npy = {p: str(path) for p, path, _ in parts.get((art.artifact_id, "pixels"), [])}
        for p, path, _ in parts.get((art.artifact_id, "pixel_items"), []):
            t = pq.read_table(str(path), columns=["image_id", "row"])
            for image_id, row in zip(t.column("image_id").to_pylist(), t.column("row").to_pylist()):
                if image_id in wanted and image_id not in found and p in npy:
                    found[image_id] = (npy[p], row)
    return found


def part_rows(spec: PixelSpec) -> int:
    return max(1, min(PART_ROWS, PART_BYTES // spec.row_bytes))


def _tasks(builder: ArtifactBuilder, pending: list[StoredImage], sizes: dict, donors: dict,
           spec: PixelSpec) -> list[PartTask]:
    """Pending images in shard order, cut into parts within each shard; part numbers follow the
    artifact's last part (a killed run's committed parts included)."""
    tasks: list[PartTask] = []
    part, step = builder.next_part(), part_rows(spec)
    for shard, group in groupby(pending, key=lambda r: r.shard):
        refs = list(group)
        for start in range(0, len(refs), step):
            items = tuple(Item(r.image_id, r.sample_id, r.offset, r.size, *sizes.get(r.image_id, (0, 0)),
                               *donors.get(r.image_id, (None, 0))) for r in refs[start:start + step])
            out = builder.temp_dir(f"part-{part:06d}") / f"{part:06d}.npy"
            tasks.append(PartTask(part, str(shard), items, spec, str(out)))
            part += 1
    return tasks


def default_workers(n_tasks: int, n_images: int) -> int:
    """Every core decodes (no model runs beside them), at most one per part; none for a small job."""
    if n_images <= IN_PROCESS_IMAGES:
        return 0
    return max(1, min(n_tasks, os.cpu_count() or 1, 16))


def _fill(builder: ArtifactBuilder, corpus: str, tasks: list[PartTask], workers: int | None,
          progress: bool) -> tuple[int, int]:
    """Run the tasks (in workers when there are several) and commit their parts in order."""
    n_images = sum(len(t.items) for t in tasks)
    workers = default_workers(len(tasks), n_images) if workers is None else min(workers, len(tasks))
    bar = _progress(progress, f"pixels {corpus}", n_images)
    decoded = copied = 0

    def commit(task: PartTask, result: tuple[int, int, int]) -> None:
        nonlocal decoded, copied
        _commit(builder, corpus, task)
        decoded, copied = decoded + result[1], copied + result[2]
        if bar is not None:
            bar.update(len(task.items))

    if workers:
        with process_pool(workers, preload=["clipstore.features.pixels"]) as pool:
            futures = [pool.submit(fill_part, t) for t in tasks]
            for task, future in zip(tasks, futures):   # parts commit in order, whichever finished first
                commit(task, future.result())
    else:
        for task in tasks:
            commit(task, fill_part(task))
    if bar is not None:
        bar.close()
    return decoded, copied


def _commit(builder: ArtifactBuilder, corpus: str, task: PartTask) -> None:
    rows = [{"artifact_id": builder.artifact_id, "image_id": it.image_id, "corpus": corpus,
             "sample_id": it.sample_id, "width": it.width, "height": it.height, "row": i, "part": task.part}
            for i, it in enumerate(task.items)]
    out = Path(task.out)
    items_file = out.with_suffix(".parquet")
    write_table(pa.Table.from_pylist(rows, schema=PIXEL_ITEMS), items_file)
    builder.commit_part(task.part, {"pixel_items": (items_file, len(rows)), "pixels": (out, len(rows))})


def _progress(enabled: bool, desc: str, total: int):
    if not enabled or not total:
        return None
    from tqdm import tqdm
    return tqdm(desc=desc, total=total, unit=" img", dynamic_ncols=True, leave=False)
