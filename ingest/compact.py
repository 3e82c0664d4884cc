"""Keep a corpus's shards equal to its current samples after an incremental re-ingest.

A re-ingest writes changed entries (new image bytes, new captions, an image now missing) into new
parts, and the SQL views take each source key's row from its newest part (warehouse/sql.py). A
webdataset reader has no such rule: it reads every shard, so the older shard's copy of a
superseded sample would still be served. At the end of every run, each earlier part whose shard
holds a superseded sample is therefore rewritten as a new part holding only its surviving rows
(shard members copied byte for byte, offsets recomputed, ledger rows kept), and the old part is
retired. Both become visible in the run's finish transaction, so readers switch in one step.

The rewrite depends only on committed parts, so it is deterministic, and a run killed halfway
through it redoes exactly the remaining parts when resumed (a part whose every row has moved to
its rewrite just retires)."""

from __future__ import annotations

import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pyarrow.parquet as pq

from clipstore.ingest import tables
from clipstore.ingest.shards import ShardWriter
from clipstore.warehouse.parquet import write_parquet

KEYED_TABLES = ("samples", "images", "captions", "rejects", "ingest_ledger")   # keyed by source_key


@dataclass
class Compaction:
    """What a run's compaction did: old part -> its rewrite (None: nothing survived)."""

    rewritten: dict[int, int | None] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return bool(self.rewritten)


def compact(builder, out_dir: Path) -> Compaction:
    """Rewrite every live part whose shard holds a superseded sample; retire the originals
    (effective at `builder.finish()`)."""
    parts = _live_parts(builder)
    newest = _newest_part(parts, KEYED_TABLES, "source_key")
    newest_class = _newest_part(parts, ("classes",), "class")
    result = Compaction()
    for part in sorted(parts):
        files = parts[part]
        if "images" not in files or not _holds_superseded_image(files["images"], part, newest):
            continue
        new_part = builder.next_part()
        written = _rewrite(part, files, new_part, newest, newest_class, out_dir)
        if written:
            builder.commit_part(new_part, written)
            result.rewritten[part] = new_part
        else:
            result.rewritten[part] = None
        builder.retire_part(part)
    return result


def _live_parts(builder) -> dict[int, dict[str, Path]]:
    parts: dict[int, dict[str, Path]] = {}
    for part, table, path in builder.committed_parts():
        parts.setdefault(part, {})[table] = path
    return parts


def _newest_part(parts: dict[int, dict[str, Path]], table_names, key: str) -> dict[str, int]:
    """key -> the newest part holding a row of it in any of these tables (the views' rule)."""
    newest: dict[str, int] = {}
    for part in sorted(parts):
        for name in table_names:
            if name in parts[part]:
                for k in pq.read_table(parts[part][name], columns=[key]).column(key).to_pylist():
                    newest[k] = part
    return newest


def _holds_superseded_image(images: Path, part: int, newest: dict[str, int]) -> bool:
    keys = pq.read_table(images, columns=["source_key"]).column("source_key").to_pylist()
    return any(newest[k] != part for k in keys)


def _rewrite(part: int, files: dict[str, Path], new_part: int, newest: dict[str, int],
             newest_class: dict[str, int], out_dir: Path) -> dict[str, tuple[Path, int]]:
    """The surviving rows of `part` as part `new_part`'s files (table -> (temp file, rows))."""
    rows: dict[str, list[dict]] = {}
    for name, path in files.items():
        if name == "shards":
            continue
        key, rule = ("class", newest_class) if name == "classes" else ("source_key", newest)
        kept = [r for r in pq.read_table(path).to_pylist() if rule.get(r[key]) == part]
        if kept:
            rows[name] = [{**r, "part": new_part} for r in kept]
    out: dict[str, tuple[Path, int]] = {}
    if rows.get("images"):
        shard_name = f"{new_part:06d}.tar"
        offsets = _copy_members(files["shards"], out_dir / shard_name, {r["sample_id"] for r in rows["images"]})
        out["shards"] = (out_dir / shard_name, len(offsets))
        for r in rows["images"]:
            r["shard"], r["offset"] = shard_name, offsets[r["sample_id"]][r["stored_ext"]]
        for r in rows.get("samples", []):
            if r["has_image"]:
                r["shard"] = shard_name
    for name, kept in rows.items():
        path = out_dir / f"{new_part:06d}.{name}.parquet"
        out[name] = (path, write_parquet(kept, tables.SCHEMAS[name], path))
    return out


def _copy_members(src: Path, dst: Path, keep: set[str]) -> dict[str, dict[str, int]]:
    """Copy the samples named in `keep` from one shard to a new one, member bytes and order as
    they are; returns sample key -> ext -> data offset in the new shard."""
    offsets: dict[str, dict[str, int]] = {}
    with ShardWriter(dst) as writer:
        for key, members in _samples(src):
            if key in keep:
                offsets[key] = {ext: where[0] for ext, where in writer.write(key, members).items()}
    missing = keep - offsets.keys()
    if missing:  # the tables name a member the shard lacks: the part is damaged, do not hide it
        raise OSError(f"shard {src} lacks {len(missing)} sample(s) its tables list, e.g. {sorted(missing)[0]}")
    return offsets


def _samples(shard: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, ext -> bytes) per sample, in shard order (a sample's members are adjacent)."""
    key, members = None, {}
    with tarfile.open(shard, "r:") as tar:
        for info in tar:
            if not info.isfile():
                continue
            k, ext = info.name.split(".", 1)
            if k != key and members:
                yield key, members
                members = {}
            key = k
            members[ext] = tar.extractfile(info).read()
    if members:
        yield key, members
