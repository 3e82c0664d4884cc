"""Views derived from the data tables, created in every SQL session (`clipstore sql` sees them).

The `audit_*` views report what makes retrieval metrics and caption-derived pseudo-labels easy to
inflate, across every current corpus at once: the same image bytes under several samples, splits
or corpora; caption templates shared by many images; junk captions; images of unusual size.
Each view exists only when the tables it reads exist. Their columns are documented below (and
`help(clipstore.warehouse.views.audit_split_leaks)` etc. prints them)."""

from __future__ import annotations

from typing import Callable

import duckdb

# The SQL twin of ingest/text.py's junk rule `[^\W\d_]{2,}` (a caption is junk when it has no run
# of two letters). Python's `[^\W\d_]` is exactly the characters of Unicode categories L*, Nl and
# No; tests check both rules agree on every assigned code point and on the real RSICD captions.
REAL_WORD_PATTERN = r"[\p{L}\p{Nl}\p{No}]{2,}"

_VIEWS: dict[str, tuple[frozenset[str], Callable[[], str]]] = {}


def _view(*needs: str):
    """Register a view builder under its function name; `needs` are the tables it reads."""
    def register(build: Callable[[], str]) -> Callable[[], str]:
        _VIEWS[build.__name__] = (frozenset(needs), build)
        return build
    return register


@_view("samples")
def audit_duplicate_images() -> str:
    """Samples whose image bytes another sample also has (same image_id), in any corpus or split.

    One row per such sample: image_id; corpus, split, source_key, sample_id of the sample;
    n_samples (samples holding these bytes), n_corpora and n_splits (how many distinct corpora and
    source splits they span)."""
    return """
        WITH shared AS (
            SELECT image_id, count(*) AS n_samples, count(DISTINCT corpus) AS n_corpora,
                   count(DISTINCT coalesce(split, '')) AS n_splits
            FROM samples WHERE image_id IS NOT NULL
            GROUP BY image_id HAVING count(*) > 1)
        SELECT s.image_id, s.corpus, s.split, s.source_key, s.sample_id,
               shared.n_samples, shared.n_corpora, shared.n_splits
        FROM samples s JOIN shared USING (image_id)
        ORDER BY s.image_id, s.corpus, s.source_key"""


@_view("samples")
def audit_split_leaks() -> str:
    """Images (exact bytes) that sit in more than one source split or more than one corpus: the
    same picture in train and test inflates every evaluation that uses those splits.

    One row per image: image_id; n_samples; corpora and splits (comma-separated, sorted);
    cross_corpus, cross_split (booleans); samples ('corpus/split/source_key', '; '-separated)."""
    return """
        SELECT image_id, count(*) AS n_samples,
               string_agg(DISTINCT corpus, ', ' ORDER BY corpus) AS corpora,
               string_agg(DISTINCT coalesce(split, '(none)'), ', ' ORDER BY coalesce(split, '(none)')) AS splits,
               count(DISTINCT corpus) > 1 AS cross_corpus,
               count(DISTINCT coalesce(split, '')) > 1 AS cross_split,
               string_agg(corpus || '/' || coalesce(split, '(none)') || '/' || source_key, '; '
                          ORDER BY corpus, source_key) AS samples
        FROM samples WHERE image_id IS NOT NULL
        GROUP BY image_id
        HAVING count(DISTINCT corpus) > 1 OR count(DISTINCT coalesce(split, '')) > 1
        ORDER BY image_id"""


@_view("splits")
def audit_role_leaks() -> str:
    """Images (exact bytes) that one split manifest puts in more than one role, e.g. an unlabeled
    RESISC45 image identical to a validation image.

    One row per (split, image): split, image_id; roles (comma-separated, sorted); n_entries;
    train_eval_leak (the image is both in a training role, labeled or unlabeled, and in val or
    test); entries ('role:corpus/source_key', '; '-separated)."""
    return """
        SELECT split, image_id, string_agg(DISTINCT role, ', ' ORDER BY role) AS roles, count(*) AS n_entries,
               bool_or(role IN ('labeled', 'unlabeled')) AND bool_or(role IN ('val', 'test')) AS train_eval_leak,
               string_agg(role || ':' || corpus || '/' || source_key, '; ' ORDER BY role, corpus, source_key)
                   AS entries
        FROM splits WHERE image_id IS NOT NULL
        GROUP BY split, image_id HAVING count(DISTINCT role) > 1
        ORDER BY split, image_id"""


@_view("captions", "samples")
def audit_duplicate_captions() -> str:
    """Normalised caption texts (`captions.text`) that occur more than once: caption templates.
    UCM has about 2,000 distinct texts in 10,500 captions, so retrieval by caption and pseudo-labels
    mined from captions are easy to inflate.

    One row per text: text; n_captions (occurrences); n_samples (distinct samples carrying it);
    n_images (distinct image_ids; caption-only samples have none); n_corpora; corpora and splits
    (comma-separated, sorted); example_raw (one verbatim form)."""
    return """
        SELECT c.text, count(*) AS n_captions, count(DISTINCT c.sample_id) AS n_samples,
               count(DISTINCT c.image_id) AS n_images, count(DISTINCT c.corpus) AS n_corpora,
               string_agg(DISTINCT c.corpus, ', ' ORDER BY c.corpus) AS corpora,
               string_agg(DISTINCT s.split, ', ' ORDER BY s.split) AS splits,
               min(c.raw) AS example_raw
        FROM captions c LEFT JOIN samples s USING (corpus, sample_id)
        GROUP BY c.text HAVING count(*) > 1
        ORDER BY n_captions DESC, c.text"""


