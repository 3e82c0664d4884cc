"""Per-corpus statistics, computed over the corpus's logical tables after an ingest, with the
audit counts (duplicates, junk captions, unusual sizes) of ingest/audit.py."""

from __future__ import annotations

from clipstore.ingest.audit import corpus_audit
from clipstore.warehouse.sql import Session
from clipstore.warehouse.store import Store


def corpus_stats(store: Store, corpus: str, building=None) -> dict:
    """counts, rejects_by_reason, rejects_by_stage (parse, read, decode), splits, formats and audit
    of one corpus, in one SQL session (`building`: the corpus artifact being written, read with its pending parts)."""
    with Session(store, building=building) as session:
        rows = lambda sql: session.query(sql, [corpus]).to_pylist()  # noqa: E731
        tables = session.tables()
        if "samples" not in tables:
            return {"counts": {"samples": 0, "images": 0, "caption_only": 0, "captions": 0, "rejects": 0},
                    "audit": corpus_audit(session, corpus, tables)}
        counts = rows("""
            SELECT count(*) AS samples, count(*) FILTER (WHERE has_image) AS images,
                   count(*) FILTER (WHERE NOT has_image) AS caption_only,
                   count(DISTINCT image_id) AS distinct_images, count(DISTINCT shard) AS shards
            FROM samples WHERE corpus = ?""")[0]
        c = rows("SELECT count(*) AS n, count(DISTINCT text) AS d FROM captions WHERE corpus = ?")[0]
        counts["captions"], counts["distinct_captions"] = c["n"], c["d"]
        rejects_by_reason = {r["reason"].strip(): r["n"] for r in rows("""
            SELECT regexp_extract(reason, '^[^:(]*') AS reason, count(*) AS n FROM rejects
            WHERE corpus = ? GROUP BY 1 ORDER BY n DESC, reason""")}
        counts["rejects"] = sum(rejects_by_reason.values())
        rejects_by_stage = {r["stage"]: r["n"] for r in rows(
            "SELECT stage, count(*) AS n FROM rejects WHERE corpus = ? GROUP BY 1 ORDER BY 1")}
        splits = {r["split"] or "": r["n"] for r in rows(
            "SELECT split, count(*) AS n FROM samples WHERE corpus = ? GROUP BY 1 ORDER BY 1")}
        formats = {r["format"]: r["n"] for r in rows(
            "SELECT format, count(*) AS n FROM images WHERE corpus = ? GROUP BY 1 ORDER BY 1")}
        return {"counts": counts, "rejects_by_reason": rejects_by_reason, "rejects_by_stage": rejects_by_stage,
                "splits": splits, "formats": formats,
                "audit": corpus_audit(session, corpus, tables)}
