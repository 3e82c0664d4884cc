"""Ingest audit on the real data: junk and duplicate captions (RSICD, UCM), unusual image sizes
(UC Merced), exact duplicate images within and across splits, corpora and split roles. Every
expected number is recomputed here from the raw files with plain Python."""

from __future__ import annotations

import json
import shutil
import sys
import unicodedata
from collections import Counter
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from PIL import Image

from clipstore.ingest.pipeline import ingest
from clipstore.ingest.splits import make_split
from clipstore.ingest.stats import corpus_stats
from clipstore.ingest.text import is_junk_caption, normalise_caption
from clipstore.warehouse.hashing import content_id
from clipstore.warehouse.sql import query
from clipstore.warehouse.store import Store
from clipstore.warehouse.views import REAL_WORD_PATTERN

AUDIT_VIEWS = {"audit_duplicate_images", "audit_split_leaks", "audit_duplicate_captions", "audit_junk_captions",
               "audit_image_sizes"}


def karpathy_images(path: Path) -> list[dict]:
    return json.loads(path.read_text())["images"]


def view_names(store: Store) -> set[str]:
    return set(query(store, "SELECT view_name FROM duckdb_views() WHERE NOT internal").column("view_name").to_pylist())


@pytest.fixture(scope="module")
def caption_store(tmp_path_factory, shared_data):
    """RSICD and UCM with every entry kept (caption-only where the image is absent)."""
    store = Store(tmp_path_factory.mktemp("captions") / "store")
    rsicd = ingest(store, "rsicd", shared_data / "rsicd" / "dataset_rsicd.reconstructed.json",
                   images=shared_data / "rsicd" / "RSICD_images", workers=1, progress=False, keep_missing=True)
    ucm = ingest(store, "ucm_captions", shared_data / "ucm_captions" / "dataset.json",
                 images=shared_data / "ucmerced_landuse",
                 image_map=shared_data / "ucmerced_landuse" / "ucm_captions_filename_map.tsv",
                 workers=1, progress=False, keep_missing=True)
    return store, {"rsicd": rsicd, "ucm_captions": ucm}


# ---- junk captions ---------------------------------------------------------------------------
def test_junk_captions_of_rsicd_are_listed_and_counted(caption_store, shared_data):
    store, artifacts = caption_store
    raw = karpathy_images(shared_data / "rsicd" / "dataset_rsicd.reconstructed.json")
    expected = {(im["filename"], j, s["raw"]) for im in raw for j, s in enumerate(im["sentences"])
                if is_junk_caption(s["raw"])}
    rows = query(store, "SELECT source_key, ordinal, raw, split FROM audit_junk_captions WHERE corpus = 'rsicd'")
    listed = {(r["source_key"], r["ordinal"], r["raw"]) for r in rows.to_pylist()}
    assert listed == expected  # the SQL rule and ingest/text.py agree on all 54,605 real captions
    assert Counter(r for _, _, r in listed) == {" .": 3, "1 .": 2}
    assert artifacts["rsicd"].stats["audit"]["junk_captions"] == 5  # counted at ingest, in the artifact
    assert query(store, "SELECT count(*) AS n FROM audit_junk_captions WHERE corpus = 'ucm_captions'"
                 ).column("n")[0].as_py() == 0


def test_sql_junk_rule_equals_the_python_rule_on_every_assigned_code_point():
    chars = [chr(cp) for cp in range(sys.maxunicode + 1)
             if not 0xD800 <= cp <= 0xDFFF and unicodedata.category(chr(cp)) != "Cn"]
    probes = [c + c for c in chars] + ["a1b", "ab", " .", "1 .", "é .", "x-y", "ⅫⅫ", "²³", "no_way", "日本"]
    con = duckdb.connect()
    con.register("probes", pa.table({"i": list(range(len(probes))), "s": probes}))
    sql_junk = {i for (i,) in con.execute("SELECT i FROM probes WHERE NOT regexp_matches(s, ?)",
                                          [REAL_WORD_PATTERN]).fetchall()}
    python_junk = {i for i, s in enumerate(probes) if is_junk_caption(s)}
    assert sql_junk == python_junk
    assert len(python_junk) > 100_000 and len(python_junk) < len(probes) - 100_000  # both kinds are probed


