"""Concept pseudo-labels (`pseudolabel concepts`, table pseudo_concepts, producer zeroshot): vectors
that encode each image's own caption concepts reach the best precision a top-3 can have, the
same vectors shuffled fall to the chance level; rows equal the scaled cosines computed directly
from the caches; no-op and incremental rows; bad input refused with nothing written; the CLI."""

import shutil

import numpy as np
import pytest

from clipstore.features.embed import embed
from clipstore.features.items import CONCEPT, CONCEPT_PROMPT, IMAGE
from clipstore.features.pseudolabels.concepts import concepts
from clipstore.features.vectors import load_embeddings
from clipstore.ingest.pipeline import ingest
from clipstore.ingest.splits import make_split
from clipstore.mining.concepts import mine_concepts
from clipstore.mining.keywords import mine_keywords
from clipstore.warehouse.errors import InputError, NotFoundError
from clipstore.warehouse.sql import query
from clipstore.warehouse.store import Store
from conftest import run_main, write_karpathy
from fixtures import write_image
from test_pseudolabels_classes import corpus_samples, write_embeddings
from test_pseudolabels_classes import synth_root, tiny  # noqa: F401  (module fixtures, shared)


@pytest.fixture(scope="module")
def concept_root(synth_root, tmp_path_factory):  # noqa: F811
    """synth_root's store plus the concept vocabulary of split s's labeled captions."""
    root = tmp_path_factory.mktemp("plc")
    shutil.copytree(synth_root / "store", root / "store")
    mine_concepts(Store(root / "store"), split="s", role="labeled", min_images=2, progress=False)
    return root


@pytest.fixture
def store(concept_root, tmp_path):
    shutil.copytree(concept_root / "store", tmp_path / "store")
    return Store(tmp_path / "store")


VOCAB = "concepts.s.labeled"


def vocab_entries(store):
    vocab = store.current("vocab", VOCAB)
    rows = query(store, "SELECT concept_id, concept FROM concepts WHERE vocab_id = ? ORDER BY rank, concept_id",
                 [vocab.artifact_id]).to_pylist()
    return vocab, [r["concept_id"] for r in rows], [r["concept"] for r in rows]


def concept_embeddings(store, model="onehot"):
    """One-hot concept vectors (one dimension per concept, one spare)."""
    vocab, ids, names = vocab_entries(store)
    x = np.eye(len(ids), len(ids) + 1, dtype=np.float32)
    items = [{"item_id": i, "modality": CONCEPT, "view": 0, "corpus": None, "sample_id": None,
              "text": CONCEPT_PROMPT.format(n)} for i, n in zip(ids, names)]
    return write_embeddings(store, f"{VOCAB}.concept.{model}", items, x, fingerprint=f"{model}-text", model=model,
                            modality=CONCEPT, extra_params={"vocab": VOCAB, "corpus": None})


def image_embeddings(store, model="onehot", shuffle=None):
    """Each image: the multi-hot of its own caption concepts (plus noise on the spare dimension)."""
    vocab, ids, _ = vocab_entries(store)
    images, samples, _ = corpus_samples(store, "synth")
    truth = {}
    for r in query(store, "SELECT image_id, concept_id FROM image_concepts WHERE vocab_id = ?",
                   [vocab.artifact_id]).to_pylist():
        truth.setdefault(r["image_id"], set()).add(r["concept_id"])
    col = {c: j for j, c in enumerate(ids)}
    rng = np.random.default_rng(0)
    x = np.zeros((len(images), len(ids) + 1), dtype=np.float32)
    for i, image in enumerate(images):
        for c in truth.get(image, ()):
            x[i, col[c]] = 1 + 0.01 * rng.random()        # distinct logits: no ties among the true concepts
        x[i, -1] = 0.1
    if shuffle is not None:
        x = x[np.random.default_rng(shuffle).permutation(len(x))]
    items = [{"item_id": i, "modality": IMAGE, "view": 0, "corpus": "synth", "sample_id": s, "text": None}
             for i, s in zip(images, samples)]
    return write_embeddings(store, f"synth.image.{model}", items, x, fingerprint=f"{model}-image-synth", model=model,
                            corpus="synth"), truth


