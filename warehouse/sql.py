"""Read-only SQL over the store: the catalog tables plus one view per data table, each the union of
the committed Parquet parts of the current artifacts that hold it.

Read-only is enforced twice. The engine: every session is an in-memory DuckDB holding a private
copy of the catalog (taken under DuckDB's shared lock, which is then released), with extension
auto-install/auto-load off, external access off except for reading the committed part files its
views name (`allowed_paths`), Python replacement scans off and the configuration locked; it
cannot open the catalog file, any other file or the network. And the statements: each parsed
statement (and the statement an EXPLAIN wraps) must be a SELECT, so that COPY TO a part file,
the one write the allowed paths would still let through, is refused before it runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import duckdb
import pyarrow as pa

from clipstore.warehouse.catalog import retry_locked
from clipstore.warehouse.errors import ClipstoreError, InputError, ReadOnlyError
from clipstore.warehouse.store import Store

FORMATS = ("table", "csv", "json", "parquet")
_CATALOG_ALIAS = "clipstore_catalog"
# Fixed at connect time: nothing a query says can bring an extension in (httpfs would reach the network).
_ENGINE_CONFIG = {"autoinstall_known_extensions": False, "autoload_known_extensions": False,
                  "allow_community_extensions": False, "python_enable_replacements": False}
_INTEGER = re.compile(r"^[+-]?[0-9]+$")


def _quote(path: Path | str) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _quote_list(paths: list[Path]) -> str:
    return "[" + ", ".join(_quote(p) for p in paths) + "]"


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


def _current_parts(store: Store, building=None) -> tuple[list, dict]:
    """The current artifacts and their visible parts. With `building` (an ArtifactBuilder), its
    artifact, pending parts included, stands in for the current version of its name: how a stage
    reads back what it is writing."""
    artifacts = store.current_all()
    parts = store.all_parts([a.artifact_id for a in artifacts])
    if building is not None:
        artifacts = [a for a in artifacts if (a.kind, a.name) != (building.kind, building.name)]
        artifacts.append(building.as_artifact())
        parts = {key: v for key, v in parts.items() if key[0] != building.artifact_id}
        for part, table, path in building.committed_parts():
            parts.setdefault((building.artifact_id, table), []).append((part, path, f"part-{part}"))
    # Absolute paths: the session's allowed paths must name exactly the files its views read.
    parts = {k: [(n, Path(p).absolute(), run) for n, p, run in v] for k, v in parts.items()}
    return artifacts, parts


def view_definitions(store: Store, current: tuple[list, dict] | None = None) -> dict[str, str]:
    """Table name -> SELECT over the parts of every current artifact declaring that table."""
    artifacts, parts = current or _current_parts(store)
    selects: dict[str, list[str]] = {}
    for artifact in artifacts:
        for table, spec in sorted(artifact.tables.items()):
            sql = _artifact_table_sql(artifact, table, spec, parts)
            if sql:
                selects.setdefault(table, []).append(sql)
    return {t: " UNION ALL BY NAME ".join(f"({s})" for s in sqls) for t, sqls in selects.items()}


def _copy_catalog(con: duckdb.DuckDBPyConnection, store: Store) -> None:
    """Copy every catalog table into the session in one read-only attach: one consistent snapshot,
    and DuckDB's shared lock on the catalog is held for milliseconds, not for the session (a
    writer's commit is never kept waiting by a reader's long query)."""
    retry_locked(lambda: con.execute(f"ATTACH {_quote(store.catalog_path)} AS {_CATALOG_ALIAS} (READ_ONLY)"))
    try:
        names = [r[0] for r in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = ? AND schema_name = 'main' "
            "ORDER BY table_name", [_CATALOG_ALIAS]).fetchall()]
        for t in names:
            con.execute(f'CREATE TABLE "{t}" AS SELECT * FROM {_CATALOG_ALIAS}.main."{t}"')
    finally:
        con.execute(f"DETACH {_CATALOG_ALIAS}")


def _lock_down(con: duckdb.DuckDBPyConnection, readable: list[Path]) -> None:
    """From here on the engine reads only these files, reaches nothing else, changes no setting."""
    con.execute(f"SET allowed_paths = {_quote_list(sorted(set(readable)))}")
    con.execute("SET allowed_directories = []")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def open_views(store: Store, extra_views: dict[str, str] | None = None, building=None) -> duckdb.DuckDBPyConnection:
    """A locked-down in-memory connection holding a copy of the catalog and every data table as a
    view (plus `extra_views`, name -> SELECT, and the derived audit views)."""
    from clipstore.warehouse.views import derived_views
    current = _current_parts(store, building)
    con = duckdb.connect(":memory:", config=_ENGINE_CONFIG)
    try:
        _copy_catalog(con, store)
        for name, select in {**view_definitions(store, current), **(extra_views or {})}.items():
            con.execute(f'CREATE VIEW "{name}" AS {select}')
        for name, select in derived_views(con).items():
            con.execute(f'CREATE VIEW "{name}" AS {select}')
        _lock_down(con, [p for ps in current[1].values() for _, p, _ in ps])
    except BaseException:
        con.close()
        raise
    return con


# ---- the statement check ------------------------------------------------------------------------

def _kind(statement) -> str:
    return str(statement.type).rsplit(".", 1)[-1]


def _refuse(kind: str, sql: str) -> ReadOnlyError:
    return ReadOnlyError(
        f"`clipstore sql` is read-only: a {kind} statement is refused",
        where=sql.strip()[:200],
        fix="use SELECT (or DESCRIBE, SUMMARIZE, SHOW, EXPLAIN of a SELECT); the store changes only "
            "through clipstore's stages")


def _explained_text(text: str) -> str | None:
    """The statement an EXPLAIN [ANALYZE] [(options)] wraps, as text; None when it cannot be found
    (the caller then refuses: an EXPLAIN whose inner statement is not seen is not run)."""
    every = duckdb.tokenize(text)
    ends = [pos for pos, _ in every[1:]] + [len(text)]
    kept = [(pos, end, kind) for (pos, kind), end in zip(every, ends) if kind != duckdb.token_type.comment]
    tokens = [pos for pos, _, _ in kept]
    words = [text[pos:end].strip() for pos, end, _ in kept]
    brackets = [text[pos:end].strip() if kind == duckdb.token_type.operator else "" for pos, end, kind in kept]
    if not words or words[0].upper() != "EXPLAIN":
        return None
    i = 1
    if i < len(words) and words[i].upper() == "ANALYZE":
        i += 1
    if i < len(words) and brackets[i].startswith("("):   # EXPLAIN (FORMAT json) ...
        depth = 0
        while i < len(words):
            depth += brackets[i].count("(") - brackets[i].count(")")
            i += 1
            if depth <= 0:
                break
    return text[tokens[i]:] if i < len(tokens) else None


def _check(con: duckdb.DuckDBPyConnection, statement, sql: str, depth: int = 0) -> None:
    kind = _kind(statement)
    if kind == "SELECT":
        return
    if kind == "EXPLAIN" and depth == 0:
        inner = _explained_text(statement.query)
        try:
            wrapped = con.extract_statements(inner) if inner else []
        except duckdb.Error:
            wrapped = []
        if len(wrapped) != 1:
            raise _refuse("EXPLAIN of something other than one SELECT", sql)
        try:
            _check(con, wrapped[0], sql, depth + 1)
        except ReadOnlyError:
            raise _refuse(f"EXPLAIN {_kind(wrapped[0])}", sql) from None
        return
    raise _refuse(kind, sql)


def checked_statement(con: duckdb.DuckDBPyConnection, sql: str):
    """Parse `sql`, refuse anything but reading, and return the one parsed statement to run (the
    very object that was checked, so what runs is what was inspected)."""
    if not isinstance(sql, str):
        raise InputError(f"a query must be text, got {type(sql).__name__}")
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise InputError(f"SQL does not parse: {str(exc).splitlines()[0]}", where=sql.strip()[:200],
                         fix="check the statement's syntax") from None
    for st in statements:
        _check(con, st, sql)
    if not statements:
        raise InputError("the query is empty (nothing but blanks or comments)",
                         fix='give one statement, e.g. clipstore sql "SHOW TABLES"')
    if len(statements) > 1:
        raise InputError(f"one statement per query, got {len(statements)}", where=sql.strip()[:200],
                         fix="run the statements one at a time")
    return statements[0]


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    checked_statement(con, sql)


def parse_params(pairs: list[str] | None) -> dict[str, str]:
    """`--param K=V` pairs -> {K: V}; values stay text (see `Session.query_text_params`)."""
    params: dict[str, str] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        name = name.strip().lstrip("$")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise InputError(f"--param takes NAME=VALUE, got {pair!r}",
                             fix="e.g. --param keywords=keywords.sclip (the query says $keywords)")
        if name in params:
            raise InputError(f"--param {name} is given twice", fix="give each name once")
        params[name] = value
    return params


class Session:
    """One read-only connection with every view in place, for running several queries."""

    def __init__(self, store: Store, building=None):
        self.con = open_views(store, building=building)

    def tables(self) -> set[str]:
        from clipstore.warehouse.views import existing_views
        return existing_views(self.con)

    def query(self, sql: str, params: list | dict | None = None) -> pa.Table:
        statement = checked_statement(self.con, sql)
        if isinstance(params, dict):
            _check_names(statement, params, sql)
        try:
            result = self.con.sql(statement, params=params or None)
            return result.to_arrow_table() if result is not None else pa.table({})
        except duckdb.PermissionException as exc:
            raise ReadOnlyError(f"`clipstore sql` reads only the store's tables: {str(exc).splitlines()[0]}",
                                where=sql.strip()[:200],
                                fix="query the store's tables and views (`SHOW TABLES`); files, other "
                                    "databases, extensions and the network are out of reach") from None
        except duckdb.InvalidInputException as exc:
            if "configuration has been locked" in str(exc):
                raise _refuse("configuration change", sql) from None
            raise ClipstoreError(f"query failed: {str(exc).splitlines()[0]}", where=sql.strip()[:200]) from None
        except duckdb.ParserException as exc:   # e.g. the text given to query(): DuckDB parses only a SELECT there
            raise InputError(f"SQL does not parse: {str(exc).splitlines()[0]}", where=sql.strip()[:200],
                             fix="check the statement's syntax") from None
        except duckdb.CatalogException as exc:
            raise ClipstoreError(f"{exc}".splitlines()[0],
                                 fix="`clipstore sql \"SHOW TABLES\"` lists what exists; a table appears once "
                                     "a stage has written it (e.g. samples after an ingest)") from None
        except duckdb.Error as exc:
            raise ClipstoreError(f"query failed: {str(exc).splitlines()[0]}", where=sql.strip()[:200]) from None

    def query_text_params(self, sql: str, params: dict[str, str]) -> pa.Table:
        """Run with text parameters (`--param K=V`). They bind as strings, which DuckDB casts
        where a column or clause needs a number (`n > $k`, `LIMIT $k`); where it cannot tell
        (`1 + $k`), the query is bound again with integer-looking values (`-?[0-9]+`) as integers."""
        unused = sorted(set(params) - set(checked_statement(self.con, sql).named_parameters))
        if unused:   # a typo in a --param name would otherwise be ignored silently
            raise InputError(f"--param {', '.join(unused)} is not used by the query", where=sql.strip()[:200],
                             fix="name it in the query as $NAME, or drop the --param")
        try:
            return self.query(sql, params)
        except ClipstoreError as first:
            numeric = {k: int(v) if _INTEGER.match(v.strip()) else v for k, v in params.items()}
            if numeric == params or "query failed" not in first.what:
                raise
            try:
                return self.query(sql, numeric)
            except ClipstoreError:
                raise first from None

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_names(statement, params: dict, sql: str) -> None:
    missing = sorted(set(statement.named_parameters) - set(params))
    if missing:
        raise InputError(f"the query uses {', '.join('$' + m for m in missing)} but no value is given",
                         where=sql.strip()[:200],
                         fix=" ".join(f"--param {m}=VALUE" for m in missing) + " (or params={...} from Python)")


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
