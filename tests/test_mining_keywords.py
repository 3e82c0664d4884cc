"""YAKE keyword vocabularies over real captions, versioning and lineage, S-CLIP file export and
import, and the errors a user meets."""

from __future__ import annotations

import json

import pytest

from clipstore.ingest.pipeline import ingest
from clipstore.ingest.splits import make_split
from clipstore.mining.keywords import mine_keywords, yake_document
from clipstore.mining.matching import caption_form
from clipstore.mining.sclip_files import export_sclip, import_keywords
from clipstore.warehouse.errors import InputError, NotFoundError
from clipstore.warehouse.hashing import text_id
from clipstore.warehouse.sql import query
from clipstore.warehouse.store import Store
from conftest import write_karpathy

YAKE_ARGS = {"lan": "en", "n": 2, "dedup_lim": 0.9, "dedup_func": "seqm", "window_size": 1, "top": 300}


@pytest.fixture(scope="module")
def ucm(tmp_path_factory, shared_data):
    """A store with the real UCM_captions file (2,100 images, 210 on disk) and its YAKE vocabulary."""
    store = Store(tmp_path_factory.mktemp("ucm") / "store")
    ingest(store, "ucm_captions", shared_data / "ucm_captions", images=shared_data / "ucmerced_landuse",
           image_map=shared_data / "ucmerced_landuse" / "ucm_captions_filename_map.tsv", keep_missing=True,
           workers=1, progress=False)
    vocab = mine_keywords(store, corpora=["ucm_captions"], progress=False)
    return store, vocab


def vocab_keywords(store, vocab_id):
    return query(store, "SELECT keyword, keyword_id, rank, score, n_words, source FROM keywords "
                        "WHERE vocab_id = $v ORDER BY rank", {"v": vocab_id}).to_pylist()


def test_yake_vocabulary_over_real_ucm_captions(ucm):
    store, vocab = ucm
    rows = vocab_keywords(store, vocab.artifact_id)
    words = [r["keyword"] for r in rows]
    assert len(rows) == 300 and [r["rank"] for r in rows] == list(range(1, 301))
    # what YAKE finds in UCM's captions: scene vocabulary, head first
    assert words[:5] == ["plants", "lots", "residential area", "roads", "cars"]
    for expected in ("parking lot", "trees", "buildings", "river", "dense residential", "baseball diamond",
                     "storage tanks", "tennis court", "mobile home"):
        assert expected in words
    assert words.index("residential area") < words.index("parking lot") < words.index("baseball diamond")
    scores = [r["score"] for r in rows]
    assert scores == sorted(scores)                      # YAKE: lower is better, rank follows it
    assert all(1 <= r["n_words"] <= 2 and r["source"] == "yake" for r in rows)
    assert all(r["keyword_id"] == text_id("keyword", r["keyword"]) for r in rows)
    assert len(set(words)) == 300

    params = vocab.recipe["params"]
    assert params["yake"] == YAKE_ARGS
    assert params["document"]["unique_captions"] is False
    assert params["corpora"] == ["ucm_captions"] and params["match"]["corpora"] == ["ucm_captions"]
    row = query(store, "SELECT vocab, kind, scope, method, params, n_entries FROM vocabularies WHERE vocab_id = $v",
                {"v": vocab.artifact_id}).to_pylist()[0]
    assert row["vocab"] == "keywords.ucm_captions" and row["method"] == "yake" and row["n_entries"] == 300
    assert json.loads(row["params"])["yake"] == YAKE_ARGS
    assert vocab.stats["captions_mined"] == 10500


def test_every_sample_gets_its_candidate_set(ucm):
    store, vocab = ucm
    assert vocab.counts["image_keywords"] == 2100
    # the candidate set is the union over the sample's captions, in rank order
    sample = query(store, "SELECT sample_id, keyword_ids FROM image_keywords WHERE vocab_id = $v AND n_keywords > 3 "
                          "ORDER BY sample_id LIMIT 1", {"v": vocab.artifact_id}).to_pylist()[0]
    union = query(store, "SELECT k.keyword_id FROM caption_keywords ck JOIN keywords k USING (vocab_id, keyword_id) "
                         "WHERE ck.vocab_id = $v AND ck.sample_id = $s GROUP BY k.keyword_id, k.rank ORDER BY k.rank",
                  {"v": vocab.artifact_id, "s": sample["sample_id"]}).column("keyword_id").to_pylist()
    assert sample["keyword_ids"] == union


