"""Writing a vocabulary version: one artifact of kind "vocab" whose tables land in one part."""

from __future__ import annotations

import json

import pyarrow as pa

from clipstore.mining.scope import Scope
from clipstore.mining.tables import SCHEMAS, TABLES_VERSION
from clipstore.warehouse.parquet import commit_part_tables
from clipstore.warehouse.store import Artifact, ArtifactBuilder, Store


# Bump a kind's version when the same inputs and parameters would give other rows.
STAGE_VERSIONS = {"keywords": 1, "classnames": 1, "concepts": 1}


def vocab_name(kind: str, scope_label: str) -> str:
    """`keywords.rs_all.labeled`, `classnames.ucm_cls+rsicd_cls`, `concepts.ucm_captions`."""
    return f"{kind}.{scope_label}"


def begin_vocab(store: Store, kind: str, name: str, params: dict, scope: Scope | None, tables: dict,
                extra_inputs: list[str] | None = None) -> Artifact | ArtifactBuilder:
    """Produce this vocabulary recipe (call inside `store.writing()`): the finished artifact when
    it completed before (a recorded no-op), else a builder."""
    # the table layout is part of the recipe: a vocabulary written before a layout change is redone
    full = {**params, **(scope.params() if scope else {}), "tables_version": TABLES_VERSION}
    inputs = sorted(set((scope.input_ids if scope else []) + list(extra_inputs or [])))  # a match scope may repeat them
    return store.produce(kind="vocab", name=name, stage=f"mine {kind}", version=STAGE_VERSIONS[kind], params=full,
                         inputs=inputs, tables=tables, config=full)


def vocabulary_row(builder: ArtifactBuilder, kind: str, scope_label: str, method: str, params: dict,
                   n_entries: int) -> dict:
    return {"vocab_id": builder.artifact_id, "vocab": builder.name, "kind": kind, "scope": scope_label,
            "method": method, "params": json.dumps(params, sort_keys=True, default=str), "n_entries": n_entries}


def commit_tables(builder: ArtifactBuilder, tables: dict[str, pa.Table | list[dict]],
                  part: int = 0) -> dict[str, int]:
    """Publish the vocabulary's tables (rows or Arrow tables, by table name) as one part; returns rows per table."""
    return commit_part_tables(builder, part, {name: (data, SCHEMAS[name]) for name, data in tables.items()})


def publish_vocab(store: Store, builder: ArtifactBuilder, tables: dict[str, pa.Table | list[dict]], *,
                  stats: dict | None = None, summary: dict | None = None) -> Artifact:
    """Commit the vocabulary's tables as part 0 and complete the artifact. A run killed after the
    commit but before the catalog's done mark already published these very rows (same recipe,
    deterministic output): only the done mark is missing, so the part is not written twice."""
    if builder.is_committed(0):
        counts = {t: sum(n for _, n in builder.committed_rows(t)) for t in tables}
    else:
        counts = commit_tables(builder, tables)
    stats = {**(stats or {}), "rows": counts}
    return builder.finish(counts, stats, summary=summary or counts)
