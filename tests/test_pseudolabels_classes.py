"""Class pseudo-labels in the store: kNN votes (`pseudolabel classes`, producer knn) and ReCLIP label
propagation (`pseudolabel propagate`). Vectors that encode the class (one-hot class vectors written
as embeddings artifacts) reach near-perfect accuracy, the same vectors shuffled over the images
fall to chance; rows equal the numerics run directly on the stored graph / vectors; the store
contract (no-op, incremental rows, new version), lineage in SQL, bad input refused with nothing
written, and the CLI."""

import shutil

import numpy as np
import pytest

from clipstore.features.embed import embed
from clipstore.features.graph import load_knn_graph
from clipstore.features.items import CLASSNAME, IMAGE
from clipstore.features.models import ModelSpec, load_model
from clipstore.features.prompts import class_item_id, template_set
from clipstore.features.pseudolabels.audit import audit_artifact
from clipstore.features.pseudolabels.classes import classes
from clipstore.features.pseudolabels.propagate import label_propagation
from clipstore.features.pseudolabels.reclip import propagate
from clipstore.features.pseudolabels.vote import knn_vote
from clipstore.features.vectors import EMBEDDING_TABLES, commit_unit_vectors, commit_vectors, load_embeddings
from clipstore.ingest.pipeline import ingest
from clipstore.ingest.splits import make_split
from clipstore.ingest.synth import write_synthetic
from clipstore.warehouse.errors import InputError, NotFoundError
from clipstore.warehouse.sql import query
from clipstore.warehouse.store import Store
from conftest import run_main


@pytest.fixture(scope="module")
def tiny():
    return load_model(ModelSpec("tiny-vit"))


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    """A store with the synthetic corpus (200 captioned images with classes), its classification
    set synth_cls (40 images, 10 classes) and a 30 % labeled split `s` over the captioned corpus."""
    root = tmp_path_factory.mktemp("pl")
    write_synthetic(root / "synth", seed=0, n_images=200, size=32)
    store = Store(root / "store")
    ingest(store, "karpathy", root / "synth" / "captions", name="synth", workers=1, progress=False)
    ingest(store, "imagefolder", root / "synth" / "classification", name="synth_cls", workers=1, progress=False)
    make_split(store, "s", corpora=["synth"], labeled_ratio=0.3, seed=0)
    return root


@pytest.fixture(scope="module")
def tiny_root(synth_root, tmp_path_factory, tiny):
    """The same store plus tiny-vit's image and class caches (so the tests' runs embed nothing)."""
    root = tmp_path_factory.mktemp("pl_tiny")
    shutil.copytree(synth_root / "store", root / "store")
    store = Store(root / "store")
    embed(store, model=tiny, corpus=["synth", "synth_cls"], modality="image", workers=0, progress=False)
    embed(store, model=tiny, corpus="synth_cls", modality="classname", progress=False)
    return root


@pytest.fixture
def synth(synth_root, tmp_path):
    """A private copy of the module's store (tests that write do not see each other's artifacts)."""
    shutil.copytree(synth_root / "store", tmp_path / "store")
    return Store(tmp_path / "store")


@pytest.fixture
def synth_tiny(tiny_root, tmp_path):
    shutil.copytree(tiny_root / "store", tmp_path / "store")
    return Store(tmp_path / "store")


# ---- embeddings artifacts made of chosen vectors -----------------------------------------------------
def corpus_samples(store, corpus):
    rows = query(store, 'SELECT image_id, sample_id, "class" AS c FROM samples WHERE corpus = ? AND has_image '
                        'ORDER BY image_id', [corpus]).to_pylist()
    return [r["image_id"] for r in rows], [r["sample_id"] for r in rows], [r["c"] for r in rows]


def class_names(store, corpus):
    return [r["n"] for r in query(store, 'SELECT coalesce(name, "class") AS n FROM classes WHERE corpus = ? '
                                         'ORDER BY class_index', [corpus]).to_pylist()]


