"""Arrow schemas of an evaluation artifact's tables (SQL views `metrics` and `confusion`)."""

from __future__ import annotations

import pyarrow as pa

from clipstore.warehouse.parquet import table_spec

METRICS = pa.schema([
    ("run", pa.string()),           # the evaluation artifact id
    ("name", pa.string()),          # its name (eval.<what>.<model>)
    ("fingerprint", pa.string()),   # model fingerprint
    ("model", pa.string()),         # model label (architecture@tag or @checkpoint stem)
    ("checkpoint", pa.string()),    # checkpoint path as given, or NULL
    ("corpus", pa.string()),
    ("split", pa.string()),         # a split name, or "all" (zero-shot over every labelled image)
    ("task", pa.string()),          # zeroshot | retrieval
    ("protocol", pa.string()),      # retrieval: all | one-caption; zero-shot: the template set
    ("templates", pa.string()),     # zero-shot template set (NULL for retrieval)
    ("names", pa.string()),         # zero-shot class names: normalised | raw | corpus
    ("seed", pa.int64()),           # one-caption protocol seed (NULL otherwise)
    ("metric", pa.string()),        # top1, top5, balanced_acc, class_acc, i2t_R@K, t2i_R@K, mR, *_median_rank ...
    ("class", pa.string()),         # the class of a class_acc row (NULL otherwise)
    ("value", pa.float64()),        # percent for accuracies and recalls; ranks and counts as they are
])
CONFUSION = pa.schema([
    ("run", pa.string()), ("corpus", pa.string()), ("split", pa.string()), ("templates", pa.string()),
    ("names", pa.string()), ("true_index", pa.int32()), ("true_class", pa.string()),
    ("pred_index", pa.int32()), ("pred_class", pa.string()), ("count", pa.int64()),
])
EVAL_TABLES = {"metrics": table_spec(METRICS), "confusion": table_spec(CONFUSION)}
