"""Deterministic Parquet encoding of stage tables and their declaration to the catalog.

Every stage writes its tables through these helpers, so all parts share one encoding (zstd, with
statistics) and every declared table is a typed SQL view even before it has rows."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

_SQL_TYPES = {pa.string(): "VARCHAR", pa.int32(): "INTEGER", pa.int64(): "BIGINT", pa.bool_(): "BOOLEAN",
              pa.float16(): "FLOAT", pa.float32(): "FLOAT", pa.float64(): "DOUBLE", pa.int16(): "SMALLINT",
              pa.list_(pa.string()): "VARCHAR[]", pa.list_(pa.float32()): "FLOAT[]",
              pa.list_(pa.float64()): "DOUBLE[]", pa.list_(pa.int32()): "INTEGER[]", pa.list_(pa.int64()): "BIGINT[]"}


def sql_columns(schema: pa.Schema) -> dict[str, str]:
    """Column -> SQL type, so that a table with no rows yet is still a (typed, empty) view."""
    return {f.name: _SQL_TYPES[f.type] for f in schema}


def table_spec(schema: pa.Schema, key: str | None = None) -> dict:
    """A catalog table declaration: its columns, and the key whose newest part supersedes older
    rows of that key (None: rows are never superseded)."""
    return {"key": key, "columns": sql_columns(schema)}


def write_table(table: pa.Table, path: Path) -> int:
    pq.write_table(table, str(path), compression="zstd", write_statistics=True)
    return table.num_rows


def write_parquet(rows: list[dict], schema: pa.Schema, path: Path) -> int:
    return write_table(pa.Table.from_pylist(rows, schema=schema), path)


def commit_part_tables(builder, part: int,
                       tables: dict[str, tuple[pa.Table | list[dict], pa.Schema]]) -> dict[str, int]:
    """Publish one part of an artifact (an ArtifactBuilder) holding these tables, each given as
    rows or an Arrow table with its schema; returns the rows written per table."""
    tmp = builder.temp_dir(f"part-{part:06d}")
    files, counts = {}, {}
    for name, (data, schema) in tables.items():
        table = data.cast(schema) if isinstance(data, pa.Table) else pa.Table.from_pylist(data, schema=schema)
        path = tmp / f"{name}.parquet"
        counts[name] = write_table(table, path)
        files[name] = (path, counts[name])
    builder.commit_part(part, files)
    return counts


def read_parquet(paths: list[Path], columns: list[str] | None = None) -> pa.Table:
    if not paths:
        return pa.table({})
    return pa.concat_tables([pq.read_table(str(p), columns=columns) for p in paths])