def write_embeddings(store, name, items, vectors, *, fingerprint, model="onehot", modality=IMAGE, corpus=None,
                     extra_params=None, unit=False):
    """An embeddings artifact holding exactly these vectors (as embed would key it)."""
    params = {"fingerprint": fingerprint, "tower": "image" if modality == IMAGE else "text", "modality": modality,
              "corpus": corpus, "vocab": None, "views": None, **(extra_params or {})}
    with store.writing():
        b = store.produce(kind="embeddings", name=name, stage="embed", version=1, params=params,
                          tables=EMBEDDING_TABLES, reuse=False)
        if unit:   # bypasses the NaN refusal of commit_vectors: a damaged cache
            commit_unit_vectors(b, 0, items, vectors.astype(np.float16), np.ones(len(items), np.float32),
                                model=model, fingerprint=fingerprint)
        else:
            commit_vectors(b, 0, items, vectors, model=model, fingerprint=fingerprint)
        return b.finish(counts={"vectors": len(items), "dim": vectors.shape[1]},
                        stats={"fingerprint": fingerprint, "model": model, "model_fingerprint": f"{model}-model"})


def class_vectors(labels, names, noise=0.05, seed=0, dims_extra=4):
    """One-hot class vectors plus a little noise (so no two images are identical)."""
    rng = np.random.default_rng(seed)
    index = {c: i for i, c in enumerate(names)}
    x = np.zeros((len(labels), len(names) + dims_extra + 1), dtype=np.float32)
    x[np.arange(len(labels)), [index[c] for c in labels]] = 1
    x[:, len(names):-1] = noise * rng.normal(size=(len(labels), dims_extra))
    return x


def image_embeddings(store, corpus, name, *, shuffle=None, model="onehot", nan=False):
    images, samples, labels = corpus_samples(store, corpus)
    names = class_names(store, corpus)
    x = class_vectors(labels, names)
    if shuffle is not None:
        x = x[np.random.default_rng(shuffle).permutation(len(x))]
    items = [{"item_id": i, "modality": IMAGE, "view": 0, "corpus": corpus, "sample_id": s, "text": None}
             for i, s in zip(images, samples)]
    if nan:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        x[3] = np.nan
    return write_embeddings(store, name, items, x, fingerprint=f"{model}-image-{corpus}", model=model,
                            corpus=corpus, unit=nan)


def text_class_embeddings(store, corpus, model="onehot", templates="default"):
    """Class vectors: the class's one-hot direction plus a strong direction every prompt shares."""
    names = class_names(store, corpus)
    tset = template_set(templates)
    x = class_vectors(names, names, noise=0.0)
    x[:, -1] = 2.0                                          # the shared prompt direction
    items = [{"item_id": class_item_id(n, tset), "modality": CLASSNAME, "view": 0, "corpus": corpus,
              "sample_id": None, "text": n} for n in names]
    return write_embeddings(store, f"{corpus}.classname.{model}", items, x, fingerprint=f"{model}-text",
                            model=model, modality=CLASSNAME, corpus=corpus,
                            extra_params={"templates": tset.recipe(), "per_template": False})


def artifact_count(store, kind="pseudolabels"):
    return len(store.list(kind))


# ---- kNN votes ----------------------------------------------------------------------------------------
def test_class_encoding_vectors_vote_near_perfectly_and_shuffled_ones_at_chance(synth):
    onehot = image_embeddings(synth, "synth", "synth.image.onehot")
    # k = 15: with 30 % labeled, an image misses a labeled neighbour with probability 0.7^15
    art = classes(synth, split="s", embeddings=[onehot.artifact_id], k=15)
    audit = art.stats["audit"]["pseudo_classes"]
    assert audit["accuracy_labeled"] >= 0.97 and audit["coverage"] >= 0.95
    shuffled = image_embeddings(synth, "synth", "synth.image.shuffled", shuffle=1, model="shuffled")
    bad = classes(synth, split="s", embeddings=[shuffled.artifact_id], k=15)
    low = bad.stats["audit"]["pseudo_classes"]
    assert low["accuracy_labeled"] < low["chance"] + 0.15 and low["chance"] < 0.2


