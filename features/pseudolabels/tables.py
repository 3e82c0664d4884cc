"""Arrow schemas of the pseudo-label tables (all SQL views: docs/pseudolabels.md, docs/tables.md).

Every pseudo-label table ends with the same LINEAGE columns, so "which images got which labels
from which embeddings" is one query whatever the producer: the producer, the artifact, the split
version, the embeddings / kNN graph / vocabulary / upstream pseudo-label artifact the row came
from, and the fingerprints of the model. A producer declares its table with
`pseudo_schema([...own fields...])`; the produce wrapper (common.py) fills the lineage columns.

`pseudo_calibration` (written by every producer through the wrapper) holds the audit's
accuracy-against-confidence rows, one per (table, metric, confidence bin)."""

from __future__ import annotations

import pyarrow as pa

from clipstore.warehouse.parquet import table_spec

TABLES_VERSION = 1   # bump when a table's columns change (it is part of every recipe)

STRINGS = pa.list_(pa.string())
FLOATS = pa.list_(pa.float32())

LINEAGE = [
    ("producer", pa.string()),            # nn | soft_nn | ot | keywords | classes | concepts | propagate
    ("artifact_id", pa.string()),         # the pseudo-label artifact (several share a view)
    ("split_id", pa.string()),            # the split version whose roles were read
    ("embeddings_ids", STRINGS),          # embeddings artifacts the vectors came from (row's own and the bank's)
    ("graph_id", pa.string()),            # kNN graph artifact (graph producers), else null
    ("vocab_id", pa.string()),            # vocabulary artifact (keywords, concepts), else null
    ("source_id", pa.string()),           # upstream pseudo-label artifact (keywords from nn/ot), else null
    ("model_fingerprint", pa.string()),   # the whole model's fingerprint when known (--model), else the embedder's
    ("tower_fingerprint", pa.string()),   # the image tower's fingerprint: what the vectors are keyed on
]
LINEAGE_NAMES = tuple(name for name, _ in LINEAGE)


def pseudo_schema(fields: list[tuple[str, pa.DataType]]) -> pa.Schema:
    """A pseudo-label table: the producer's own columns, then the shared lineage columns."""
    return pa.schema(list(fields) + LINEAGE)


# ---- caption-level pseudo-labels (nn, soft_nn, ot) -----------------------------------------------
PSEUDO_CAPTIONS = pseudo_schema([
    ("image_id", pa.string()),            # the unlabeled image
    ("sample_id", pa.string()),
    ("corpus", pa.string()),
    ("matches", STRINGS),                 # labeled image ids, best first
    ("match_sample_ids", STRINGS),        # their samples, aligned with matches
    ("weights", FLOATS),                  # aligned with matches, sum 1 (the soft target)
    ("match_id", pa.string()),            # the best match (matches[0])
    ("match_sample_id", pa.string()),
    ("match_corpus", pa.string()),
    ("match_caption_ids", STRINGS),       # the best match's captions, in ordinal order
    ("confidence", pa.float32()),         # top weight of the full row distribution
    ("entropy", pa.float32()),            # entropy (nats) of the full row distribution
    ("similarity", pa.float32()),         # cosine between the image and its best match
])

# ---- keyword candidate sets ----------------------------------------------------------------------
PSEUDO_KEYWORDS = pseudo_schema([
    ("image_id", pa.string()),
    ("sample_id", pa.string()),
    ("corpus", pa.string()),
    ("match_id", pa.string()),            # the matched labeled image the set comes from
    ("match_sample_id", pa.string()),
    ("caption_ids", STRINGS),             # the match's captions used (all: union; one: --one-caption)
    ("keyword_ids", STRINGS),             # the candidate set, in vocabulary rank order (may be empty)
    ("keywords", STRINGS),                # the same, as text
    ("n_keywords", pa.int32()),
    ("confidence", pa.float32()),         # the upstream row's confidence
])

# ---- audit: accuracy against confidence ----------------------------------------------------------
PSEUDO_CALIBRATION = pa.schema([
    ("artifact_id", pa.string()), ("producer", pa.string()), ("table_name", pa.string()),
    ("metric", pa.string()),              # e.g. match_class_accuracy, keyword_precision
    ("bin", pa.int32()), ("confidence_lo", pa.float32()), ("confidence_hi", pa.float32()),
    ("n", pa.int64()),                    # rows in the bin that have truth
    ("mean_confidence", pa.float32()), ("value", pa.float32()),
])

SCHEMAS = {"pseudo_captions": PSEUDO_CAPTIONS, "pseudo_keywords": PSEUDO_KEYWORDS,
           "pseudo_calibration": PSEUDO_CALIBRATION}


def declare(tables: dict[str, pa.Schema]) -> dict[str, dict]:
    """Catalog declarations for a producer's tables plus the calibration table every artifact has."""
    return {name: table_spec(schema) for name, schema in {**tables, "pseudo_calibration": PSEUDO_CALIBRATION}.items()}
