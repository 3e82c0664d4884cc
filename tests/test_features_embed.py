"""The embedding cache on real UC Merced images: vectors equal a plain reference computation, a
cache hit runs no model, new items (and only they) are embedded, a killed run resumes exactly."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from PIL import Image

from clipstore.features.augment import ViewSpec
from clipstore.features.embed import embed
from clipstore.features.items import CONCEPT_PROMPT
from clipstore.features.models import ModelSpec, load_model, save_checkpoint
from clipstore.features.prompts import TEMPLATE_SETS, class_item_id, template_set
from clipstore.features.vectors import load_embeddings
from clipstore.ingest.pipeline import ingest
from clipstore.mining.tables import CONCEPT_VOCAB_TABLES, KEYWORD_VOCAB_TABLES
from clipstore.mining.vocab import begin_vocab, commit_tables
from clipstore.warehouse.errors import ClipstoreError, InputError, NotFoundError
from clipstore.warehouse.hashing import content_id, text_id
from clipstore.warehouse.sql import query
from clipstore.warehouse.store import Store
from conftest import REPO, karpathy_from_real_images, real_ucm_tiffs, write_karpathy

FP16 = dict(atol=2e-3, rtol=0)   # stored vectors are float16 unit vectors


@pytest.fixture(scope="module")
def tiny():
    return load_model(ModelSpec("tiny-vit"))


def ucm_corpus(store, shared_data, root, n=16, shard_size=6, name="ucm"):
    karpathy_from_real_images(shared_data, root, n)
    ingest(store, "karpathy", root, name=name, shard_size=shard_size, workers=1, progress=False)
    return root


@contextmanager
def forward_counter(model):
    """How many images and texts go through the model's towers."""
    seen = {"images": 0, "texts": 0}

    def images(_module, args, _out):
        seen["images"] += args[0].shape[0]

    def texts(_module, args, _out):
        seen["texts"] += args[0].shape[0]

    hooks = [model.model.visual.register_forward_hook(images),
             model.model.token_embedding.register_forward_hook(texts)]
    try:
        yield seen
    finally:
        for h in hooks:
            h.remove()


def part_digests(store) -> list[tuple]:
    with store.connect() as con:
        return con.execute("SELECT table_name, part, rows, sha256 FROM parts WHERE artifact_id LIKE 'embeddings-%' "
                           "ORDER BY ALL").fetchall()


def wait_until_gone(text: str, timeout: float) -> list[int]:
    """Pids of processes whose command line mentions `text`, once none remain or after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        pids = []
        for proc in os.listdir("/proc"):
            try:
                if proc.isdigit() and text.encode() in open(f"/proc/{proc}/cmdline", "rb").read():
                    pids.append(int(proc))
            except OSError:
                continue
        if not pids or time.monotonic() > deadline:
            return pids
        time.sleep(0.2)


def reference_image_vectors(model, files, transform=None) -> np.ndarray:
    """Straight from the original files: PIL, the model's eval preprocess, encode_image, normalise."""
    pixels = []
    for f in files:
        image = Image.open(f)
        pixels.append(model.preprocess(transform(image) if transform else image))
    with torch.inference_mode():
        v = model.model.encode_image(torch.stack(pixels)).float()
    return torch.nn.functional.normalize(v, dim=-1).numpy()


def reference_text_vectors(model, texts) -> np.ndarray:
    with torch.inference_mode():
        v = model.model.encode_text(model.tokenizer(texts)).float()
    return torch.nn.functional.normalize(v, dim=-1).numpy()


def by_id(embeddings, **equal) -> dict:
    items, vectors = embeddings.select(**equal)
    return {i: np.asarray(v, dtype=np.float32) for i, v in zip(items.column("item_id").to_pylist(), vectors)}


