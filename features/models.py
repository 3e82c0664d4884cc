"""The model registry: which CLIP a run uses, loaded the same way everywhere, with per-tower
fingerprints. Three steps, each usable on its own:

  resolve_weights(spec)         where the weights come from, read into a state_dict:
      - a pretrained tag (`--pretrained laion2b_s34b_b79k`, features/pretrained.py): the local
        open_clip/Hugging Face cache, downloaded only with `allow_download=True`;
      - a local checkpoint file (features/checkpoints.py: `.safetensors`, or a torch file read
        weights-only, never pickle), or a registered checkpoint artifact (checkpoint_artifacts.py);
      - a seeded random init: the test configs `tiny-vit` / `tiny-rn` (model_configs/), or any
        architecture with `pretrained="random"` (benchmarks).
  build_model(spec, train=...)  the open_clip model with those weights: `train=False` (what
      `load_model` returns) is eval mode, no gradients, the eval transform; `train=True` is train
      mode with requires_grad and open_clip's train transform, for the trainer.
  identity (features/identity.py) fingerprints each tower: image caches key on the image tower,
      text caches on the text tower, and `fingerprint` covers the whole model.

See docs/models.md."""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import open_clip
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2

from clipstore.features.checkpoints import (CHECKPOINT_FORMAT, make_checkpoint, read_checkpoint,  # noqa: F401
                                            save_checkpoint)
from clipstore.features.identity import (IMAGE_TOWER, TEXT_TOWER, fingerprint, jsonable, tokenizer_identity,
                                         tower_identities, weight_digests, weights_sha256)  # noqa: F401
from clipstore.features.pretrained import pretrained_weights
from clipstore.features.tokenizers import load_tokenizer
from clipstore.warehouse.errors import ClipstoreError, InputError

CONFIG_DIR = Path(__file__).with_name("model_configs")
TEST_MODELS = tuple(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))   # random init, seeded
RANDOM = "random"                       # pretrained="random": a seeded random init of any architecture
PRECISIONS = ("fp32", "fp16", "bf16")
_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode", "fill_color")
NAME_DIGEST_CHARS = 12                  # a checkpoint's name: <arch>@<first characters of its weights digest>

open_clip.add_model_config(CONFIG_DIR)


@dataclass(frozen=True)
class ModelSpec:
    """What the user asked for; `load_model` / `build_model` turn it into a `LoadedModel`.

    model: open_clip architecture (`ViT-B-32`, `RN50`, `tiny-vit`); may be None when `checkpoint`
        is a clipstore checkpoint, which names its architecture. A checkpoint artifact's id or
        name is accepted here too, once resolved against a store (`resolve_model_spec`).
    pretrained: an open_clip pretrained tag, or "random" for a seeded random init.
    checkpoint: a local weights file (.safetensors, .pt/.pth/.bin read weights-only).
    allow_download: fetch a pretrained tag's weights (or a Hugging Face tokenizer) when not cached.
    precision: fp32 | fp16 | bf16 (autocast dtype); None = bf16 on CUDA, fp32 on CPU.
    device: torch device string; None = cuda when available, else cpu.
    preprocess: overrides of open_clip's preprocessing (mean, std, interpolation, resize_mode, fill_color).
    seed: the random init's seed (test models and pretrained="random")."""

    model: str | None = None
    pretrained: str | None = None
    checkpoint: str | Path | None = None
    allow_download: bool = False
    precision: str | None = None
    device: str | None = None
    preprocess: dict | None = field(default=None, hash=False)
    seed: int = 0


@dataclass
class Weights:
    """Resolved weights: the architecture, its state_dict (None = the seeded random init) and
    what the source says about preprocessing."""

    arch: str
    state: dict[str, torch.Tensor] | None
    source: str | None                  # the weights file, None for a random init
    preprocess: dict                    # overrides from the pretrained config / checkpoint / spec
    quick_gelu: bool = False


@dataclass
class LoadedModel:
    """A model with its preprocess, tokenizer and identity. `train=False`: eval mode on its device,
    no gradients, the eval preprocess (what embedding uses); `train=True`: train mode,
    requires_grad, open_clip's train transform."""

    spec: ModelSpec
    arch: str
    model: torch.nn.Module
    preprocess: Callable            # PIL image -> float tensor (C, H, W)
    tokenizer: Callable             # list[str] -> int tensor (n, context_length)
    device: torch.device
    precision: str
    identity: dict                  # everything the fingerprints cover, readable; "towers" per tower
    fingerprint: str                # the whole model
    tower_fingerprints: dict = field(default_factory=dict)   # "image" / "text" -> fingerprint
    train: bool = False

    @property
    def image_fingerprint(self) -> str:
        return self.tower_fingerprints[IMAGE_TOWER]

    @property
    def text_fingerprint(self) -> str:
        return self.tower_fingerprints[TEXT_TOWER]

    @property
    def name(self) -> str:
        """The model's part of artifact names, stable and short: `tiny-vit`, `ViT-B-32@openai`,
        `tiny-vit@3f2a9c41d0b7` (a checkpoint, by the digest of its weights, not its file name)."""
        if self.spec.checkpoint is not None:
            return f"{self.arch}@{self.identity['weights_sha256'][:NAME_DIGEST_CHARS]}"
        return f"{self.arch}@{self.spec.pretrained}" if self.spec.pretrained else self.arch

    @property
    def embed_dim(self) -> int:
        return int(self.identity["config"]["embed_dim"])

    def autocast(self):
        """Mixed precision for the forward pass; a no-op at fp32."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Raw (unnormalised) image features, float32 on the CPU."""
        pixels = pixels.to(self.device, non_blocking=True)
        with self.autocast():
            features = self.model.encode_image(pixels)
        return features.float().cpu()

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """Raw (unnormalised) text features, float32 on the CPU."""
        tokens = self.tokenizer(list(texts)).to(self.device, non_blocking=True)
        with self.autocast():
            features = self.model.encode_text(tokens)
        return features.float().cpu()


