"""Pseudo-labels nn / soft_nn / ot / keywords and their audit, on the synthetic corpus: against
independent references (brute-force similarities and scipy's softmax/entropy, POT's Sinkhorn,
SQL over the caption × keyword matrix), with embeddings that encode the class (near-perfect) or
not (chance), the store contract (no-op, incremental rows, new version), lineage in SQL, and the
bad inputs that must be clear errors with nothing written."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import ot
import pytest
import scipy.special
import scipy.stats

from clipstore.features.pseudolabels.audit import audit_artifact
from clipstore.features.pseudolabels.common import read_table
from clipstore.features.pseudolabels.keywords import keyword_labels
from clipstore.features.pseudolabels.nn import nearest_labels
from clipstore.features.pseudolabels.ot import transport_labels
from clipstore.warehouse.errors import InputError
from clipstore.warehouse.sql import query
from clipstore.warehouse.store import Store
from conftest import run_main
from fixtures import class_vectors, corpus_images, synth_split_store, write_embeddings


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """synth (120 scenes, 10 classes) with split `s` (33 labeled covering the 10 classes, 63 unlabeled), one-hot class
    embeddings `onehot` and the same vectors shuffled across images `shuffled`."""
    root = tmp_path_factory.mktemp("pl")
    store, folder = synth_split_store(root)
    write_embeddings(store, "synth", class_vectors(store, "synth"), fingerprint="onehot", name="onehot")
    write_embeddings(store, "synth", class_vectors(store, "synth", shuffle_seed=0), fingerprint="shuffled",
                     name="shuffled")
    return root


@pytest.fixture
def store(base, tmp_path):
    shutil.copytree(base / "store", tmp_path / "store")
    return Store(tmp_path / "store")


def _rows(store, art, table="pseudo_captions"):
    return read_table(store, art, table).sort_by("image_id").to_pylist()


def _split_roles(store):
    rows = query(store, "SELECT role, image_id FROM splits WHERE split = 's'").to_pylist()
    return {r: {x["image_id"] for x in rows if x["role"] == r} for r in ("labeled", "unlabeled", "val", "test")}


PRODUCERS = {"nn": lambda s, e, **k: nearest_labels(s, split="s", embeddings=e, **k),
             "soft_nn": lambda s, e, **k: nearest_labels(s, split="s", embeddings=e, soft=True, **k),
             "ot": lambda s, e, **k: transport_labels(s, split="s", embeddings=e, **k)}


@pytest.mark.parametrize("producer", ["nn", pytest.param("soft_nn", marks=pytest.mark.slow),
                                      pytest.param("ot", marks=pytest.mark.slow)])
def test_class_encoding_embeddings_are_near_perfect_and_shuffled_ones_fall_to_chance(store, producer):
    good = PRODUCERS[producer](store, ["onehot"])
    bad = PRODUCERS[producer](store, ["shuffled"])
    g, b = good.stats["audit"]["pseudo_captions"], bad.stats["audit"]["pseudo_captions"]
    assert g["rows"] == b["rows"] == len(_split_roles(store)["unlabeled"]) == 63
    assert g["with_class_truth"] == 63 and g["class_ceiling"] == 1.0
    assert g["match_class_accuracy"] >= 0.99 and g["vote_class_accuracy"] >= 0.99
    # shuffled vectors carry no class: accuracy near what matched classes give by chance (~0.1)
    assert b["match_class_accuracy"] <= max(0.3, 2.5 * b["chance_of_matched_classes"])
    assert b["match_class_accuracy"] < g["match_class_accuracy"] - 0.5


@pytest.mark.slow
def test_nn_and_soft_nn_against_brute_force(store):
    hard = nearest_labels(store, split="s", embeddings=["onehot"], logit_scale=10.0)
    emb = {i["image_id"]: v for i, v in zip(corpus_images(store, "synth"), class_vectors(store, "synth").values())}
    # a second, non-degenerate vector set: noisy class vectors, so that similarities differ
    rng = np.random.default_rng(3)
    noisy = {k: v + 0.6 * rng.normal(size=v.shape) for k, v in emb.items()}
    write_embeddings(store, "synth", noisy, fingerprint="noisy", name="noisy")
    soft = nearest_labels(store, split="s", embeddings=["noisy"], soft=True, top=3, logit_scale=10.0)
    hard2 = nearest_labels(store, split="s", embeddings=["noisy"], logit_scale=10.0)
    roles = _split_roles(store)
    labeled = sorted(roles["labeled"])
    unit = {k: (v / np.linalg.norm(v)).astype(np.float16).astype(np.float64) for k, v in noisy.items()}
    bank = np.stack([unit[i] for i in labeled])
    for row_soft, row_hard in zip(_rows(store, soft), _rows(store, hard2)):
        sims = bank @ unit[row_soft["image_id"]]
        p = scipy.special.softmax(10.0 * sims)
        order = np.argsort(-p, kind="stable")[:3]
        assert row_soft["matches"] == [labeled[j] for j in order]
        np.testing.assert_allclose(row_soft["weights"], p[order] / p[order].sum(), atol=1e-5)
        assert row_soft["confidence"] == pytest.approx(p.max(), abs=1e-5)
        assert row_soft["entropy"] == pytest.approx(scipy.stats.entropy(p), abs=1e-4)
        assert row_hard["matches"] == [labeled[int(np.argmax(sims))]] and row_hard["weights"] == [1.0]
        assert row_hard["similarity"] == pytest.approx(sims.max(), abs=1e-3)
    assert hard.counts["pseudo_captions"] == 63


def test_ot_rows_equal_pot_and_the_pot_solver(store):
    rng = np.random.default_rng(4)
    emb = {k: v + 0.6 * rng.normal(size=v.shape) for k, v in class_vectors(store, "synth").items()}
    write_embeddings(store, "synth", emb, fingerprint="noisy", name="noisy")
    mine = transport_labels(store, split="s", embeddings=["noisy"], top=4, epsilon=0.05)
    theirs = transport_labels(store, split="s", embeddings=["noisy"], top=4, epsilon=0.05, solver="pot",
                              name="s.ot.pot")
    roles = _split_roles(store)
    labeled, unlabeled = sorted(roles["labeled"]), sorted(roles["unlabeled"])
    # the independent reference: POT on the float64 cost of the stored (float16) unit vectors
    vec = {k: (v / np.linalg.norm(v)).astype(np.float16).astype(np.float64) for k, v in emb.items()}
    lab_rows = read_table(store, mine, "pseudo_captions")   # set order = the order the solver saw
    order_u = lab_rows.column("image_id").to_pylist()
    order_l = [r for r in query(store, "SELECT p.image_id FROM samples s JOIN splits p USING (sample_id) "
                                       "WHERE p.split = 's' AND p.role = 'labeled' ORDER BY s.source_index")
               .column("image_id").to_pylist()]
    assert sorted(order_u) == unlabeled and sorted(order_l) == labeled
    cost = 1.0 - np.stack([vec[i] for i in order_u]) @ np.stack([vec[i] for i in order_l]).T
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = ot.sinkhorn(np.full(len(order_u), 1 / len(order_u)), np.full(len(order_l), 1 / len(order_l)), cost,
                           0.05, numItermax=10, stopThr=0.0)
    rows = plan / plan.sum(axis=1, keepdims=True)
    for name, art in (("torch", mine), ("pot", theirs)):
        got = {r["image_id"]: r for r in _rows(store, art)}
        for i, image in enumerate(order_u):
            top = np.argsort(-rows[i], kind="stable")[:4]
            assert got[image]["matches"][0] == order_l[top[0]], name
            np.testing.assert_allclose(got[image]["weights"], rows[i][top] / rows[i][top].sum(), atol=2e-5)
            assert got[image]["confidence"] == pytest.approx(rows[i].max(), abs=2e-5)
            assert got[image]["entropy"] == pytest.approx(scipy.stats.entropy(rows[i]), abs=1e-4)
    assert mine.stats["marginal_error"] == pytest.approx(theirs.stats["marginal_error"], rel=1e-3)


@pytest.mark.slow
def test_tiny_model_embeds_what_is_missing_and_the_second_run_is_a_noop(store):
    from clipstore.features.models import ModelSpec
    first = nearest_labels(store, split="s", model=ModelSpec("tiny-vit"), workers=0, progress=False)
    assert first.name == "s.nn.tiny-vit" and not first.noop
    assert [a.name for a in store.current_all("embeddings") if a.name.endswith("tiny-vit")] == ["synth.image.tiny-vit"]
    again = nearest_labels(store, split="s", model=ModelSpec("tiny-vit"), workers=0, progress=False)
    assert again.noop and again.artifact_id == first.artifact_id
    o1 = transport_labels(store, split="s", model=ModelSpec("tiny-vit"), workers=0, progress=False)
    o2 = transport_labels(store, split="s", model=ModelSpec("tiny-vit"), workers=0, progress=False)
    assert o2.noop and o1.artifact_id == o2.artifact_id
    # the model's own logit scale sets ε: a random init has s = 1/0.07
    assert o1.stats["epsilon"] == pytest.approx(0.07, rel=1e-5)
    audit = first.stats["audit"]["pseudo_captions"]
    assert audit["rows"] == 63 and 0 <= audit["match_class_accuracy"] <= 1


@pytest.mark.slow
def test_new_unlabeled_images_compute_only_their_rows_and_ot_makes_a_new_version(tmp_path):
    """Shift setting: labeled images from `synth`, unlabeled from an image folder that grows."""
    from clipstore.ingest.pipeline import ingest
    from clipstore.ingest.splits import make_split
    store, folder = synth_split_store(tmp_path, n_images=100)   # 20 classification images
    extra = tmp_path / "unl"
    classes = sorted(p.name for p in (folder / "classification").iterdir())
    files = sorted((folder / "classification").glob("*/*.png"))
    assert len(files) == 20
    for f in files[:12]:
        (extra / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, extra / f.parent.name / f.name)

    def vectors():   # one-hot class vectors for both corpora, one tower
        out = {}
        for corpus in ("synth", "unl"):
            out[corpus] = {i["image_id"]: np.eye(len(classes), dtype=np.float32)[classes.index(i["class"])]
                           for i in corpus_images(store, corpus)}
        return out

    def build():
        ingest(store, "imagefolder", extra, name="unl", workers=1, progress=False)
        make_split(store, "shift", corpora=["synth"], unlabeled_corpora=["unl"], labeled_ratio=0.5, seed=0)
        v = vectors()
        return [write_embeddings(store, c, v[c], fingerprint="onehot", name=f"{c}.onehot").artifact_id
                for c in ("synth", "unl")]

    embs = build()
    first = nearest_labels(store, split="shift", embeddings=embs)
    ot1 = transport_labels(store, split="shift", embeddings=embs)
    assert first.counts["pseudo_captions"] == 12 and first.stats["new"] == 12
    for f in files[12:20]:
        (extra / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, extra / f.parent.name / f.name)
    embs = build()
    grown = nearest_labels(store, split="shift", embeddings=embs)
    assert grown.artifact_id == first.artifact_id and grown.stats["new"] == 8
    assert grown.counts["pseudo_captions"] == 20 and not grown.noop
    assert grown.stats["audit"]["pseudo_captions"]["match_class_accuracy"] == 1.0
    ot2 = transport_labels(store, split="shift", embeddings=embs)
    assert ot2.artifact_id != ot1.artifact_id and ot2.counts["pseudo_captions"] == 20
    # the view shows the current version of each name: 20 rows per producer
    counts = query(store, "SELECT producer, count(*) AS n, count(DISTINCT split_id) AS splits FROM pseudo_captions "
                          "GROUP BY 1 ORDER BY 1").to_pylist()
    assert counts == [{"producer": "nn", "n": 20, "splits": 2}, {"producer": "ot", "n": 20, "splits": 1}]


@pytest.mark.slow
def test_keyword_sets_are_the_union_of_the_match_captions_keywords(store):
    from clipstore.mining.keywords import mine_keywords
    vocab = mine_keywords(store, corpora=["synth"], top=40, progress=False)
    nn = nearest_labels(store, split="s", embeddings=["onehot"])
    union = keyword_labels(store, source=nn.name, vocab=vocab.name)
    one = keyword_labels(store, source=nn.artifact_id, vocab=vocab.artifact_id, one_caption=7)
    assert union.counts["pseudo_keywords"] == one.counts["pseudo_keywords"] == 63
    expected = query(store, """
        SELECT p.image_id, list(DISTINCT ck.keyword_id) AS ids
        FROM pseudo_captions p, unnest(p.match_caption_ids) AS c(caption_id)
        LEFT JOIN caption_keywords ck ON ck.caption_id = c.caption_id AND ck.vocab_id = $v
        WHERE p.artifact_id = $a GROUP BY 1""", {"v": vocab.artifact_id, "a": nn.artifact_id}).to_pylist()
    expected = {r["image_id"]: sorted(k for k in r["ids"] if k is not None) for r in expected}
    rank = {r["keyword_id"]: r["rank"] for r in query(store, "SELECT keyword_id, rank FROM keywords").to_pylist()}
    for row in _rows(store, union, "pseudo_keywords"):
        assert sorted(row["keyword_ids"]) == expected[row["image_id"]]
        assert [rank[k] for k in row["keyword_ids"]] == sorted(rank[k] for k in row["keyword_ids"])
        assert row["n_keywords"] == len(row["keyword_ids"]) and row["source_id"] == nn.artifact_id
    for row in _rows(store, one, "pseudo_keywords"):
        assert len(row["caption_ids"]) == 1 and set(row["keyword_ids"]) <= set(expected[row["image_id"]])
    # the audit against the image's own candidate set (image_keywords of the same vocabulary)
    truth = {r["sample_id"]: set(r["keyword_ids"]) for r in query(
        store, "SELECT sample_id, keyword_ids FROM image_keywords WHERE vocab_id = $v", {"v": vocab.artifact_id})
        .to_pylist()}
    rows = _rows(store, union, "pseudo_keywords")
    hit = sum(len(set(r["keyword_ids"]) & truth[r["sample_id"]]) for r in rows)
    audit = union.stats["audit"]["pseudo_keywords"]
    assert audit["precision_micro"] == pytest.approx(hit / sum(r["n_keywords"] for r in rows), abs=1e-4)
    assert audit["recall_micro"] == pytest.approx(hit / sum(len(truth[r["sample_id"]]) for r in rows), abs=1e-4)
    assert keyword_labels(store, source=nn.name, vocab=vocab.name).noop
    # matches of the same scene share scene words: better sets than matches that ignore the class
    shuffled = nearest_labels(store, split="s", embeddings=["shuffled"])
    worse = keyword_labels(store, source=shuffled.artifact_id, vocab=vocab.name).stats["audit"]["pseudo_keywords"]
    assert audit["precision_micro"] > worse["precision_micro"] and audit["recall_micro"] > worse["recall_micro"]


def test_lineage_and_sql_from_the_command_line(store):
    emb = store.get("onehot", kind="embeddings")
    out = run_main("--store", store.root, "pseudolabel", "nn", "--split", "s", "--embeddings", "onehot", "--soft").stdout
    assert "pseudolabel soft_nn s.soft_nn.handmade: pseudo_captions 63" in out and "match class acc 1.0" in out
    out = run_main("--store", store.root, "pseudolabel", "ot", "--split", "s", "--embeddings", emb.artifact_id,
                   "--top", "3").stdout
    assert "pseudolabel ot s.ot.handmade: pseudo_captions 63" in out
    rows = query(store, """SELECT producer, count(*) AS n, bool_and(list_contains(embeddings_ids, $e)) AS from_emb,
                                  bool_and(abs(list_sum(weights) - 1) < 1e-5) AS sum1, max(len(matches)) AS k,
                                  count(DISTINCT split_id) AS splits, any_value(tower_fingerprint) AS tower
                           FROM pseudo_captions GROUP BY 1 ORDER BY 1""", {"e": emb.artifact_id}).to_pylist()
    assert rows == [{"producer": "ot", "n": 63, "from_emb": True, "sum1": True, "k": 3, "splits": 1, "tower": "onehot"},
                    {"producer": "soft_nn", "n": 63, "from_emb": True, "sum1": True, "k": 5, "splits": 1,
                     "tower": "onehot"}]
    sql = run_main("--store", store.root, "sql", "SELECT count(*) AS n FROM pseudo_captions WHERE confidence > 0.5",
                   "--format", "json").stdout
    n = query(store, "SELECT count(*) AS n FROM pseudo_captions WHERE confidence > 0.5").to_pylist()
    assert json.loads(sql) == n and n[0]["n"] > 0
    audit = run_main("--store", store.root, "pseudolabel", "audit", "s.ot.handmade").stdout
    assert "match_class_accuracy: 1.0" in audit and "accuracy against confidence" in audit
    cal = query(store, "SELECT sum(n) AS n FROM pseudo_calibration WHERE producer = 'ot'").to_pylist()
    assert cal == [{"n": 63}]
    again = audit_artifact(store, "s.ot.handmade")
    assert again["audit"]["pseudo_captions"]["match_class_accuracy"] == 1.0


# ---- bad input: a clear error naming the fix, nothing written -------------------------------------------
def _nothing_written(store, before):
    assert [a.artifact_id for a in store.list("pseudolabels")] == before


def _bad(store, args, *said, code=2):
    before = [a.artifact_id for a in store.list("pseudolabels")]
    res = run_main("--store", store.root, "pseudolabel", *args, check=False)
    assert res.returncode == code and "Traceback" not in res.stderr, res.stderr
    for text in said:
        assert text in res.stderr, res.stderr
    assert "fix:" in res.stderr
    _nothing_written(store, before)


def test_two_towers_mixed_nan_vectors_and_k_beyond_the_pool_are_refused(store):
    _bad(store, ["nn", "--split", "s", "--embeddings", "onehot", "--embeddings", "shuffled"],
         "2 different image towers", "pass embeddings of one model only")
    bad = class_vectors(store, "synth")
    bad[next(iter(bad))] = np.full(10, np.nan, dtype=np.float32)
    write_embeddings(store, "synth", bad, fingerprint="nan", name="nan", unit=True)
    _bad(store, ["ot", "--split", "s", "--embeddings", "nan"], "NaN or infinite vectors", "re-embed")
    _bad(store, ["nn", "--soft", "--split", "s", "--embeddings", "onehot", "--top", "34"],
         "--top 34 is larger than the pool", "only 33", "--top 33 or less")
    _bad(store, ["ot", "--split", "s", "--embeddings", "onehot", "--top", "0"], "--top must be a positive integer")
    _bad(store, ["nn", "--split", "nope", "--embeddings", "onehot"], "no split 'nope'", code=3)
    _bad(store, ["nn", "--split", "s"], "pass --model SPEC or --embeddings ID")


def test_images_without_vectors_are_refused(store):
    some = dict(list(class_vectors(store, "synth").items())[:50])
    write_embeddings(store, "synth", some, fingerprint="partial", name="partial")
    _bad(store, ["nn", "--split", "s", "--embeddings", "partial"], "have no vector", "--model SPEC")


def test_a_split_without_labeled_images_is_refused(tmp_path, store):
    from clipstore.ingest.pipeline import ingest
    from clipstore.ingest.splits import make_split
    from conftest import write_karpathy
    # caption-only train entries (images absent, kept): the public selection labels none of them
    write_karpathy(tmp_path / "raw", [{"filename": f"{i}.png", "captions": ["a field ."]} for i in range(6)])
    ingest(store, "karpathy", tmp_path / "raw" / "dataset.json", name="noimg", keep_missing=True, progress=False)
    make_split(store, "empty", corpora=["noimg"], labeled_ratio=0.5, seed=0, compat="sclip")
    _bad(store, ["nn", "--split", "empty", "--embeddings", "onehot"], "split 'empty' has no labeled images",
         "clipstore split")


def test_a_vocabulary_of_another_corpus_is_refused(tmp_path, store):
    from clipstore.ingest.pipeline import ingest
    from clipstore.mining.keywords import mine_keywords
    from conftest import write_karpathy
    from fixtures import write_image
    for i in range(4):
        write_image(tmp_path / "other" / "images" / f"{i}.png", seed=40 + i)
    write_karpathy(tmp_path / "other", [{"filename": f"{i}.png", "captions": [f"a red roof number {i} ."]}
                                        for i in range(4)])
    ingest(store, "karpathy", tmp_path / "other" / "dataset.json", name="other", progress=False, workers=1)
    vocab = mine_keywords(store, corpora=["other"], top=5, progress=False)
    nn = nearest_labels(store, split="s", embeddings=["onehot"])
    before = [a.artifact_id for a in store.list("pseudolabels")]
    with pytest.raises(InputError, match="matched against other, but 10 matched labeled samples") as err:
        keyword_labels(store, source=nn.artifact_id, vocab=vocab.name)
    assert "--match-corpus synth" in err.value.fix
    _nothing_written(store, before)
    _bad(store, ["keywords", "--from", nn.name, "--vocab", vocab.name], "never saw", "--match-corpus synth")


def test_the_evaluation_report_draws_accuracy_against_confidence(store):
    from types import SimpleNamespace

    from clipstore.eval import plots
    from clipstore.eval.report import _calibration_section
    run = SimpleNamespace(params={"tasks": [{"corpus": "synth"}]})
    files: dict = {}
    assert "no pseudo-label artifacts" in _calibration_section(store, run, files, plots)[0] and not files
    nearest_labels(store, split="s", embeddings=["shuffled"])
    md = _calibration_section(store, run, files, plots)
    assert "![pseudo-label calibration](pseudolabel_calibration.png)" in md
    assert files["pseudolabel_calibration.png"][:8] == b"\x89PNG\r\n\x1a\n"
    other = SimpleNamespace(params={"tasks": [{"corpus": "elsewhere"}]})
    assert "no pseudo-label artifacts for these corpora" in _calibration_section(store, other, {}, plots)[0]
