"""The trainer's pieces without a store: the config (defaults < TOML < command line, the published
S-CLIP configs), the read order (deterministic, sliced per process, unlabeled stream cycling),
the trainable modes (what trains, folded adapters equal the adapter model), the schedule."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

from clipstore.features.identity import IMAGE_TOWER, TEXT_TOWER, tower_of, weight_digests
from clipstore.features.models import ModelSpec, build_model
from clipstore.train.config import TrainConfig, read_toml, resolve
from clipstore.train.data import Schedule
from clipstore.train.model import TrainModel, param_groups
from clipstore.train.optim import build_optimizer, lr_at
from clipstore.warehouse.errors import InputError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """tiny-vit is too small for a second intra-op thread to pay: on a busy machine the threads'
    synchronisation costs more than the matmuls (measured: 10x the CPU time per step)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_config_precedence_and_checks(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('method = "sclip"\nsplit = "s"\nlr = 1e-4\nepochs = 3\nval_zeroshot = ["ucm_cls"]\n')
    cfg = resolve(toml, {"epochs": 7})
    assert (cfg.method, cfg.split, cfg.lr, cfg.epochs, cfg.val_zeroshot) == ("sclip", "s", 1e-4, 7, ["ucm_cls"])
    assert cfg.batch_size == TrainConfig().batch_size
    assert "name" not in cfg.recipe() and "epochs" in cfg.recipe()
    (tmp_path / "bad.toml").write_text('split = "s"\nlearning_rate = 1\n')
    with pytest.raises(InputError, match="unknown key 'learning_rate'"):
        resolve(tmp_path / "bad.toml")
    with pytest.raises(InputError, match="wrong type"):
        resolve(overrides={"split": "s", "epochs": "ten"})
    with pytest.raises(InputError, match="unlabeled images"):
        resolve(overrides={"method": "sclip", "corpus": "c"})
    with pytest.raises(InputError, match="--corpus NAME"):
        resolve(overrides={"corpus": "c", "split": "s"})


@pytest.mark.parametrize("name, epochs", [("sclip_rs.toml", 25), ("sclip_fashion.toml", 10)])
def test_the_published_sclip_configs(name, epochs):
    path = REPO / "configs" / name
    values = read_toml(path)
    cfg = resolve(path, {"split": "x"} if "split" not in values else None)
    assert (cfg.method, cfg.model, cfg.pretrained, cfg.epochs) == ("sclip", "RN50", "openai", epochs)
    assert (cfg.lr, cfg.weight_decay, cfg.warmup, cfg.batch_size, cfg.unlabeled_batch) == (5e-5, 0.2, 10, 32, 32)
    text = path.read_text()
    assert "Mo et al." in text and "github.com/alinlab/s-clip" in text


def test_the_order_is_deterministic_and_sliced_per_process():
    one = Schedule(seed=3, n_labeled=50, n_unlabeled=23, batch=8, unlabeled=6, world=1)
    two = [Schedule(seed=3, n_labeled=50, n_unlabeled=23, batch=4, unlabeled=3, world=2, rank=r) for r in (0, 1)]
    assert one.steps_per_epoch == two[0].steps_per_epoch == 6          # 50 // 8: the last partial batch dropped
    rows = one.labeled(2)
    assert rows.shape == (6, 8) and len(set(rows.ravel())) == 48
    assert np.array_equal(rows, Schedule(seed=3, n_labeled=50, n_unlabeled=23, batch=8, unlabeled=6).labeled(2))
    assert not np.array_equal(rows, one.labeled(3))
    for step in range(6):
        assert np.array_equal(np.concatenate([s.mine(rows[step], 4) for s in two]), rows[step])
        positions = one.unlabeled_positions(step)
        assert np.array_equal(np.concatenate([s.mine(two[0].unlabeled_positions(step), 3) for s in two]), positions)
    drawn = one.unlabeled_items(np.arange(46))                          # two whole cycles of the 23 images
    assert sorted(drawn[:23]) == list(range(23)) and sorted(drawn[23:]) == list(range(23))
    counts = np.array([1, 5, 3, 5])
    assert np.array_equal(one.captions(4, counts), one.captions(4, counts)) and (one.captions(4, counts) < counts).all()


def test_cosine_schedule_with_warmup():
    assert lr_at(0, 1.0, 10, 100) == pytest.approx(0.1) and lr_at(9, 1.0, 10, 100) == pytest.approx(1.0)
    assert lr_at(10, 1.0, 10, 100) == pytest.approx(1.0) and lr_at(55, 1.0, 10, 100) == pytest.approx(0.5)
    assert lr_at(99, 1.0, 10, 100) == pytest.approx(0.5 * (1 + math.cos(math.pi * 89 / 90)))
    assert lr_at(0, 1.0, 0, 100) == pytest.approx(1.0)


@pytest.fixture(scope="module")
def tiny():
    return build_model(ModelSpec("tiny-vit"), train=True)




@pytest.mark.parametrize("mode", ["all", "text", "image", "heads", "ln"])
def test_trainable_modes_train_what_they_say(tiny, mode):
    model = TrainModel(build_model(ModelSpec("tiny-vit"), train=True).model, mode, tiny.embed_dim)
    trains = {n for n, p in model.clip.named_parameters() if p.requires_grad}
    towers = {tower_of(n) for n in trains}
    assert "logit_scale" in trains
    if mode == "all":
        assert towers == {IMAGE_TOWER, TEXT_TOWER, None}
    elif mode == "text":
        assert towers == {TEXT_TOWER, None}
    elif mode == "image":
        assert towers == {IMAGE_TOWER, None}
    elif mode == "heads":
        assert trains == {"logit_scale"} and model.image_adapter.weight.requires_grad
    else:
        norms = {n for n, m in model.clip.named_modules() if isinstance(m, torch.nn.LayerNorm)}
        assert trains - {"logit_scale"} and all(n.rsplit(".", 1)[0] in norms for n in trains - {"logit_scale"})
    groups = param_groups(model, 0.2)
    assert all(p.ndim < 2 for p in groups[0]["params"] if p is not model.clip.logit_scale and
               not any(p is a.weight for a in (model.image_adapter, model.text_adapter) if a is not None))


def test_a_locked_tower_does_not_move(tiny):
    model = TrainModel(build_model(ModelSpec("tiny-vit"), train=True).model, "text", tiny.embed_dim).train()
    before = weight_digests(model.clip.state_dict())
    opt = build_optimizer(model, TrainConfig(lr=1e-2))
    tokens = tiny.tokenizer(["a red circle", "two blue squares"])
    f = model({"image_features": F.normalize(torch.randn(2, tiny.embed_dim), dim=-1), "text": tokens})
    (f["image"] @ f["text"].T).sum().backward()
    opt.step()
    after = weight_digests(model.clip.state_dict())
    assert after[IMAGE_TOWER] == before[IMAGE_TOWER] and after[TEXT_TOWER] != before[TEXT_TOWER]


def test_heads_adapters_fold_into_a_plain_open_clip_model(tiny):
    model = TrainModel(build_model(ModelSpec("tiny-vit"), train=True).model, "heads", tiny.embed_dim).eval()
    with torch.no_grad():
        model.image_adapter.weight.add_(0.1 * torch.randn(tiny.embed_dim, tiny.embed_dim))
        model.text_adapter.weight.add_(0.1 * torch.randn(tiny.embed_dim, tiny.embed_dim))
    pixels, tokens = torch.randn(3, 3, 64, 64), tiny.tokenizer(["a lake", "a city", "a forest"])
    plain = open_clip.create_model("tiny-vit", pretrained=None)
    plain.load_state_dict(model.deployable_state())
    plain.eval()
    with torch.no_grad():
        assert torch.allclose(F.normalize(plain.encode_image(pixels), dim=-1), model.images(pixels), atol=1e-5)
        assert torch.allclose(F.normalize(plain.encode_text(tokens), dim=-1), model.texts(tokens), atol=1e-5)
        # the cached (already normalised) vectors give the same directions
        cached = F.normalize(plain.encode_image(pixels), dim=-1)
        base = F.normalize(model.clip.encode_image(pixels), dim=-1)
        assert torch.allclose(model.images(features=base), cached, atol=1e-5)


def test_a_checkpoint_that_records_quick_gelu_loads_with_it(tmp_path, tiny):
    """OpenAI's weights use QuickGELU; a checkpoint trained from them says so in its config, and the
    model registry builds it so (else the trained RN50 would load with plain GELU)."""
    from open_clip.model import QuickGELU
    from clipstore.features.checkpoints import save_checkpoint
    save_checkpoint(tmp_path / "q.safetensors", tiny.model.state_dict(), {"model": "tiny-vit", "quick_gelu": True})
    quick = build_model(ModelSpec(checkpoint=tmp_path / "q.safetensors"))
    assert quick.identity["config"].get("quick_gelu") and any(isinstance(m, QuickGELU) for m in quick.model.modules())
    assert quick.text_fingerprint != tiny.text_fingerprint and not tiny.identity["config"].get("quick_gelu")