def test_concept_encoding_vectors_reach_the_best_top3_precision_and_shuffled_fall_to_chance(store):
    concept_embeddings(store)
    art_emb, truth = image_embeddings(store)
    art = concepts(store, split="s", vocab=VOCAB, embeddings=[art_emb.artifact_id], top=3)
    audit = art.stats["audit"]["pseudo_concepts"]
    rows = query(store, "SELECT image_id, concept_ids, scores, confidence, logits, producer, vocab_id, "
                        "embeddings_ids FROM pseudo_concepts WHERE artifact_id = ?", [art.artifact_id]).to_pylist()
    sizes = [len(truth[r["image_id"]]) for r in rows if truth.get(r["image_id"])]
    best = sum(min(s, 3) for s in sizes) / (3 * len(sizes))        # what a top-3 can reach at most
    assert audit["precision"] == pytest.approx(best, abs=1e-3) and audit["with_concept_truth"] == len(sizes)
    for r in rows:
        own = truth.get(r["image_id"], set())
        assert set(r["concept_ids"][:len(own)]) == set(list(own)[:3]) or len(own) > 3
        assert r["producer"] == "zeroshot" and r["vocab_id"] == store.current("vocab", VOCAB).artifact_id
        assert len(r["embeddings_ids"]) == 2 and r["scores"] == sorted(r["scores"], reverse=True)
        assert len(r["logits"]) == len(vocab_entries(store)[1])
    shuffled, _ = image_embeddings(store, model="shuffled", shuffle=3)
    concept_embeddings(store, model="shuffled")
    low = concepts(store, split="s", vocab=VOCAB, embeddings=[shuffled.artifact_id], top=3)
    low = low.stats["audit"]["pseudo_concepts"]
    assert low["precision"] < audit["precision"] / 2
    assert low["precision"] <= low["frequent_concepts_precision"] + 0.05   # no better than a prior guess


def test_bad_input_is_refused_before_anything_is_written(store, tmp_path):
    concept_embeddings(store)
    art_emb, _ = image_embeddings(store)
    before = len(store.list("pseudolabels"))
    with pytest.raises(InputError, match="larger than the pool") as e:
        concepts(store, split="s", vocab=VOCAB, embeddings=[art_emb.artifact_id], top=10_000)
    assert "--top" in e.value.fix
    other_model = concept_embeddings(store, model="other")
    with pytest.raises(InputError, match="different|model"):
        concepts(store, split="s", vocab=VOCAB, embeddings=[art_emb.artifact_id],
                 concept_embeddings=other_model.artifact_id)
    lone, _ = image_embeddings(store, model="lonely")                # no concept cache of that model
    with pytest.raises(NotFoundError, match="no concept embeddings"):
        concepts(store, split="s", vocab=VOCAB, embeddings=[lone.artifact_id])
    # a vocabulary mined from another corpus
    entries = []
    for i in range(8):
        write_image(tmp_path / "other" / "images" / f"{i}.png", seed=900 + i)
        entries.append({"filename": f"{i}.png", "split": "train",
                        "captions": ["a boat on the water" if i % 2 else "a harbor with a pier"]})
    write_karpathy(tmp_path / "other", entries)
    ingest(store, "karpathy", tmp_path / "other", name="other", workers=1, progress=False)
    foreign = mine_concepts(store, corpora=["other"], min_images=2, max_df=0.9, progress=False)
    with pytest.raises(InputError, match="none of which is in split") as e:
        concepts(store, split="s", vocab=foreign.name, embeddings=[art_emb.artifact_id])
    assert "mine concepts --split s" in e.value.fix
    keywords = mine_keywords(store, split="s", role="labeled", top=10, progress=False)
    with pytest.raises(InputError, match="holds no concepts"):
        concepts(store, split="s", vocab=keywords.name, embeddings=[art_emb.artifact_id])
    make_split(store, "other_split", corpora=["other"], labeled_ratio=1.0, seed=0)
    with pytest.raises(InputError, match="no unlabeled images"):
        concepts(store, split="other_split", vocab=foreign.name, embeddings=[art_emb.artifact_id])
    assert len(store.list("pseudolabels")) == before