@_view("captions", "samples")
def audit_junk_captions() -> str:
    """Captions with no real word (no two letters in a row), such as RSICD's ' .' and '1 .': the
    same rule as ingest/text.py `is_junk_caption`, applied to the verbatim text.

    One row per caption: corpus, split, source_key, sample_id, image_id, caption_id, ordinal, raw."""
    pattern = REAL_WORD_PATTERN.replace("'", "''")
    return f"""
        SELECT c.corpus, s.split, c.source_key, c.sample_id, c.image_id, c.caption_id, c.ordinal, c.raw
        FROM captions c LEFT JOIN samples s USING (corpus, sample_id)
        WHERE NOT regexp_matches(c.raw, '{pattern}')
        ORDER BY c.corpus, c.source_key, c.ordinal"""


@_view("images", "samples")
def audit_image_sizes() -> str:
    """Images whose size differs from their corpus's modal size (UC Merced: 44 of 2,100 are not
    256x256). The mode counts distinct images; ties go to the larger area.

    One row per unusual image: corpus, split, source_key, sample_id, image_id, width, height;
    modal_width, modal_height; modal_images (distinct images of the modal size) and corpus_images
    (distinct images of the corpus)."""
    return """
        WITH sized AS (SELECT DISTINCT corpus, image_id, width, height FROM images),
        by_size AS (
            SELECT corpus, width, height, count(*) AS n,
                   row_number() OVER (PARTITION BY corpus ORDER BY count(*) DESC, width * height DESC,
                                      width DESC, height DESC) AS rank
            FROM sized GROUP BY corpus, width, height),
        modal AS (
            SELECT b.corpus, b.width, b.height, b.n, t.total
            FROM by_size b JOIN (SELECT corpus, count(*) AS total FROM sized GROUP BY corpus) t USING (corpus)
            WHERE b.rank = 1)
        SELECT i.corpus, s.split, i.source_key, i.sample_id, i.image_id, i.width, i.height,
               m.width AS modal_width, m.height AS modal_height, m.n AS modal_images, m.total AS corpus_images
        FROM images i JOIN modal m USING (corpus)
        LEFT JOIN samples s USING (corpus, sample_id)
        WHERE i.width <> m.width OR i.height <> m.height
        ORDER BY i.corpus, i.source_key"""


@_view("near_duplicates", "splits")
def audit_near_duplicates() -> str:
    """Near-duplicate pairs (embedding cosine >= the audit's threshold; features/dedup.py) whose two
    samples are both in one split manifest, with their roles: a re-encoded or brightness-shifted
    copy of a training image in val or test inflates evaluation as much as an exact copy does.

    One row per (split, pair): split; sim; a_role, b_role; cross_role (the roles differ);
    train_eval_leak (one side labeled or unlabeled, the other val or test); a_/b_ corpus,
    sample_id, source_key, item_id; audit_id (the near-duplicate audit artifact). Leaks first."""
    return """
        SELECT sa.split, nd.sim, sa.role AS a_role, sb.role AS b_role, sa.role <> sb.role AS cross_role,
               (sa.role IN ('labeled', 'unlabeled') AND sb.role IN ('val', 'test'))
                   OR (sb.role IN ('labeled', 'unlabeled') AND sa.role IN ('val', 'test')) AS train_eval_leak,
               nd.a_corpus, nd.a_sample_id, sa.source_key AS a_source_key, nd.a_item_id,
               nd.b_corpus, nd.b_sample_id, sb.source_key AS b_source_key, nd.b_item_id,
               nd.artifact_id AS audit_id
        FROM near_duplicates nd
        JOIN splits sa ON sa.corpus = nd.a_corpus AND sa.sample_id = nd.a_sample_id
        JOIN splits sb ON sb.split = sa.split AND sb.corpus = nd.b_corpus AND sb.sample_id = nd.b_sample_id
        ORDER BY train_eval_leak DESC, cross_role DESC, nd.sim DESC, sa.split, nd.a_item_id, nd.b_item_id"""


def existing_views(con: duckdb.DuckDBPyConnection) -> set[str]:
    """Names a query can read: the session's views and its copies of the catalog tables."""
    return {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal "
                                      "UNION SELECT table_name FROM duckdb_tables() WHERE NOT internal").fetchall()}


def derived_views(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """View name -> SELECT, for every derived view whose base tables exist in this session."""
    have = existing_views(con)
    return {name: build() for name, (needs, build) in _VIEWS.items() if needs <= have}
