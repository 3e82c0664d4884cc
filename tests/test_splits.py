"""Split manifests: default seeded selection, RS-ALL, the shift setting, the S-CLIP compatibility
mode checked against torch itself, idempotence and errors. Real corpora where they have images;
small generated corpora where a test needs a bigger or stranger pool."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipstore.ingest.pipeline import ingest
from clipstore.ingest.splits import manifest_digest, make_split
from clipstore.warehouse.errors import InputError, NotFoundError
from clipstore.warehouse.sql import query
from clipstore.warehouse.store import Store

RS_ALL = ["rsicd", "ucm_captions", "sydney_captions"]


# ---- corpora ---------------------------------------------------------------------------------
def ingest_real(store: Store, shared: Path, corpus: str, keep_missing: bool = False):
    kw = dict(workers=1, progress=False, keep_missing=keep_missing)
    if corpus == "rsicd":
        return ingest(store, "rsicd", shared / "rsicd" / "dataset_rsicd.reconstructed.json",
                      images=shared / "rsicd" / "RSICD_images", **kw)
    if corpus == "ucm_captions":
        return ingest(store, "ucm_captions", shared / "ucm_captions" / "dataset.json",
                      images=shared / "ucmerced_landuse",
                      image_map=shared / "ucmerced_landuse" / "ucm_captions_filename_map.tsv", **kw)
    return ingest(store, "sydney_captions", shared / "sydney_captions", **kw)


def write_karpathy(root: Path, entries: list[dict], seed: int = 0) -> Path:
    """A Karpathy caption file with tiny noise PNGs. Entry keys: filename, split (may be None),
    captions, image (False = named in the JSON but absent on disk)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images = []
    for i, e in enumerate(entries):
        if e.get("image", True):
            Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(root / "images" / e["filename"])
        item = {"filename": e["filename"], "imgid": i,
                "sentences": [{"raw": c, "tokens": c.split(), "imgid": i, "sentid": 10 * i + j}
                              for j, c in enumerate(e.get("captions", []))]}
        if e.get("split") is not None:
            item["split"] = e["split"]
        images.append(item)
    path = root / "dataset.json"
    path.write_text(json.dumps({"images": images, "dataset": "synthetic"}))
    return path


def synthetic_entries(n_train: int, n_val: int = 0, n_test: int = 0, missing=(), captionless=(), prefix="s"):
    splits = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    return [{"filename": f"{prefix}{i:04d}.png", "split": split,
             "captions": [] if i in captionless else [f"scene {i} with {split} things ."],
             "image": i not in missing} for i, split in enumerate(splits)]


def ingest_synthetic(store: Store, root: Path, name: str, entries: list[dict], keep_missing: bool = False):
    path = write_karpathy(root, entries)
    return ingest(store, "karpathy", path, name=name, images=root / "images", workers=1, progress=False,
                  keep_missing=keep_missing)


def manifest(store: Store, split: str) -> list[dict]:
    return query(store, "SELECT * FROM splits WHERE split = ? ORDER BY role, position", [split]).to_pylist()


def keys(rows: list[dict], role: str) -> set[tuple[str, str]]:
    return {(r["corpus"], r["source_key"]) for r in rows if r["role"] == role}


@pytest.fixture(scope="module")
def rs_store(tmp_path_factory, shared_data) -> Store:
    """RSICD, UCM and Sydney as they are here: only the entries whose image is on disk are samples."""
    store = Store(tmp_path_factory.mktemp("rs") / "store")
    for corpus in RS_ALL:
        ingest_real(store, shared_data, corpus)
    return store


@pytest.fixture(scope="module")
def synth_store(tmp_path_factory) -> Store:
    """A 300-image train pool with val/test, 6 captionless and 10 missing train entries, plus a
    caption-free, split-free corpus standing in for RESISC45."""
    root = tmp_path_factory.mktemp("synth")
    store = Store(root / "store")
    ingest_synthetic(store, root / "capt", "capt", synthetic_entries(
        310, n_val=40, n_test=30, missing=set(range(300, 310)) | {345}, captionless={3, 50, 97, 150, 201, 299}))
    ingest_synthetic(store, root / "scenes", "scenes",
                     [{"filename": f"u{i:03d}.png", "split": None, "captions": []} for i in range(75)])
    return store