@pytest.mark.slow
def test_rows_equal_the_scaled_cosines_of_the_caches_noop_and_incremental(store, tiny, tmp_path,  # noqa: F811
                                                                        synth_root):  # noqa: F811
    art = concepts(store, split="s", vocab=VOCAB, model=tiny, top=4, workers=0, progress=False)
    scale = float(tiny.model.logit_scale.exp())
    assert art.stats["logit_scale"] == pytest.approx(scale)
    imgs = load_embeddings(store, "synth.image.tiny-vit")
    vocab, ids, _ = vocab_entries(store)
    cons = load_embeddings(store, f"{VOCAB}.concept.tiny-vit")
    c_items, c_vecs = cons.select(modality=CONCEPT)
    crow = {c: i for i, c in enumerate(c_items.column("item_id").to_pylist())}
    cmat = np.asarray(c_vecs, dtype=np.float32)[[crow[c] for c in ids]]
    irow = {i: n for n, i in enumerate(imgs.ids)}
    rows = query(store, "SELECT image_id, concept_ids, logits FROM pseudo_concepts WHERE artifact_id = ?",
                 [art.artifact_id]).to_pylist()
    assert len(rows) == store.current("split", "s").counts["unlabeled"]
    for r in rows:
        expected = scale * (np.asarray(imgs.matrix()[irow[r["image_id"]]], dtype=np.float32) @ cmat.T)
        np.testing.assert_allclose(r["logits"], expected, rtol=1e-5, atol=1e-5)
        order = sorted(range(len(ids)), key=lambda j: (-np.float32(expected[j]), j))[:4]
        assert r["concept_ids"] == [ids[j] for j in order]
    again = concepts(store, split="s", vocab=VOCAB, model=tiny, top=4, workers=0, progress=False)
    assert again.noop and again.artifact_id == art.artifact_id
    # new unlabeled images (a pool corpus joins the split): only their rows are computed
    shutil.copytree(synth_root / "synth" / "classification", tmp_path / "pool")
    ingest(store, "imagefolder", tmp_path / "pool", name="pool", workers=1, progress=False)
    make_split(store, "s", corpora=["synth"], unlabeled_corpora=["pool"], labeled_ratio=0.3, seed=0)
    grown = concepts(store, split="s", vocab=VOCAB, model=tiny, top=4, workers=0, progress=False)
    assert grown.artifact_id == art.artifact_id and grown.stats["new"] == 40
    [pool] = embed(store, model=tiny, corpus="pool", workers=0, progress=False)
    assert pool.noop                                           # the run embedded what the pool lacked


@pytest.mark.slow
def test_cli_concepts_and_audit(store):
    root = str(store.root)
    out = run_main("--store", root, "-q", "pseudolabel", "concepts", "--split", "s", "--model", "tiny-vit",
                   "--vocab", VOCAB, "--top", "3", "--workers", "0")
    assert out.returncode == 0, out.stderr
    assert "pseudolabel concepts:" in out.stdout and "precision" in out.stdout
    art = out.stdout.split("-> ")[1].split()[0]
    audit = run_main("--store", root, "pseudolabel", "audit", art, "--format", "json")
    assert '"concept_precision"' in audit.stdout and '"frequent_concepts_precision"' in audit.stdout
    bad = run_main("--store", root, "pseudolabel", "concepts", "--split", "s", "--model", "tiny-vit",
                   "--vocab", "nope", check=False)
    assert bad.returncode == 3 and "no vocabulary" in bad.stderr