@pytest.mark.slow
def test_rows_equal_the_vote_on_the_stored_graph_and_carry_lineage(synth_tiny, tiny):
    synth = synth_tiny
    art = classes(synth, split="s", model=tiny, k=5, workers=0, progress=False)
    graph = load_knn_graph(synth, art.stats["graph"])
    assert graph.k == 5 and set(graph.nodes.column("role").to_pylist()) == {"labeled", "unlabeled"}
    truth = dict(zip(*corpus_samples(synth, "synth")[1:]))
    roles = graph.nodes.column("role").to_pylist()
    names = sorted({truth[s] for s, r in zip(graph.nodes.column("sample_id").to_pylist(), roles) if r == "labeled"})
    node_class = np.asarray([names.index(truth[s]) if r == "labeled" else -1
                             for s, r in zip(graph.nodes.column("sample_id").to_pylist(), roles)])
    targets = np.flatnonzero(np.asarray(roles) == "unlabeled")
    expected = knn_vote(graph.neighbors, graph.sims, node_class, len(names), targets)
    rows = {r["image_id"]: r for r in query(synth, "SELECT * FROM pseudo_classes WHERE artifact_id = ?",
                                             [art.artifact_id]).to_pylist()}
    ids = graph.nodes.column("item_id").to_pylist()
    assert len(rows) == len(targets) == art.counts["pseudo_classes"]
    for t, label, conf, voters in zip(targets, expected.labels, expected.confidence, expected.voters):
        row = rows[ids[t]]
        assert row["label"] == (names[label] if label >= 0 else None)
        assert row["confidence"] == pytest.approx(float(conf), abs=1e-6) and row["voters"] == voters
        assert row["producer"] == "knn" and row["graph_id"] == graph.artifact.artifact_id
        assert row["split_id"] == synth.current("split", "s").artifact_id
        assert row["model_fingerprint"] == tiny.fingerprint and row["tower_fingerprint"] == tiny.image_fingerprint
        assert len(row["embeddings_ids"]) == 1
        if row["label"] is not None:
            assert row["classes"][0] == row["label"] and sum(row["probs"]) == pytest.approx(1, abs=1e-5)
    # same inputs: no work, the same artifact
    again = classes(synth, split="s", model=tiny, k=5, workers=0, progress=False)
    assert again.noop and again.artifact_id == art.artifact_id
    # calibration rows of the audit are a SQL table too
    cal = query(synth, "SELECT metric, sum(n) AS n FROM pseudo_calibration WHERE artifact_id = ? GROUP BY metric",
                [art.artifact_id]).to_pylist()
    assert cal == [{"metric": "class_accuracy", "n": art.stats["audit"]["pseudo_classes"]["labeled_rows"]}]


@pytest.mark.slow
def test_new_unlabeled_images_add_only_their_rows(synth_tiny, tmp_path, tiny, synth_root):
    # the unlabeled pool is a classification corpus that grows: first 5 classes, then all 10
    # (its images are synth_cls's: their vectors are copied from that cache, not recomputed)
    src = synth_root / "synth" / "classification"
    folders = sorted(p for p in src.iterdir() if p.is_dir())
    pool = tmp_path / "pool"
    for f in folders[:5]:
        shutil.copytree(f, pool / f.name)
    store = synth_tiny
    ingest(store, "imagefolder", pool, name="pool", workers=1, progress=False)
    make_split(store, "grow", corpora=["synth"], unlabeled_corpora=["pool"], labeled_ratio=0.5, seed=0)
    first = classes(store, split="grow", model=tiny, k=5, workers=0, progress=False)
    n_first = first.counts["pseudo_classes"]
    for f in folders[5:]:
        shutil.copytree(f, pool / f.name)
    ingest(store, "imagefolder", pool, name="pool", workers=1, progress=False)
    make_split(store, "grow", corpora=["synth"], unlabeled_corpora=["pool"], labeled_ratio=0.5, seed=0)
    second = classes(store, split="grow", model=tiny, k=5, workers=0, progress=False)
    assert second.artifact_id == first.artifact_id and not second.noop
    assert second.stats["new"] == second.counts["pseudo_classes"] - n_first > 0
    rows = query(store, "SELECT graph_id, count(*) AS n FROM pseudo_classes WHERE artifact_id = ? GROUP BY graph_id "
                        "ORDER BY n DESC", [second.artifact_id]).to_pylist()
    assert len(rows) == 2 and {r["n"] for r in rows} == {n_first, second.stats["new"]}   # each row names its graph


