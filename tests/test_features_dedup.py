"""Near-duplicate audit and `neighbors` on real UC Merced images.

Two corpora are ingested from real TIFFs; corpus ucm_a holds a brightness-shifted JPEG
re-encoding of one of its training images in its val split, corpus ucm_b a half-size copy of
another ucm_a training image. The embedding is a model-free image feature (the mean-centred,
L2-normalised 16x16 grey thumbnail), computed here from the raw files: honest and deterministic,
and it places each altered copy near its original (cosine > 0.98) and every other pair far apart
(< 0.6)."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from conftest import write_karpathy
from clipstore.features.dedup import audit_near_duplicates
from clipstore.features.graph import build_knn_graph
from clipstore.features.neighbors import neighbors, render_neighbors
from clipstore.features.vectors import EMBEDDING_TABLES, commit_vectors, load_embeddings
from clipstore.ingest.pipeline import ingest
from clipstore.ingest.splits import make_split
from clipstore.warehouse.errors import InputError, NotFoundError
from clipstore.warehouse.parquet import read_parquet
from clipstore.warehouse.sql import query
from clipstore.warehouse.store import Store

UCM = "ucmerced_landuse/Images"
CORPUS_A = {  # filename -> (source class folder, split, alteration)
    "agri.tif": ("agricultural", "train", None), "plane.tif": ("airplane", "train", None),
    "beach.tif": ("beach", "train", None), "forest.tif": ("forest", "train", None),
    "harbor.tif": ("harbor", "train", None), "river.tif": ("river", "val", None),
    "freeway.tif": ("freeway", "test", None), "plane_copy.jpg": ("airplane", "val", "brighter"),
}
CORPUS_B = {"beach_small.png": ("beach", "train", "half"), "tennis.tif": ("tenniscourt", "val", None)}
FINGERPRINT = "thumb16-grey-centred"


def thumbnail_feature(path) -> np.ndarray:
    grey = np.asarray(Image.open(path).convert("L").resize((16, 16), Image.BILINEAR), dtype=np.float32).ravel()
    return grey - grey.mean()


def write_corpus(shared, root, files: dict) -> None:
    (root / "images").mkdir(parents=True)
    entries = []
    for name, (cls, split, alteration) in files.items():
        src = shared / UCM / cls / f"{cls}00.tif"
        if alteration is None:
            shutil.copyfile(src, root / "images" / name)
        elif alteration == "brighter":
            buf = io.BytesIO()
            ImageEnhance.Brightness(Image.open(src).convert("RGB")).enhance(1.15).save(buf, "JPEG", quality=85)
            (root / "images" / name).write_bytes(buf.getvalue())
        else:
            Image.open(src).convert("RGB").resize((128, 128), Image.LANCZOS).save(root / "images" / name)
        entries.append({"filename": name, "split": split,
                        "captions": [f"an aerial photo of {cls} .", f"{cls} seen from above in {name} ."]})
    write_karpathy(root, entries)


def commit_embeddings(store, name, modality, rows: list[dict], vectors: np.ndarray):
    with store.writing():
        builder = store.produce(kind="embeddings", name=name, stage="embed", version=1, tables=EMBEDDING_TABLES,
                                params={"fingerprint": FINGERPRINT, "model": "thumb16", "modality": modality,
                                        "corpus": ["ucm_a", "ucm_b"], "views": 1}, reuse=False)
        commit_vectors(builder, 0, rows, vectors)
        return builder.finish({"vectors": len(rows)})


@pytest.fixture(scope="module")
def leaky(tmp_path_factory, shared_data):
    """Both corpora ingested, split `leaky` over them, image and caption embeddings committed."""
    root = tmp_path_factory.mktemp("dedup")
    store = Store(root / "store")
    paths = {}
    for corpus, files in (("ucm_a", CORPUS_A), ("ucm_b", CORPUS_B)):
        write_corpus(shared_data, root / corpus, files)
        ingest(store, "karpathy", root / corpus / "dataset.json", name=corpus, images=root / corpus / "images",
               workers=1, progress=False)
        paths.update({(corpus, name): root / corpus / "images" / name for name in files})
    make_split(store, "leaky", corpora=["ucm_a", "ucm_b"], labeled_ratio=1.0, seed=0)

    samples = query(store, "SELECT corpus, sample_id, image_id, source_key FROM samples ORDER BY corpus, source_key")
    images = [{"item_id": s["image_id"], "modality": "image", "view": 0, "corpus": s["corpus"],
               "sample_id": s["sample_id"], "text": None} for s in samples.to_pylist()]
    features = {s["image_id"]: thumbnail_feature(paths[(s["corpus"], s["source_key"])]) for s in samples.to_pylist()}
    image_emb = commit_embeddings(store, "thumbs.image", "image", images,
                                  np.stack([features[i["item_id"]] for i in images]))
    # captions sit near their own image, with seeded noise: a stand-in for a text tower
    captions = query(store, "SELECT corpus, caption_id, sample_id, image_id, raw FROM captions ORDER BY caption_id")
    rng = np.random.default_rng(0)
    unit = {i: f / np.linalg.norm(f) for i, f in features.items()}
    cap_vectors = np.stack([unit[c["image_id"]] + 0.01 * rng.standard_normal(256) for c in captions.to_pylist()])
    cap_rows = [{"item_id": c["caption_id"], "modality": "caption", "view": 0, "corpus": c["corpus"],
                 "sample_id": c["sample_id"], "text": c["raw"]} for c in captions.to_pylist()]
    commit_embeddings(store, "thumbs.caption", "caption", cap_rows, cap_vectors)
    by_key = {(s["corpus"], s["source_key"]): s for s in samples.to_pylist()}
    return store, image_emb, by_key


def test_audit_reports_exactly_the_altered_copies_and_flags_the_leak(leaky):
    store, emb, sample = leaky
    art = audit_near_duplicates(store, emb.artifact_id)           # threshold 0.95, exact graph, k 20
    assert art.kind == "audit" and art.params["threshold"] == 0.95
    assert art.stats["exact"] is True and art.stats["saturated_nodes"] == 0
    assert art.counts == {"pairs": 2} and art.stats["cross_corpus_pairs"] == 1

    pairs = query(store, "SELECT * FROM near_duplicates ORDER BY sim DESC").to_pylist()
    found = {frozenset([(p["a_corpus"], p["a_sample_id"]), (p["b_corpus"], p["b_sample_id"])]) for p in pairs}
    plane, plane_copy = sample[("ucm_a", "plane.tif")], sample[("ucm_a", "plane_copy.jpg")]
    beach, beach_small = sample[("ucm_a", "beach.tif")], sample[("ucm_b", "beach_small.png")]
    assert found == {frozenset([("ucm_a", plane["sample_id"]), ("ucm_a", plane_copy["sample_id"])]),
                     frozenset([("ucm_a", beach["sample_id"]), ("ucm_b", beach_small["sample_id"])])}
    assert all(p["sim"] >= 0.95 and p["a_item_id"] < p["b_item_id"] for p in pairs)
    assert plane["image_id"] != plane_copy["image_id"]  # different bytes: the exact-duplicate audit misses it
    assert query(store, "SELECT count(*) AS n FROM audit_role_leaks").column("n")[0].as_py() == 0

    audit = query(store, "SELECT * FROM audit_near_duplicates").to_pylist()
    assert [(r["split"], r["train_eval_leak"], r["cross_role"]) for r in audit] == [
        ("leaky", True, True), ("leaky", False, False)]
    leak = audit[0]
    assert {leak["a_source_key"], leak["b_source_key"]} == {"plane.tif", "plane_copy.jpg"}
    assert {leak["a_role"], leak["b_role"]} == {"labeled", "val"} and leak["audit_id"] == art.artifact_id
    assert {audit[1]["a_corpus"], audit[1]["b_corpus"]} == {"ucm_a", "ucm_b"}


def test_threshold_is_recorded_and_decides_the_pairs(leaky):
    store, emb, _ = leaky
    graph = build_knn_graph(store, emb.artifact_id, 20)
    strict = audit_near_duplicates(store, graph.artifact_id, threshold=0.995)  # from the graph directly
    loose = audit_near_duplicates(store, emb.artifact_id, threshold=0.3)
    assert strict.inputs == loose.inputs == [graph.artifact_id]
    # the resized copy (cosine 0.9999) stays, the brightened JPEG (0.994) does not
    assert (strict.params["threshold"], strict.counts["pairs"], strict.stats["cross_corpus_pairs"]) == (0.995, 1, 1)
    table = read_parquet(store.table_paths(loose, "near_duplicates"))
    sims = table.column("sim").to_pylist()
    assert sims == sorted(sims, reverse=True)
    # every pair at or above 0.3, computed directly from the stored vectors
    vectors = load_embeddings(store, emb.artifact_id)
    ids, unit = vectors.ids, vectors.matrix().astype(np.float32)
    cos = unit @ unit.T
    expected = {frozenset([ids[i], ids[j]]) for i in range(len(ids)) for j in range(i + 1, len(ids))
                if cos[i, j] >= 0.3}
    assert len(expected) > 2
    listed = zip(table.column("a_item_id").to_pylist(), table.column("b_item_id").to_pylist())
    assert {frozenset(p) for p in listed} == expected
    assert audit_near_duplicates(store, graph.artifact_id, threshold=0.995).artifact_id == strict.artifact_id
    for bad in (1.5, float("nan"), "high"):
        with pytest.raises(InputError, match="not a cosine similarity"):
            audit_near_duplicates(store, emb.artifact_id, threshold=bad)
    with pytest.raises(InputError, match="is a split artifact"):
        audit_near_duplicates(store, "leaky")


def test_neighbors_of_a_sample_are_its_copy_and_its_captions(leaky):
    store, _, sample = leaky
    plane, plane_copy = sample[("ucm_a", "plane.tif")], sample[("ucm_a", "plane_copy.jpg")]
    result = neighbors(store, plane["sample_id"], k=3)
    assert (result["fingerprint"], result["corpus"], result["split"]) == (FINGERPRINT, "ucm_a", "train")
    first = result["images"][0]
    assert (first["sample_id"], first["corpus"]) == (plane_copy["sample_id"], "ucm_a") and first["similarity"] > 0.98
    assert len(result["images"]) == 3 and plane["sample_id"] not in [r["sample_id"] for r in result["images"]]
    similarities = [r["similarity"] for r in result["images"]]
    assert similarities == sorted(similarities, reverse=True)
    texts = [c["text"] for c in result["captions"]]
    assert len(texts) == 3 and all("airplane" in t for t in texts)   # its own and its copy's captions
    assert sum(c["own"] for c in result["captions"]) >= 1
    report = render_neighbors(result)
    assert f"ucm_a/plane_copy.jpg  class -  sample {plane_copy['sample_id']}" in report
    assert "* airplane seen from above in plane.tif ." in report


def test_neighbors_errors_say_what_to_run(leaky):
    store, _, sample = leaky
    with pytest.raises(NotFoundError, match="no sample 'nope'") as err:
        neighbors(store, "nope")
    assert "SELECT sample_id" in err.value.fix
    with pytest.raises(NotFoundError, match="no image embeddings with model 'clip-vit'") as err:
        neighbors(store, sample[("ucm_b", "tennis.tif")]["sample_id"], model="clip-vit")
    assert err.value.fix == "embed its images: `clipstore embed --model clip-vit --corpus ucm_b`"
    with pytest.raises(InputError, match="k must be a positive integer"):
        neighbors(store, sample[("ucm_b", "tennis.tif")]["sample_id"], k=0)
