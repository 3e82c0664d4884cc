"""`clipstore ingest --ray`: the same parts as the local path, each built by one Ray task.

The driver enumerates the source and finds the pending entries (the ledger, a stat per image),
cuts them into parts of `shard_size` entries exactly as the local path does, and sends each part
to a task. The task reads, hashes, validates and transcodes the part's images and writes its shard
and table files into the run's temporary folder in the store (`parts.build_part`, the function
behind the local path's parts too), with their sha256; the driver commits the parts in order. So
a part is one Ray block (its ~10 ms of scheduling is spread over `shard_size` images) and the
image bytes never pass through the driver. See docs/scale.md."""

from __future__ import annotations

import os
from itertools import count
from pathlib import Path
from typing import Callable, Iterator

from clipstore.ingest.parts import Entry, ImageOptions, PartResult, PartSpec, build_part
from clipstore.warehouse import fs, raydata
from clipstore.warehouse.errors import ClipstoreError
from clipstore.warehouse.hashing import file_sha256
from clipstore.warehouse.store import PACKAGE_VERSION

WINDOW_ROUNDS = 4   # parts in flight per window: this many rounds of the cluster's task slots


def ray_parts(entries: Iterator[Entry], spec: Callable[[int], PartSpec], first_part: int, options: ImageOptions,
              keep_missing: bool, shard_size: int, workers: int | None) -> Iterator[list[tuple[PartResult, dict]]]:
    """Batches of (part, its files' sha256) in part order, built on the connected Ray cluster:
    each batch is what became committable at once (the driver commits it in one transaction)."""
    cwd = os.getcwd()
    slots = workers or max(1, int(raydata.cluster_resources().get("CPU", 1)))

    def rows() -> Iterator[dict]:
        parts = count(first_part)
        while chunk := _take(entries, shard_size):
            part = spec(next(parts))
            yield {"part": part.part, "work": raydata.dumps((part, chunk, options, keep_missing, cwd, PACKAGE_VERSION))}

    done = raydata.map_rows(rows(), build_part_task, window=WINDOW_ROUNDS * slots, concurrency=workers)
    for batch in raydata.in_order(done, first_part):
        yield [raydata.loads(row["result"]) for row in batch]


def _take(entries: Iterator[Entry], n: int) -> list[Entry]:
    chunk = []
    for entry in entries:
        chunk.append(entry)
        if len(chunk) == n:
            break
    return chunk


def build_part_task(row: dict) -> dict:
    """In a Ray task: one whole part, its files written where the driver will commit them from."""
    spec, entries, options, keep_missing, cwd, version = raydata.loads(row["work"])
    try:
        if version != PACKAGE_VERSION:
            raise ClipstoreError(f"this Ray node runs clipstore {PACKAGE_VERSION}, the driver {version}",
                                 fix="install the same clipstore on every node")
        raydata.check_visible(spec.out_dir, "the store's temporary folder")
        relative = any(_relative(e) for e in entries)
        with raydata.driver_cwd(cwd, required=relative):
            result = build_part(spec, entries, options, keep_missing)
        digests = {}
        for table, (path, _) in result.files.items():
            fs.fsync_file(path)   # durable from the node that wrote it: the driver's fsync would not be, on NFS
            digests[table] = file_sha256(path)
    except ClipstoreError as exc:
        return {"part": row["part"], **raydata.error_row(exc)}
    return {"part": row["part"], "result": raydata.dumps((result, digests)), raydata.ERROR_KEY: None}


def _relative(entry: Entry) -> bool:
    ref = getattr(entry.item, "image", None)
    if ref is None:
        return False
    where = ref.path if ref.path is not None else (Path(ref.h5[0]) if ref.h5 is not None else None)
    return where is not None and not Path(where).is_absolute()
