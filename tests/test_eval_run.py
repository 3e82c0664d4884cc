"""Evaluation runs on the synthetic corpus and on real UC Merced images: metrics rows equal a
plain recomputation from the cache, the same recipe is a no-op without any model pass, class
names come normalised from `mine classnames` (or raw), suites skip what is missing, bad input
gets clear errors, compare and report work on real runs."""

import shutil
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image

from clipstore.eval.compare import compare
from clipstore.eval.metrics import retrieval
from clipstore.eval.report import write_report
from clipstore.eval.run import RETRIEVAL, ZEROSHOT, Task, evaluate
from clipstore.eval.suites import resolve
from clipstore.features.models import ModelSpec, load_model
from clipstore.features.prompts import template_set
from clipstore.features.vectors import load_embeddings
from clipstore.ingest.pipeline import ingest
from clipstore.ingest.synth import write_synthetic
from clipstore.warehouse.errors import InputError, NotFoundError
from clipstore.warehouse.sql import query
from clipstore.warehouse.store import Store
from conftest import write_karpathy

UCM_CLASSES = ("baseballdiamond", "denseresidential", "mobilehomepark")


@pytest.fixture(scope="module")
def tiny():
    return load_model(ModelSpec("tiny-vit"))


@pytest.fixture(scope="module")
def synth_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    write_synthetic(root / "synth", seed=0, n_images=60, size=32)
    store = Store(root / "store")
    ingest(store, "karpathy", root / "synth" / "captions", name="synth", workers=1, progress=False)
    ingest(store, "imagefolder", root / "synth" / "classification", name="synth_cls", workers=1, progress=False)
    return store


@contextmanager
def forward_counter(model):
    seen = {"images": 0, "texts": 0}
    hooks = [model.model.visual.register_forward_hook(lambda m, a, o: seen.__setitem__("images", seen["images"] + len(a[0]))),
             model.model.token_embedding.register_forward_hook(
                 lambda m, a, o: seen.__setitem__("texts", seen["texts"] + len(a[0])))]
    try:
        yield seen
    finally:
        for h in hooks:
            h.remove()


def metric(store, run, corpus, protocol, name):
    rows = query(store, "SELECT value FROM metrics WHERE run = ? AND corpus = ? AND protocol = ? AND metric = ? "
                        "AND class IS NULL", [run, corpus, protocol, name]).to_pylist()
    assert len(rows) == 1
    return rows[0]["value"]


@pytest.mark.slow
def test_synth_suite_metrics_equal_a_recomputation_from_the_cache(synth_store, tiny):
    out = evaluate(synth_store, tiny, resolve(synth_store, "synth").tasks, label="synth", keep_going=True)
    run = out.artifact.artifact_id
    assert out.skipped == [] and not out.artifact.noop
    cols = query(synth_store, "SELECT * FROM metrics WHERE run = ? LIMIT 1", [run]).column_names
    for c in ("run", "fingerprint", "checkpoint", "corpus", "split", "task", "protocol", "metric", "value"):
        assert c in cols
    assert query(synth_store, "SELECT DISTINCT fingerprint FROM metrics WHERE run = ?", [run]).to_pylist() == \
        [{"fingerprint": tiny.fingerprint}]

    # zero-shot: image vectors and class vectors straight from the cache, labels from SQL
    imgs = load_embeddings(synth_store, "synth_cls.image.tiny-vit")
    items, vecs = imgs.select(modality="image")
    row = {i: n for n, i in enumerate(items.column("item_id").to_pylist())}
    cls_items, cls_vecs = load_embeddings(synth_store, "synth_cls.classname.tiny-vit.aerial").select(modality="classname")
    names = cls_items.column("text").to_pylist()
    samples = query(synth_store, "SELECT image_id, class FROM samples WHERE corpus = 'synth_cls'").to_pylist()
    scores = np.stack([vecs[row[s["image_id"]]] for s in samples]).astype(np.float32) @ cls_vecs.astype(np.float32).T
    top1 = np.mean([names[int(np.argmax(sc))] == s["class"] for sc, s in zip(scores, samples)]) * 100
    assert metric(synth_store, run, "synth_cls", "aerial", "top1") == pytest.approx(top1)
    per_class = query(synth_store, "SELECT class, value FROM metrics WHERE run = ? AND metric = 'class_acc'", [run])
    assert sorted(per_class.column("class").to_pylist()) == sorted(names)
    n_conf = query(synth_store, "SELECT sum(count) AS n FROM confusion WHERE run = ?", [run]).to_pylist()[0]["n"]
    assert n_conf == len(samples)

    # retrieval on val: all captions of the val images
    val = query(synth_store, "SELECT s.image_id, c.caption_id FROM samples s JOIN captions c USING (corpus, sample_id) "
                             "WHERE s.corpus = 'synth' AND s.split = 'val' ORDER BY s.source_index, c.ordinal").to_pylist()
    image_ids = list(dict.fromkeys(r["image_id"] for r in val))
    im_items, im_vecs = load_embeddings(synth_store, "synth.image.tiny-vit").select(modality="image")
    cap_items, cap_vecs = load_embeddings(synth_store, "synth.caption.tiny-vit").select(modality="caption")
    im_row = {i: n for n, i in enumerate(im_items.column("item_id").to_pylist())}
    cap_row = {i: n for n, i in enumerate(cap_items.column("item_id").to_pylist())}
    ref = retrieval(np.stack([im_vecs[im_row[i]] for i in image_ids]),
                    np.stack([cap_vecs[cap_row[r["caption_id"]]] for r in val]),
                    np.array([image_ids.index(r["image_id"]) for r in val])).metrics()
    for m in ("i2t_R@1", "i2t_R@5", "t2i_R@10", "mR", "t2i_median_rank"):
        assert metric(synth_store, run, "synth", "all", m) == pytest.approx(ref[m])
    assert metric(synth_store, run, "synth", "all", "captions") == len(val)
    assert metric(synth_store, run, "synth", "one-caption", "captions") == len(image_ids)