# ---- duplicate captions ----------------------------------------------------------------------
def test_duplicate_captions_agree_with_plain_python(caption_store, shared_data):
    store, artifacts = caption_store
    files = {"rsicd": shared_data / "rsicd" / "dataset_rsicd.reconstructed.json",
             "ucm_captions": shared_data / "ucm_captions" / "dataset.json"}
    everywhere: Counter = Counter()
    for corpus, path in files.items():
        images = karpathy_images(path)
        texts = Counter(normalise_caption(s["raw"]) for im in images for s in im["sentences"])
        everywhere.update(texts)
        identical = sum(1 for im in images if len(im["sentences"]) > 1
                        and len({normalise_caption(s["raw"]) for s in im["sentences"]}) == 1)
        audit = corpus_stats(store, corpus)["audit"]
        assert audit["distinct_normalised_captions"] == len(texts)
        assert audit["duplicate_captions"] == sum(n for n in texts.values() if n > 1)
        assert audit["samples_with_identical_captions"] == identical
        assert artifacts[corpus].stats["audit"] == audit
    ucm = corpus_stats(store, "ucm_captions")
    assert ucm["counts"]["captions"] == 10_500
    assert ucm["audit"]["distinct_normalised_captions"] < 2_100  # fewer texts than images: templates
    assert corpus_stats(store, "rsicd")["audit"]["samples_with_identical_captions"] == 4_853  # data README

    rows = query(store, "SELECT text, n_captions, n_samples FROM audit_duplicate_captions").to_pylist()
    assert {r["text"]: r["n_captions"] for r in rows} == {t: n for t, n in everywhere.items() if n > 1}
    assert all(1 <= r["n_samples"] <= r["n_captions"] for r in rows)


def test_corpus_stats_keep_their_keys_and_add_the_audit(caption_store):
    store, _ = caption_store
    stats = corpus_stats(store, "ucm_captions")
    assert {"counts", "rejects_by_reason", "splits", "formats", "audit"} <= set(stats)
    assert set(stats["audit"]) == {
        "duplicate_images", "duplicate_image_samples", "images_shared_with_other_corpora", "cross_split_duplicates",
        "duplicate_captions", "distinct_normalised_captions", "samples_with_identical_captions", "junk_captions",
        "unusual_size_images", "modal_size"}
    assert all(isinstance(v, int) for k, v in stats["audit"].items() if k != "modal_size")


# ---- image sizes -----------------------------------------------------------------------------
def test_unusual_uc_merced_sizes_are_listed(caption_store, shared_data):
    store, _ = caption_store
    root = shared_data / "ucmerced_landuse"
    present = [line.split("\t")[:2] for line in (root / "ucm_captions_filename_map.tsv").read_text().splitlines()[1:]
               if line.endswith("\t1")]
    sizes = {name: Image.open(root / path).size for name, path in present}
    modal = Counter(sizes.values()).most_common(1)[0][0]
    expected = {(name, w, h) for name, (w, h) in sizes.items() if (w, h) != modal}
    rows = query(store, "SELECT * FROM audit_image_sizes WHERE corpus = 'ucm_captions'").to_pylist()
    assert modal == (256, 256) and expected  # among the 210 here, a few are not 256x256
    assert {(r["source_key"], r["width"], r["height"]) for r in rows} == expected
    assert {(r["modal_width"], r["modal_height"], r["corpus_images"]) for r in rows} == {(256, 256, len(present))}
    audit = corpus_stats(store, "ucm_captions")["audit"]
    assert audit["unusual_size_images"] == len(expected) and audit["modal_size"] == "256x256"


# ---- exact duplicate images ------------------------------------------------------------------
def _write_corpus(root: Path, entries: list[tuple[str, str, Path | Image.Image]]) -> Path:
    """Karpathy JSON + images: (filename, split, real image to copy, or a PIL image to save)."""
    (root / "images").mkdir(parents=True)
    items = []
    for i, (filename, split, image) in enumerate(entries):
        if isinstance(image, Path):
            shutil.copyfile(image, root / "images" / filename)
        else:
            image.save(root / "images" / filename, quality=90)
        items.append({"filename": filename, "imgid": i, "split": split,
                      "sentences": [{"raw": f"picture {filename} .", "sentid": i}]})
    (root / "dataset.json").write_text(json.dumps({"images": items}))
    return root / "dataset.json"