@pytest.mark.parametrize("arch", ["tiny-vit", "tiny-rn"])
def test_image_vectors_equal_a_reference_computation(store, tmp_path, shared_data, arch):
    root = tmp_path / "corpus"
    names = karpathy_from_real_images(shared_data, root, 14)
    # the same bytes under a second key: one image, two samples, embedded once
    shutil.copyfile(root / "images" / "1.tif", root / "images" / "dup.tif")
    write_karpathy(root, [{"filename": n, "captions": [f"image {n} ."]} for n in names + ["dup.tif"]])
    ingest(store, "karpathy", root, name="ucm", shard_size=5, workers=1, progress=False)
    model = load_model(ModelSpec(arch))

    [art] = embed(store, model=model, corpus="ucm", batch_size=4, workers=2, progress=False)

    assert art.kind == "embeddings" and art.name == f"ucm.image.{arch}" and art.status == "complete"
    # image caches key on the image tower
    assert art.params["fingerprint"] == model.image_fingerprint and art.params["modality"] == "image"
    assert art.params["corpus"] == "ucm" and art.params["vocab"] is None and art.params["views"] is None
    stored = load_embeddings(store, art.artifact_id)
    assert len(stored) == 14 and stored.matrix().dtype == np.float16
    files = [root / "images" / n for n in names]
    expected = reference_image_vectors(model, files)
    got = by_id(stored)
    for f, e in zip(files, expected):
        np.testing.assert_allclose(got[content_id(f.read_bytes())], e, **FP16)
    assert len(store.parts(art.artifact_id, "vectors")) == 3        # one part per shard
    sql = query(store, "SELECT count(*) AS n, count(DISTINCT item_id) AS ids, min(view) AS v, "
                       "bool_and(abs(norm) > 0) AS normed FROM embedding_items").to_pylist()[0]
    assert sql == {"n": 14, "ids": 14, "v": 0, "normed": True}


