"""`clipstore synth`: deterministic, truthful captions, learnable classes, and ingestible output."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipstore.ingest import synth
from clipstore.warehouse.errors import InputError

SEED, N_IMAGES = 3, 800


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "out"
    summary = synth.write_synthetic(root, seed=SEED, n_images=N_IMAGES)
    spec = json.loads((root / "synth.json").read_text())
    entries = json.loads((root / "captions" / "dataset.json").read_text())["images"]
    return root, summary, spec, entries


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path):
    synth.write_synthetic(tmp_path / "a", seed=5, n_images=40)
    synth.write_synthetic(tmp_path / "b", seed=5, n_images=40)
    synth.write_synthetic(tmp_path / "c", seed=6, n_images=40)
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    assert tree_digest(tmp_path / "a") != tree_digest(tmp_path / "c")
    a_png = (tmp_path / "a" / "captions" / "images" / "0.png").read_bytes()
    assert a_png != (tmp_path / "c" / "captions" / "images" / "0.png").read_bytes()


def test_rewriting_replaces_a_previous_output_and_spares_other_folders(tmp_path):
    synth.write_synthetic(tmp_path / "out", seed=1, n_images=40)
    synth.write_synthetic(tmp_path / "out", seed=1, n_images=20)
    assert len(list((tmp_path / "out" / "captions" / "images").iterdir())) == 20  # no stale images
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(InputError, match="not a synth output"):
        synth.write_synthetic(tmp_path / "mine", seed=1, n_images=20)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    assert not list(tmp_path.glob(".*tmp*"))


def test_is_current_tells_an_output_of_these_arguments_and_this_format(corpus, tmp_path):
    root = corpus[0]
    assert synth.is_current(root, seed=SEED, n_images=N_IMAGES)
    assert not synth.is_current(root, seed=SEED + 1, n_images=N_IMAGES)
    assert not synth.is_current(tmp_path / "nothing", seed=SEED, n_images=N_IMAGES)
    old = json.loads((root / "synth.json").read_text())
    (tmp_path / "synth.json").write_text(json.dumps({**old, "format_version": 1}))
    assert not synth.is_current(tmp_path, seed=SEED, n_images=N_IMAGES)   # written by an older clipstore


def test_layout_is_karpathy_json_like_rsicd(corpus):
    root, summary, spec, entries = corpus
    assert len(entries) == N_IMAGES and summary["captions"]["captions"] == 5 * N_IMAGES
    sentids = [s["sentid"] for e in entries for s in e["sentences"]]
    assert sorted(sentids) == list(range(5 * N_IMAGES))
    for e in entries:
        assert (root / "captions" / "images" / e["filename"]).is_file()
        assert e["sentids"] == [s["sentid"] for s in e["sentences"]]
        for s in e["sentences"]:
            assert s["raw"].endswith(" .") and s["raw"] == s["raw"].lower() and s["imgid"] == e["imgid"]
            assert s["tokens"] == s["raw"][:-2].split()
    splits = {k: sum(e["split"] == k for e in entries) for k in ("train", "val", "test")}
    assert splits == summary["captions"]["splits"] == {"train": 640, "val": 80, "test": 80}
    assert sorted(p.name for p in (root / "classification").iterdir()) == sorted(spec["classes"])
    assert sum(summary["classification"]["classes"].values()) == spec["n_classification"] == 160
    assert 8 <= len(spec["classes"]) <= 10 and spec["seed"] == SEED


def test_any_image_regenerates_alone(corpus):
    root, _, spec, entries = corpus
    facts_file = [json.loads(line) for line in (root / "facts.jsonl").read_text().splitlines()]
    for i in (0, 1, 377, N_IMAGES - 1):
        facts, png, captions = synth.generate(SEED, spec["streams"]["captions"], i, spec["size"])
        assert png == (root / "captions" / "images" / entries[i]["filename"]).read_bytes()
        assert captions == [s["raw"] for s in entries[i]["sentences"]]
        assert facts_file[i]["class"] == facts.scene
        assert [tuple(g) for g in facts_file[i]["groups"]] == facts.groups()
    facts, png, _ = synth.generate(SEED, spec["streams"]["classification"], 7, spec["size"])
    assert png == (root / "classification" / facts.scene / "7.png").read_bytes()


def mentioned_facts(raw: str, spec: dict) -> tuple[set[str], list[tuple[int, str, str]]]:
    """Scene classes and (count, colour, shape) groups a caption claims, read with the spec only."""
    classes = {c for c, v in spec["classes"].items()
               if any(re.search(rf"\b{re.escape(s)}\b", raw) for s in v["synonyms"])}
    numbers = {w: int(n) for n, words in spec["count_words"].items() for w in words} | {"an": 1}
    plural_of = spec["shapes"]
    singular_of = {p: s for s, p in plural_of.items()}
    tokens = raw.split()
    groups = []
    for i, word in enumerate(tokens):
        if word in plural_of or word in singular_of:
            count, colour = numbers[tokens[i - 2]], tokens[i - 1]
            assert colour in spec["colours"], raw
            assert (count == 1) == (word in plural_of), f"number agreement: {raw}"
            groups.append((count, colour, singular_of.get(word, word)))
    assert sum(t in spec["colours"] for t in tokens) == len(groups), f"a colour outside an object phrase: {raw}"
    return classes, groups


def test_captions_state_only_true_facts(corpus):
    _, _, spec, entries = corpus
    partial = 0
    for e in entries:
        facts, _, _ = synth.generate(SEED, spec["streams"]["captions"], e["imgid"], spec["size"])
        truth = facts.groups()
        for k, s in enumerate(e["sentences"]):
            classes, groups = mentioned_facts(s["raw"], spec)
            assert classes <= {facts.scene}, s["raw"]
            assert set(groups) <= set(truth), (s["raw"], truth)
            if k == 0:  # the first caption is complete: it is the one shards carry as `txt`
                assert classes == {facts.scene} and sorted(groups) == sorted(truth), s["raw"]
            partial += not classes or len(groups) < len(truth)
    assert partial > N_IMAGES  # like real captions, many mention only some of the facts


def test_captions_are_varied(corpus):
    _, _, _, entries = corpus
    raws = [s["raw"] for e in entries for s in e["sentences"]]
    assert all(len({s["raw"] for s in e["sentences"]}) == 5 for e in entries)
    assert len(set(raws)) > 0.7 * len(raws)


def test_objects_are_drawn_where_and_in_the_colour_the_facts_say(corpus):
    root, _, spec, entries = corpus
    palette = {name: np.asarray(rgb, float) for name, rgb in spec["colours"].items()}
    checked = 0
    for e in entries[:200]:
        facts, _, _ = synth.generate(SEED, spec["streams"]["captions"], e["imgid"], spec["size"])
        pixels = np.asarray(Image.open(root / "captions" / "images" / e["filename"]).convert("RGB"), float)
        for t in facts.things:
            x, y = int(t.x), int(t.y)
            centre = pixels[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3).mean(0)
            nearest = min(palette, key=lambda c: np.abs(palette[c] - centre).sum())
            assert nearest == t.colour, (e["filename"], t, centre)
            checked += 1
    assert checked > 300


def colour_histograms(paths: list[Path], bins: int = 4) -> np.ndarray:
    out = []
    for p in paths:
        q = np.asarray(Image.open(p).convert("RGB")).astype(np.int64) * bins // 256
        h = np.bincount(((q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]).ravel(), minlength=bins ** 3)
        out.append(h / h.sum())
    return np.stack(out)


def nearest_centroid_accuracy(x: np.ndarray, y: np.ndarray, train: np.ndarray) -> float:
    centroids = np.stack([x[train & (y == k)].mean(0) for k in np.unique(y)])
    predicted = ((x[~train, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    return float((predicted == y[~train]).mean())


def test_scene_class_is_learnable_from_colour_histograms(corpus):
    root, _, spec, entries = corpus
    classes = list(spec["classes"])
    x = colour_histograms([root / "captions" / "images" / e["filename"] for e in entries])
    y = np.array([classes.index(json.loads(line)["class"]) for line in (root / "facts.jsonl").read_text().splitlines()])
    train = np.array([e["split"] == "train" for e in entries])
    accuracy = nearest_centroid_accuracy(x, y, train)
    assert accuracy > 0.9, accuracy  # measured 1.0 (seed 3); chance is 0.1
    shuffled = np.random.default_rng(0).permutation(y)
    assert nearest_centroid_accuracy(x, shuffled, train) < 0.3  # the bar above means something


def test_scene_class_can_be_read_from_captions(corpus):
    root, _, spec, entries = corpus
    for cls, v in spec["classes"].items():  # no synonym hides inside another class's wording
        others = [b for c, w in spec["classes"].items() if c != cls for b in w["synonyms"]]
        assert not [(a, b) for a in v["synonyms"] for b in others if re.search(rf"\b{re.escape(a)}\b", b)]
    truth = [json.loads(line)["class"] for line in (root / "facts.jsonl").read_text().splitlines()]
    for e, cls in zip(entries, truth):
        votes = [c for s in e["sentences"] for c in mentioned_facts(s["raw"], spec)[0]]
        assert votes and set(votes) == {cls}, e["sentences"]


def test_ingest_round_trip_as_karpathy(corpus, store):
    from clipstore.ingest.pipeline import ingest
    from clipstore.warehouse.sql import query
    root, summary, _, _ = corpus
    ingest(store, "karpathy", root / "captions", name="synth", workers=1, progress=False)
    rows = query(store, "SELECT split, count(*) AS n FROM samples WHERE corpus = 'synth' GROUP BY split").to_pylist()
    assert {r["split"]: r["n"] for r in rows} == summary["captions"]["splits"]
    n = query(store, "SELECT count(*) AS n, count(DISTINCT image_id) AS images FROM captions "
                     "WHERE corpus = 'synth'").to_pylist()[0]
    assert n == {"n": 5 * N_IMAGES, "images": N_IMAGES}
    assert query(store, "SELECT count(*) AS n FROM rejects WHERE corpus = 'synth'").to_pylist()[0]["n"] == 0
    # each entry's "class" is its scene: the caption corpus is labelled like the classification set
    rows = query(store, "SELECT class, count(*) AS n FROM samples WHERE corpus = 'synth' GROUP BY class").to_pylist()
    assert {r["class"]: r["n"] for r in rows} == summary["captions"]["classes"]
    names = query(store, "SELECT class FROM classes WHERE corpus = 'synth' ORDER BY class_index").column("class")
    assert names.to_pylist() == sorted(summary["captions"]["classes"])


def test_a_karpathy_class_that_is_not_a_name_is_rejected(corpus, store, tmp_path):
    from clipstore.ingest.pipeline import ingest
    from clipstore.warehouse.sql import query
    root, _, _, entries = corpus
    doc = {"images": [dict(entries[0], **{"class": 3}), dict(entries[1], **{"class": " "}), entries[2]]}
    (tmp_path / "dataset.json").write_text(json.dumps(doc))
    ingest(store, "karpathy", tmp_path / "dataset.json", images=root / "captions" / "images", name="bad",
           workers=1, progress=False)
    rejects = query(store, "SELECT source_key, reason FROM rejects WHERE corpus = 'bad' ORDER BY source_key")
    assert [r["source_key"] for r in rejects.to_pylist()] == [entries[0]["filename"], entries[1]["filename"]]
    assert all("'class' that is not a non-empty string" in r["reason"] for r in rejects.to_pylist())
    kept = query(store, "SELECT source_key, class FROM samples WHERE corpus = 'bad'").to_pylist()
    assert kept == [{"source_key": entries[2]["filename"], "class": entries[2]["class"]}]


def test_ingest_round_trip_as_imagefolder(corpus, store):
    from clipstore.ingest.pipeline import ingest
    from clipstore.warehouse.sql import query
    root, summary, spec, _ = corpus
    ingest(store, "imagefolder", root / "classification", name="synth_cls", workers=1, progress=False)
    rows = query(store, "SELECT class, count(*) AS n FROM samples WHERE corpus = 'synth_cls' "
                        "GROUP BY class").to_pylist()
    assert {r["class"]: r["n"] for r in rows} == summary["classification"]["classes"]
    names = query(store, "SELECT class FROM classes WHERE corpus = 'synth_cls'").column("class").to_pylist()
    assert sorted(names) == sorted(spec["classes"])


def test_cli_writes_the_corpus_and_prints_json(tmp_path, cli):
    out = json.loads(cli("synth", tmp_path / "s", "--seed", "1", "--images", "50").stdout)
    assert out["captions"]["images"] == 50 and out["seed"] == 1 and out["seconds"] >= 0
    assert len(list((tmp_path / "s" / "captions" / "images").glob("*.png"))) == 50
    assert Image.open(tmp_path / "s" / "captions" / "images" / "0.png").size == (64, 64)
    bad = cli("synth", tmp_path / "t", "--images", "3", check=False)
    assert bad.returncode == 2 and "too few" in bad.stderr and "Traceback" not in bad.stderr