@pytest.fixture(scope="module")
def duplicate_store(tmp_path_factory, shared_data):
    """Real RSICD JPEGs copied under new names: 00001.jpg as a train and a val image of corpus
    dup_a and as a train image of dup_b; 00003.jpg resized to 200x150 in dup_a."""
    rsicd = shared_data / "rsicd" / "RSICD_images"
    root = tmp_path_factory.mktemp("dups")
    store = Store(root / "store")
    assert not AUDIT_VIEWS & view_names(store)  # no data tables, no audit views
    resized = Image.open(rsicd / "00003.jpg").resize((200, 150))
    a = _write_corpus(root / "a", [("a1.jpg", "train", rsicd / "00001.jpg"), ("a2.jpg", "val", rsicd / "00001.jpg"),
                                   ("a3.jpg", "train", rsicd / "00002.jpg"), ("a4.jpg", "train", resized)])
    b = _write_corpus(root / "b", [("b1.jpg", "train", rsicd / "00001.jpg"), ("b2.jpg", "test", rsicd / "00004.jpg")])
    for name, path in (("dup_a", a), ("dup_b", b)):
        ingest(store, "karpathy", path, name=name, images=path.parent / "images", workers=1, progress=False)
    return store, content_id((rsicd / "00001.jpg").read_bytes())


def test_exact_duplicates_within_and_across_splits_and_corpora(duplicate_store):
    store, twin = duplicate_store
    rows = query(store, "SELECT * FROM audit_duplicate_images").to_pylist()
    assert {(r["corpus"], r["split"], r["source_key"]) for r in rows} == {
        ("dup_a", "train", "a1.jpg"), ("dup_a", "val", "a2.jpg"), ("dup_b", "train", "b1.jpg")}
    assert {(r["image_id"], r["n_samples"], r["n_corpora"], r["n_splits"]) for r in rows} == {(twin, 3, 2, 2)}

    leaks = query(store, "SELECT * FROM audit_split_leaks").to_pylist()
    assert len(leaks) == 1
    assert leaks[0] == {"image_id": twin, "n_samples": 3, "corpora": "dup_a, dup_b", "splits": "train, val",
                        "cross_corpus": True, "cross_split": True,
                        "samples": "dup_a/train/a1.jpg; dup_a/val/a2.jpg; dup_b/train/b1.jpg"}

    a, b = corpus_stats(store, "dup_a")["audit"], corpus_stats(store, "dup_b")["audit"]
    assert (a["duplicate_images"], a["duplicate_image_samples"], a["images_shared_with_other_corpora"],
            a["cross_split_duplicates"]) == (1, 2, 1, 1)
    assert (b["duplicate_images"], b["duplicate_image_samples"], b["images_shared_with_other_corpora"],
            b["cross_split_duplicates"]) == (0, 0, 1, 0)


def test_resized_copy_is_an_unusual_size(duplicate_store):
    store, _ = duplicate_store
    rows = query(store, "SELECT corpus, source_key, width, height, modal_width, modal_height "
                        "FROM audit_image_sizes").to_pylist()
    assert rows == [{"corpus": "dup_a", "source_key": "a4.jpg", "width": 200, "height": 150,
                     "modal_width": 224, "modal_height": 224}]


def test_split_manifests_are_audited_for_images_in_two_roles(duplicate_store):
    store, twin = duplicate_store
    assert AUDIT_VIEWS <= view_names(store) and "audit_role_leaks" not in view_names(store)
    art = make_split(store, "leaky", corpora=["dup_a"], labeled_ratio=1.0, seed=0)
    assert art.stats["images_in_several_roles"] == 1
    leaks = query(store, "SELECT * FROM audit_role_leaks").to_pylist()
    assert [(r["split"], r["image_id"], r["roles"], r["train_eval_leak"]) for r in leaks] == [
        ("leaky", twin, "labeled, val", True)]
    assert leaks[0]["entries"] == "labeled:dup_a/a1.jpg; val:dup_a/a2.jpg"