def test_text_vectors_equal_a_reference_computation(store, tmp_path, shared_data, tiny):
    ucm_corpus(store, shared_data, tmp_path / "corpus", n=6)
    folders = tmp_path / "cls"
    for f in real_ucm_tiffs(shared_data, 210)[::70]:  # three classes, one image each
        (folders / f.parent.name).mkdir(parents=True)
        shutil.copyfile(f, folders / f.parent.name / f.name)
    ingest(store, "imagefolder", folders, name="three_cls", workers=1, progress=False)
    vocab = begin_vocab(store, "keywords", "keywords.test", {"test": 1}, None, KEYWORD_VOCAB_TABLES)
    keywords = ["runway", "baseball diamond", "harbor"]
    commit_tables(vocab, {"keywords": [{"vocab_id": vocab.artifact_id, "keyword_id": text_id("keyword", k),
                                        "keyword": k, "rank": i, "score": 1.0, "n_words": len(k.split()),
                                        "source": "test"} for i, k in enumerate(keywords)]})
    vocab.finish({"keywords": 3})
    concepts = begin_vocab(store, "concepts", "concepts.test", {"test": 1}, None, CONCEPT_VOCAB_TABLES)
    commit_tables(concepts, {"concepts": [{"vocab_id": concepts.artifact_id, "concept_id": text_id("concept", c),
                                           "concept": c, "rank": i, "n_images": 5, "df": 0.1}
                                          for i, c in enumerate(["airplane", "tree"])]})
    concepts.finish({"concepts": 2})

    [caps] = embed(store, model=tiny, corpus="ucm", modality="caption", progress=False)
    [kw] = embed(store, model=tiny, vocab="keywords.test", modality=("keyword",), progress=False)
    [cc] = embed(store, model=tiny, vocab="concepts.test", modality=["concept"], progress=False)
    [cls] = embed(store, model=tiny, corpus="three_cls", modality="classname", per_template=True, progress=False)

    captions = query(store, "SELECT caption_id, raw FROM captions ORDER BY caption_id").to_pylist()
    got = by_id(load_embeddings(store, caps.artifact_id))
    expected = reference_text_vectors(tiny, [c["raw"] for c in captions])
    assert len(got) == len(captions) == 12
    for c, e in zip(captions, expected):
        np.testing.assert_allclose(got[c["caption_id"]], e, **FP16)

    got = by_id(load_embeddings(store, kw.artifact_id))
    for k, e in zip(keywords, reference_text_vectors(tiny, keywords)):
        np.testing.assert_allclose(got[text_id("keyword", k)], e, **FP16)
    assert kw.params["vocab"] == "keywords.test" and kw.params["corpus"] is None
    got = by_id(load_embeddings(store, cc.artifact_id))
    prompts = [CONCEPT_PROMPT.format(c) for c in ["airplane", "tree"]]
    assert prompts[0] == "a photo includes airplane."
    for c, e in zip(["airplane", "tree"], reference_text_vectors(tiny, prompts)):
        np.testing.assert_allclose(got[text_id("concept", c)], e, **FP16)

    # a class = the renormalised mean of its normalised prompt vectors; the prompts are kept too
    classes = load_embeddings(store, cls.artifact_id)
    default = template_set("default")
    names = query(store, "SELECT name FROM classes ORDER BY class_index").column("name").to_pylist()
    assert cls.params["templates"]["templates"] == list(TEMPLATE_SETS["default"])
    assert cls.counts["vectors"] == 3 + 3 * len(default.templates)
    class_vectors = by_id(classes, modality="classname")
    assert len(class_vectors) == 3 and len(by_id(classes, modality="prompt")) == 3 * len(default.templates)
    for name in names:
        mean = reference_text_vectors(tiny, default.prompts(name)).mean(axis=0)
        np.testing.assert_allclose(class_vectors[class_item_id(name, default)], mean / np.linalg.norm(mean), **FP16)
    # another template set is another artifact, with other vectors
    [openai] = embed(store, model=tiny, corpus="three_cls", modality="classname", templates="openai", progress=False)
    assert openai.artifact_id != cls.artifact_id and openai.name.endswith(".openai")
    one = by_id(load_embeddings(store, openai.artifact_id))[class_item_id(names[0], template_set("openai"))]
    np.testing.assert_allclose(one, reference_text_vectors(tiny, [f"a photo of a {names[0]}."])[0], **FP16)


def test_a_cache_hit_runs_no_model(store, tmp_path, shared_data, tiny):
    ucm_corpus(store, shared_data, tmp_path / "corpus", n=8)
    first = embed(store, model=tiny, corpus="ucm", modality="image,caption", workers=1, progress=False)
    parts = {a.artifact_id: store.parts(a.artifact_id) for a in first}

    with forward_counter(tiny) as seen:
        again = embed(store, model=ModelSpec("tiny-vit"), corpus="ucm", modality="image,caption", progress=False)
        same = embed(store, model=tiny, corpus="ucm", modality="image,caption", progress=False)

    assert seen == {"images": 0, "texts": 0}
    assert [a.artifact_id for a in again] == [a.artifact_id for a in same] == [a.artifact_id for a in first]
    assert {a.artifact_id: store.parts(a.artifact_id) for a in same} == parts
    runs = query(store, "SELECT status, count(*) AS n FROM runs WHERE stage = 'embed' GROUP BY status "
                        "ORDER BY status").to_pylist()
    assert runs == [{"status": "done", "n": 2}, {"status": "noop", "n": 4}]


def test_a_corpus_that_grew_embeds_only_its_new_images(store, tmp_path, shared_data, tiny):
    root = ucm_corpus(store, shared_data, tmp_path / "corpus", n=10, shard_size=4)
    [before] = embed(store, model=tiny, corpus="ucm", workers=1, progress=False)
    old_parts = store.parts(before.artifact_id)

    karpathy_from_real_images(shared_data, root, 16)       # six more images in the source
    ingest(store, "karpathy", root, name="ucm", shard_size=4, workers=1, progress=False)
    with forward_counter(tiny) as seen:
        [after] = embed(store, model=tiny, corpus="ucm", workers=1, progress=False)

    assert seen["images"] == 6
    assert after.artifact_id == before.artifact_id and after.counts["vectors"] == 16
    assert store.parts(after.artifact_id)[:len(old_parts)] == old_parts
    files = [root / "images" / f"{i}.tif" for i in range(1, 17)]
    got = by_id(load_embeddings(store, after.artifact_id))
    for f, e in zip(files, reference_image_vectors(tiny, files)):
        np.testing.assert_allclose(got[content_id(f.read_bytes())], e, **FP16)