# ---- default selection -----------------------------------------------------------------------
def test_rs_all_default_split_labels_the_seeded_share_of_train_images(rs_store):
    art = make_split(rs_store, "rs-all", corpora=RS_ALL, labeled_ratio=0.1, seed=0)
    pool = query(rs_store, """SELECT corpus, source_key, source_index FROM samples
                              WHERE has_image AND split = 'train'""").to_pylist()
    assert len(pool) == 13 + 210 + 9  # the RSICD, UC Merced and Sydney images present here, all train
    rows = manifest(rs_store, "rs-all")
    assert art.counts == {"labeled": int(232 * 0.1), "unlabeled": 232 - int(232 * 0.1), "val": 0, "test": 0}
    assert keys(rows, "labeled") | keys(rows, "unlabeled") == {(p["corpus"], p["source_key"]) for p in pool}
    assert not keys(rows, "labeled") & keys(rows, "unlabeled")
    # the documented recipe: pool ordered by corpus as given, then source order; numpy permutation
    ordered = sorted(pool, key=lambda p: (RS_ALL.index(p["corpus"]), p["source_index"]))
    chosen = np.random.default_rng(0).permutation(len(ordered))[:int(232 * 0.1)]
    assert keys(rows, "labeled") == {(ordered[i]["corpus"], ordered[i]["source_key"]) for i in chosen}
    at = [(p["corpus"], p["source_key"]) for p in ordered]
    assert all((r["corpus"], r["source_key"]) == at[r["position"]] for r in rows)
    assert sum(c["labeled"] for c in art.stats["per_corpus"].values()) == 23
    assert set(art.stats["per_corpus"]) == set(RS_ALL)
    assert art.stats["digest"] == manifest_digest(rows)
    assert (art.stats["seed"], art.stats["labeled_ratio"], art.stats["unit"]) == (0, 0.1, "image")


def test_default_split_is_deterministic_and_seeded(synth_store):
    a = make_split(synth_store, "det-a", corpora=["capt"], labeled_ratio=0.2, seed=7)
    b = make_split(synth_store, "det-b", corpora=["capt"], labeled_ratio=0.2, seed=7)
    c = make_split(synth_store, "det-c", corpora=["capt"], labeled_ratio=0.2, seed=8)
    assert a.artifact_id != b.artifact_id and a.stats["digest"] == b.stats["digest"]
    assert keys(manifest(synth_store, "det-a"), "labeled") == keys(manifest(synth_store, "det-b"), "labeled")
    assert keys(manifest(synth_store, "det-a"), "labeled") != keys(manifest(synth_store, "det-c"), "labeled")
    assert c.stats["digest"] != a.stats["digest"]


def test_captionless_images_are_never_labeled_and_val_test_come_from_the_source(synth_store):
    art = make_split(synth_store, "full", corpora=["capt"], labeled_ratio=1.0, seed=0)
    rows = manifest(synth_store, "full")
    captionless = {("capt", f"s{i:04d}.png") for i in (3, 50, 97, 150, 201, 299)}
    assert art.counts == {"labeled": 294, "unlabeled": 6, "val": 39, "test": 30}  # s0345 (val) is missing
    assert keys(rows, "unlabeled") == captionless
    selection = art.stats["selection"]
    assert (selection["train_images"], selection["eligible"], selection["captionless"]) == (300, 294, 6)
    assert keys(rows, "val") == {("capt", f"s{i:04d}.png") for i in range(310, 350) if i != 345}
    assert keys(rows, "test") == {("capt", f"s{i:04d}.png") for i in range(350, 380)}


def test_shift_setting_takes_unlabeled_images_from_other_corpora(synth_store):
    art = make_split(synth_store, "shift", corpora=["capt"], unlabeled_corpora=["scenes"], labeled_ratio=0.1, seed=3)
    rows = manifest(synth_store, "shift")
    assert art.counts == {"labeled": 29, "unlabeled": 75, "val": 39, "test": 30}
    assert {r["corpus"] for r in rows if r["role"] == "unlabeled"} == {"scenes"}
    assert {r["corpus"] for r in rows if r["role"] != "unlabeled"} == {"capt"}
    # the 265 captioned and the 6 captionless train images not labeled are in no role
    assert art.stats["left_out"] == 300 - 29
    assert art.stats["unlabeled_corpora"] == ["scenes"]


