"""`clipstore ingest`: source adapter -> parts (shard + table rows) -> committed corpus artifact.

Only entries that are new or changed since the last ingest of the same recipe are processed
(the ingest ledger remembers each source key's state). Work is cut into parts of `shard_size`
entries in source order; workers build parts in parallel and the parent commits them strictly in
order, so a killed run leaves a prefix of parts and a re-run produces exactly the missing ones.
At the end, shards holding superseded samples are rewritten (ingest/compact.py) and the new
version is checked against the current one (ingest/guards.py) before it is published."""

from __future__ import annotations

import json
import os
import time
from collections import Counter, deque
from contextlib import nullcontext
from itertools import chain, islice
from pathlib import Path
from typing import Iterable, Iterator

from clipstore.ingest import tables
from clipstore.ingest.adapters import PRESETS, IngestOptions, get_adapter
from clipstore.ingest.compact import compact
from clipstore.ingest.guards import check_options, check_replacement
from clipstore.ingest.naming import corpus_name
from clipstore.ingest.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, DEFAULT_PNG_LEVEL
from clipstore.ingest.parts import (Entry, ImageOptions, Outcome, PartResult, PartSpec, outcome_without_image,
                                    process_batch, write_part)
from clipstore.ingest.records import Reject, SourceRecord
from clipstore.warehouse.errors import InputError
from clipstore.warehouse.hashing import digest
from clipstore.warehouse.parquet import read_parquet
from clipstore.warehouse.store import Artifact, ArtifactBuilder, Store
from clipstore.warehouse.workers import process_pool

DEFAULT_SHARD_SIZE = 1000
STAGE_VERSION = 1   # bump when the same inputs would give other shards or tables


def ingest(store: Store | str | Path, fmt: str, path: str | Path, *, name: str | None = None,
           images: str | Path | None = None, image_map: str | Path | None = None, keep_missing: bool = False,
           preset: str | None = None, shard_size: int = DEFAULT_SHARD_SIZE, workers: int | None = None,
           keep_original: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS, png_level: int = DEFAULT_PNG_LEVEL,
           max_bytes: int = DEFAULT_MAX_BYTES, wait: bool = False, progress: bool = True,
           replace: bool = False, ray: str | None = None) -> Artifact:
    """Ingest a raw corpus into the store and return its corpus artifact (see docs/ingest-versions.md).
    A version that would lose more than guards.MAX_SILENT_LOSS of the current one's samples or
    images, or in which no image was found, is refused unless `replace`. `ray`: build the parts in
    Ray tasks on that cluster (`auto`, HOST:PORT, `local`; docs/scale.md), `workers` of them at a
    time (default: as many as the cluster has CPUs); the result is the same as without."""
    check_options(shard_size=shard_size, workers=workers, max_pixels=max_pixels, png_level=png_level)
    if not isinstance(max_bytes, int) or max_bytes < 1:
        raise InputError(f"max_bytes must be a positive number of bytes, got {max_bytes!r}", fix="e.g. 512 << 20")
    store = store if isinstance(store, Store) else Store(store)
    path = Path(path)
    name, how = corpus_name(fmt, path, name, preset)
    options = IngestOptions(images=Path(images) if images else None,
                            image_map=Path(image_map) if image_map else None,
                            keep_missing=keep_missing, preset=_preset(preset, name, how))
    adapter = get_adapter(fmt)
    source = adapter.open(path, options)
    image_options = ImageOptions(keep_original=keep_original, max_pixels=max_pixels, png_level=png_level,
                                 max_bytes=max_bytes)
    params = {"format": fmt, "source": str(path.resolve()),
              "images": str(options.images.resolve()) if options.images else None,
              "image_map": str(options.image_map.resolve()) if options.image_map else None,
              "keep_missing": keep_missing, "preset": options.preset, "shard_size": shard_size,
              "keep_original": keep_original, "max_pixels": max_pixels, "png_level": png_level,
              "max_bytes": max_bytes}
    if ray is None:
        workers = (os.cpu_count() or 1) if workers is None else workers
    else:
        from clipstore.warehouse.raydata import check_address
        ray = check_address(ray)
    with store.writing(wait=wait), _ray_session(ray):
        if ray is not None:
            from clipstore.warehouse.raydata import prestart
            prestart(["clipstore.ingest.ray_parts"], workers)
        # incremental: the recipe names the source, not its contents; the ledger finds what changed
        builder = store.produce(kind="corpus", name=name, stage="ingest", version=STAGE_VERSION, params=params,
                                tables=tables.CORPUS_TABLES,
                                config={**params, "workers": workers, "replace": replace, "ray": ray},
                                reuse=False)
        with builder.failing_on_error():
            count = _pending_counter(adapter, path, options) if progress else None
            return _run(store, builder, source, name, image_options, keep_missing, shard_size, workers,
                        count, replace, ray)


def _ray_session(address: str | None):
    """Connected to the Ray cluster for the run (Ray is imported only when asked for)."""
    if address is None:
        return nullcontext()
    from clipstore.warehouse.raydata import session
    return session(address)


def _pending_counter(adapter, path: Path, options: IngestOptions):
    """ledger -> how many entries a run will process, for the progress bar's total and ETA: a
    second pass over a fresh copy of the source (annotations and a stat per image, no decoding)."""
    return lambda ledger: sum(1 for _ in _pending(adapter.open(path, options).records, ledger))