# ---- fitting weights to the architecture ------------------------------------------------
def _check_compatible(model: torch.nn.Module, state: dict, arch: str, source: str) -> dict:
    """The state_dict, fitted to the model (open_clip's scalar/1-d logit_scale); else a clear error
    naming the first offending keys."""
    expected = model.state_dict()
    state = dict(state)
    for key in ("logit_scale", "logit_bias"):
        if key in state and key in expected and state[key].numel() == expected[key].numel():
            state[key] = state[key].reshape(expected[key].shape)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        found = []
        if missing:
            found.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            found.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            found.append(f"{len(shapes)} with another shape (checkpoint vs {arch}: {'; '.join(shapes[:3])})")
        raise InputError(f"the weights do not fit architecture {arch}: " + ", ".join(found), where=source,
                         fix="pass the --model the checkpoint was trained with")
    return state


# ---- loading ----------------------------------------------------------------------------------
def _resolve_device(spec: ModelSpec) -> torch.device:
    if spec.device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec.device)
    except RuntimeError:
        raise InputError(f"unknown device {spec.device!r}", fix="use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {spec.device} requested but no CUDA GPU is visible", fix="use --device cpu")
    return device


def _resolve_precision(spec: ModelSpec, device: torch.device) -> str:
    if spec.precision is None:
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if spec.precision not in PRECISIONS:
        raise InputError(f"unknown precision {spec.precision!r}", fix=f"use one of: {', '.join(PRECISIONS)}")
    return spec.precision


def _check_arch(arch: str | None) -> str:
    if not arch:
        raise InputError("no model architecture given", fix="pass --model NAME (e.g. ViT-B-32), or a clipstore "
                                                             "checkpoint, which names its architecture")
    if arch not in open_clip.list_models():
        close = difflib.get_close_matches(arch, open_clip.list_models(), n=5)
        raise InputError(f"unknown model architecture {arch!r}",
                         fix=(f"did you mean {', '.join(close)}? " if close else "")
                         + "`python -c 'import open_clip; print(open_clip.list_models())'` lists them")
    return arch


