"""The catalog: a DuckDB file holding artifacts, lineage, runs and the committed parts of each
artifact's tables. Connections are short-lived so that readers never wait long on a writer."""

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, TypeVar

import duckdb

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS artifacts (
    artifact_id   VARCHAR PRIMARY KEY,
    kind          VARCHAR NOT NULL,
    name          VARCHAR NOT NULL,
    recipe_digest VARCHAR NOT NULL,
    recipe        JSON NOT NULL,
    status        VARCHAR NOT NULL,          -- building | complete | failed
    path          VARCHAR NOT NULL,          -- relative to the store root
    code_version  VARCHAR NOT NULL,
    created_at    TIMESTAMP NOT NULL,
    updated_at    TIMESTAMP NOT NULL,
    counts        JSON,
    stats         JSON,
    tables        JSON                       -- table name -> {"key": [...], "group": ...}
);
CREATE TABLE IF NOT EXISTS lineage (
    artifact_id VARCHAR NOT NULL,
    input_id    VARCHAR NOT NULL,
    role        VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id      VARCHAR PRIMARY KEY,
    artifact_id VARCHAR,
    stage       VARCHAR NOT NULL,
    command     VARCHAR,
    "user"      VARCHAR,
    host        VARCHAR,
    started_at  TIMESTAMP NOT NULL,
    finished_at TIMESTAMP,
    duration_s  DOUBLE,
    status      VARCHAR NOT NULL,            -- running | done | noop | failed | interrupted
    config      JSON,
    summary     JSON,
    error       VARCHAR,
    git_revision VARCHAR,                    -- the code's git commit, when run from a checkout
    git_dirty   BOOLEAN                      -- the checkout had uncommitted changes
);
CREATE TABLE IF NOT EXISTS parts (
    artifact_id  VARCHAR NOT NULL,
    part         INTEGER NOT NULL,
    table_name   VARCHAR NOT NULL,
    path         VARCHAR NOT NULL,           -- relative to the store root
    rows         BIGINT NOT NULL,
    sha256       VARCHAR NOT NULL,
    run_id       VARCHAR,
    committed_at TIMESTAMP NOT NULL,
    published    BOOLEAN NOT NULL DEFAULT false,   -- readers see it: its version completed
    retired      BOOLEAN NOT NULL DEFAULT false,   -- replaced by a later part (compaction)
    PRIMARY KEY (artifact_id, part, table_name)
);
CREATE TABLE IF NOT EXISTS current_versions (
    kind        VARCHAR NOT NULL,
    name        VARCHAR NOT NULL,
    artifact_id VARCHAR NOT NULL,            -- the version readers see under this name
    since       TIMESTAMP NOT NULL,
    run_id      VARCHAR,                     -- the run that made it current
    PRIMARY KEY (kind, name)
);
"""
# Columns added after the first release: a store created before them is migrated in place.
MIGRATIONS = """
ALTER TABLE runs ADD COLUMN IF NOT EXISTS git_revision VARCHAR;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS git_dirty BOOLEAN;
ALTER TABLE parts ADD COLUMN IF NOT EXISTS published BOOLEAN DEFAULT true;
ALTER TABLE parts ADD COLUMN IF NOT EXISTS retired BOOLEAN DEFAULT false;
"""

_LOCK_MARKERS = ("Could not set lock", "Conflicting lock", "database is locked")


def is_lock_conflict(exc: BaseException) -> bool:
    """DuckDB's file lock is held by another process (a writer's short connection)."""
    return isinstance(exc, duckdb.IOException) and any(m in str(exc) for m in _LOCK_MARKERS)


def retry_locked(open_: Callable[[], T], retry_s: float = 15.0) -> T:
    """Call `open_` (a connect or an ATTACH), retrying with backoff while another process holds
    DuckDB's file lock: writers hold it for milliseconds per commit, so readers wait, not fail."""
    deadline = time.monotonic() + retry_s
    delay = 0.02
    while True:
        try:
            return open_()
        except duckdb.IOException as exc:
            if not is_lock_conflict(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


@contextmanager
def connect(path: Path, read_only: bool = False, retry_s: float = 15.0):
    """Open the catalog, retrying while another process holds DuckDB's file lock."""
    con = retry_locked(lambda: duckdb.connect(str(path), read_only=read_only), retry_s)
    try:
        yield con
    finally:
        con.close()


def ensure_schema(path: Path) -> None:
    with connect(path) as con:
        new = not con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'artifacts'").fetchone()[0]
        had_pointers = bool(con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'current_versions'").fetchone()[0])
        con.execute(SCHEMA)
        if not new:
            con.execute(MIGRATIONS)
        if not new and not had_pointers:
            # before version pointers, a name meant its newest artifact with data
            con.execute("""
                INSERT INTO current_versions
                SELECT kind, name, arg_max(artifact_id, created_at), now()::TIMESTAMP, NULL FROM artifacts
                WHERE status = 'complete' GROUP BY kind, name""")


def is_current_schema(path: Path) -> bool:
    with connect(path, read_only=True) as con:
        return bool(con.execute("SELECT count(*) FROM duckdb_columns() "
                                "WHERE table_name = 'parts' AND column_name = 'retired'").fetchone()[0])
