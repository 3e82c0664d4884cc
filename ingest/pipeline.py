"""`clipstore ingest`: source adapter -> parts (shard + table rows) -> committed corpus artifact.

Only entries that are new or changed since the last ingest of the same recipe are processed
(the ingest ledger remembers each source key's state). Work is cut into parts of `shard_size`
entries in source order; workers build parts in parallel and the parent commits them strictly in
order, so a killed run leaves a prefix of parts and a re-run produces exactly the missing ones."""

from __future__ import annotations

import json
import os
import time
from collections import Counter, deque
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator

from clipstore.ingest import tables
from clipstore.ingest.adapters import IngestOptions, get_adapter
from clipstore.ingest.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, DEFAULT_PNG_LEVEL
from clipstore.ingest.parts import (Entry, ImageOptions, Outcome, PartWriter, outcome_without_image,
                                    process_batch)
from clipstore.ingest.records import Reject, SourceRecord
from clipstore.warehouse.errors import InputError
from clipstore.warehouse.hashing import digest
from clipstore.warehouse.parquet import read_parquet
from clipstore.warehouse.store import Artifact, ArtifactBuilder, Store
from clipstore.warehouse.workers import process_pool

DEFAULT_SHARD_SIZE = 1000


def ingest(store: Store | str | Path, fmt: str, path: str | Path, *, name: str | None = None,
           images: str | Path | None = None, image_map: str | Path | None = None, keep_missing: bool = False,
           preset: str | None = None, shard_size: int = DEFAULT_SHARD_SIZE, workers: int | None = None,
           keep_original: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS, png_level: int = DEFAULT_PNG_LEVEL,
           max_bytes: int = DEFAULT_MAX_BYTES, wait: bool = False, progress: bool = True) -> Artifact:
    """Ingest a raw corpus into the store and return its corpus artifact (see DESIGN §3)."""
    store = store if isinstance(store, Store) else Store(store)
    path = Path(path)
    name = name or fmt
    if not isinstance(max_bytes, int) or max_bytes < 1:
        raise InputError(f"max_bytes must be a positive number of bytes, got {max_bytes!r}", fix="e.g. 512 << 20")
    options = IngestOptions(images=Path(images) if images else None,
                            image_map=Path(image_map) if image_map else None,
                            keep_missing=keep_missing, preset=preset or name)
    source = get_adapter(fmt).open(path, options)
    image_options = ImageOptions(keep_original=keep_original, max_pixels=max_pixels, png_level=png_level,
                                 max_bytes=max_bytes)
    params = {"format": fmt, "source": str(path.resolve()),
              "images": str(options.images.resolve()) if options.images else None,
              "image_map": str(options.image_map.resolve()) if options.image_map else None,
              "keep_missing": keep_missing, "preset": options.preset, "shard_size": shard_size,
              "keep_original": keep_original, "max_pixels": max_pixels, "png_level": png_level,
              "max_bytes": max_bytes}
    workers = (os.cpu_count() or 1) if workers is None else workers
    with store.writing(wait=wait):
        builder = store.begin(kind="corpus", name=name, stage="ingest", params=params,
                              tables=tables.CORPUS_TABLES, config={**params, "workers": workers})
        with builder.failing_on_error():
            return _run(store, builder, source, name, image_options, keep_missing, shard_size, workers, progress)


def _run(store: Store, builder: ArtifactBuilder, source, name: str, image_options: ImageOptions,
         keep_missing: bool, shard_size: int, workers: int, progress: bool) -> Artifact:
    started = time.monotonic()
    classes = [{"corpus": name, "class": raw, "class_index": i, "name": display}
               for i, (raw, display) in enumerate(source.classes or [])]
    class_index = {c["class"]: c["class_index"] for c in classes}
    classes_changed = bool(classes) and _committed_classes(builder) != [(c["class"], c["name"]) for c in classes]
    out_dir = builder.temp_dir("parts")
    first_part = next_part = builder.next_part()
    totals: Counter = Counter()
    bar = _progress(progress, name)

    def commit(writer: PartWriter) -> None:
        result = writer.close()
        builder.commit_part(result.part, result.files)
        totals.update(result.counts)
        if bar is not None:
            bar.set_postfix(images=totals["images"], rejected=totals["rejected"], refresh=False)

    writer = None
    entries = _pending(source.records, _committed_states(builder))
    for entry, outcome in _outcomes(entries, image_options, keep_missing, workers):
        if writer is None:
            writer = PartWriter(next_part, name, out_dir, class_index,
                                classes if classes_changed and next_part == first_part else None)
        writer.add(entry, outcome)
        if bar is not None:
            bar.update()
        if writer.entries == shard_size:
            commit(writer)
            writer, next_part = None, next_part + 1
    if writer is None and classes_changed and totals.total() == 0:  # only the class list changed
        writer = PartWriter(next_part, name, out_dir, class_index, classes)
    if writer is not None:
        commit(writer)
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
    if not paths:
        return {}
    table = read_parquet(paths, columns=["source_key", "state"])
    # parts are read in order, so a later state of the same key overwrites an earlier one
    return dict(zip(table.column("source_key").to_pylist(), table.column("state").to_pylist()))


def _committed_classes(builder: ArtifactBuilder) -> list[tuple[str, str]]:
    paths = [p for _, _, p in builder.committed_parts("classes")]
    if not paths:
        return []
    latest = read_parquet(paths[-1:]).to_pylist()
    return [(r["class"], r["name"]) for r in sorted(latest, key=lambda r: r["class_index"])]


def _state(item: SourceRecord | Reject) -> str:
    if isinstance(item, Reject):
        return "reject:" + digest([item.reason, item.stage])
    image = "missing" if item.image is None else item.image.state()
    return digest([image, item.captions, item.split, item.label, item.meta])


def _pending(records: Iterable[SourceRecord | Reject], ledger: dict[str, str]) -> Iterator[Entry]:
    """Entries whose state differs from the committed one; repeated keys become rejects."""
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
            yield Entry(item, state, index)


def _chunks(items: Iterator, size: int) -> Iterator[list]:
    while chunk := list(islice(items, size)):
        yield chunk


def _outcomes(entries: Iterator[Entry], options: ImageOptions, keep_missing: bool, workers: int,
              batch_size: int = 16) -> Iterator[tuple[Entry, Outcome]]:
    """(entry, outcome) in entry order; images are processed on `workers` processes, with a bounded
    number of batches in flight so memory stays flat however large the corpus."""
    def split(batch: list[Entry]) -> list:
        return [e.item.image for e in batch if outcome_without_image(e.item, keep_missing) is None]

    def merge(batch: list[Entry], processed: list[Outcome]) -> Iterator[tuple[Entry, Outcome]]:
        done = iter(processed)
        for e in batch:
            yield e, outcome_without_image(e.item, keep_missing) or next(done)

    batches = _chunks(entries, batch_size)
    if workers <= 1:
        for batch in batches:
            yield from merge(batch, process_batch(split(batch), options))
        return
    with process_pool(workers, preload=["clipstore.ingest.parts"]) as pool:
        in_flight: deque = deque()
        for batch in batches:
            in_flight.append((batch, pool.submit(process_batch, split(batch), options)))
            if len(in_flight) >= 4 * workers:
                done_batch, future = in_flight.popleft()
                yield from merge(done_batch, future.result())
        while in_flight:
            done_batch, future = in_flight.popleft()
            yield from merge(done_batch, future.result())


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
