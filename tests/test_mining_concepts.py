"""The SemiCLIP concept vocabulary over real UCM (and Sydney) captions: the kept concepts, each
filter, the public code's df quirk, split scopes, per-image targets, incremental parsing when a
corpus is added, idempotence and bad input."""

from __future__ import annotations

import json

import pytest

from clipstore.ingest.pipeline import ingest
from clipstore.ingest.splits import make_split
from clipstore.mining.concepts import DEFAULT_STOPLIST, mine_concepts
from clipstore.warehouse.errors import InputError, NotFoundError
from clipstore.warehouse.hashing import text_id
from clipstore.warehouse.sql import query
from clipstore.warehouse.store import Store


@pytest.fixture(scope="module")
def store(tmp_path_factory, shared_data) -> Store:
    store = Store(tmp_path_factory.mktemp("concepts") / "store")
    ingest(store, "ucm_captions", shared_data / "ucm_captions", images=shared_data / "ucmerced_landuse",
           image_map=shared_data / "ucmerced_landuse" / "ucm_captions_filename_map.tsv", keep_missing=True,
           workers=1, progress=False)
    return store


@pytest.fixture(scope="module")
def ucm(store):
    return mine_concepts(store, corpora=["ucm_captions"], workers=1, progress=False)


def concepts(store: Store, artifact) -> list[dict]:
    return query(store, "SELECT * FROM concepts WHERE vocab_id = ? ORDER BY rank", [artifact.artifact_id]).to_pylist()


def noun_images(store: Store, corpus: str, samples: set[str] | None = None) -> dict[str, int]:
    """Images per noun, straight from the terms cache in SQL (independent of the miner's code)."""
    rows = query(store, "SELECT term, sample_id FROM (SELECT DISTINCT t.term, c.sample_id FROM caption_terms t "
                        "JOIN captions c USING (caption_id, sample_id) WHERE t.kind = 'noun' AND c.corpus = ?)",
                 [corpus]).to_pylist()
    counts: dict[str, int] = {}
    for r in rows:
        if samples is None or r["sample_id"] in samples:
            counts[r["term"]] = counts.get(r["term"], 0) + 1
    return counts


def last_summary(store: Store, artifact_id: str) -> tuple[str, dict]:
    row = query(store, "SELECT status, summary FROM runs WHERE artifact_id = ? ORDER BY started_at DESC LIMIT 1",
                [artifact_id]).to_pylist()[0]
    return row["status"], json.loads(row["summary"])


def test_ucm_concepts_follow_the_semiclip_rules(store, ucm):
    assert ucm.kind == "vocab" and ucm.name == "concepts.ucm_captions"
    rows = concepts(store, ucm)
    names = [r["concept"] for r in rows]
    for concept in ("building", "tree", "road", "airplane", "car", "house", "tennis", "court", "river", "beach"):
        assert concept in names, concept

    counts = noun_images(store, "ucm_captions")
    n_images = 2100
    frequent = {t for t, n in counts.items() if n >= 5 and len(t) >= 3}
    assert {"lot", "number", "kind", "piece", "size", "middle", "corner"} <= frequent  # all frequent, all generic
    expected = {t for t in frequent if t not in DEFAULT_STOPLIST and counts[t] / n_images < 0.3}
    assert set(names) == expected
    assert "plant" in frequent and counts["plant"] / n_images >= 0.3 and "plant" not in names  # too common
    assert ucm.stats["too_frequent"] == ["plant"]
    assert {"lot", "number", "kind", "piece", "size"} <= set(ucm.stats["stop_listed"])

    # ranked by images, then name; ids are stable text ids; df is the share of images
    assert sorted(rows, key=lambda r: (-r["n_images"], r["concept"])) == rows
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
    for r in rows:
        assert r["concept_id"] == text_id("concept", r["concept"])
        assert r["n_images"] == counts[r["concept"]] and r["df"] == pytest.approx(r["n_images"] / n_images)


def test_targets_cover_every_captioned_image(store, ucm):
    vocab = query(store, "SELECT * FROM vocabularies WHERE vocab_id = ?", [ucm.artifact_id]).to_pylist()
    assert len(vocab) == 1 and vocab[0]["n_entries"] == ucm.counts["concepts"]
    assert json.loads(vocab[0]["params"])["extractor"]["mode"] == "fallback"
    per_image = query(store, "SELECT count(DISTINCT sample_id) AS images, count(*) AS n FROM image_concepts "
                             "WHERE vocab_id = ?", [ucm.artifact_id]).to_pylist()[0]
    assert per_image["images"] == ucm.stats["targets"]["samples_with_concepts"] > 2000
    # an image's concepts are the union of its captions' concepts
    mismatch = query(store, "SELECT count(*) AS n FROM (SELECT sample_id, concept_id FROM image_concepts "
                            "WHERE vocab_id = $v EXCEPT SELECT DISTINCT sample_id, concept_id FROM caption_concepts "
                            "WHERE vocab_id = $v)", {"v": ucm.artifact_id}).to_pylist()[0]["n"]
    assert mismatch == 0
    tennis = query(store, "SELECT count(DISTINCT i.sample_id) AS n FROM image_concepts i JOIN concepts k "
                          "USING (vocab_id, concept_id) WHERE k.concept = 'tennis' AND vocab_id = ?",
                   [ucm.artifact_id]).to_pylist()[0]["n"]
    assert tennis == [r for r in concepts(store, ucm) if r["concept"] == "tennis"][0]["n_images"]