# ---- S-CLIP compatibility --------------------------------------------------------------------
def _train_entries_in_source_order(shared: Path) -> list[tuple[str, str]]:
    files = {"rsicd": shared / "rsicd" / "dataset_rsicd.reconstructed.json",
             "ucm_captions": shared / "ucm_captions" / "dataset.json",
             "sydney_captions": shared / "sydney_captions" / "dataset.json"}
    return [(corpus, im["filename"]) for corpus in RS_ALL
            for im in json.loads(files[corpus].read_text())["images"] if im["split"] == "train"]


def test_sclip_compat_equals_torch_randperm_over_source_order(rs_store, shared_data):
    art = make_split(rs_store, "rs-all-sclip", corpora=RS_ALL, labeled_ratio=0.1, seed=1, compat="sclip")
    entries = _train_entries_in_source_order(shared_data)
    assert len(entries) == 10_911  # RS-ALL train: RSICD 8,734 + UCM 1,680 + Sydney 497
    perm = torch.randperm(len(entries), generator=torch.Generator().manual_seed(1)).tolist()
    size = int(len(entries) * 0.1)
    present = {(r["corpus"], r["source_key"]) for r in query(rs_store, "SELECT corpus, source_key FROM samples "
                                                                       "WHERE has_image").to_pylist()}
    expected_labeled = {entries[i] for i in perm[:size]} & present
    expected_unlabeled = {entries[i] for i in perm[size:]} & present
    rows = manifest(rs_store, "rs-all-sclip")
    assert expected_labeled and keys(rows, "labeled") == expected_labeled
    assert keys(rows, "unlabeled") == expected_unlabeled
    assert all(entries[r["position"]] == (r["corpus"], r["source_key"]) for r in rows)
    sel = art.stats["selection"]
    assert sel["positions"] == 10_911 and sel["selected_labeled"] == size and sel["exact"] is True
    assert sel["unavailable"] == {"labeled": size - len(expected_labeled),
                                  "not_labeled": len(entries) - size - len(expected_unlabeled)}


def test_sclip_compat_does_not_depend_on_how_missing_images_were_kept(tmp_path):
    missing = {1, 5, 8, 40, 77, 78, 79, 119}
    entries = synthetic_entries(120, n_val=10, missing=missing)
    digests, labeled = [], []
    for keep_missing in (False, True):
        store = Store(tmp_path / f"store-{keep_missing}")
        ingest_synthetic(store, tmp_path / f"raw-{keep_missing}", "c", entries, keep_missing=keep_missing)
        art = make_split(store, "compat", corpora=["c"], labeled_ratio=0.25, seed=2, compat="sclip")
        digests.append(art.stats["digest"])
        labeled.append(keys(manifest(store, "compat"), "labeled"))
    perm = torch.randperm(120, generator=torch.Generator().manual_seed(2)).tolist()
    assert labeled[0] == labeled[1] == {("c", f"s{i:04d}.png") for i in perm[:30] if i not in missing}
    assert digests[0] == digests[1]


# ---- lifecycle -------------------------------------------------------------------------------
def test_split_is_idempotent_and_follows_new_corpus_data(tmp_path):
    store = Store(tmp_path / "store")
    corpus = ingest_synthetic(store, tmp_path / "raw", "grow", synthetic_entries(40, n_val=5))
    first = make_split(store, "s", corpora=["grow"], labeled_ratio=0.5, seed=0)
    parts = store.parts(first.artifact_id)
    again = make_split(store, "s", corpora=["grow"], labeled_ratio=0.5, seed=0)
    assert again.artifact_id == first.artifact_id and store.parts(again.artifact_id) == parts
    statuses = query(store, "SELECT status FROM runs WHERE artifact_id = ? ORDER BY started_at",
                     [first.artifact_id]).column("status").to_pylist()
    assert statuses == ["done", "noop"]

    grown = ingest_synthetic(store, tmp_path / "raw", "grow", synthetic_entries(60, n_val=5))
    assert grown.artifact_id == corpus.artifact_id  # same recipe, new parts
    after = make_split(store, "s", corpora=["grow"], labeled_ratio=0.5, seed=0)
    assert after.artifact_id != first.artifact_id
    assert after.counts["labeled"] + after.counts["unlabeled"] == 60
    assert len(manifest(store, "s")) == 65  # the view shows the current split only


