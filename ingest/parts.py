"""Build one part of a corpus: a shard tar plus the matching rows of every table. Runs in a
worker process; it reads and decodes images itself, so image bytes never cross processes."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from clipstore.ingest import tables
from clipstore.ingest.images import ImageRejected, encode_array_png, process_image
from clipstore.ingest.records import ImageRef, Reject, SourceRecord
from clipstore.ingest.shards import ShardWriter
from clipstore.ingest.text import normalise_caption
from clipstore.warehouse.hashing import text_id


@dataclass(frozen=True)
class ImageOptions:
    keep_original: bool = False
    max_pixels: int = 89_478_485
    png_level: int = 1


@dataclass
class PartJob:
    part: int
    corpus: str
    items: list[tuple[SourceRecord | Reject, str, int]]  # (item, state fingerprint, position in the source)
    out_dir: Path
    image_options: ImageOptions
    keep_missing: bool
    class_index: dict[str, int]
    classes: list[dict] | None = None                  # class rows, written when they changed


@dataclass
class PartResult:
    part: int
    files: dict[str, tuple[Path, int]]
    counts: Counter = field(default_factory=Counter)


def sample_id(corpus: str, source_key: str) -> str:
    return text_id("sample", corpus, source_key)


def caption_id(owner_id: str, ordinal: int, raw: str) -> str:
    return text_id("caption", owner_id, ordinal, raw)


def read_image_bytes(ref: ImageRef, png_level: int) -> bytes:
    if ref.path is not None:
        return ref.path.read_bytes()
    if ref.h5 is not None:
        import h5py
        file, dataset, row = ref.h5
        with h5py.File(file, "r") as f:
            return encode_array_png(f[dataset][row], png_level)
    return ref.data or b""


def build_part(job: PartJob) -> PartResult:
    shard_name = f"{job.part:06d}.tar"
    shard_path = job.out_dir / shard_name
    rows: dict[str, list[dict]] = {name: [] for name in tables.SCHEMAS}
    counts: Counter = Counter()
    writer = ShardWriter(shard_path)

    def reject(key: str, state: str, reason: str, stage: str) -> None:
        rows["rejects"].append({"corpus": job.corpus, "source_key": key, "source_index": index,
                                "split": getattr(item, "split", None), "stage": stage, "reason": reason,
                                "part": job.part})
        rows["ingest_ledger"].append({"corpus": job.corpus, "source_key": key, "state": state,
                                      "outcome": "rejected", "part": job.part})
        counts["rejected"] += 1

    for item, state, index in job.items:
        if isinstance(item, Reject):
            reject(item.source_key, state, item.reason, item.stage)
            continue
        rec = item
        processed = None
        if rec.image is not None:
            try:
                data = read_image_bytes(rec.image, job.image_options.png_level)
            except OSError as exc:
                reject(rec.source_key, state, f"cannot read {rec.image.describe()}: {exc.strerror or exc}", "read")
                continue
            try:
                processed = process_image(data, keep_original=job.image_options.keep_original,
                                          max_pixels=job.image_options.max_pixels,
                                          png_level=job.image_options.png_level)
            except ImageRejected as exc:
                reject(rec.source_key, state, f"{exc} ({rec.image.describe()})", "decode")
                continue
        elif not job.keep_missing:
            reject(rec.source_key, state, rec.missing or "no image", "read")
            continue

        sid = sample_id(job.corpus, rec.source_key)
        image_id = processed.image_id if processed else None
        owner = image_id or sid
        cap_ids = [caption_id(owner, i, raw) for i, raw in enumerate(rec.captions)]
        class_index = job.class_index.get(rec.label) if rec.label is not None else None
        shard = None
        if processed is not None:
            shard = shard_name
            doc = {"sample_id": sid, "image_id": image_id, "corpus": job.corpus, "source_key": rec.source_key,
                   "split": rec.split, "class": rec.label, "class_index": class_index,
                   "captions": rec.captions, "caption_ids": cap_ids,
                   "width": processed.width, "height": processed.height, "meta": rec.meta}
            members = {processed.ext: processed.payload}
            if rec.captions:
                members["txt"] = rec.captions[0].encode("utf-8")
            if class_index is not None:
                members["cls"] = str(class_index).encode()
            members["json"] = json.dumps(doc, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")
            where = writer.write(sid, members)
            rows["images"].append({
                "corpus": job.corpus, "image_id": image_id, "sample_id": sid, "source_key": rec.source_key,
                "width": processed.width, "height": processed.height, "format": processed.format,
                "mode": processed.mode, "bytes": processed.source_bytes, "stored_ext": processed.ext,
                "stored_bytes": len(processed.payload), "transcoded": processed.transcoded,
                "shard": shard_name, "offset": where[processed.ext][0], "part": job.part})
            counts["images"] += 1
        else:
            counts["caption_only"] += 1
        rows["samples"].append({
            "corpus": job.corpus, "sample_id": sid, "image_id": image_id, "source_key": rec.source_key,
            "source_index": index, "split": rec.split, "class": rec.label, "class_index": class_index, "n_captions": len(rec.captions),
            "has_image": processed is not None, "shard": shard,
            "meta": json.dumps(rec.meta, sort_keys=True, ensure_ascii=False, default=str), "part": job.part})
        for i, (raw, cid) in enumerate(zip(rec.captions, cap_ids)):
            rows["captions"].append({"corpus": job.corpus, "caption_id": cid, "sample_id": sid,
                                     "image_id": image_id, "source_key": rec.source_key, "ordinal": i,
                                     "raw": raw, "text": normalise_caption(raw), "part": job.part})
        rows["ingest_ledger"].append({"corpus": job.corpus, "source_key": rec.source_key, "state": state,
                                      "outcome": "ingested" if processed else "caption_only", "part": job.part})
        counts["samples"] += 1
        counts["captions"] += len(rec.captions)
    writer.close()

    if job.classes:
        rows["classes"] = [{**c, "part": job.part} for c in job.classes]
    files: dict[str, tuple[Path, int]] = {}
    if writer.count:
        files["shards"] = (shard_path, writer.count)
    else:
        shard_path.unlink()
    for name, table_rows in rows.items():
        if table_rows:
            out = job.out_dir / f"{job.part:06d}.{name}.parquet"
            files[name] = (out, tables.write_parquet(table_rows, tables.SCHEMAS[name], out))
    return PartResult(job.part, files, counts)