def test_new_weights_make_a_new_cache(store, tmp_path, shared_data, tiny):
    ucm_corpus(store, shared_data, tmp_path / "corpus", n=4)
    weights = {k: v * 1.01 if v.is_floating_point() else v for k, v in tiny.model.state_dict().items()}
    checkpoint = save_checkpoint(tmp_path / "round1.safetensors", weights, {"model": "tiny-vit"})

    [plain] = embed(store, model=tiny, corpus="ucm", workers=1, progress=False)
    [tuned] = embed(store, model=ModelSpec(checkpoint=checkpoint), corpus="ucm", workers=1, progress=False)

    tuned_model = load_model(ModelSpec(checkpoint=checkpoint))
    assert tuned.artifact_id != plain.artifact_id and tuned.name == f"ucm.image.{tuned_model.name}"
    assert tuned_model.name == f"tiny-vit@{tuned_model.identity['weights_sha256'][:12]}"  # content, not file stem
    assert tuned.params["fingerprint"] != plain.params["fingerprint"]
    a, b = load_embeddings(store, plain.artifact_id).matrix(), load_embeddings(store, tuned.artifact_id).matrix()
    assert a.shape == b.shape and not np.allclose(a, b, atol=1e-3)


def test_augmented_views_are_deterministic_distinct_dihedral_transforms(store, tmp_path, shared_data, tiny):
    root = ucm_corpus(store, shared_data, tmp_path / "corpus", n=4)
    plain, views = embed(store, model=tiny, corpus="ucm", views=3, augment="rot90,flip", seed=5, workers=1,
                         progress=False)
    assert plain.params["views"] is None and views.params["views"] == {"augment": "flip,rot90", "seed": 5}
    assert views.counts["vectors"] == 12
    spec = ViewSpec("flip,rot90", 5, 3)
    stored = load_embeddings(store, views.artifact_id)
    f = root / "images" / "2.tif"
    image_id = content_id(f.read_bytes())
    names = [spec.transform_name(image_id, k) for k in (1, 2, 3)]
    assert len(set(names)) == 3 and "identity" not in names
    for k in (1, 2, 3):
        got = by_id(stored, view=k)[image_id]
        expected = reference_image_vectors(tiny, [f], transform=lambda im, k=k: spec.apply(im, image_id, k))[0]
        np.testing.assert_allclose(got, expected, **FP16)

    # more views later: views 1-3 are kept, only 4-5 are embedded
    with forward_counter(tiny) as seen:
        _, more = embed(store, model=tiny, corpus="ucm", views=5, augment="flip,rot90", seed=5, workers=1,
                        progress=False)
    assert more.artifact_id == views.artifact_id and seen["images"] == 8 and more.counts["vectors"] == 20
    with pytest.raises(InputError, match="gives 2 distinct views"):
        embed(store, model=tiny, corpus="ucm", views=3, augment="flip", progress=False)
    with pytest.raises(InputError, match="unknown augmentation shear"):
        embed(store, model=tiny, corpus="ucm", views=1, augment="rot90,shear", progress=False)


