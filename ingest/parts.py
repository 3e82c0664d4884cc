"""Turn source entries into parts. Workers do the heavy, independent work per entry (read, hash,
decode, transcode: `process_batch`); the parent writes each part (a shard tar plus the matching
table rows: `PartWriter`) in source order, so parallelism does not depend on the shard size.

`write_part` is the one function that makes a part's files from its (entry, outcome) pairs: the
local path feeds it outcomes from its process pool, and a Ray task (`build_part`, ingest/ray_parts.py)
computes them itself, so a part's bytes are the same wherever it was built."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable

from clipstore.ingest import tables
from clipstore.ingest.images import (DEFAULT_MAX_BYTES, ImageRejected, ProcessedImage, ReadRejected,
                                     encode_array_png, process_image, read_image_file)
from clipstore.ingest.records import ImageRef, Reject, SourceRecord
from clipstore.ingest.shards import ShardWriter
from clipstore.ingest.text import normalise_caption
from clipstore.warehouse.hashing import text_id
from clipstore.warehouse.parquet import write_parquet


@dataclass(frozen=True)
class ImageOptions:
    keep_original: bool = False
    max_pixels: int = 89_478_485
    png_level: int = 1
    max_bytes: int = DEFAULT_MAX_BYTES


@dataclass
class Entry:
    """A pending source item with its state fingerprint and position in the source."""

    item: SourceRecord | Reject
    state: str
    index: int


@dataclass
class Outcome:
    """What a worker made of an entry's image: the processed bytes, or why it failed."""

    image: ProcessedImage | None = None
    reject: tuple[str, str] | None = None    # (reason, stage)


@dataclass
class PartResult:
    part: int
    files: dict[str, tuple[Path, int]]
    counts: Counter = field(default_factory=Counter)


def sample_id(corpus: str, source_key: str) -> str:
    return text_id("sample", corpus, source_key)


def caption_id(owner_id: str, ordinal: int, raw: str) -> str:
    return text_id("caption", owner_id, ordinal, raw)


def read_image_bytes(ref: ImageRef, options: ImageOptions) -> tuple[bytes, str | None]:
    """(bytes, their content id when known) of an entry's image; ImageRejected before reading a
    file that is too large or no image."""
    if ref.path is not None:
        return read_image_file(ref.path, max_bytes=options.max_bytes, max_pixels=options.max_pixels)
    if ref.h5 is not None:
        file, dataset, row = ref.h5
        return encode_array_png(_open_h5(file)[dataset][row], options.png_level), None
    data = ref.data or b""
    if options.max_bytes and len(data) > options.max_bytes:
        raise ReadRejected(f"image is {len(data):,} bytes, over the limit of {options.max_bytes:,} "
                            "(raise --max-bytes to accept it)")
    return data, None


@lru_cache(maxsize=8)
def _open_h5(file: str):
    """One read-only handle per HDF5 file per worker, not one open per image row."""
    import h5py
    return h5py.File(file, "r")


def outcome_without_image(item: SourceRecord | Reject, keep_missing: bool) -> Outcome | None:
    """The outcome of entries that need no worker (parse rejects, missing images); None otherwise."""
    if isinstance(item, Reject):
        return Outcome(reject=(item.reason, item.stage))
    if item.image is None:
        return Outcome() if keep_missing else Outcome(reject=(item.missing or "no image", "read"))
    return None


def process_image_ref(ref: ImageRef, options: ImageOptions) -> Outcome:
    try:
        data, image_id = read_image_bytes(ref, options)
        return Outcome(image=process_image(data, keep_original=options.keep_original, max_pixels=options.max_pixels,
                                           png_level=options.png_level, image_id=image_id))
    except OSError as exc:
        return Outcome(reject=(f"cannot read {ref.describe()}: {exc.strerror or exc}", "read"))
    except ImageRejected as exc:
        return Outcome(reject=(f"{exc} ({ref.describe()})", exc.stage))


def outcome_of(entry: Entry, options: ImageOptions, keep_missing: bool) -> Outcome:
    """What becomes of one entry: no image needed, or its image read, checked and transcoded."""
    return outcome_without_image(entry.item, keep_missing) or process_image_ref(entry.item.image, options)


def process_batch(refs: list[ImageRef], options: ImageOptions) -> list[Outcome]:
    """Worker entry point: a batch amortises the inter-process round trip."""
    return [process_image_ref(ref, options) for ref in refs]


@dataclass(frozen=True)
class PartSpec:
    """Where and as what a part is written: its number, the corpus, the folder for its files and
    the class table (`classes`: the rows the part records, on the first part of a run that
    changed them)."""

    part: int
    corpus: str
    out_dir: Path
    class_index: dict[str, int]
    classes: list[dict] | None = None


def write_part(spec: PartSpec, pairs: Iterable[tuple[Entry, Outcome]], on_entry=None) -> PartResult:
    """The part's shard and table files from its entries and their outcomes, in entry order."""
    writer = PartWriter(spec.part, spec.corpus, spec.out_dir, spec.class_index, spec.classes)
    for entry, outcome in pairs:
        writer.add(entry, outcome)
        if on_entry is not None:
            on_entry()
    return writer.close()