@pytest.mark.slow
def test_same_recipe_is_a_no_op_without_any_model_pass(synth_store, tiny):
    tasks = resolve(synth_store, "synth").tasks
    first = evaluate(synth_store, tiny, tasks, label="synth", keep_going=True)
    with forward_counter(tiny) as seen:
        again = evaluate(synth_store, tiny, tasks, label="synth", keep_going=True)
    assert again.artifact.noop and again.run == first.run
    assert seen == {"images": 0, "texts": 0}
    other_seed = evaluate(synth_store, tiny, [Task("synth", RETRIEVAL, protocol="one-caption", seed=7)])
    assert other_seed.run != first.run
    assert query(synth_store, "SELECT DISTINCT seed FROM metrics WHERE run = ?", [other_seed.run]).to_pylist() == \
        [{"seed": 7}]
    # each recipe has its own default name, so every run stays visible in SQL
    assert query(synth_store, "SELECT count(*) AS n FROM metrics WHERE run = ?", [first.run]).to_pylist()[0]["n"] > 0


@pytest.mark.slow
def test_compare_and_report(synth_store, tiny):
    a = evaluate(synth_store, tiny, resolve(synth_store, "synth").tasks, name="eval.synth.tiny-vit", keep_going=True)
    b = evaluate(synth_store, ModelSpec("tiny-rn"), resolve(synth_store, "synth").tasks, name="eval.synth.tiny-rn",
                 keep_going=True)
    table = compare(synth_store, [a.run, b.run]).to_pylist()
    top1 = [r for r in table if r["corpus"] == "synth_cls" and r["metric"] == "top1"][0]
    va, vb = metric(synth_store, a.run, "synth_cls", "aerial", "top1"), metric(synth_store, b.run, "synth_cls", "aerial", "top1")
    assert top1["eval.synth.tiny-vit"] == round(va, 2) and top1["delta eval.synth.tiny-rn"] == round(vb - va, 2)
    assert {r["protocol"] for r in table if r["corpus"] == "synth"} == {"all", "one-caption"}
    with pytest.raises(InputError, match="two or more"):
        compare(synth_store, [a.run])

    report = write_report(synth_store, a.run)
    text = report.path.read_text()
    assert report.path.parent == a.artifact.path / "report"
    assert "## Zero-shot classification" in text and "## Retrieval" in text and "| synth | val | one-caption | 0 |" in text
    names = {p.name for p in report.plots}
    assert {"recall_at_k.png", "synth_cls_all_aerial_corpus_classes.png",
            "synth_cls_all_aerial_corpus_confusion.png"} <= names
    for p in report.plots:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.width > 400 and im.height > 200
        assert f"]({p.name})" in text