def test_the_public_df_quirk_drops_the_common_concepts(store, ucm):
    # under its own name: a vocabulary name means its newest version in SQL
    quirk = mine_concepts(store, corpora=["ucm_captions"], df_rule="vocab", name="concepts.ucm_quirk", workers=1,
                          progress=False)
    assert quirk.artifact_id != ucm.artifact_id
    counts = noun_images(store, "ucm_captions")
    vocabulary = {t for t, n in counts.items() if n >= 5 and len(t) >= 3 and t not in DEFAULT_STOPLIST}
    assert quirk.stats["df_denominator"] == len(vocabulary)
    expected = {t for t in vocabulary if counts[t] / len(vocabulary) < 0.3}
    names = {r["concept"] for r in concepts(store, quirk)}
    assert names == expected
    assert not names & {"building", "tree", "road", "car", "airplane"}  # all in more than 0.3 x |V| images
    assert names < {r["concept"] for r in concepts(store, ucm)}


def test_remining_unchanged_inputs_is_a_noop_with_lineage(store, ucm):
    again = mine_concepts(store, corpora=["ucm_captions"], workers=1, progress=False)
    assert again.artifact_id == ucm.artifact_id
    status, summary = last_summary(store, ucm.artifact_id)
    assert status == "noop" and summary == {"reused": True}
    inputs = {i for i, _ in store.lineage(ucm.artifact_id)}
    terms = store.current("terms", "ucm_captions")
    assert inputs == {terms.artifact_id, store.current("corpus", "ucm_captions").artifact_id}
    status, summary = last_summary(store, terms.artifact_id)  # the terms cache was asked again: nothing new
    assert status == "noop" and summary["parsed_captions"] == 0


def test_noun_phrases_as_concepts(store, ucm):
    with_phrases = mine_concepts(store, corpora=["ucm_captions"], phrases=True, name="concepts.ucm_phrases",
                                 workers=1, progress=False)
    names = {r["concept"] for r in concepts(store, with_phrases)}
    assert {"tennis court", "storage tank", "golf course", "parking lot"} <= names
    assert "different size" not in names  # its head noun is stop-listed
    assert {r["concept"] for r in concepts(store, ucm)} < names


def test_split_scope_mines_labeled_images_and_targets_all(store, ucm):
    split = make_split(store, "ucm_half", corpora=["ucm_captions"], labeled_ratio=0.5, seed=0)
    labeled = set(query(store, "SELECT sample_id FROM splits WHERE split = 'ucm_half' AND role = 'labeled'")
                  .column("sample_id").to_pylist())
    vocab = mine_concepts(store, split="ucm_half", workers=1, progress=False)  # role: labeled by default
    assert vocab.name == "concepts.ucm_half.labeled"
    assert vocab.stats["vocabulary_images"] == len(labeled) == split.counts["labeled"]
    counts = noun_images(store, "ucm_captions", labeled)
    expected = {t for t, n in counts.items() if n >= 5 and len(t) >= 3 and t not in DEFAULT_STOPLIST
                and n / len(labeled) < 0.3}
    rows = concepts(store, vocab)
    assert {r["concept"] for r in rows} == expected and all(r["n_images"] <= len(labeled) for r in rows)
    # targets for every captioned image of the corpus: unlabeled and caption-only ones too (the 210
    # images on disk here are all UCM train images; val/test have captions only)
    assert vocab.stats["targets"]["captioned_samples"] == 2100
    roles = query(store, "SELECT coalesce(s.role, 'none') AS role, count(DISTINCT i.sample_id) AS n "
                         "FROM image_concepts i LEFT JOIN (SELECT * FROM splits WHERE split = 'ucm_half') s "
                         "USING (sample_id) WHERE i.vocab_id = ? GROUP BY ALL", [vocab.artifact_id]).to_pylist()
    per_role = {r["role"]: r["n"] for r in roles}
    assert 0.9 * len(labeled) <= per_role["labeled"] <= len(labeled)
    assert per_role["unlabeled"] > 0 and per_role["none"] > 1500  # 1,890 caption-only samples
    assert sum(per_role.values()) == vocab.stats["targets"]["samples_with_concepts"]
    assert split.artifact_id in {i for i, _ in store.lineage(vocab.artifact_id)}


def test_adding_a_corpus_parses_only_its_captions(store, ucm, shared_data, tmp_path):
    sydney = json.loads((shared_data / "sydney_captions" / "dataset.json").read_text())
    sydney["images"] = sydney["images"][:100]  # the first 100 real Sydney images: 500 captions
    (tmp_path / "sydney").mkdir()
    (tmp_path / "sydney" / "dataset.json").write_text(json.dumps(sydney))
    ingest(store, "sydney_captions", tmp_path / "sydney", keep_missing=True, workers=1, progress=False)
    both = mine_concepts(store, corpora=["ucm_captions", "sydney_captions"], workers=1, progress=False)
    status, summary = last_summary(store, both.artifact_id)
    assert status == "done"
    assert summary["parsed_captions"] == {"ucm_captions": 0, "sydney_captions": 500}
    assert both.name == "concepts.ucm_captions+sydney_captions"
    assert both.stats["vocabulary_images"] == 2100 + 100


def test_bad_input_says_what_to_do(store):
    with pytest.raises(NotFoundError) as err:
        mine_concepts(store, corpora=["rsicd"], progress=False)
    assert "clipstore ingest" in err.value.fix
    with pytest.raises(InputError) as err:
        mine_concepts(store, corpora=["ucm_captions"], role="labeled", progress=False)
    assert "--split" in err.value.fix
    with pytest.raises(InputError) as err:
        mine_concepts(store, corpora=["ucm_captions"], df_rule="vocabulary", progress=False)
    assert "'images'" in err.value.fix and "'vocab'" in err.value.fix
    with pytest.raises(InputError):
        mine_concepts(store, corpora=["ucm_captions"], min_images=0, progress=False)
    with pytest.raises(NotFoundError):
        mine_concepts(store, split="no_such_split", progress=False)
