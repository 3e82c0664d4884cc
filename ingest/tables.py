"""Arrow schemas of a corpus artifact's tables."""

from __future__ import annotations

import pyarrow as pa

from clipstore.warehouse.parquet import table_spec

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


def declare(keys: dict[str, str | None]) -> dict[str, dict]:
    """Catalog table declarations: columns, and the key whose newest part supersedes older rows."""
    return {name: table_spec(SCHEMAS[name], key) for name, key in keys.items()}


CORPUS_TABLES = declare({"samples": "source_key", "images": "source_key", "captions": "source_key",
                         "rejects": "source_key", "ingest_ledger": "source_key", "classes": "class"})