@pytest.mark.slow
def test_suite_skips_and_lists_what_is_missing(synth_store, tiny, tmp_path):
    suite = tmp_path / "mine.toml"
    suite.write_text('name = "mixed"\n'
                     '[[task]]\ncorpus = "synth_cls"\ntask = "zeroshot"\ntemplates = "reclip_rs"\n'
                     '[[task]]\ncorpus = "synth_cls"\ntask = "retrieval"\nprotocol = "all"\n'
                     '[[task]]\ncorpus = "not_ingested"\ntask = "zeroshot"\n')
    resolved = resolve(synth_store, str(suite))
    assert resolved.name == "mixed" and [t.corpus for t, _ in resolved.missing] == ["not_ingested"]
    out = evaluate(synth_store, tiny, resolved.tasks, keep_going=True)
    assert len(out.skipped) == 1 and "synth_cls" in out.skipped[0][0] and "no split 'val'" in out.skipped[0][1]
    assert query(synth_store, "SELECT DISTINCT templates FROM metrics WHERE run = ?", [out.run]).to_pylist() == \
        [{"templates": "reclip_rs"}]
    rs = resolve(synth_store, "rs")
    assert not rs.tasks and {t.corpus for t, _ in rs.missing} >= {"ucm_cls", "aid", "rsicd", "sydney_captions"}
    assert "clipstore ingest imagefolder" in dict((t.corpus, how) for t, how in rs.missing)["ucm_cls"]
    bad = tmp_path / "bad.toml"
    bad.write_text('[[task]]\ncorpus = "x"\ntask = "zeroshot"\ncolour = "red"\n')
    with pytest.raises(InputError, match="unknown keys"):
        resolve(synth_store, str(bad))


def test_bad_input_errors(synth_store, tiny, tmp_path, shared_data):
    with pytest.raises(NotFoundError, match="no corpus 'nope'"):
        evaluate(synth_store, tiny, [Task("nope", ZEROSHOT)])
    with pytest.raises(InputError, match="has no split 'test2'.*") as exc:
        evaluate(synth_store, tiny, [Task("synth", RETRIEVAL, protocol="all", split="test2")])
    assert "train (" in exc.value.fix and "val (" in exc.value.fix      # says which splits there are
    with pytest.raises(InputError, match="unknown retrieval protocol"):
        Task("synth", RETRIEVAL, protocol="five")

    store = Store(tmp_path / "store")
    root = tmp_path / "caps"
    (root / "images").mkdir(parents=True)
    shutil.copyfile(sorted((shared_data / "ucmerced_landuse" / "Images" / "beach").glob("*.tif"))[0],
                    root / "images" / "1.tif")
    write_karpathy(root, [{"filename": "1.tif", "split": "val", "captions": ["a beach ."]},
                          {"filename": "2.tif", "split": "test", "captions": ["a missing image ."]}])
    ingest(store, "karpathy", root, name="caps", workers=1, keep_missing=True, progress=False)
    with pytest.raises(InputError, match="has no classes"):
        evaluate(store, tiny, [Task("caps", ZEROSHOT)])
    with pytest.raises(InputError, match="none has its image on disk.*cannot be computed"):
        evaluate(store, tiny, [Task("caps", RETRIEVAL, protocol="all", split="test")])


def real_ucm_folders(shared, root, per_class=2):
    for cls in UCM_CLASSES:
        (root / cls).mkdir(parents=True)
        for src in sorted((shared / "ucmerced_landuse" / "Images" / cls).glob("*.tif"))[:per_class]:
            shutil.copyfile(src, root / cls / src.name)
    return root


