"""Views derived from the data tables, created for every SQL session (cross-corpus audits)."""

from __future__ import annotations

import duckdb


def _existing(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}


def derived_views(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    have = _existing(con)
    views: dict[str, str] = {}
    return views