def test_bad_input_is_refused_before_anything_is_written(synth, tmp_path, tiny):
    onehot = image_embeddings(synth, "synth", "synth.image.onehot")
    before = artifact_count(synth)
    with pytest.raises(InputError, match="larger than the pool") as e:
        classes(synth, split="s", embeddings=[onehot.artifact_id], k=1000)
    assert "--k" in e.value.fix
    other = image_embeddings(synth, "synth", "synth.image.other", model="other")
    with pytest.raises(InputError, match="different image towers"):
        classes(synth, split="s", embeddings=[onehot.artifact_id, other.artifact_id], k=5)
    broken = image_embeddings(synth, "synth", "synth.image.nan", model="nan", nan=True)
    with pytest.raises(InputError, match="NaN"):
        classes(synth, split="s", embeddings=[broken.artifact_id], k=5)
    # labeled images without classes: a captioned corpus that has none
    from conftest import write_karpathy
    from fixtures import write_image
    entries = []
    for i in range(12):
        write_image(tmp_path / "plain" / "images" / f"{i}.png", seed=500 + i)
        entries.append({"filename": f"{i}.png", "split": "train", "captions": [f"picture number {i}"]})
    write_karpathy(tmp_path / "plain", entries)
    ingest(synth, "karpathy", tmp_path / "plain", name="plain", workers=1, progress=False)
    make_split(synth, "p", corpora=["plain"], labeled_ratio=0.5, seed=0)
    with pytest.raises(InputError, match="carries a class") as e:
        classes(synth, split="p", model=tiny, k=3, workers=0, progress=False)
    assert "propagate" in e.value.fix
    # caption-only train entries (images absent, kept): the public selection labels none of them
    write_karpathy(tmp_path / "noimg", [{"filename": f"{i}.png", "captions": ["a field ."]} for i in range(6)])
    ingest(synth, "karpathy", tmp_path / "noimg" / "dataset.json", name="noimg", keep_missing=True, progress=False)
    make_split(synth, "empty", corpora=["noimg"], labeled_ratio=0.5, seed=0, compat="sclip")
    with pytest.raises(InputError, match="has no labeled images"):
        classes(synth, split="empty", embeddings=[onehot.artifact_id], k=5)
    with pytest.raises(NotFoundError, match="no split"):
        classes(synth, split="nope", model=tiny)
    with pytest.raises(InputError, match="has no classes"):
        label_propagation(synth, corpus="plain", model=tiny)
    assert artifact_count(synth) == before and artifact_count(synth, "knn") == 0


# ---- label propagation ------------------------------------------------------------------------------
def test_propagation_of_class_encoding_vectors_is_near_perfect_and_shuffled_at_chance(synth):
    onehot = image_embeddings(synth, "synth_cls", "synth_cls.image.onehot")
    cls = text_class_embeddings(synth, "synth_cls")
    art = label_propagation(synth, corpus="synth_cls", embeddings=[onehot.artifact_id], k=5)
    audit = art.stats["audit"]["pseudo_classes"]
    assert audit["accuracy"] >= 0.97 and audit["rows"] == 40
    assert art.stats["classes"] == 10 and art.stats["solver"] == "batched"
    shuffled = image_embeddings(synth, "synth_cls", "synth_cls.image.shuffled", shuffle=2)
    bad = label_propagation(synth, corpus="synth_cls", embeddings=[shuffled.artifact_id],
                            class_embeddings=cls.artifact_id, k=5)
    low = bad.stats["audit"]["pseudo_classes"]
    assert low["accuracy"] <= 0.25 and low["chance"] <= 0.15


