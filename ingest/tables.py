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

_SQL_TYPES = {pa.string(): "VARCHAR", pa.int32(): "INTEGER", pa.int64(): "BIGINT", pa.bool_(): "BOOLEAN",
              pa.float32(): "FLOAT", pa.float64(): "DOUBLE"}


def sql_columns(schema: pa.Schema) -> dict[str, str]:
    """Column -> SQL type, so that a table with no rows yet is still a (typed, empty) view."""
    return {f.name: _SQL_TYPES[f.type] for f in schema}


def declare(keys: dict[str, str | None]) -> dict[str, dict]:
    """Catalog table declarations: columns, and the key whose newest part supersedes older rows."""
    return {name: {"key": key, "columns": sql_columns(SCHEMAS[name])} for name, key in keys.items()}


CORPUS_TABLES = declare({"samples": "source_key", "images": "source_key", "captions": "source_key",
                         "rejects": "source_key", "ingest_ledger": "source_key", "classes": "class"})


def write_parquet(rows: list[dict], schema: pa.Schema, path: Path) -> int:
    table = pa.Table.from_pylist(rows, schema=schema)
    pq.write_table(table, str(path), compression="zstd", write_statistics=True)
    return table.num_rows


def read_parquet(paths: list[Path], columns: list[str] | None = None) -> pa.Table:
    if not paths:
        return pa.table({})
    return pa.concat_tables([pq.read_table(str(p), columns=columns) for p in paths])
