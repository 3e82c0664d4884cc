"""Per-corpus statistics, computed over the corpus's logical tables after an ingest, with the
audit counts (duplicates, junk captions, unusual sizes) of ingest/audit.py."""

from __future__ import annotations

from clipstore.ingest.audit import corpus_audit
from clipstore.warehouse.sql import query
from clipstore.warehouse.store import Store


def _scalar_rows(store: Store, sql: str, params: list) -> list[dict]:
    return query(store, sql, params).to_pylist()


def corpus_stats(store: Store, corpus: str) -> dict:
    tables = {r["name"] for r in _scalar_rows(store, "SELECT view_name AS name FROM duckdb_views()", [])}
    if "samples" not in tables:
        return {"counts": {"samples": 0, "images": 0, "caption_only": 0, "captions": 0, "rejects": 0},
                "audit": corpus_audit(store, corpus, tables)}
    s = _scalar_rows(store, """
        SELECT count(*) AS samples, count(*) FILTER (WHERE has_image) AS images,
               count(*) FILTER (WHERE NOT has_image) AS caption_only,
               count(DISTINCT image_id) AS distinct_images, count(DISTINCT shard) AS shards
        FROM samples WHERE corpus = ?""", [corpus])[0]
    counts = dict(s)
    counts["captions"] = counts["distinct_captions"] = 0
    if "captions" in tables:
        c = _scalar_rows(store, "SELECT count(*) AS n, count(DISTINCT text) AS d FROM captions WHERE corpus = ?",
                         [corpus])[0]
        counts["captions"], counts["distinct_captions"] = c["n"], c["d"]
    counts["rejects"] = 0
    rejects_by_reason = {}
    if "rejects" in tables:
        rows = _scalar_rows(store, """
            SELECT regexp_extract(reason, '^[^:(]*') AS reason, count(*) AS n FROM rejects
            WHERE corpus = ? GROUP BY 1 ORDER BY n DESC, reason""", [corpus])
        rejects_by_reason = {r["reason"].strip(): r["n"] for r in rows}
        counts["rejects"] = sum(rejects_by_reason.values())
    splits = {r["split"] or "": r["n"] for r in _scalar_rows(
        store, "SELECT split, count(*) AS n FROM samples WHERE corpus = ? GROUP BY 1 ORDER BY 1", [corpus])}
    formats = {r["format"]: r["n"] for r in _scalar_rows(
        store, "SELECT format, count(*) AS n FROM images WHERE corpus = ? GROUP BY 1 ORDER BY 1", [corpus])} \
        if "images" in tables else {}
    return {"counts": counts, "rejects_by_reason": rejects_by_reason, "splits": splits, "formats": formats,
            "audit": corpus_audit(store, corpus, tables)}