def test_sigkill_midway_then_resume_equals_uninterrupted(tmp_path, shared_data):
    root = tmp_path / "corpus"
    karpathy_from_real_images(shared_data, root, 12)
    killed, clean = Store(tmp_path / "killed"), Store(tmp_path / "clean")
    for s in (killed, clean):
        ingest(s, "karpathy", root, name="ucm", shard_size=3, workers=1, progress=False)
    script = tmp_path / "slow_embed.py"
    script.write_text(textwrap.dedent("""
        import sys, time
        from clipstore.features.embed import embed
        from clipstore.features.models import ModelSpec, load_model
        if __name__ == "__main__":
            model = load_model(ModelSpec("tiny-vit"))
            model.model.visual.register_forward_hook(lambda *_: time.sleep(0.2))  # slow enough to kill midway
            embed(sys.argv[1], model=model, corpus="ucm", batch_size=2, workers=1, progress=False)
    """))
    proc = subprocess.Popen([sys.executable, str(script), str(killed.root)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list(killed.root.glob("artifacts/embeddings-*/vectors/*.npy"))) >= 2:
            break
        time.sleep(0.01)
    assert proc.poll() is None, proc.stderr.read().decode()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert wait_until_gone(str(tmp_path), timeout=15) == [], "the killed run left processes behind"
    [partial] = killed.list("embeddings")
    assert partial.status == "building" and 1 <= len(killed.parts(partial.artifact_id, "vectors", pending=True)) < 4
    assert killed.current("embeddings", partial.name) is None   # nothing of the unfinished version is visible

    model = load_model(ModelSpec("tiny-vit"))
    with forward_counter(model) as seen:
        [resumed] = embed(killed, model=model, corpus="ucm", batch_size=2, workers=1, progress=False)
    [reference] = embed(clean, model=model, corpus="ucm", batch_size=2, workers=1, progress=False)

    assert 0 < seen["images"] < 12
    assert resumed.artifact_id == reference.artifact_id and resumed.counts["vectors"] == 12
    a, b = load_embeddings(killed, resumed.artifact_id), load_embeddings(clean, reference.artifact_id)
    assert a.items.equals(b.items)
    np.testing.assert_array_equal(a.matrix(), b.matrix())
    assert part_digests(killed) == part_digests(clean)        # byte for byte, part for part
    leftovers = [p for p in killed.root.glob("artifacts/embeddings-*/*/*")
                 if p not in {path for _, _, path in killed.parts(resumed.artifact_id)}]
    assert leftovers == []


def test_bad_requests_fail_before_any_work_with_a_fix(store, tmp_path, shared_data, tiny):
    ucm_corpus(store, shared_data, tmp_path / "corpus", n=3)
    with pytest.raises(NotFoundError, match=r"no corpus 'ucn' in the store \(corpora: ucm\)"):
        embed(store, model=tiny, corpus="ucn", progress=False)
    with pytest.raises(InputError, match="unknown modality imgae") as err:
        embed(store, model=tiny, corpus="ucm", modality="imgae,caption", progress=False)
    assert "image, caption, keyword, concept, classname" in err.value.fix
    with pytest.raises(InputError, match="embeds a corpus"):
        embed(store, model=tiny, modality="caption", progress=False)
    with pytest.raises(InputError, match="embeds a vocabulary"):
        embed(store, model=tiny, corpus="ucm", modality="image,keyword", progress=False)
    with pytest.raises(NotFoundError, match="no vocabulary 'kw'"):
        embed(store, model=tiny, vocab="kw", modality="keyword", progress=False)
    with pytest.raises(InputError, match="ucm has no classes"):
        embed(store, model=tiny, corpus="ucm", modality="classname", progress=False)
    with pytest.raises(InputError, match="unknown template set 'rs'"):
        embed(store, model=tiny, corpus="ucm", modality="classname", templates="rs", progress=False)
    with pytest.raises(InputError, match="--augment needs --views"):
        embed(store, model=tiny, corpus="ucm", augment="rot90", progress=False)
    with pytest.raises(ClipstoreError, match="ViT-B-32 needs weights"):
        embed(store, model=ModelSpec("ViT-B-32"), corpus="ucm", progress=False)
    assert store.list("embeddings") == []
