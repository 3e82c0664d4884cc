"""Models that can train: per-tower fingerprints key the caches (a checkpoint that changed only the
text tower reuses the image cache), train-mode builds, checkpoints named by content and stored as
artifacts usable as a model spec, NaN weights and outputs refused, Hugging Face tokenizers
that never reach the network and name the package they need."""

from __future__ import annotations

import http.server
import sys
import threading

import numpy as np
import pytest
import torch

from clipstore.cli import main
from clipstore.features.checkpoint_artifacts import checkpoint_path, register_checkpoint, resolve_model_spec
from clipstore.features.embed import embed
from clipstore.features.identity import tower_of
from clipstore.features.models import ModelSpec, build_model, load_model, save_checkpoint
from clipstore.features.neighbors import neighbors
from clipstore.features.tokenizers import load_tokenizer
from clipstore.features.vectors import load_embeddings
from clipstore.warehouse.errors import ClipstoreError, InputError, NotFoundError
from clipstore.warehouse.sql import query
from conftest import karpathy_from_real_images
from test_features_embed import forward_counter


@pytest.fixture(scope="module")
def tiny():
    return load_model(ModelSpec("tiny-vit"))


def perturbed(model, tower: str, scale: float = 0.01) -> dict:
    """The model's weights with one tower's floating tensors nudged (a round of training that
    froze the other tower)."""
    gen = torch.Generator().manual_seed(3)
    return {k: v + scale * torch.randn(v.shape, generator=gen) if v.is_floating_point() and tower_of(k) == tower
            else v.clone() for k, v in model.model.state_dict().items()}


@pytest.mark.slow
def test_each_tower_has_its_own_fingerprint(tmp_path, tiny):
    for round_ in ("round1", "round2"):
        (tmp_path / round_).mkdir()
    text_ckpt = save_checkpoint(tmp_path / "round1" / "ckpt.safetensors", perturbed(tiny, "text"),
                                {"model": "tiny-vit"})
    image_ckpt = save_checkpoint(tmp_path / "round2" / "ckpt.safetensors", perturbed(tiny, "image"),
                                 {"model": "tiny-vit"})
    text_tuned, image_tuned = load_model(ModelSpec(checkpoint=text_ckpt)), load_model(ModelSpec(checkpoint=image_ckpt))
    assert text_tuned.image_fingerprint == tiny.image_fingerprint != image_tuned.image_fingerprint
    assert image_tuned.text_fingerprint == tiny.text_fingerprint != text_tuned.text_fingerprint
    assert len({tiny.fingerprint, text_tuned.fingerprint, image_tuned.fingerprint}) == 3
    # two rounds that both saved ckpt.safetensors no longer collide: names come from the weights
    assert text_tuned.name != image_tuned.name and text_tuned.name.startswith("tiny-vit@")
    # preprocessing belongs to the image tower, the precision to both
    bilinear = load_model(ModelSpec("tiny-vit", preprocess={"interpolation": "bilinear"}))
    assert bilinear.text_fingerprint == tiny.text_fingerprint and bilinear.image_fingerprint != tiny.image_fingerprint
    bf16 = load_model(ModelSpec("tiny-vit", precision="bf16"))
    assert bf16.text_fingerprint != tiny.text_fingerprint and bf16.image_fingerprint != tiny.image_fingerprint
    towers = tiny.identity["towers"]
    assert towers["text"]["tokenizer"]["context_length"] == 77 and "tokenizer" not in towers["image"]
    assert "preprocess" in towers["image"] and "preprocess" not in towers["text"]


