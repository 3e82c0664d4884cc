"""Read-only SQL over the store: catalog tables plus one view per data table, each the union of
the committed Parquet parts of the current artifacts that hold it."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pyarrow as pa

from clipstore.warehouse.errors import ClipstoreError, ReadOnlyError
from clipstore.warehouse.store import Store

CATALOG_TABLES = ("artifacts", "lineage", "runs", "parts")
ALLOWED = {"SELECT", "EXPLAIN"}
FORMATS = ("table", "csv", "json", "parquet")


def _quote_list(paths: list[Path]) -> str:
    return "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths) + "]"


def _artifact_table_sql(artifact, table: str, spec: dict, parts: dict) -> str | None:
    paths = [p for _, p, _ in parts.get((artifact.artifact_id, table), [])]
    if not paths:
        columns = spec.get("columns")
        if not columns:
            return None
        typed = ", ".join(f'NULL::{t} AS "{c}"' for c, t in columns.items())
        return f"SELECT {typed} WHERE false"  # declared but empty: the view exists, with no rows
    scan = f"read_parquet({_quote_list(paths)}, union_by_name = true)"
    key = spec.get("key")
    runs = {run for t in artifact.tables for _, _, run in parts.get((artifact.artifact_id, t), [])}
    if not key or len(runs) <= 1:
        return f"SELECT * FROM {scan}"
    # Incremental artifacts: a key processed again in a later part supersedes its earlier rows,
    # across every table that shares the key (a sample once rejected as missing, now ingested).
    keyed = [[p for _, p, _ in parts[(artifact.artifact_id, t)]] for t, s in artifact.tables.items()
             if s.get("key") == key and (artifact.artifact_id, t) in parts]
    union = " UNION ALL ".join(f"SELECT {key} AS k, part FROM read_parquet({_quote_list(ps)})" for ps in keyed)
    return (f"SELECT t.* FROM {scan} t JOIN (SELECT k, max(part) AS part FROM ({union}) GROUP BY k) latest "
            f"ON t.{key} = latest.k AND t.part = latest.part")


def view_definitions(store: Store, building=None) -> dict[str, str]:
    """Table name -> SELECT over the parts of every current artifact declaring that table. With
    `building` (an ArtifactBuilder), its artifact, pending parts included, stands in for the
    current version of its name: how a stage reads back what it is writing."""
    artifacts = store.current_all()
    parts = store.all_parts([a.artifact_id for a in artifacts])
    if building is not None:
        artifacts = [a for a in artifacts if (a.kind, a.name) != (building.kind, building.name)]
        artifacts.append(building.as_artifact())
        parts = {key: v for key, v in parts.items() if key[0] != building.artifact_id}
        for part, table, path in building.committed_parts():
            parts.setdefault((building.artifact_id, table), []).append((part, path, f"part-{part}"))
    selects: dict[str, list[str]] = {}
    for artifact in artifacts:
        for table, spec in sorted(artifact.tables.items()):
            sql = _artifact_table_sql(artifact, table, spec, parts)
            if sql:
                selects.setdefault(table, []).append(sql)
    return {t: " UNION ALL BY NAME ".join(f"({s})" for s in sqls) for t, sqls in selects.items()}


def open_views(store: Store, extra_views: dict[str, str] | None = None, building=None) -> duckdb.DuckDBPyConnection:
    """An in-memory connection that sees the catalog (read-only) and every data table as a view."""
    con = duckdb.connect()
    path = str(store.catalog_path).replace("'", "''")
    con.execute(f"ATTACH '{path}' AS catalog (READ_ONLY)")
    for t in CATALOG_TABLES:
        con.execute(f'CREATE VIEW "{t}" AS SELECT * FROM catalog.main."{t}"')
    for name, select in {**view_definitions(store, building), **(extra_views or {})}.items():
        con.execute(f'CREATE VIEW "{name}" AS {select}')
    return con


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise ClipstoreError(f"SQL does not parse: {exc}", fix="check the statement's syntax") from None
    for st in statements:
        kind = str(st.type).rsplit(".", 1)[-1]
        if kind not in ALLOWED:
            raise ReadOnlyError(
                f"`clipstore sql` is read-only: a {kind} statement is refused",
                where=sql.strip()[:200],
                fix="use SELECT (or EXPLAIN); the store changes only through clipstore's stages")


class Session:
    """One read-only connection with every view in place, for running several queries."""

    def __init__(self, store: Store, building=None):
        from clipstore.warehouse.views import derived_views  # audit views over the data tables
        self.con = open_views(store, building=building)
        for name, select in derived_views(self.con).items():
            self.con.execute(f'CREATE VIEW "{name}" AS {select}')
        self.con.execute("SET lock_configuration = true")

    def tables(self) -> set[str]:
        from clipstore.warehouse.views import existing_views
        return existing_views(self.con)

    def query(self, sql: str, params: list | dict | None = None) -> pa.Table:
        check_read_only(self.con, sql)
        try:
            return self.con.sql(sql, params=params or None).to_arrow_table()
        except duckdb.CatalogException as exc:
            raise ClipstoreError(f"{exc}".splitlines()[0],
                                 fix="`clipstore sql \"SHOW TABLES\"` lists what exists; a table appears once "
                                     "a stage has written it (e.g. samples after an ingest)") from None
        except duckdb.Error as exc:
            raise ClipstoreError(f"query failed: {str(exc).splitlines()[0]}", where=sql.strip()[:200]) from None

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def query(store: Store, sql: str, params: list | dict | None = None) -> pa.Table:
    """Run one read-only statement (bound parameters allowed) and return an Arrow table."""
    with Session(store) as session:
        return session.query(sql, params)


def render(table: pa.Table, fmt: str = "table", output: str | Path | None = None, max_rows: int = 200) -> str | None:
    """Format a result; with `output`, write it there (Parquet requires a file)."""
    if fmt not in FORMATS:
        raise ClipstoreError(f"unknown output format {fmt!r}", fix=f"use one of {', '.join(FORMATS)}")
    if fmt == "parquet":
        if output is None:
            raise ClipstoreError("Parquet output needs a file", fix="add --output FILE.parquet")
        import pyarrow.parquet as pq
        pq.write_table(table, str(output), compression="zstd")
        return None
    if fmt == "csv":
        import io

        import pyarrow.csv as pacsv
        buf = io.BytesIO()
        pacsv.write_csv(table, buf)
        text = buf.getvalue().decode("utf-8")
    elif fmt == "json":
        text = json.dumps(table.to_pylist(), default=str, ensure_ascii=False, indent=1) + "\n"
    else:
        text = format_table(table, max_rows)
    if output is not None:
        Path(output).write_text(text, encoding="utf-8")
        return None
    return text


def format_table(table: pa.Table, max_rows: int = 200) -> str:
    names = table.column_names
    rows = table.slice(0, max_rows).to_pylist()
    cells = [[_cell(r[n]) for n in names] for r in rows]
    widths = [max([len(n)] + [len(c[i]) for c in cells]) for i, n in enumerate(names)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    out = [line(names), line(["-" * w for w in widths])] + [line(c) for c in cells]
    if table.num_rows > max_rows:
        out.append(f"... {table.num_rows - max_rows} more rows (use --format csv/json/parquet --output FILE)")
    out.append(f"({table.num_rows} rows)")
    return "\n".join(out) + "\n"


def _cell(v) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, float):
        return f"{v:.6g}"
    s = str(v)
    return s if len(s) <= 80 else s[:77] + "..."
