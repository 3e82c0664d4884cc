"""The read-only SQL gate: hostile statements against a real store, then proof that nothing moved.

Every statement in HOSTILE must be refused with a clipstore error (never run, never a DuckDB
traceback); afterwards every committed part still matches the sha256 its catalog row records,
the store holds exactly the files it held, and no file appeared outside it. bench/gauntlet.py
counts these cases."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipstore.ingest.pipeline import ingest
from clipstore.warehouse import ClipstoreError, catalog, InputError, ReadOnlyError
from clipstore.warehouse.sql import Session, query
from clipstore.warehouse.store import Store
from conftest import karpathy_from_real_images

# {part}: a committed samples part; {catalog}: the catalog file; {store}: the store root;
# {outside}: a real Parquet file outside the store; {tmp}: a scratch folder outside the store.
HOSTILE = [
    # writes
    ("write", "CREATE TABLE t AS SELECT 1"),
    ("write", "CREATE TEMP TABLE t AS SELECT * FROM samples"),
    ("write", "CREATE VIEW samples2 AS SELECT * FROM samples"),
    ("write", "CREATE OR REPLACE VIEW samples AS SELECT 1 AS x"),
    ("write", "CREATE MACRO m(a) AS a + 1"),
    ("write", "CREATE SEQUENCE s"),
    ("write", "INSERT INTO artifacts SELECT * FROM artifacts"),
    ("write", "UPDATE runs SET status = 'done'"),
    ("write", "DELETE FROM parts"),
    ("write", "TRUNCATE parts"),
    ("write", "DROP VIEW samples"),
    ("write", "DROP TABLE parts"),
    ("write", "ALTER TABLE runs RENAME TO r"),
    ("write", "COMMENT ON TABLE parts IS 'x'"),
    ("write", "MERGE INTO parts USING parts AS p ON true WHEN MATCHED THEN DELETE"),
    ("write", "VACUUM"),
    ("write", "CHECKPOINT"),
    ("write", "BEGIN TRANSACTION"),
    ("write", "PREPARE p AS DELETE FROM parts"),
    ("write", "EXECUTE p"),
    # COPY and EXPORT
    ("copy", "COPY (SELECT * FROM samples LIMIT 1) TO '{part}' (FORMAT parquet)"),
    ("copy", "COPY (SELECT * FROM samples LIMIT 1) TO '{part}' (FORMAT parquet, USE_TMP_FILE false)"),
    ("copy", "COPY samples TO '{tmp}/samples.csv'"),
    ("copy", "COPY parts FROM '{tmp}/parts.csv'"),
    ("copy", "EXPORT DATABASE '{tmp}/export'"),
    ("copy", "IMPORT DATABASE '{tmp}/export'"),
    # ATTACH
    ("attach", "ATTACH '{catalog}' AS c"),
    ("attach", "ATTACH '{catalog}' AS c (READ_ONLY)"),
    ("attach", "ATTACH '{tmp}/new.duckdb' AS n"),
    ("attach", "DETACH memory"),
    ("attach", "USE memory"),
    # settings and pragmas
    ("setting", "SET enable_external_access = true"),
    ("setting", "SET allowed_directories = ['/']"),
    ("setting", "SET lock_configuration = false"),
    ("setting", "RESET lock_configuration"),
    ("setting", "SET threads = 1"),
    ("setting", "SET VARIABLE x = 1"),
    ("pragma", "PRAGMA enable_profiling"),
    ("pragma", "PRAGMA threads = 1"),
    ("pragma", "CALL pragma_version()"),
    # extensions and the network
    ("extension", "INSTALL httpfs"),
    ("extension", "LOAD httpfs"),
    ("extension", "FORCE INSTALL httpfs FROM 'http://127.0.0.1:9'"),
    ("extension", "SELECT * FROM read_parquet('https://example.com/x.parquet')"),
    ("extension", "SELECT * FROM read_csv('s3://bucket/x.csv')"),
    ("extension", "CREATE SECRET (TYPE s3, KEY_ID 'k', SECRET 's')"),
    # file readers beyond the committed parts
    ("file", "SELECT * FROM read_csv('/etc/passwd')"),
    ("file", "SELECT * FROM read_text('/etc/passwd')"),
    ("file", "SELECT * FROM read_blob('/etc/passwd')"),
    ("file", "SELECT * FROM glob('/*')"),
    ("file", "SELECT * FROM read_parquet('{outside}')"),
    ("file", "SELECT * FROM '{outside}'"),
    ("file", "SELECT * FROM parquet_metadata('{outside}')"),
    ("file", "SELECT * FROM read_text('{catalog}')"),
    ("file", "SELECT * FROM read_text('{store}/writer.lock')"),
    ("file", "SELECT * FROM read_parquet('{store}/artifacts/*/samples/*.parquet')"),
    ("file", "SELECT * FROM glob('{store}/**')"),
    # wrapped forms
    ("wrapped", "EXPLAIN ANALYZE COPY (SELECT * FROM samples LIMIT 1) TO '{part}' (FORMAT parquet)"),
    ("wrapped", "EXPLAIN ANALYZE CREATE TABLE x AS SELECT * FROM samples"),
    ("wrapped", "EXPLAIN COPY (SELECT 1) TO '{tmp}/x.csv'"),
    ("wrapped", "EXPLAIN ANALYZE INSERT INTO parts SELECT * FROM parts"),
    ("wrapped", "EXPLAIN (FORMAT json) DELETE FROM parts"),
    ("wrapped", "SELECT * FROM query('COPY (SELECT 1) TO ''{tmp}/q.csv''')"),
    ("wrapped", "DESCRIBE COPY (SELECT 1) TO '{tmp}/d.csv'"),
    # several statements in one
    ("multi", "SELECT 1; COPY (SELECT * FROM samples LIMIT 1) TO '{part}' (FORMAT parquet)"),
    ("multi", "SELECT 1; DROP VIEW samples"),
    ("multi", "SELECT 1;; ATTACH '{catalog}' AS c"),
    ("multi", "SELECT 1; SELECT 2"),
    # comment smuggling
    ("comment", "/* SELECT */ COPY (SELECT 1) TO '{tmp}/c.csv'"),
    ("comment", "SELECT 1 --\n; COPY (SELECT 1) TO '{tmp}/c.csv'"),
    ("comment", "EXPLAIN /* a */ ANALYZE /* b */ COPY (SELECT * FROM samples LIMIT 1) TO '{part}' (FORMAT parquet)"),
    ("comment", "-- just a comment\nDROP VIEW samples"),
    ("comment", "EXPLAIN -- )\n ANALYZE CREATE TABLE y AS SELECT 1"),
]

# Reading stays: these run and return rows.
READS = [
    "SELECT count(*) AS n FROM samples",
    "FROM samples LIMIT 2",
    "SUMMARIZE samples",
    "DESCRIBE samples",
    "SHOW TABLES",
    "EXPLAIN SELECT * FROM samples",
    "EXPLAIN ANALYZE SELECT count(*) FROM captions",
    "EXPLAIN (FORMAT json) SELECT 1",
    "EXPLAIN /* a comment */ SELECT count(*) FROM samples",
    "EXPLAIN -- a comment\n ANALYZE SELECT 1",
    "SELECT 1 /* ; DROP VIEW samples */ AS one",
    "SELECT * FROM read_parquet('{part}')",   # a committed part is the store's own file
    "SELECT kind, recipe->>'stage' AS stage FROM artifacts",
    "SELECT count(*) AS n FROM audit_duplicate_images",
]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_of(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def gate(tmp_path_factory, shared_data):
    """A real store (6 UC Merced TIFFs in 2 parts) plus the names the statements use."""
    base = tmp_path_factory.mktemp("gate")
    karpathy_from_real_images(shared_data, base / "corpus", 6)
    store = Store(base / "store")
    ingest(store, "karpathy", base / "corpus", name="gate", shard_size=3, workers=1, progress=False)
    outside = base / "outside.parquet"
    pq.write_table(pa.table({"secret": ["outside the store"]}), outside)
    (base / "scratch").mkdir()
    with store.connect() as con:
        part = con.execute("SELECT path FROM parts WHERE table_name = 'samples' ORDER BY part LIMIT 1").fetchone()[0]
    names = {"part": str((store.root / part).absolute()), "catalog": str(store.catalog_path.absolute()),
             "store": str(store.root.absolute()), "outside": str(outside), "tmp": str(base / "scratch")}
    return store, names


def _format(sql: str, names: dict) -> str:
    for k, v in names.items():
        sql = sql.replace("{" + k + "}", v)
    return sql


def committed_parts(store: Store) -> list[tuple[str, str]]:
    with store.connect() as con:
        return con.execute("SELECT path, sha256 FROM parts ORDER BY path").fetchall()


def test_the_hostile_list_is_long_enough():
    assert len(HOSTILE) >= 40
    assert {c for c, _ in HOSTILE} >= {"write", "copy", "attach", "setting", "pragma", "extension", "file",
                                       "wrapped", "multi", "comment"}


def test_every_hostile_statement_is_refused_and_nothing_moves(gate):
    store, names = gate
    before_files, before_parts = files_of(store.root), committed_parts(store)
    with store.connect() as con:
        before_catalog = con.execute("SELECT count(*) FROM runs").fetchone(), con.execute(
            "SELECT count(*) FROM artifacts").fetchone()
    ran = []
    with Session(store) as session:
        for _category, template in HOSTILE:
            sql = _format(template, names)
            try:
                session.query(sql)
            except ClipstoreError as exc:
                assert isinstance(exc, (ReadOnlyError, InputError)), (sql, exc)
                continue
            ran.append(sql)
        n_after = session.query("SELECT count(*) AS n FROM samples").column("n")[0].as_py()
    assert ran == [], f"statements that ran: {ran}"
    assert n_after == 6   # the session itself still reads the store
    # every committed part still matches its recorded sha256, and nothing was added or touched
    assert committed_parts(store) == before_parts
    for path, digest in before_parts:
        assert sha256(store.root / path) == digest, path
    assert files_of(store.root) == before_files
    assert list(Path(names["tmp"]).iterdir()) == []
    with store.connect() as con:
        assert (con.execute("SELECT count(*) FROM runs").fetchone(),
                con.execute("SELECT count(*) FROM artifacts").fetchone()) == before_catalog
    assert query(store, "SELECT count(*) AS n FROM samples").to_pylist() == [{"n": 6}]


@pytest.mark.parametrize("template", [t for c, t in HOSTILE if c in ("wrapped", "copy", "comment")
                                      and "query(" not in t and not t.startswith("DESCRIBE")])  # those two do not parse
def test_wrapped_and_copy_forms_say_why(gate, template):
    store, names = gate
    with pytest.raises(ReadOnlyError) as err:
        query(store, _format(template, names))
    assert "read-only" in str(err.value) or "reads only" in str(err.value)


def test_the_engine_refuses_files_outside_the_store_with_a_message(gate):
    store, names = gate
    for sql in ("SELECT * FROM read_csv('/etc/passwd')", f"SELECT * FROM read_parquet('{names['outside']}')",
                "SELECT * FROM glob('/*')"):
        with pytest.raises(ReadOnlyError) as err:
            query(store, sql)
        assert "reads only the store's tables" in str(err.value) and "disabled by configuration" in str(err.value)


def test_an_https_path_never_loads_an_extension(gate):
    store, _ = gate
    extensions = Path.home() / ".duckdb" / "extensions"
    before = sorted(extensions.rglob("*")) if extensions.exists() else []
    with Session(store) as session:
        with pytest.raises(ReadOnlyError) as err:
            session.query("SELECT * FROM read_parquet('https://example.com/x.parquet')")
        assert "disabled by configuration" in str(err.value)   # refused before any name lookup
        rows = session.query("SELECT name, value FROM duckdb_settings() WHERE name IN ('autoinstall_known_extensions', "
                             "'autoload_known_extensions', 'enable_external_access', 'lock_configuration')")
        settings = {r["name"]: r["value"] for r in rows.to_pylist()}
    assert settings == {"autoinstall_known_extensions": "false", "autoload_known_extensions": "false",
                        "enable_external_access": "false", "lock_configuration": "true"}
    assert (sorted(extensions.rglob("*")) if extensions.exists() else []) == before   # nothing installed


@pytest.mark.parametrize("template", READS)
def test_reading_still_works(gate, template):
    store, names = gate
    assert query(store, _format(template, names)).num_rows >= 1


def test_empty_and_comment_only_queries_are_input_errors(gate):
    store, _ = gate
    for sql in ("", "   ", "-- nothing here", "/* nor here */", ";"):
        with pytest.raises(InputError) as err:
            query(store, sql)
        assert "empty" in str(err.value)


def test_a_parse_error_is_an_input_error(gate):
    store, _ = gate
    with pytest.raises(InputError) as err:
        query(store, "SELEC 1")
    assert "does not parse" in str(err.value)


def test_a_session_holds_no_lock_on_the_catalog(gate):
    """The catalog is copied and detached when a session opens: a writer can commit while a
    reader's session stays open."""
    store, _ = gate
    with Session(store):
        with catalog.connect(store.catalog_path, read_only=False, retry_s=0) as con:   # fails at once if locked
            con.execute("SELECT 1")
