"""Audit counts of one corpus, taken at ingest and kept in its stats: duplicate images (within
the corpus, shared with other corpora, across its splits), duplicate and junk captions, images of
unusual size. The rows behind each count are listed by the `audit_*` SQL views
(warehouse/views.py); the counts use those views where one exists, so both always agree."""

from __future__ import annotations

from clipstore.warehouse.sql import Session

# metric -> (tables it needs, scalar SQL over the corpus `$corpus`)
_IMAGE_METRICS = {
    # image_ids held by more than one sample of this corpus, and the samples holding them
    "duplicate_images": """
        SELECT count(*) FROM (SELECT image_id FROM samples WHERE corpus = $corpus AND image_id IS NOT NULL
                              GROUP BY image_id HAVING count(*) > 1)""",
    "duplicate_image_samples": """
        SELECT coalesce(sum(n), 0)::BIGINT
        FROM (SELECT count(*) AS n FROM samples WHERE corpus = $corpus AND image_id IS NOT NULL
              GROUP BY image_id HAVING count(*) > 1)""",
    # distinct images of this corpus that some other current corpus also holds
    "images_shared_with_other_corpora": """
        SELECT count(DISTINCT image_id) FROM samples
        WHERE corpus = $corpus AND image_id IN (SELECT image_id FROM samples WHERE corpus <> $corpus)""",
    # distinct images of this corpus present in more than one of its source splits
    "cross_split_duplicates": """
        SELECT count(*) FROM (SELECT image_id FROM samples WHERE corpus = $corpus AND image_id IS NOT NULL
                              GROUP BY image_id HAVING count(DISTINCT coalesce(split, '')) > 1)""",
}
_CAPTION_METRICS = {
    # caption rows whose normalised text occurs more than once in the corpus
    "duplicate_captions": """
        SELECT coalesce(sum(n), 0)::BIGINT
        FROM (SELECT count(*) AS n FROM captions WHERE corpus = $corpus GROUP BY text HAVING count(*) > 1)""",
    "distinct_normalised_captions": "SELECT count(DISTINCT text) FROM captions WHERE corpus = $corpus",
    # samples whose several captions are all one text (RSICD: one sentence repeated five times)
    "samples_with_identical_captions": """
        SELECT count(*) FROM (SELECT sample_id FROM captions WHERE corpus = $corpus
                              GROUP BY sample_id HAVING count(*) > 1 AND count(DISTINCT text) = 1)""",
    "junk_captions": "SELECT count(*) FROM audit_junk_captions WHERE corpus = $corpus",
}
_SIZE_METRICS = {
    "unusual_size_images": "SELECT count(DISTINCT image_id) FROM audit_image_sizes WHERE corpus = $corpus",
    # "WxH" of the most common size (same tie-break as audit_image_sizes)
    "modal_size": """
        SELECT width || 'x' || height FROM images WHERE corpus = $corpus GROUP BY width, height
        ORDER BY count(DISTINCT image_id) DESC, width * height DESC, width DESC, height DESC LIMIT 1""",
}
_GROUPS = ((("samples",), _IMAGE_METRICS), (("captions", "audit_junk_captions"), _CAPTION_METRICS),
           (("images", "audit_image_sizes"), _SIZE_METRICS))


def corpus_audit(session: Session, corpus: str, tables: set[str]) -> dict:
    """Audit counts of `corpus`, in one query; `tables` = the tables and views that exist. A
    metric whose tables are missing counts 0 (modal_size: None, also when there are no images)."""
    metrics: dict[str, str] = {}
    for needs, group in _GROUPS:
        if set(needs) <= tables:
            metrics.update(group)
    audit: dict = {name: 0 for _, group in _GROUPS for name in group}
    audit["modal_size"] = None
    if metrics:
        select = ", ".join(f"({sql}) AS {name}" for name, sql in metrics.items())
        audit.update(session.query(f"SELECT {select}", {"corpus": corpus}).to_pylist()[0])
    return audit