@pytest.mark.slow
def test_propagation_rows_equal_reclip_on_the_cached_vectors(synth_tiny, tiny):
    synth = synth_tiny
    art = label_propagation(synth, corpus="synth_cls", model=tiny, k=5, workers=0, progress=False)
    imgs = load_embeddings(synth, "synth_cls.image.tiny-vit")
    items, vecs = imgs.select(modality=IMAGE)
    texts = load_embeddings(synth, "synth_cls.classname.tiny-vit")
    tset = template_set("default")
    names = class_names(synth, "synth_cls")
    t_items, t_vecs = texts.select(modality=CLASSNAME)
    row = {i: n for n, i in enumerate(t_items.column("item_id").to_pylist())}
    t = np.asarray(t_vecs, dtype=np.float32)[[row[class_item_id(n, tset)] for n in names]]
    expected = propagate(np.asarray(vecs, dtype=np.float32), t, k=5, device="cpu")
    got = {r["image_id"]: r for r in query(synth, "SELECT * FROM pseudo_classes WHERE artifact_id = ?",
                                            [art.artifact_id]).to_pylist()}
    zero_shot = (np.asarray(vecs, dtype=np.float32) @ t.T).argmax(1)
    for image, label, conf, zs in zip(items.column("item_id").to_pylist(), expected.labels, expected.confidence,
                                      zero_shot):
        assert got[image]["label"] == names[label] and got[image]["zero_shot"] == names[zs]
        assert got[image]["confidence"] == pytest.approx(float(conf), abs=1e-6)
        assert got[image]["producer"] == "propagate" and got[image]["voters"] is None
        assert len(got[image]["embeddings_ids"]) == 2 and got[image]["split_id"] is None
    again = label_propagation(synth, corpus="synth_cls", model=tiny, k=5, workers=0, progress=False)
    assert again.noop and again.artifact_id == art.artifact_id
    other = label_propagation(synth, corpus="synth_cls", model=tiny, k=6, workers=0, progress=False)
    assert other.artifact_id != art.artifact_id


def test_propagation_refuses_bad_input(synth):
    onehot = image_embeddings(synth, "synth_cls", "synth_cls.image.onehot")
    before = artifact_count(synth)
    with pytest.raises(NotFoundError, match="no class embeddings"):
        label_propagation(synth, corpus="synth_cls", embeddings=[onehot.artifact_id])
    text_class_embeddings(synth, "synth_cls", model="other")      # class vectors of another model
    with pytest.raises(NotFoundError, match="no class embeddings"):
        label_propagation(synth, corpus="synth_cls", embeddings=[onehot.artifact_id])
    mixed = text_class_embeddings(synth, "synth_cls", model="third")
    with pytest.raises(InputError, match="different models"):
        label_propagation(synth, corpus="synth_cls", embeddings=[onehot.artifact_id],
                          class_embeddings=mixed.artifact_id)
    cls = text_class_embeddings(synth, "synth_cls")
    with pytest.raises(InputError, match="larger than the pool"):
        label_propagation(synth, corpus="synth_cls", embeddings=[onehot.artifact_id], k=100)
    broken = image_embeddings(synth, "synth_cls", "synth_cls.image.nan", nan=True)
    with pytest.raises(InputError, match="NaN"):
        label_propagation(synth, corpus="synth_cls", embeddings=[broken.artifact_id],
                          class_embeddings=cls.artifact_id)
    captions_vectors = image_embeddings(synth, "synth", "synth.image.onehot")
    with pytest.raises(InputError, match="have no vector"):
        label_propagation(synth, corpus="synth_cls", embeddings=[captions_vectors.artifact_id],
                          class_embeddings=cls.artifact_id)
    assert artifact_count(synth) == before


# ---- CLI ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_classes_propagate_and_audit(synth_tiny):
    synth = synth_tiny
    root = str(synth.root)
    out = run_main("--store", root, "-q", "pseudolabel", "classes", "--split", "s", "--model", "tiny-vit", "--k", "5",
                   "--workers", "0")
    assert out.returncode == 0, out.stderr
    assert "pseudolabel classes:" in out.stdout and "audit: pseudo_classes: accuracy" in out.stdout
    art = out.stdout.split("-> ")[1].split()[0]
    out = run_main("--store", root, "-q", "pseudolabel", "propagate", "--corpus", "synth_cls", "--model", "tiny-vit",
                   "--templates", "default", "--k", "5", "--workers", "0")
    assert out.returncode == 0, out.stderr
    assert "zero_shot_accuracy" in out.stdout
    audit = run_main("--store", root, "pseudolabel", "audit", art)
    assert audit.returncode == 0 and "accuracy against confidence" in audit.stdout
    report = audit_artifact(synth, art)
    assert report["producer"] == "knn" and report["calibration"][0]["metric"] == "class_accuracy"
    bad = run_main("--store", root, "pseudolabel", "classes", "--split", "s", "--model", "tiny-vit", "--k", "999",
                   check=False)
    assert bad.returncode == 2 and "larger than the pool" in bad.stderr and "fix:" in bad.stderr