@contextlib.contextmanager
def _quiet_open_clip():
    """open_clip logs a warning whenever it creates a model without weights; we load ours after."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _check_finite(state: dict, source: str) -> None:
    """NaN/Inf weights (a diverged run's checkpoint) would embed into NaN vectors: refuse them."""
    bad = [(k, int((~torch.isfinite(v)).sum())) for k, v in state.items()
           if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        listed = ", ".join(f"{k} ({n} of {state[k].numel()})" for k, n in bad[:3])
        raise InputError(f"the weights hold NaN or infinite values in {len(bad)} tensor(s): {listed}", where=source,
                         fix="use a checkpoint from before training diverged")


def resolve_weights(spec: ModelSpec) -> Weights:
    """The architecture and weights a spec names, read (not yet loaded into a model); raises
    ClipstoreError with a fix for anything the user can correct."""
    if spec.pretrained and spec.checkpoint:
        raise InputError("pass either --pretrained or --checkpoint, not both")
    state, source, ckpt_config, pretrained_cfg = None, None, None, {}
    if spec.checkpoint is not None:
        path = Path(spec.checkpoint).resolve()
        state, ckpt_config = read_checkpoint(path)
        source = str(path)
        trained_as = (ckpt_config or {}).get("model")
        if spec.model and trained_as and spec.model != trained_as:
            raise InputError(f"the checkpoint was trained as {trained_as}, not {spec.model}", where=str(path),
                             fix=f"drop --model (the checkpoint names its architecture) or pass --model {trained_as}")
        arch = _check_arch(spec.model or trained_as)
    else:
        arch = _check_arch(spec.model)
        if spec.pretrained and spec.pretrained != RANDOM:
            if os.path.isfile(spec.pretrained):   # open_clip accepts a path as `pretrained`: treat it as a checkpoint
                return resolve_weights(replace(spec, pretrained=None, checkpoint=spec.pretrained))
            source, pretrained_cfg = pretrained_weights(arch, spec.pretrained, spec.allow_download)
            state, _ = read_checkpoint(source)
        elif not spec.pretrained and arch not in TEST_MODELS:
            raise ClipstoreError(
                f"{arch} needs weights: none were given", fix=f"pass --pretrained TAG (tags: "
                f"{', '.join(open_clip.list_pretrained_tags_by_model(arch)[:6]) or 'none'}) with --allow-download "
                "where the network allows, or --checkpoint FILE; `--pretrained random` gives a seeded random init")
    if state is not None:
        _check_finite(state, source)
    overrides = {k: v for k, v in pretrained_cfg.items() if k in _PREPROCESS_KEYS}
    overrides.update((ckpt_config or {}).get("preprocess") or {})
    overrides.update(spec.preprocess or {})
    unknown = sorted(set(overrides) - set(_PREPROCESS_KEYS))
    if unknown:
        raise InputError(f"unknown preprocessing option(s) {unknown}", fix=f"use {', '.join(_PREPROCESS_KEYS)}")
    # QuickGELU comes with OpenAI's weights; a checkpoint trained from them records it in its config
    quick_gelu = bool(pretrained_cfg.get("quick_gelu", False) or (ckpt_config or {}).get("quick_gelu", False))
    return Weights(arch, state, source, overrides, quick_gelu)


def load_model(spec: ModelSpec) -> LoadedModel:
    """The eval-mode model a spec names (what embedding uses): `build_model(spec, train=False)`."""
    return build_model(spec, train=False)


def build_model(spec: ModelSpec, train: bool = False) -> LoadedModel:
    """Build the model a spec names with its weights and identity. `train=True`: train mode,
    requires_grad on every parameter, open_clip's train transform; else eval mode, frozen, the
    eval transform. The fingerprints are the same either way (they describe the weights)."""
    device = _resolve_device(spec)
    precision = _resolve_precision(spec, device)
    weights = resolve_weights(spec)
    arch = weights.arch
    tokenizer = load_tokenizer(arch, spec.allow_download)   # before the (slow) build: a missing package fails fast
    with _quiet_open_clip(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)   # the random init is part of the weights: seed it, leave the caller's RNG alone
        try:
            model = open_clip.create_model(arch, pretrained=None, precision="fp32", device="cpu",
                                           force_quick_gelu=weights.quick_gelu,
                                           force_preprocess_cfg=weights.preprocess or None)
        except (AssertionError, ValueError, KeyError) as exc:
            raise InputError(f"open_clip cannot build {arch} with preprocessing {weights.preprocess}: {exc}",
                             fix="check the preprocessing options") from None
    if weights.state is not None:
        model.load_state_dict(_check_compatible(model, weights.state, arch, weights.source), strict=True)
        weights.state = None

    config = open_clip.get_model_config(arch)
    if weights.quick_gelu:
        config["quick_gelu"] = True
    preprocess_cfg = dict(model.visual.preprocess_cfg)
    try:
        preprocess = image_transform_v2(PreprocessCfg(**preprocess_cfg), is_train=train)
    except (AssertionError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"invalid preprocessing {weights.preprocess}: {exc}",
                         fix="check mean/std (3 floats), interpolation (bicubic, bilinear, nearest) "
                             "and resize_mode (shortest, longest, squash)") from None
    digests = _weight_digests(model, weights.source, arch, spec.seed)
    tok = tokenizer_identity(tokenizer)
    identity = {"arch": arch, "config": config, "weights_sha256": digests["model"],
                "preprocess": jsonable(preprocess_cfg), "tokenizer": tok, "precision": precision}
    whole = fingerprint(identity)
    towers = tower_identities(config, digests, preprocess_cfg, tok, precision)
    identity["towers"] = towers                                                          # shown, hashed per tower
    identity["weights_source"] = weights.source or f"random init, seed {spec.seed}"      # shown, not hashed
    model.to(device)
    if train:
        model.train().requires_grad_(True)
    else:
        model.eval().requires_grad_(False)
    return LoadedModel(spec=spec, arch=arch, model=model, preprocess=preprocess, tokenizer=tokenizer,
                       device=device, precision=precision, identity=identity, fingerprint=whole,
                       tower_fingerprints={t: fingerprint(i) for t, i in towers.items()}, train=train)


_WEIGHT_DIGESTS: dict[tuple, dict] = {}  # (source, stat) -> digests: loading a model again hashes nothing


def _weight_digests(model: torch.nn.Module, source: str | None, arch: str, seed: int) -> dict[str, str]:
    """Hash the loaded weights once per file version (or random init) per process."""
    if source is None:
        key: tuple = ("random", arch, seed, torch.__version__)
    else:
        st = os.stat(source)
        key = ("file", arch, source, st.st_size, st.st_mtime_ns)
    if key not in _WEIGHT_DIGESTS:
        _WEIGHT_DIGESTS[key] = weight_digests(model.state_dict())
    return _WEIGHT_DIGESTS[key]