@pytest.mark.slow
def test_a_text_only_checkpoint_reuses_the_image_cache(store, tmp_path, shared_data, tiny):
    karpathy_from_real_images(shared_data, tmp_path / "corpus", 6)
    from clipstore.ingest.pipeline import ingest
    ingest(store, "karpathy", tmp_path / "corpus", name="ucm", workers=1, progress=False)
    image, caption = embed(store, model=tiny, corpus="ucm", modality="image,caption", workers=0, progress=False)

    ckpt = save_checkpoint(tmp_path / "ckpt.safetensors", perturbed(tiny, "text"), {"model": "tiny-vit"})
    tuned = load_model(ModelSpec(checkpoint=ckpt))
    with forward_counter(tuned) as seen:
        image2, caption2 = embed(store, model=tuned, corpus="ucm", modality="image,caption", workers=0,
                                 progress=False)
    assert seen == {"images": 0, "texts": 12}                    # no image forward; every caption again
    assert image2.artifact_id == image.artifact_id and image2.noop   # the same image cache, untouched
    assert caption2.artifact_id != caption.artifact_id and caption2.counts["vectors"] == 12
    assert caption2.name == f"ucm.caption.{tuned.name}"
    before, after = (np.asarray(load_embeddings(store, a.artifact_id).matrix()) for a in (caption, caption2))
    assert not np.allclose(before, after, atol=1e-3)


def test_train_mode_builds_a_trainable_model_with_the_train_transform(tiny, tmp_path):
    trainable = build_model(ModelSpec("tiny-vit"), train=True)
    assert trainable.train and trainable.model.training
    assert all(p.requires_grad for p in trainable.model.parameters())
    assert not tiny.model.training and not any(p.requires_grad for p in tiny.model.parameters())
    names = [type(t).__name__ for t in trainable.preprocess.transforms]
    assert "RandomResizedCrop" in names and "RandomResizedCrop" not in [type(t).__name__ for t in
                                                                        tiny.preprocess.transforms]
    assert trainable.tower_fingerprints == tiny.tower_fingerprints   # the same weights, the same identity
    loss = trainable.model.encode_image(torch.randn(2, 3, 64, 64)).pow(2).mean()
    loss.backward()
    assert trainable.model.visual.proj.grad is not None
    with pytest.raises(InputError, match="train-mode model"):
        embed(tmp_path / "store", model=trainable, corpus="x", progress=False)
    assert not (tmp_path / "store").exists()                     # refused before anything is created


@pytest.mark.slow
def test_a_registered_checkpoint_is_a_model_spec(store, tmp_path, shared_data, tiny):
    karpathy_from_real_images(shared_data, tmp_path / "corpus", 4)
    from clipstore.ingest.pipeline import ingest
    ingest(store, "karpathy", tmp_path / "corpus", name="ucm", workers=1, progress=False)
    weights = perturbed(tiny, "image")
    bare = tmp_path / "weights.pt"
    torch.save(weights, bare)                                    # a bare state dict: the architecture is given
    art = register_checkpoint(store, bare, "round1", model="tiny-vit")
    assert art.kind == "checkpoint" and art.status == "complete" and art.stats["arch"] == "tiny-vit"
    path = checkpoint_path(store, art.artifact_id)
    assert path.suffix == ".safetensors" and path == art.path / art.stats["file"] and path.is_file()
    again = register_checkpoint(store, save_checkpoint(tmp_path / "same.safetensors", weights, {"model": "tiny-vit"}),
                                "round1")
    assert again.artifact_id == art.artifact_id and again.noop   # the same weights, whatever the file

    spec = resolve_model_spec(store, ModelSpec(art.artifact_id))
    assert spec.checkpoint == path and spec.model is None
    assert resolve_model_spec(store, ModelSpec("round1")).checkpoint == path   # by name too
    assert resolve_model_spec(store, ModelSpec("tiny-vit")) == ModelSpec("tiny-vit")
    [by_id] = embed(store, model=ModelSpec(art.artifact_id), corpus="ucm", workers=0, progress=False)
    [by_file] = embed(store, model=ModelSpec(checkpoint=bare, model="tiny-vit"), corpus="ucm", workers=0,
                      progress=False)
    assert by_id.artifact_id == by_file.artifact_id and by_file.noop
    assert by_id.params["fingerprint"] == load_model(ModelSpec(checkpoint=path)).image_fingerprint

    assert main(["--store", str(store.root), "-q", "knn", "--corpus", "ucm", "--model", art.artifact_id,
                 "--k", "2", "--workers", "0"]) == 0
    embed(store, model=tiny, corpus="ucm", workers=0, progress=False)          # a second model's vectors
    sample = query(store, "SELECT sample_id FROM samples LIMIT 1").column("sample_id")[0].as_py()
    found = neighbors(store, sample, k=2, model="round1")                       # the checkpoint picks its vectors
    assert found["model"] == by_id.stats["model"] and found["embeddings"] == [by_id.artifact_id]
    with pytest.raises(InputError, match="does not name its architecture"):
        register_checkpoint(store, bare, "nameless")
    with pytest.raises(NotFoundError, match="no checkpoint artifact 'nope'"):
        checkpoint_path(store, "nope")
    with pytest.raises(InputError, match="unknown model architecture 'nope'"):
        load_model(resolve_model_spec(store, ModelSpec("nope")))


