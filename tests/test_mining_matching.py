"""The vectorised caption x keyword matcher against S-CLIP's substring rule (after
normalisation), on every real RSICD caption, and the tables built from it."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pytest

from clipstore.ingest.pipeline import ingest
from clipstore.mining.matching import caption_form, keyword_form, keyword_matrix, match_keywords, normalise_keyword
from clipstore.mining.sclip_files import import_keywords
from clipstore.warehouse.sql import query
from clipstore.warehouse.store import Store


def reference_pairs(texts: list[str], keywords: list[str]) -> list[tuple[int, int]]:
    """S-CLIP's rule, `" " + k + " " in " " + c + " "`, applied to keyword and caption forms."""
    spaced = [f" {caption_form(t)} " for t in texts]
    pairs = []
    for j, k in enumerate(keywords):
        key = f" {keyword_form(k)} "
        if key.strip():
            pairs.extend((i, j) for i, c in enumerate(spaced) if key in c)
    return sorted(pairs)


@pytest.fixture(scope="module")
def rsicd(tmp_path_factory, shared_data):
    store = Store(tmp_path_factory.mktemp("rsicd") / "store")
    ingest(store, "rsicd", shared_data / "rsicd" / "dataset_rsicd.reconstructed.json",
           images=shared_data / "rsicd" / "RSICD_images", keep_missing=True, workers=1, progress=False)
    return store


def test_matches_the_reference_rule_on_every_real_rsicd_caption(rsicd):
    captions = query(rsicd, "SELECT raw, text FROM captions ORDER BY caption_id").to_pylist()
    texts = [c["text"] for c in captions]
    assert len(texts) == 54605
    # a real vocabulary: the 150 most frequent words and word pairs of the captions ...
    grams = Counter()
    for t in texts:
        words = caption_form(t).split()
        grams.update(w for w in words if w != "|")
        grams.update(" ".join(p) for p in zip(words, words[1:]) if "|" not in p)
    keywords = [g for g, _ in grams.most_common(150)]
    # ... plus the awkward cases: case and punctuation variants, two spellings with one keyword form,
    # pairs that occur only across a comma, three words, unknown tokens, a keyword with no token
    keywords += ["Parking-Lot", "parking lot", "green  trees,", "high-rise buildings", "high rise buildings",
                 "trees buildings", "buildings trees", "trees, buildings", "many green trees", "zzz unknown",
                 "trees zzz", "---", "1"]
    ci, ki = match_keywords(texts, keywords)
    assert list(zip(ci.tolist(), ki.tolist())) == reference_pairs(texts, keywords)
    assert ci.size > 200_000
    # the raw captions give the same matrix: normalisation is part of the rule, not of the input
    first = int(np.searchsorted(ci, 5000))
    raw_ci, raw_ki = match_keywords([c["raw"] for c in captions[:5000]], keywords)
    assert np.array_equal(raw_ci, ci[:first]) and np.array_equal(raw_ki, ki[:first])


def test_whole_words_within_one_caption():
    texts = ["a parking lot near green", "trees and a parking lot . parking lot", "", "Parkings, lots",
             "The GREEN-trees!", "a parking, lot"]
    keywords = ["parking lot", "green trees", "park", "lot", "trees", "green trees and a parking lot now"]
    ci, ki = match_keywords(texts, keywords)
    found = {(int(i), keywords[j]) for i, j in zip(ci, ki)}
    assert found == {(0, "parking lot"), (0, "lot"), (1, "parking lot"), (1, "lot"), (1, "trees"),
                     (4, "green trees"), (4, "trees"), (5, "lot")}
    # "green" ending caption 0 and "trees" starting caption 1 are no "green trees", nor is "parking, lot"
    # a "parking lot"; a repeat counts once
    assert reference_pairs(texts, keywords) == sorted((i, keywords.index(k)) for i, k in found)
    assert match_keywords([], keywords)[0].size == 0 and match_keywords(texts, [])[0].size == 0


def test_keyword_and_caption_forms():
    assert normalise_keyword("  High-Rise   Buildings ") == "high-rise buildings"
    assert keyword_form("High-Rise   Buildings.") == "high rise buildings"
    assert caption_form("Many high-rise buildings, a road (busy).") == "many high rise buildings | a road | busy"
    assert caption_form("the farmer's field") == "the farmer s field"


def test_candidate_sets_are_unions_in_rank_order():
    captions = pa.table({"corpus": ["c"] * 5, "caption_id": ["c1", "c2", "c3", "c4", "c5"],
                         "sample_id": ["s1", "s1", "s2", "s3", "s3"], "image_id": ["i1", "i1", None, "i3", "i3"],
                         "text": ["a river and trees", "a road beside a river", "nothing here", "trees", "a road"]})
    keywords = ["road", "river", "trees"]
    ck, ik, stats = keyword_matrix("v1", captions, ["k-road", "k-river", "k-trees"], keywords)
    assert ck.select(["caption_id", "keyword_id"]).to_pylist() == [
        {"caption_id": "c1", "keyword_id": "k-river"}, {"caption_id": "c1", "keyword_id": "k-trees"},
        {"caption_id": "c2", "keyword_id": "k-road"}, {"caption_id": "c2", "keyword_id": "k-river"},
        {"caption_id": "c4", "keyword_id": "k-trees"}, {"caption_id": "c5", "keyword_id": "k-road"}]
    assert ik.select(["sample_id", "image_id", "keyword_ids", "n_keywords"]).to_pylist() == [
        {"sample_id": "s1", "image_id": "i1", "keyword_ids": ["k-road", "k-river", "k-trees"], "n_keywords": 3},
        {"sample_id": "s2", "image_id": None, "keyword_ids": [], "n_keywords": 0},
        {"sample_id": "s3", "image_id": "i3", "keyword_ids": ["k-road", "k-trees"], "n_keywords": 2}]
    assert stats["captions_with_keyword"] == 4 and stats["samples_with_candidates"] == 2


def test_matrix_in_the_store_agrees_with_sql_substring_search(rsicd, tmp_path):
    f = tmp_path / "kw.txt"
    f.write_text("storage tanks\nbaseball field\nviaduct\n", encoding="utf-8")
    vocab = import_keywords(rsicd, [f], name="three", match_corpora=["rsicd"])
    by_matrix = query(rsicd, "SELECT k.keyword, count(*) AS n FROM caption_keywords ck "
                             "JOIN keywords k USING (vocab_id, keyword_id) JOIN captions c USING (caption_id) "
                             "WHERE ck.vocab_id = $v GROUP BY k.keyword ORDER BY k.keyword",
                      {"v": vocab.artifact_id}).to_pylist()
    # the same rule written independently in SQL: phrase punctuation -> " | ", other non-word -> " "
    by_sql = query(rsicd, r"""
        WITH forms AS (SELECT ' ' || trim(regexp_replace(regexp_replace(regexp_replace(lower(text),
                                   '[^a-z0-9\s''’/_-]+', ' | ', 'g'), '[^a-z0-9|]+', ' ', 'g'),
                                   '\s+', ' ', 'g')) || ' ' AS f
                       FROM captions)
        SELECT k.keyword, count(*) AS n FROM forms, keywords k
        WHERE k.vocab_id = $v AND contains(f, ' ' || k.keyword || ' ') GROUP BY k.keyword ORDER BY k.keyword""",
                   {"v": vocab.artifact_id}).to_pylist()
    assert by_matrix == by_sql and all(r["n"] > 100 for r in by_matrix)
    assert vocab.counts["image_keywords"] == 10921