def test_one_sentence_per_caption():
    from yake.data.utils import pre_filter, tokenize_sentences
    document, used = yake_document(["many green trees", "", "a road beside a river", "many green trees"])
    assert used == 3 and document == "many green trees. a road beside a river. many green trees."
    assert len(tokenize_sentences(pre_filter(document))) == 3      # YAKE's own splitter sees 3 sentences
    assert yake_document(["a", "a", "b"], unique_captions=True) == ("a. b.", 2)


def test_remining_unchanged_input_is_a_noop(ucm):
    store, vocab = ucm
    parts_before = store.parts(vocab.artifact_id)
    again = mine_keywords(store, corpora=["ucm_captions"], progress=False)
    assert again.artifact_id == vocab.artifact_id
    assert store.parts(vocab.artifact_id) == parts_before
    runs = query(store, "SELECT status FROM runs WHERE artifact_id = $v ORDER BY started_at",
                 {"v": vocab.artifact_id}).column("status").to_pylist()
    assert runs[0] == "done" and runs[-1] == "noop"


def test_split_role_scope_sql_joins_and_lineage(ucm):
    store, vocab = ucm
    split = make_split(store, "ucm10", corpora=["ucm_captions"], labeled_ratio=0.1, seed=0)
    labeled = mine_keywords(store, split="ucm10", role="labeled", top=50, progress=False)
    assert labeled.name == "keywords.ucm10.labeled"
    assert labeled.stats["captions_mined"] == 5 * split.counts["labeled"]
    assert {i for i, _ in store.lineage(labeled.artifact_id)} == {split.artifact_id, vocab.inputs[0]}
    assert vocab.inputs == [store.current("corpus", "ucm_captions").artifact_id]
    # matched against every caption of the corpus, not only the labeled ones
    assert labeled.counts["image_keywords"] == 2100
    # role "train" = labeled + unlabeled, S-CLIP's mining scope; never val or test captions
    train = mine_keywords(store, split="ucm10", role="train", top=50, progress=False)
    assert train.stats["captions_mined"] == 5 * (split.counts["labeled"] + split.counts["unlabeled"])

    # per role: how many samples have "parking lot" among their candidates, via SQL joins
    by_sql = query(store, """
        SELECT s.role, count(DISTINCT m.sample_id) AS n
        FROM caption_keywords ck JOIN keywords k USING (vocab_id, keyword_id)
        JOIN captions c USING (caption_id) JOIN samples m ON m.sample_id = c.sample_id
        JOIN splits s ON s.sample_id = m.sample_id AND s.split = 'ucm10'
        WHERE ck.vocab_id = $v AND k.keyword = 'parking lot' GROUP BY s.role ORDER BY s.role""",
                   {"v": vocab.artifact_id}).to_pylist()
    roles = {r["sample_id"]: r["role"] for r in query(store, "SELECT sample_id, role FROM splits").to_pylist()}
    texts = query(store, "SELECT sample_id, text FROM captions").to_pylist()
    by_python: dict[str, set] = {}
    for t in texts:
        if t["sample_id"] in roles and " parking lot " in f" {caption_form(t['text'])} ":
            by_python.setdefault(roles[t["sample_id"]], set()).add(t["sample_id"])
    assert by_sql == [{"role": r, "n": len(s)} for r, s in sorted(by_python.items())]
    assert by_sql  # some sample of the split mentions a parking lot


def test_changed_parameter_or_grown_corpus_gives_a_new_version(tmp_path):
    store = Store(tmp_path / "store")
    entries = [{"filename": f"{i}.tif", "captions": [f"a dense residential area with {i} houses .",
                                                      "green trees beside a parking lot ."]} for i in range(8)]
    write_karpathy(tmp_path / "src", entries)
    ingest(store, "karpathy", tmp_path / "src", name="karpathy", keep_missing=True, workers=1, progress=False)
    first = mine_keywords(store, corpora=["karpathy"], top=20, progress=False)
    fewer = mine_keywords(store, corpora=["karpathy"], top=5, progress=False)
    assert fewer.artifact_id != first.artifact_id and fewer.params["yake"]["top"] == 5
    assert store.current("vocab", "keywords.karpathy").artifact_id == fewer.artifact_id

    # the corpus gains captions: same corpus artifact, new parts, so a new vocabulary version
    write_karpathy(tmp_path / "src", entries + [{"filename": "99.tif", "captions": ["a harbor with boats ."]}])
    ingest(store, "karpathy", tmp_path / "src", name="karpathy", keep_missing=True, workers=1, progress=False)
    grown = mine_keywords(store, corpora=["karpathy"], top=20, progress=False)
    assert grown.artifact_id != first.artifact_id
    assert grown.inputs == first.inputs                       # same corpus artifact ...
    assert grown.recipe["inputs"] != first.recipe["inputs"]   # ... pinned at a new version
    assert "harbor" in [r["keyword"] for r in vocab_keywords(store, grown.artifact_id)]
    assert grown.counts["image_keywords"] == 9


