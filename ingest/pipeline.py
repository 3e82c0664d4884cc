"""`clipstore ingest`: source adapter -> parts (shard + table rows) -> committed corpus artifact.

Only entries that are new or changed since the last ingest of the same recipe are processed
(the ingest ledger remembers each source key's state). Work is cut into parts of `shard_size`
entries in source order; workers build parts in parallel and the parent commits them strictly in
order, so a killed run leaves a prefix of parts and a re-run produces exactly the missing ones."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections import Counter, deque
from concurrent.futures import ProcessPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator

from clipstore.ingest import tables
from clipstore.ingest.adapters import IngestOptions, get_adapter
from clipstore.ingest.images import DEFAULT_MAX_PIXELS, DEFAULT_PNG_LEVEL
from clipstore.ingest.parts import ImageOptions, PartJob, PartResult, build_part
from clipstore.ingest.records import Reject, SourceRecord
from clipstore.warehouse.hashing import digest
from clipstore.warehouse.store import Artifact, ArtifactBuilder, Store

DEFAULT_SHARD_SIZE = 1000


def ingest(store: Store | str | Path, fmt: str, path: str | Path, *, name: str | None = None,
           images: str | Path | None = None, image_map: str | Path | None = None, keep_missing: bool = False,
           preset: str | None = None, shard_size: int = DEFAULT_SHARD_SIZE, workers: int | None = None,
           keep_original: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS, png_level: int = DEFAULT_PNG_LEVEL,
           wait: bool = False, progress: bool = True) -> Artifact:
    """Ingest a raw corpus into the store and return its corpus artifact (see DESIGN §3)."""
    store = store if isinstance(store, Store) else Store(store)
    path = Path(path)
    name = name or fmt
    options = IngestOptions(images=Path(images) if images else None,
                            image_map=Path(image_map) if image_map else None,
                            keep_missing=keep_missing, preset=preset or name)
    source = get_adapter(fmt).open(path, options)
    image_options = ImageOptions(keep_original=keep_original, max_pixels=max_pixels, png_level=png_level)
    params = {"format": fmt, "source": str(path.resolve()),
              "images": str(options.images.resolve()) if options.images else None,
              "image_map": str(options.image_map.resolve()) if options.image_map else None,
              "keep_missing": keep_missing, "preset": options.preset, "shard_size": shard_size,
              "keep_original": keep_original, "max_pixels": max_pixels, "png_level": png_level}
    workers = os.cpu_count() or 1 if workers is None else workers
    with store.writing(wait=wait):
        builder = store.begin(kind="corpus", name=name, stage="ingest", params=params,
                              tables=tables.CORPUS_TABLES, config={**params, "workers": workers})
        with builder.failing_on_error():
            return _run(store, builder, source, name, image_options, keep_missing, shard_size, workers, progress)


def _run(store: Store, builder: ArtifactBuilder, source, name: str, image_options: ImageOptions,
         keep_missing: bool, shard_size: int, workers: int, progress: bool) -> Artifact:
    started = time.monotonic()
    ledger = _committed_states(builder)
    classes = [{"corpus": name, "class": raw, "class_index": i, "name": display}
               for i, (raw, display) in enumerate(source.classes or [])]
    class_index = {c["class"]: c["class_index"] for c in classes}
    classes_changed = bool(classes) and _committed_classes(builder) != [(c["class"], c["name"]) for c in classes]

    items = _pending(source.records, ledger)
    first_part = builder.next_part()
    out_dir = builder.temp_dir("parts")

    def jobs() -> Iterator[PartJob]:
        produced = False
        for i, chunk in enumerate(_chunks(items, shard_size)):
            produced = True
            yield PartJob(first_part + i, name, chunk, out_dir, image_options, keep_missing, class_index,
                          classes if (i == 0 and classes_changed) else None)
        if classes_changed and not produced:  # only the class list changed
            yield PartJob(first_part, name, [], out_dir, image_options, keep_missing, class_index, classes)

    totals: Counter = Counter()
    bar = _progress(progress, name)
    for result in _run_jobs(jobs(), workers):
        builder.commit_part(result.part, result.files)
        totals.update(result.counts)
        if bar is not None:
            bar.update(sum(result.counts[k] for k in ("samples", "rejected")))
            bar.set_postfix(images=totals["images"], rejected=totals["rejected"], refresh=False)
    if bar is not None:
        bar.close()

    from clipstore.ingest.stats import corpus_stats  # after the parts: stats read the logical tables
    _write_sizes(builder)
    stats = corpus_stats(store, name)
    stats["notes"] = source.notes
    processed = totals["samples"] + totals["rejected"]
    summary = {"processed": processed, "new_images": totals["images"], "new_rejects": totals["rejected"],
               "seconds": round(time.monotonic() - started, 3)}
    builder.write_file("stats.json", json.dumps(stats, indent=1, sort_keys=True, default=str))
    return builder.finish(counts=stats["counts"], stats=stats, summary=summary, noop=processed == 0)


def _committed_states(builder: ArtifactBuilder) -> dict[str, str]:
    paths = [p for _, _, p in builder.committed_parts("ingest_ledger")]
    table = tables.read_parquet(paths, columns=["source_key", "state", "part"])
    states: dict[str, str] = {}
    for key, state in zip(table.column("source_key").to_pylist() if paths else [],
                          table.column("state").to_pylist() if paths else []):
        states[key] = state  # parts are read in order: the latest state wins
    return states


def _committed_classes(builder: ArtifactBuilder) -> list[tuple[str, str]]:
    paths = [p for _, _, p in builder.committed_parts("classes")]
    if not paths:
        return []
    latest = tables.read_parquet(paths[-1:]).to_pylist()
    return [(r["class"], r["name"]) for r in sorted(latest, key=lambda r: r["class_index"])]


def _state(item: SourceRecord | Reject) -> str:
    if isinstance(item, Reject):
        return "reject:" + digest([item.reason, item.stage])
    image = "missing" if item.image is None else item.image.state()
    return digest([image, item.captions, item.split, item.label, item.meta])


def _pending(records: Iterable[SourceRecord | Reject], ledger: dict[str, str]) -> Iterator[tuple]:
    """Items whose state differs from the committed one; repeated keys become rejects."""
    seen: dict[str, int] = {}
    for index, item in enumerate(records):
        key = item.source_key
        if key in seen:
            seen[key] += 1
            item = Reject(f"{key}#{seen[key]}", f"duplicate source key {key!r}: occurrence {seen[key] + 1}, "
                                                 "only the first is ingested")
            key = item.source_key
        else:
            seen[key] = 0
        state = _state(item)
        if ledger.get(key) != state:
            yield item, state, index


def _chunks(items: Iterator, size: int) -> Iterator[list]:
    while chunk := list(islice(items, size)):
        yield chunk


def _run_jobs(jobs: Iterator[PartJob], workers: int) -> Iterator[PartResult]:
    """Build parts on `workers` processes, yielding results in part order (at most workers+1 in flight)."""
    if workers <= 1:
        yield from map(build_part, jobs)
        return
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["clipstore.ingest.parts"])
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        in_flight: deque = deque()
        for job in jobs:
            in_flight.append(pool.submit(build_part, job))
            if len(in_flight) > workers:
                yield in_flight.popleft().result()
        while in_flight:
            yield in_flight.popleft().result()


def _write_sizes(builder: ArtifactBuilder) -> None:
    """open_clip reads sample counts from sizes.json beside the shards."""
    sizes = {path.name: rows for path, rows in builder.store.part_rows(builder.artifact_id, "shards")}
    if sizes:
        builder.write_file("shards/sizes.json", json.dumps(sizes, indent=1, sort_keys=True))


def _progress(enabled: bool, name: str):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(desc=f"ingest {name}", unit=" entries", dynamic_ncols=True, leave=False)