def test_split_errors_say_what_to_do(synth_store):
    with pytest.raises(NotFoundError) as err:
        make_split(synth_store, "x", corpora=["capt", "nope"], labeled_ratio=0.1, seed=0)
    assert "'nope'" in str(err.value) and "capt, scenes" in str(err.value)
    for ratio in (0, -0.1, 1.5, math.nan):
        with pytest.raises(InputError, match="outside"):
            make_split(synth_store, "x", corpora=["capt"], labeled_ratio=ratio, seed=0)
    with pytest.raises(InputError, match="selects no labeled image"):
        make_split(synth_store, "x", corpora=["capt"], labeled_ratio=0.001, seed=0)
    with pytest.raises(InputError, match="no train entries"):
        make_split(synth_store, "x", corpora=["scenes"], labeled_ratio=0.1, seed=0)
    with pytest.raises(InputError, match="more than once"):
        make_split(synth_store, "x", corpora=["capt"], unlabeled_corpora=["capt"], labeled_ratio=0.1, seed=0)
    with pytest.raises(InputError, match="compatibility mode"):
        make_split(synth_store, "x", corpora=["capt"], labeled_ratio=0.1, seed=0, compat="semiclip")
    assert not [a for a in synth_store.list("split") if a.name == "x"]  # errors come before any write


def test_cli_split_prints_counts_and_fails_cleanly(synth_store, cli):
    out = cli("--store", synth_store.root, "split", "cli", "--corpus", "capt", "--labeled-ratio", "0.5",
              "--seed", "0").stdout
    assert out.startswith("split cli: labeled 147, unlabeled 153, val 39, test 30 -> split-cli-")
    bad = cli("--store", synth_store.root, "split", "cli", "--corpus", "nope", "--labeled-ratio", "0.5",
              "--seed", "0", check=False)
    assert bad.returncode == NotFoundError.exit_code and "no corpus 'nope'" in bad.stderr
    assert "Traceback" not in bad.stderr


# ---- growing a split -------------------------------------------------------------------------
def test_extend_keeps_every_role_and_places_only_the_new_images(tmp_path):
    store = Store(tmp_path / "store")
    first = synthetic_entries(100, n_val=10, n_test=10)
    ingest_synthetic(store, tmp_path / "grow", "grow", first)
    v1 = make_split(store, "g", corpora=["grow"], labeled_ratio=0.1, seed=3, extend=True)   # none yet: a plain split
    assert v1.params == make_split(store, "plain", corpora=["grow"], labeled_ratio=0.1, seed=3).params
    before = manifest(store, "g")

    # 50 new train images, 5 val, 5 test arrive (the old ones unchanged)
    grown = first + synthetic_entries(50, n_val=5, n_test=5, prefix="n")
    ingest_synthetic(store, tmp_path / "grow", "grow", grown)
    v2 = make_split(store, "g", corpora=["grow"], labeled_ratio=0.1, seed=3, extend=True)
    after = manifest(store, "g")
    assert v2.artifact_id != v1.artifact_id and v2.stats["extends"] == v1.artifact_id
    assert (v1.artifact_id, "input") in store.lineage(v2.artifact_id)
    old = {(r["role"], r["sample_id"]) for r in before}
    assert old <= {(r["role"], r["sample_id"]) for r in after}            # every old role kept
    new = [r for r in after if r["source_key"].startswith("n")]
    assert sum(r["role"] == "labeled" for r in new) == int(50 * 0.1)    # their own share, drawn among them
    assert {r["role"] for r in new} == {"labeled", "unlabeled", "val", "test"}
    assert len(new) == 60 and len(after) == len(before) + 60
    assert v2.stats["added"] == {"labeled": 5, "unlabeled": 45, "val": 5, "test": 5} and v2.stats["dropped"] == 0
    assert v2.counts == {role: sum(r["role"] == role for r in after) for role in ("labeled", "unlabeled", "val", "test")}
    positions = [r["position"] for r in after if r["role"] == "unlabeled"]
    assert len(set(positions)) == len(positions)

    # nothing new: a no-op; other settings: refused; a fresh (non-extending) split re-draws everything
    again = make_split(store, "g", corpora=["grow"], labeled_ratio=0.1, seed=3, extend=True)
    assert again.artifact_id == v2.artifact_id and again.noop
    with pytest.raises(InputError, match="keeps the settings"):
        make_split(store, "g", corpora=["grow"], labeled_ratio=0.2, seed=3, extend=True)
    fresh = make_split(store, "g", corpora=["grow"], labeled_ratio=0.1, seed=3)
    assert fresh.artifact_id not in (v1.artifact_id, v2.artifact_id) and "extends" not in fresh.params