def _preset(preset: str | None, name: str, how: str) -> str | None:
    """imagefolder presets are also chosen by a given name; a derived name picks only a real preset."""
    if preset or how == "given":
        return preset or name
    return name if name in PRESETS else None


def _run(store: Store, builder: ArtifactBuilder, source, name: str, image_options: ImageOptions,
         keep_missing: bool, shard_size: int, workers: int | None, count_pending, replace: bool,
         ray: str | None = None) -> Artifact:
    started = time.monotonic()
    classes = [{"corpus": name, "class": raw, "class_index": i, "name": display}
               for i, (raw, display) in enumerate(source.classes or [])]
    class_index = {c["class"]: c["class_index"] for c in classes}
    visible_classes = _committed_classes(builder)
    classes_changed = any(visible_classes.get(c["class"]) != (c["class_index"], c["name"]) for c in classes)
    out_dir = builder.temp_dir("parts").resolve()   # absolute: Ray workers write there too
    first_part = builder.next_part()
    totals: Counter = Counter()
    ledger = _committed_states(builder)
    bar = None if count_pending is None else _progress(name, count_pending(ledger))

    def spec(part: int) -> PartSpec:   # the class table goes into the run's first part when it changed
        return PartSpec(part, name, out_dir, class_index, classes if classes_changed and part == first_part else None)

    def commit(results: list[tuple[PartResult, dict[str, str] | None]]) -> None:
        builder.commit_parts([(r.part, r.files, digests) for r, digests in results])
        for result, digests in results:
            totals.update(result.counts)
            if bar is not None and digests is not None:   # built remotely: the bar moves a part at a time
                bar.update(result.counts["samples"] + result.counts["rejected"])
        if bar is not None:
            bar.set_postfix(images=totals["images"], rejected=totals["rejected"], refresh=False)

    entries = _pending(source.records, ledger)
    wrote = False
    if ray is None:
        for result in _local_parts(entries, spec, first_part, image_options, keep_missing, shard_size, workers,
                                   bar.update if bar is not None else None):
            commit([(result, None)])
            wrote = True
    else:
        from clipstore.ingest.ray_parts import ray_parts
        for ready in ray_parts(entries, spec, first_part, image_options, keep_missing, shard_size, workers):
            commit(ready)
            wrote = True
    if not wrote and classes_changed:   # only the class list changed
        commit([(write_part(spec(first_part), ()), None)])
    if bar is not None:
        bar.close()

    compaction = compact(builder, out_dir)   # shards hold exactly the current samples
    from clipstore.ingest.stats import corpus_stats  # after the parts: stats read the logical tables
    stats = corpus_stats(store, name, building=builder)
    stats["notes"] = source.notes
    check_replacement(store.current("corpus", name), builder.artifact_id, stats, replace)
    processed = totals["samples"] + totals["rejected"]
    summary = {"processed": processed, "new_images": totals["images"], "new_rejects": totals["rejected"],
               "rewritten_parts": len(compaction.rewritten), "seconds": round(time.monotonic() - started, 3)}
    noop = processed == 0 and not compaction.changed and builder.complete and not builder.pending_parts
    done = builder.finish(counts=stats["counts"], stats=stats, summary=summary, noop=noop)
    _write_sizes(builder)   # after finish, so sizes.json never lists a version that is not current
    return done


def _committed_states(builder: ArtifactBuilder) -> dict[str, str]:
    paths = [p for _, _, p in builder.committed_parts("ingest_ledger")]
    if not paths:
        return {}
    table = read_parquet(paths, columns=["source_key", "state"])
    # parts are read in order, so a later state of the same key overwrites an earlier one
    return dict(zip(table.column("source_key").to_pylist(), table.column("state").to_pylist()))


def _committed_classes(builder: ArtifactBuilder) -> dict[str, tuple[int, str]]:
    """class -> (index, display name) as the classes view shows it (each class's newest row)."""
    paths = [p for _, _, p in builder.committed_parts("classes")]
    rows = read_parquet(paths).to_pylist() if paths else []
    return {r["class"]: (r["class_index"], r["name"]) for r in rows}   # parts in order: newest wins


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


def _local_parts(entries: Iterator[Entry], spec, first_part: int, options: ImageOptions, keep_missing: bool,
                 shard_size: int, workers: int, on_entry) -> Iterator[PartResult]:
    """Parts of `shard_size` entries, in order, their images processed on `workers` processes."""
    pairs = _outcomes(entries, options, keep_missing, workers)
    part = first_part
    while (head := next(pairs, None)) is not None:
        yield write_part(spec(part), chain([head], islice(pairs, shard_size - 1)), on_entry)
        part += 1


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
    """open_clip reads sample counts from sizes.json beside the shards: the version's live shards
    only (a retired shard's file stays on disk, superseded)."""
    sizes = {path.name: rows for path, rows in builder.committed_rows("shards")}   # retired ones left out
    if sizes:
        builder.write_file("shards/sizes.json", json.dumps(sizes, indent=1, sort_keys=True))


def _progress(name: str, total: int | None):
    from tqdm import tqdm
    return tqdm(desc=f"ingest {name}", unit=" entries", total=total, dynamic_ncols=True, leave=False)