def build_part(spec: PartSpec, entries: list[Entry], options: ImageOptions, keep_missing: bool) -> PartResult:
    """A whole part in one process: each entry's outcome computed here, then `write_part`."""
    return write_part(spec, ((e, outcome_of(e, options, keep_missing)) for e in entries))


class PartWriter:
    """Writes one part: shard members and table rows, in entry order."""

    def __init__(self, part: int, corpus: str, out_dir: Path, class_index: dict[str, int],
                 classes: list[dict] | None = None):
        self.part, self.corpus, self.out_dir, self.class_index = part, corpus, out_dir, class_index
        self.shard_name = f"{part:06d}.tar"
        self.shard = ShardWriter(out_dir / self.shard_name)
        self.rows: dict[str, list[dict]] = {name: [] for name in tables.SCHEMAS}
        if classes:
            self.rows["classes"] = [{**c, "part": part} for c in classes]
        self.counts: Counter = Counter()
        self.entries = 0

    def add(self, entry: Entry, outcome: Outcome) -> None:
        item = entry.item
        self.entries += 1
        if outcome.reject is not None:
            reason, stage = outcome.reject
            self.rows["rejects"].append({"corpus": self.corpus, "source_key": item.source_key,
                                         "source_index": entry.index, "split": getattr(item, "split", None),
                                         "stage": stage, "reason": reason, "part": self.part})
            self._ledger(entry, "rejected")
            self.counts["rejected"] += 1
            return
        rec, image = item, outcome.image
        sid = sample_id(self.corpus, rec.source_key)
        image_id = image.image_id if image else None
        cap_ids = [caption_id(image_id or sid, i, raw) for i, raw in enumerate(rec.captions)]
        class_index = self.class_index.get(rec.label) if rec.label is not None else None
        if image is not None:
            self._write_image(rec, sid, image, cap_ids, class_index)
        else:
            self.counts["caption_only"] += 1
        self.rows["samples"].append({
            "corpus": self.corpus, "sample_id": sid, "image_id": image_id, "source_key": rec.source_key,
            "source_index": entry.index, "split": rec.split, "class": rec.label, "class_index": class_index,
            "n_captions": len(rec.captions), "has_image": image is not None,
            "shard": self.shard_name if image else None,
            "meta": json.dumps(rec.meta, sort_keys=True, ensure_ascii=False, default=str), "part": self.part})
        for i, (raw, cid) in enumerate(zip(rec.captions, cap_ids)):
            self.rows["captions"].append({"corpus": self.corpus, "caption_id": cid, "sample_id": sid,
                                          "image_id": image_id, "source_key": rec.source_key, "ordinal": i,
                                          "raw": raw, "text": normalise_caption(raw), "part": self.part})
        self._ledger(entry, "ingested" if image else "caption_only")
        self.counts["samples"] += 1
        self.counts["captions"] += len(rec.captions)

    def _write_image(self, rec: SourceRecord, sid: str, image: ProcessedImage, cap_ids: list[str],
                     class_index: int | None) -> None:
        doc = {"sample_id": sid, "image_id": image.image_id, "corpus": self.corpus, "source_key": rec.source_key,
               "split": rec.split, "class": rec.label, "class_index": class_index, "captions": rec.captions,
               "caption_ids": cap_ids, "width": image.width, "height": image.height, "meta": rec.meta}
        members = {image.ext: image.payload}
        if rec.captions:
            members["txt"] = rec.captions[0].encode("utf-8")  # open_clip trains on `txt`
        if class_index is not None:
            members["cls"] = str(class_index).encode()
        members["json"] = json.dumps(doc, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")
        offset, _ = self.shard.write(sid, members)[image.ext]
        self.rows["images"].append({
            "corpus": self.corpus, "image_id": image.image_id, "sample_id": sid, "source_key": rec.source_key,
            "width": image.width, "height": image.height, "format": image.format, "mode": image.mode,
            "bytes": image.source_bytes, "stored_ext": image.ext, "stored_bytes": len(image.payload),
            "transcoded": image.transcoded, "shard": self.shard_name, "offset": offset, "part": self.part})
        self.counts["images"] += 1

    def _ledger(self, entry: Entry, outcome: str) -> None:
        self.rows["ingest_ledger"].append({"corpus": self.corpus, "source_key": entry.item.source_key,
                                           "state": entry.state, "outcome": outcome, "part": self.part})

    def close(self) -> PartResult:
        self.shard.close()
        files: dict[str, tuple[Path, int]] = {}
        if self.shard.count:
            files["shards"] = (self.shard.path, self.shard.count)
        else:
            self.shard.path.unlink()
        for name, rows in self.rows.items():
            if rows:
                out = self.out_dir / f"{self.part:06d}.{name}.parquet"
                files[name] = (out, write_parquet(rows, tables.SCHEMAS[name], out))
        return PartResult(self.part, files, self.counts)