def test_export_import_round_trip(ucm, tmp_path):
    store, vocab = ucm
    written = export_sclip(store, vocab.artifact_id, tmp_path / "out")
    assert [p.name for p in written] == ["yake-50.txt", "yake-100.txt", "yake-200.txt", "yake-300.txt"]
    lists = [p.read_text(encoding="utf-8").split("\n") for p in written]
    ranking = [r["keyword"] for r in vocab_keywords(store, vocab.artifact_id)]
    assert lists[-1] == ranking                                        # priority order, one per line
    assert all(lst == ranking[:len(lst)] for lst in lists)             # each a prefix of one ranking
    assert [len(lst) for lst in lists] == [50, 100, 200, 300]
    assert not written[0].read_bytes().endswith(b"\n")                 # as the published files are

    imported = import_keywords(store, tmp_path / "out", name="ucm-imported")
    rows = vocab_keywords(store, imported.artifact_id)
    assert [r["keyword"] for r in rows] == ranking and {r["source"] for r in rows} == {"import"}
    assert [r["keyword_id"] for r in rows] == [r["keyword_id"] for r in vocab_keywords(store, vocab.artifact_id)]
    again = export_sclip(store, "ucm-imported", tmp_path / "again", prefix="yake")
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in written]   # byte-identical

    # the same ranking from one file is the same artifact (the recipe holds the ranking, not paths)
    single = import_keywords(store, [written[-1]], name="ucm-imported")
    assert single.artifact_id == imported.artifact_id


def test_import_with_matching_and_messy_lines(ucm, tmp_path):
    store, _ = ucm
    f = tmp_path / "mine-3.txt"
    f.write_bytes(b"Parking  Lot\r\n\r\n  trees \r\nparking lot\r\nbaseball diamond\r\n")
    vocab = import_keywords(store, [f], name="messy", match_corpora=["ucm_captions"])
    assert [r["keyword"] for r in vocab_keywords(store, vocab.artifact_id)] == ["parking lot", "trees",
                                                                                 "baseball diamond"]
    notes = " | ".join(vocab.stats["notes"])
    assert "1 repeated keyword(s) dropped (line 4: 'parking lot')" in notes and "1 blank line(s)" in notes
    assert vocab.stats["files"][0]["duplicates"] == ["parking lot"]
    n = query(store, "SELECT count(DISTINCT ck.caption_id) AS n FROM caption_keywords ck JOIN keywords k "
                     "USING (vocab_id, keyword_id) WHERE ck.vocab_id = $v AND k.keyword = 'baseball diamond'",
              {"v": vocab.artifact_id}).to_pylist()[0]["n"]
    texts = query(store, "SELECT text FROM captions WHERE corpus = 'ucm_captions'").column("text").to_pylist()
    assert n == sum(" baseball diamond " in f" {caption_form(t)} " for t in texts) > 0