@pytest.mark.slow
def test_nan_weights_and_nan_outputs_are_refused(store, tmp_path, shared_data):
    model = load_model(ModelSpec("tiny-vit"))
    weights = model.model.state_dict()
    weights["visual.proj"] = torch.full_like(weights["visual.proj"], float("nan"))
    diverged = save_checkpoint(tmp_path / "diverged.safetensors", weights, {"model": "tiny-vit"})
    with pytest.raises(InputError, match=r"NaN or infinite values in 1 tensor\(s\): visual.proj") as err:
        load_model(ModelSpec(checkpoint=diverged))
    assert "before training diverged" in err.value.fix

    karpathy_from_real_images(shared_data, tmp_path / "corpus", 4)
    from clipstore.ingest.pipeline import ingest
    ingest(store, "karpathy", tmp_path / "corpus", name="ucm", workers=1, progress=False)
    with torch.no_grad():
        model.model.visual.proj.fill_(float("inf"))          # outputs overflow: Inf, then NaN once normalised
        model.model.text_projection.fill_(float("nan"))
    for modality in ("image", "caption"):
        with pytest.raises(InputError, match="NaN or infinite embeddings"):
            embed(store, model=model, corpus="ucm", modality=modality, workers=0, progress=False)
    assert query(store, "SELECT count(*) AS n FROM parts WHERE artifact_id LIKE 'embeddings-%'").column("n")[0] \
        .as_py() == 0
    statuses = query(store, "SELECT DISTINCT status FROM runs WHERE stage = 'embed'").column("status").to_pylist()
    assert statuses == ["failed"]


def test_a_hugging_face_tokenizer_names_its_package(monkeypatch):
    """Where `transformers` is absent (hidden here: the dev environment installs it for the
    offline-guard test below), the error names the package instead of a ModuleNotFoundError."""
    for name in [m for m in sys.modules if m == "transformers" or m.startswith("transformers.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "transformers", None)   # import transformers -> ModuleNotFoundError
    with pytest.raises(ClipstoreError, match="needs the `transformers` package") as err:
        load_model(ModelSpec("ViT-B-16-SigLIP", pretrained="random"))
    assert "pip install transformers" in err.value.fix


class _Recorder(http.server.BaseHTTPRequestHandler):
    hits: list = []

    def do_GET(self):  # noqa: N802
        self.hits.append(self.path)
        self.send_response(404)
        self.end_headers()

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


def test_a_hugging_face_tokenizer_is_never_fetched_without_allow_download(monkeypatch, tmp_path):
    pytest.importorskip("transformers")
    server = http.server.HTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
        with pytest.raises(ClipstoreError, match="not in the local Hugging Face cache, and downloading is off"):
            load_tokenizer("ViT-B-16-SigLIP", allow_download=False)
        assert _Recorder.hits == []
    finally:
        server.shutdown()
