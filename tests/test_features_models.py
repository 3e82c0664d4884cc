"""The model registry: test configs, checkpoint formats, fingerprints, and the errors a user sees."""

import argparse

import pytest
import torch

from clipstore.features.models import (ModelSpec, load_model, read_checkpoint, save_checkpoint,
                                       weights_sha256)
from clipstore.warehouse.errors import ClipstoreError, InputError


def trained_weights(arch: str = "tiny-vit", seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights that differ from the random init, as a trained model's would."""
    state = load_model(ModelSpec(arch)).model.state_dict()
    gen = torch.Generator().manual_seed(seed + 1)
    return {k: v + 0.01 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v.clone()
            for k, v in state.items()}


def outputs(model) -> tuple[torch.Tensor, torch.Tensor]:
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    return model.encode_images(pixels), model.encode_texts(["a runway seen from above", "farmland"])


@pytest.mark.parametrize("arch", ["tiny-vit", "tiny-rn"])
def test_test_configs_are_small_seeded_and_fingerprinted(arch):
    a, b = load_model(ModelSpec(arch)), load_model(ModelSpec(arch))
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 64
    assert 1e6 < sum(p.numel() for p in a.model.parameters()) < 2e7
    image, text = outputs(a)
    assert image.shape == (2, a.embed_dim) and text.shape == (2, a.embed_dim)
    assert torch.equal(image, outputs(b)[0])                 # the same seed gives the same weights
    other_seed = load_model(ModelSpec(arch, seed=1))
    assert other_seed.fingerprint != a.fingerprint
    assert a.identity["tokenizer"]["context_length"] == 77
    assert a.identity["preprocess"]["interpolation"] == "bicubic"


def test_the_same_weights_fingerprint_alike_in_every_checkpoint_format(tmp_path):
    weights = trained_weights()
    bare_st, bare_pt = tmp_path / "bare.safetensors", tmp_path / "bare.pt"
    from safetensors.torch import save_file
    save_file(weights, str(bare_st))
    torch.save(weights, bare_pt)
    ddp = tmp_path / "open_clip_epoch_3.pt"   # open_clip's trainer: {"state_dict"} with DDP prefixes, and extras
    torch.save({"epoch": 3, "name": "run", "state_dict": {f"module.{k}": v for k, v in weights.items()}}, ddp)
    ours_pt = save_checkpoint(tmp_path / "ours.pt", weights, {"model": "tiny-vit"}, step=7)
    ours_st = save_checkpoint(tmp_path / "ours.safetensors", weights, {"model": "tiny-vit"})

    loaded = [load_model(ModelSpec("tiny-vit", checkpoint=p)) for p in (bare_st, bare_pt, ddp)]
    loaded += [load_model(ModelSpec(None, checkpoint=p)) for p in (ours_pt, ours_st)]   # arch from the file
    assert {m.arch for m in loaded} == {"tiny-vit"}
    assert len({m.fingerprint for m in loaded}) == 1
    assert loaded[0].fingerprint != load_model(ModelSpec("tiny-vit")).fingerprint
    assert loaded[0].identity["weights_sha256"] == weights_sha256(weights)
    reference = outputs(loaded[0])
    for m in loaded[1:]:
        assert all(torch.equal(x, y) for x, y in zip(outputs(m), reference))
    assert read_checkpoint(ours_pt)[1] == {"model": "tiny-vit"}
    # named by content, not by file stem: the same weights have one name in every file
    assert {m.name for m in loaded} == {f"tiny-vit@{weights_sha256(weights)[:12]}"}


def test_changed_weights_preprocessing_or_precision_change_the_fingerprint(tmp_path):
    base = load_model(ModelSpec("tiny-vit"))
    weights = base.model.state_dict()
    weights["visual.proj"] = weights["visual.proj"].clone()
    weights["visual.proj"][0, 0] += 1e-3   # one number of one tensor
    changed = tmp_path / "changed.safetensors"
    save_checkpoint(changed, weights, {"model": "tiny-vit"})
    variants = [load_model(ModelSpec("tiny-vit", checkpoint=changed)),
                load_model(ModelSpec("tiny-vit", preprocess={"interpolation": "bilinear"})),
                load_model(ModelSpec("tiny-vit", preprocess={"resize_mode": "squash"})),
                load_model(ModelSpec("tiny-vit", preprocess={"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)})),
                load_model(ModelSpec("tiny-vit", precision="bf16"))]
    fingerprints = {m.fingerprint for m in variants} | {base.fingerprint}
    assert len(fingerprints) == len(variants) + 1
    assert variants[1].identity["preprocess"]["interpolation"] == "bilinear"
    # a clipstore checkpoint can carry the preprocessing it was trained with
    trained = save_checkpoint(tmp_path / "trained.pt", weights,
                              {"model": "tiny-vit", "preprocess": {"interpolation": "bilinear"}})
    assert load_model(ModelSpec(None, checkpoint=trained)).identity["preprocess"]["interpolation"] == "bilinear"


def test_weights_that_do_not_fit_name_the_offending_keys(tmp_path):
    rn = tmp_path / "rn.safetensors"
    save_checkpoint(rn, load_model(ModelSpec("tiny-rn")).model.state_dict(), {"model": "tiny-rn"})
    with pytest.raises(InputError, match="trained as tiny-rn, not tiny-vit"):
        load_model(ModelSpec("tiny-vit", checkpoint=rn))
    bare = tmp_path / "rn_bare.pt"
    torch.save(load_model(ModelSpec("tiny-rn")).model.state_dict(), bare)
    with pytest.raises(InputError, match=r"do not fit architecture tiny-vit: \d+ missing \(e\.g\. visual\."):
        load_model(ModelSpec("tiny-vit", checkpoint=bare))

    weights = load_model(ModelSpec("tiny-vit")).model.state_dict()
    weights["text_projection"] = torch.zeros(128, 64)
    reshaped = tmp_path / "reshaped.pt"
    torch.save(weights, reshaped)
    with pytest.raises(InputError, match=r"text_projection \(128, 64\) vs \(128, 128\)"):
        load_model(ModelSpec("tiny-vit", checkpoint=reshaped))


def test_checkpoints_load_weights_only_never_pickle(tmp_path):
    pickled = tmp_path / "with_args.pt"
    torch.save({"state_dict": load_model(ModelSpec("tiny-vit")).model.state_dict(),
                "args": argparse.Namespace(lr=1e-4)}, pickled)
    with pytest.raises(ClipstoreError, match="never runs pickle") as err:
        load_model(ModelSpec("tiny-vit", checkpoint=pickled))
    assert "torch.save(model.state_dict()" in err.value.fix

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(pickled.read_bytes()[:1000])
    with pytest.raises(InputError, match="cannot read checkpoint truncated.pt"):
        load_model(ModelSpec("tiny-vit", checkpoint=truncated))
    no_weights = tmp_path / "no_weights.pt"
    torch.save({"epoch": 1, "optimizer": {}}, no_weights)
    with pytest.raises(InputError, match="no state_dict"):
        load_model(ModelSpec("tiny-vit", checkpoint=no_weights))
    with pytest.raises(ClipstoreError, match="does not exist"):
        load_model(ModelSpec("tiny-vit", checkpoint=tmp_path / "missing.safetensors"))


def test_pretrained_weights_need_a_local_copy_or_an_explicit_download(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))   # an empty cache: nothing was downloaded before
    with pytest.raises(ClipstoreError, match="not on this machine, and downloading is off") as err:
        load_model(ModelSpec("ViT-B-32", pretrained="laion2b_s34b_b79k"))
    assert "--allow-download" in err.value.fix and "--checkpoint FILE" in err.value.fix

    with pytest.raises(ClipstoreError, match=r"could not download .*HF_HUB_OFFLINE is set") as err:
        load_model(ModelSpec("ViT-B-32", pretrained="laion2b_s34b_b79k", allow_download=True))
    assert "--checkpoint FILE" in err.value.fix

    with pytest.raises(InputError, match="has no pretrained tag 'laion9b'") as err:
        load_model(ModelSpec("ViT-B-32", pretrained="laion9b"))
    assert "laion2b_s34b_b79k" in err.value.fix
    with pytest.raises(ClipstoreError, match="ViT-B-32 needs weights") as err:
        load_model(ModelSpec("ViT-B-32"))
    assert "--pretrained random" in err.value.fix
    with pytest.raises(InputError, match="unknown model architecture 'ViT-B32'") as err:
        load_model(ModelSpec("ViT-B32"))
    assert "ViT-B-32" in err.value.fix


def test_bad_options_are_clear_errors():
    with pytest.raises(InputError, match="unknown precision 'fp8'"):
        load_model(ModelSpec("tiny-vit", precision="fp8"))
    with pytest.raises(InputError, match="no CUDA GPU is visible"):
        load_model(ModelSpec("tiny-vit", device="cuda"))
    with pytest.raises(InputError, match="unknown preprocessing option"):
        load_model(ModelSpec("tiny-vit", preprocess={"size": 32, "colour": 1}))
    with pytest.raises(InputError, match="either --pretrained or --checkpoint"):
        load_model(ModelSpec("tiny-vit", pretrained="random", checkpoint="x.pt"))
    with pytest.raises(InputError, match="no model architecture"):
        load_model(ModelSpec(None))
