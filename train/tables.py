"""Arrow schema of the trainer's SQL table `train_log` (one row per logged value: long form, so a
curve is `SELECT step, value FROM train_log WHERE name = ... AND metric = 'loss'`)."""

from __future__ import annotations

import pyarrow as pa

from clipstore.warehouse.parquet import table_spec

TRAIN_LOG = pa.schema([
    ("run", pa.string()),           # the train artifact id
    ("name", pa.string()),          # the run's name (its checkpoints share it)
    ("step", pa.int64()),           # optimiser steps done when the value was taken
    ("epoch", pa.float64()),        # fractional epochs done (labeled passes)
    ("phase", pa.string()),         # train | val
    ("metric", pa.string()),        # loss, loss/<term>, lr, logit_scale, samples_per_s, labeled_seen, ...;
                                    # val: <corpus>/<task>/<protocol>/<metric>
    ("value", pa.float64()),
    ("checkpoint", pa.string()),    # val rows: the checkpoint artifact evaluated
    ("evaluation", pa.string()),    # val rows: the evaluation artifact holding its metrics rows
])
TRAIN_TABLES = {"train_log": table_spec(TRAIN_LOG)}