@pytest.mark.slow
def test_normalised_class_names_from_mined_vocabulary(tmp_path, shared_data, tiny):
    from clipstore.mining.classnames import mine_classnames
    store = Store(tmp_path / "store")
    ingest(store, "imagefolder", real_ucm_folders(shared_data, tmp_path / "ucm"), name="ucm_small", workers=1,
           progress=False)
    raw_only = evaluate(store, tiny, [Task("ucm_small", ZEROSHOT, templates="aerial")])
    assert query(store, "SELECT DISTINCT names FROM metrics WHERE run = ?", [raw_only.run]).to_pylist() == \
        [{"names": "corpus"}]            # no classnames vocabulary yet: the corpus's own names, recorded
    mine_classnames(store, ["ucm_small"])
    norm = evaluate(store, tiny, [Task("ucm_small", ZEROSHOT, templates="aerial")])
    raw = evaluate(store, tiny, [Task("ucm_small", ZEROSHOT, templates="aerial", raw_names=True)])
    def classes(run):
        return sorted(query(store, "SELECT class FROM metrics WHERE run = ? AND metric = 'class_acc'",
                            [run]).column("class").to_pylist())
    assert classes(norm.run) == ["baseball diamond", "dense residential", "mobile home park"]
    assert classes(raw.run) == sorted(UCM_CLASSES)
    assert norm.artifact.params["tasks"][0]["names"] == "normalised"
    assert norm.artifact.params["tasks"][0]["names_vocab"] == "classnames.ucm_small"

    # the normalised prompts' vectors: per class the renormalised mean over the template set
    items, vecs = load_embeddings(store, "ucm_small.image.tiny-vit").select(modality="image")
    samples = query(store, "SELECT image_id, class FROM samples WHERE corpus = 'ucm_small' ORDER BY source_index").to_pylist()
    row = {i: n for n, i in enumerate(items.column("item_id").to_pylist())}
    names = ["baseball diamond", "dense residential", "mobile home park"]
    prompts = [p for n in names for p in template_set("aerial").prompts(n)]
    text = tiny.encode_texts(prompts).numpy()
    text = text / np.linalg.norm(text, axis=1, keepdims=True)
    pred = (np.stack([vecs[row[s["image_id"]]] for s in samples]).astype(np.float32) @ text.T).argmax(axis=1)
    want = np.mean([names[p].replace(" ", "") == s["class"] for p, s in zip(pred, samples)]) * 100
    assert metric(store, norm.run, "ucm_small", "aerial", "top1") == pytest.approx(want)

    # the normalised names' prompt vectors joined the corpus's class cache: asking again encodes nothing
    cls_items, _ = load_embeddings(store, "ucm_small.classname.tiny-vit.aerial").select(modality="classname")
    assert set(names) <= set(cls_items.column("text").to_pylist())
    encoded = []
    original = tiny.encode_texts
    tiny.encode_texts = lambda texts: encoded.append(len(texts)) or original(texts)
    try:
        again = evaluate(store, tiny, [Task("ucm_small", ZEROSHOT, templates="aerial")], name="again")
    finally:
        tiny.encode_texts = original
    assert encoded == [] and metric(store, again.run, "ucm_small", "aerial", "top1") == pytest.approx(want)


def test_seed_template_sets():
    assert template_set("aerial").templates == ("an aerial photograph of {}.",)
    assert template_set("fashion").templates == ("a photo of a {}.",)
    rs = template_set("reclip_rs").templates
    assert len(set(rs)) == 18 and all(t.count("{}") == 1 for t in rs)
    assert (rs[0], rs[6], rs[-1]) == ("satellite imagery of {}.", "satellite imagery of a {}.", "aerial view of the {}.")


def test_a_checkpoint_artifact_is_a_model_spec(synth_store, tiny, tmp_path):
    """`--model <checkpoint artifact>` evaluates those weights: the same numbers as the model itself."""
    from clipstore.features.checkpoint_artifacts import register_checkpoint
    from clipstore.features.models import save_checkpoint
    path = save_checkpoint(tmp_path / "round1.safetensors", tiny.model.state_dict(), {"model": "tiny-vit"})
    art = register_checkpoint(synth_store, path, "round1")
    task = [Task("synth_cls", ZEROSHOT, templates="aerial")]
    direct = evaluate(synth_store, tiny, task, name="direct")
    via_artifact = evaluate(synth_store, ModelSpec(art.artifact_id), task, name="via-artifact")
    assert metric(synth_store, via_artifact.run, "synth_cls", "aerial", "top1") == \
        metric(synth_store, direct.run, "synth_cls", "aerial", "top1")
