"""Class pseudo-labels on the real UC Merced images (2,100 JPEGs, 21 classes): ReCLIP propagation
over UCM-CLS gives exactly the labels of the dense public-style implementation on the same cached
vectors, and kNN votes over a 10 % labeled UCM_captions split audit against the images' classes.
tiny-vit is at random init here (no pretrained weights reach these machines), so the figures are
what such a model gives — recorded, not claimed to beat chance for propagation; see
docs/pseudolabels.md for the measured values."""

import numpy as np
import pytest

from clipstore.features.embed import embed
from clipstore.features.items import CLASSNAME, IMAGE
from clipstore.features.models import ModelSpec, load_model
from clipstore.features.prompts import class_item_id, template_set
from clipstore.features.pseudolabels.classes import classes
from clipstore.features.pseudolabels.propagate import label_propagation
from clipstore.features.vectors import load_embeddings
from clipstore.ingest.pipeline import ingest
from clipstore.ingest.splits import make_split
from clipstore.warehouse.sql import query
from clipstore.warehouse.store import Store
from test_pseudolabels_reclip import dense_reference

FULL = "ucmerced_landuse_full"


@pytest.fixture(scope="module")
def ucm(shared_data, tmp_path_factory):
    """UCM-CLS (imagefolder) and UCM_captions over the same 2,100 JPEGs (classes from the image
    map), a 10 % labeled split, tiny-vit's image cache (each image embedded once) and class cache."""
    store = Store(tmp_path_factory.mktemp("ucm") / "store")
    ingest(store, "imagefolder", shared_data / FULL / "Images", name="ucm_cls", workers=2, progress=False)
    ingest(store, "ucm_captions", shared_data / "ucm_captions", images=shared_data / FULL / "Images",
           image_map=shared_data / FULL / "ucm_captions_filename_map.tsv", workers=2, progress=False)
    make_split(store, "u10", corpora=["ucm_captions"], labeled_ratio=0.1, seed=0)
    tiny = load_model(ModelSpec("tiny-vit"))
    embed(store, model=tiny, corpus=["ucm_cls", "ucm_captions"], modality="image", workers=2, progress=False)
    embed(store, model=tiny, corpus="ucm_cls", modality=CLASSNAME, progress=False)
    return store, tiny


def test_propagation_on_real_images_equals_the_dense_reference(ucm):
    store, tiny = ucm
    art = label_propagation(store, corpus="ucm_cls", model=tiny, workers=0, progress=False)
    n_images = query(store, "SELECT count(DISTINCT image_id) AS n FROM images WHERE corpus = 'ucm_cls'"
                     ).to_pylist()[0]["n"]
    assert art.counts["pseudo_classes"] == n_images and art.stats["classes"] == 21
    images = load_embeddings(store, "ucm_cls.image.tiny-vit")
    items, vecs = images.select(modality=IMAGE)
    texts = load_embeddings(store, "ucm_cls.classname.tiny-vit")
    t_items, t_vecs = texts.select(modality=CLASSNAME)
    names = [r["n"] for r in query(store, "SELECT coalesce(name, \"class\") AS n FROM classes WHERE corpus = "
                                          "'ucm_cls' ORDER BY class_index").to_pylist()]
    row = {i: n for n, i in enumerate(t_items.column("item_id").to_pylist())}
    t = np.asarray(t_vecs, dtype=np.float32)[[row[class_item_id(n, template_set("default"))] for n in names]]
    expected = dense_reference(np.asarray(vecs, dtype=np.float32), t).argmax(1)
    got = {r["image_id"]: r["label"] for r in query(store, "SELECT image_id, label FROM pseudo_classes WHERE "
                                                           "artifact_id = ?", [art.artifact_id]).to_pylist()}
    assert [got[i] for i in items.column("item_id").to_pylist()] == [names[c] for c in expected]
    audit = art.stats["audit"]["pseudo_classes"]
    assert audit["with_class_truth"] == n_images and audit["zero_shot_accuracy"] is not None
    print(f"\nUCM-CLS tiny-vit (random init): propagation accuracy {audit['accuracy']}, zero-shot "
          f"{audit['zero_shot_accuracy']}, chance {audit['chance']}")


def test_knn_votes_on_a_real_split(ucm):
    store, tiny = ucm
    art = classes(store, split="u10", model=tiny, k=20, workers=0, progress=False)
    split = store.current("split", "u10")
    assert art.counts["pseudo_classes"] == split.counts["unlabeled"] - sum(
        art.stats.get("excluded", {}).values())
    audit = art.stats["audit"]["pseudo_classes"]
    assert audit["with_class_truth"] == art.counts["pseudo_classes"] and audit["classes"] == 21
    assert 0 < audit["coverage"] <= 1
    print(f"\nUCM u10 tiny-vit (random init): kNN vote accuracy {audit['accuracy']} (of labeled rows "
          f"{audit['accuracy_labeled']}, coverage {audit['coverage']}), chance {audit['chance']}")
