"""Arrow schemas of a corpus artifact's tables and their deterministic Parquet encoding."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SAMPLES = pa.schema([
    ("corpus", pa.string()), ("sample_id", pa.string()), ("image_id", pa.string()),
    ("source_key", pa.string()), ("source_index", pa.int64()), ("split", pa.string()), ("class", pa.string()),
    ("class_index", pa.int32()), ("n_captions", pa.int32()), ("has_image", pa.bool_()),
    ("shard", pa.string()), ("meta", pa.string()), ("part", pa.int32()),
])
IMAGES = pa.schema([
    ("corpus", pa.string()), ("image_id", pa.string()), ("sample_id", pa.string()),
    ("source_key", pa.string()), ("width", pa.int32()), ("height", pa.int32()), ("format", pa.string()),
    ("mode", pa.string()), ("bytes", pa.int64()), ("stored_ext", pa.string()), ("stored_bytes", pa.int64()),
    ("transcoded", pa.bool_()), ("shard", pa.string()), ("offset", pa.int64()), ("part", pa.int32()),
])
CAPTIONS = pa.schema([
    ("corpus", pa.string()), ("caption_id", pa.string()), ("sample_id", pa.string()),
    ("image_id", pa.string()), ("source_key", pa.string()), ("ordinal", pa.int32()),
    ("raw", pa.string()), ("text", pa.string()), ("part", pa.int32()),
])
CLASSES = pa.schema([
    ("corpus", pa.string()), ("class", pa.string()), ("class_index", pa.int32()), ("name", pa.string()),
    ("part", pa.int32()),
])
REJECTS = pa.schema([
    ("corpus", pa.string()), ("source_key", pa.string()), ("source_index", pa.int64()), ("split", pa.string()),
    ("stage", pa.string()), ("reason", pa.string()), ("part", pa.int32()),
])
# What each source key looked like when it was processed: the basis of incremental re-ingest.
LEDGER = pa.schema([
    ("corpus", pa.string()), ("source_key", pa.string()), ("state", pa.string()), ("outcome", pa.string()),
    ("part", pa.int32()),
])

SCHEMAS = {"samples": SAMPLES, "images": IMAGES, "captions": CAPTIONS, "classes": CLASSES,
           "rejects": REJECTS, "ingest_ledger": LEDGER}

# Table declarations for the catalog: rows keyed by source_key supersede older parts' rows.
CORPUS_TABLES = {
    "samples": {"key": "source_key"}, "images": {"key": "source_key"}, "captions": {"key": "source_key"},
    "rejects": {"key": "source_key"}, "ingest_ledger": {"key": "source_key"}, "classes": {"key": "class"},
}


def write_parquet(rows: list[dict], schema: pa.Schema, path: Path) -> int:
    table = pa.Table.from_pylist(rows, schema=schema)
    pq.write_table(table, str(path), compression="zstd", write_statistics=True)
    return table.num_rows


def read_parquet(paths: list[Path], columns: list[str] | None = None) -> pa.Table:
    if not paths:
        return pa.table({})
    return pa.concat_tables([pq.read_table(str(p), columns=columns) for p in paths])