def test_bad_keyword_files(ucm, tmp_path):
    store, _ = ucm
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(InputError, match="holds no keyword"):
        import_keywords(store, [empty], name="x")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("trees\nb\xe2timent\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"not UTF-8 text: byte 0xe2 on line 2") as err:
        import_keywords(store, [latin], name="x")
    assert "iconv" in err.value.fix
    a, b = tmp_path / "yake-2.txt", tmp_path / "yake-3.txt"
    a.write_text("trees\nroads")
    b.write_text("trees\nbuildings\nroads")
    with pytest.raises(InputError, match=r"yake-2.txt is not a prefix of yake-3.txt: entry 2 is 'roads'"):
        import_keywords(store, tmp_path, name="x")
    with pytest.raises(InputError, match="no other-N.txt files"):
        import_keywords(store, tmp_path, name="x", prefix="other")
    with pytest.raises(NotFoundError):
        import_keywords(store, [tmp_path / "nope.txt"], name="x")
    with pytest.raises(InputError, match="has 300 entries"):
        export_sclip(store, "keywords.ucm_captions", tmp_path / "big", sizes=(100, 500))
    assert not (tmp_path / "big" / "yake-100.txt").exists()          # nothing half-written


def test_bad_scopes_and_parameters(ucm, tmp_path):
    store, _ = ucm
    with pytest.raises(NotFoundError, match="no corpus 'rsicd'") as err:
        mine_keywords(store, corpora=["rsicd"], progress=False)
    assert "ingest it first" in err.value.fix
    with pytest.raises(InputError, match="without a role") as err:
        mine_keywords(store, split="ucm10", progress=False)
    assert "--role" in err.value.fix
    with pytest.raises(InputError, match="needs --split"):
        mine_keywords(store, corpora=["ucm_captions"], role="labeled", progress=False)
    with pytest.raises(NotFoundError, match="no split 'nosuch'"):
        mine_keywords(store, split="nosuch", role="labeled", progress=False)
    with pytest.raises(InputError, match="say which captions"):
        mine_keywords(store, progress=False)
    with pytest.raises(InputError, match="unknown --dedup-func 'levenshtein'"):
        mine_keywords(store, corpora=["ucm_captions"], dedup_func="levenshtein", progress=False)
    with pytest.raises(InputError, match="no stop-word list for language 'xx'"):
        mine_keywords(store, corpora=["ucm_captions"], language="xx", progress=False)
    with pytest.raises(InputError, match="--top 0"):
        mine_keywords(store, corpora=["ucm_captions"], top=0, progress=False)

    junk = Store(tmp_path / "junk")
    write_karpathy(tmp_path / "src", [{"filename": "1.tif", "captions": [" .", "1 ."]}])
    ingest(junk, "karpathy", tmp_path / "src", name="karpathy", keep_missing=True, workers=1, progress=False)
    with pytest.raises(InputError, match="has no captions to mine"):
        mine_keywords(junk, corpora=["karpathy"], progress=False)


# ---- S-CLIP compatibility and per-corpus split scopes ---------------------------------------
# alinlab/s-clip keywords/RS/yake-50.txt, the published list (in rank order)
SCLIP_YAKE_50 = [
    'green trees', 'green', 'parking lot', 'trees', 'buildings', 'green plants', 'lot', 'residential area',
    'lots', 'area', 'building', 'green meadow', 'piece', 'road', 'river', 'green ocean', 'dark green',
    'industrial area', 'surrounded', 'cars', 'roads', 'green river', 'white buildings', 'residential', 'white',
    'sides', 'plants', 'parking', 'green pond', 'dense residential', 'large piece', 'large building', 'large',
    'playground', 'green mountain', 'houses', 'field', 'commercial area', 'deep green', 'football field',
    'white waves', 'tall buildings', 'green farmlands', 'pond', 'medium residential', 'houses arranged',
    'center building', 'cars parked', 'sparse green', 'parked',
]


def write_two_corpora(tmp_path, store):
    """Two small corpora whose captions say both "green tree" and "green trees"; corpus a has
    train and test entries."""
    a = [{"filename": f"a{i}.tif", "split": "train" if i < 8 else "test",
          "captions": [f"many green trees are around the building {i} .", "a green tree stands beside the road .",
                       "some cars are parked in the parking lot .", "a river with green trees on both sides ."]}
         for i in range(12)]
    b = [{"filename": f"b{i}.tif", "split": "train" if i < 2 else "val",
          "captions": ["a harbor with many boats .", "green trees near a harbor ."]} for i in range(4)]
    write_karpathy(tmp_path / "a", a)
    write_karpathy(tmp_path / "b", b)
    ingest(store, "karpathy", tmp_path / "a", name="a", keep_missing=True, workers=1, progress=False)
    ingest(store, "karpathy", tmp_path / "b", name="b", keep_missing=True, workers=1, progress=False)


def test_compat_sclip_dedups_plural_pairs_as_yake_04_did(tmp_path):
    store = Store(tmp_path / "store")
    write_two_corpora(tmp_path, store)
    plain = mine_keywords(store, corpora=["a"], top=20, progress=False)
    words = [r["keyword"] for r in vocab_keywords(store, plain.artifact_id)]
    assert "green trees" in words and "green tree" in words          # yake 0.7's seqm scores the pair 0
    compat = mine_keywords(store, corpora=["a"], top=20, compat="sclip", progress=False)
    words = [r["keyword"] for r in vocab_keywords(store, compat.artifact_id)]
    assert "green trees" in words and "green tree" not in words      # Levenshtein ratio 10/11 > 0.9
    assert compat.params["yake"]["dedup_func"] == "levs" and compat.params["compat"] == "sclip"
    assert "compat" not in plain.params                               # older recipes keep their ids
    assert compat.name == "keywords.a.sclip" and plain.name == "keywords.a"
    with pytest.raises(InputError, match="--compat sclip deduplicates with 'levs'"):
        mine_keywords(store, corpora=["a"], compat="sclip", dedup_func="seqm", progress=False)
    with pytest.raises(InputError, match="unknown compatibility mode 'clip'"):
        mine_keywords(store, corpora=["a"], compat="clip", progress=False)
    # without a scope, the mode mines S-CLIP's: the train captions of RSICD, UCM and Sydney
    with pytest.raises(NotFoundError, match="no corpus 'rsicd', 'ucm_captions', 'sydney_captions'"):
        mine_keywords(store, compat="sclip", progress=False)


def test_a_source_split_per_corpus_in_one_call(tmp_path):
    store = Store(tmp_path / "store")
    write_two_corpora(tmp_path, store)
    mixed = mine_keywords(store, corpora=["a:train", "b"], top=20, progress=False)
    assert mixed.stats["captions_mined"] == 8 * 4 + 4 * 2            # a's train entries, all of b
    assert mixed.name == "keywords.a.train+b"
    assert mixed.params["source_splits"] == {"a": "train"} and "source_split" not in mixed.params
    assert mixed.params["corpora"] == ["a", "b"] and mixed.params["match"]["corpora"] == ["a", "b"]
    assert mixed.counts["image_keywords"] == 16                       # matched against every caption
    # the same split for every corpus is the plain --source-split recipe
    both = mine_keywords(store, corpora=["a:train", "b:train"], top=20, progress=False)
    plain = mine_keywords(store, corpora=["a", "b"], source_split="train", top=20, progress=False)
    assert both.artifact_id == plain.artifact_id and both.stats["captions_mined"] == 8 * 4 + 2 * 2
    # --source-split applies to the corpora without their own
    test_a = mine_keywords(store, corpora=["a:test", "b"], source_split="val", top=20, progress=False)
    assert test_a.stats["captions_mined"] == 4 * 4 + 2 * 2 and test_a.name == "keywords.a.test+b.val"
    with pytest.raises(InputError, match="'a:dev' is not NAME or NAME:SPLIT"):
        mine_keywords(store, corpora=["a:dev"], progress=False)
    with pytest.raises(InputError, match="'a' is named twice with different splits"):
        mine_keywords(store, corpora=["a:train", "a:test"], progress=False)


def test_cli_compat_and_corpus_split(tmp_path, cli):
    store = Store(tmp_path / "store")
    write_two_corpora(tmp_path, store)
    proc = cli("--store", store.root, "-q", "mine", "keywords", "--corpus", "a:train", "--corpus", "b",
               "--compat", "sclip", "--top", "20")
    assert "mine keywords keywords.a.train+b.sclip:" in proc.stdout
    bad = cli("--store", store.root, "mine", "keywords", "--corpus", "a:bogus", check=False)
    assert bad.returncode == 2 and "is not NAME or NAME:SPLIT" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_compat_sclip_over_the_real_rs_captions_is_closer_to_the_published_list(tmp_path, shared_data):
    """RSICD + UCM + Sydney captions (all of them, images on disk or not): S-CLIP's scope with
    yake 0.7's seqm vs the compat mode's Levenshtein dedup, against the published yake-50."""
    d = shared_data
    store = Store(tmp_path / "store")
    ingest(store, "rsicd", d / "rsicd" / "dataset_rsicd.reconstructed.json", images=d / "rsicd" / "RSICD_images",
           keep_missing=True, workers=1, progress=False)
    ingest(store, "ucm_captions", d / "ucm_captions", images=d / "ucmerced_landuse",
           image_map=d / "ucmerced_landuse" / "ucm_captions_filename_map.tsv", keep_missing=True, workers=1,
           progress=False)
    ingest(store, "sydney_captions", d / "sydney_captions", images=d / "sydney_captions" / "imgs",
           keep_missing=True, workers=1, progress=False)
    plain = mine_keywords(store, corpora=["rsicd", "ucm_captions", "sydney_captions"], source_split="train",
                          progress=False)
    compat = mine_keywords(store, compat="sclip", progress=False)
    assert compat.stats["captions_mined"] == plain.stats["captions_mined"] == 54551
    assert compat.name == "keywords.rsicd+ucm_captions+sydney_captions.train.sclip"
    top = {k: [r["keyword"] for r in vocab_keywords(store, v.artifact_id)][:50]
           for k, v in (("plain", plain), ("compat", compat))}
    assert {"green tree", "green trees"} <= set(top["plain"])
    assert "green tree" not in top["compat"] and "green trees" in top["compat"]
    assert len(set(top["plain"]) & set(SCLIP_YAKE_50)) == 42
    assert len(set(top["compat"]) & set(SCLIP_YAKE_50)) == 44
