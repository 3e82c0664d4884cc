"""The model registry: which CLIP a run uses, loaded the same way everywhere, with a fingerprint.

A `ModelSpec` names an open_clip architecture and where its weights come from:
  - a pretrained tag (`--pretrained laion2b_s34b_b79k`): read from the local open_clip/Hugging Face
    cache, downloaded only when the user allows it (`allow_download=True`);
  - a local checkpoint file (`.safetensors`, or a torch file read with `weights_only=True`: never
    pickle), as a bare state_dict, open_clip's `{"state_dict": ...}` (DDP "module." prefixes too)
    or clipstore's own format (`make_checkpoint`), which also names its architecture;
  - a seeded random init: the registered test configs `tiny-vit` and `tiny-rn` (model_configs/),
    or any architecture with `pretrained="random"` (benchmarks).

The fingerprint is SHA-256 over the architecture config, the SHA-256 of the weights (the
state_dict's tensors in key order, so the same weights hash alike in any file format), the
preprocessing config, the tokenizer and the precision. Embedding caches key on it: a changed
checkpoint or preprocessing gives a new fingerprint, and nothing else does."""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import logging
import os
import pickle
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import open_clip
import torch
from open_clip.tokenizer import SimpleTokenizer, default_bpe
from open_clip.transform import PreprocessCfg, image_transform_v2

from clipstore.warehouse.errors import ClipstoreError, InputError, NotFoundError
from clipstore.warehouse.hashing import canonical_json

CONFIG_DIR = Path(__file__).with_name("model_configs")
TEST_MODELS = tuple(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))   # random init, seeded
RANDOM = "random"                       # pretrained="random": a seeded random init of any architecture
PRECISIONS = ("fp32", "fp16", "bf16")
CHECKPOINT_FORMAT = "clipstore.checkpoint.v1"
_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode", "fill_color")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")   # DistributedDataParallel, torch.compile

open_clip.add_model_config(CONFIG_DIR)


@dataclass(frozen=True)
class ModelSpec:
    """What the user asked for; `load_model` turns it into a `LoadedModel`.

    model: open_clip architecture (`ViT-B-32`, `RN50`, `tiny-vit`); may be None when `checkpoint`
        is a clipstore checkpoint, which names its architecture.
    pretrained: an open_clip pretrained tag, or "random" for a seeded random init.
    checkpoint: a local weights file (.safetensors, .pt/.pth/.bin read weights-only).
    allow_download: fetch a pretrained tag's weights when they are not cached locally.
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

    @property
    def label(self) -> str:
        """Short and stable: `tiny-vit`, `ViT-B-32@laion2b_s34b_b79k`, `tiny-vit@round3` (a checkpoint's stem)."""
        arch = self.model or "checkpoint"
        if self.checkpoint is not None:
            return f"{arch}@{Path(self.checkpoint).stem}"
        return f"{arch}@{self.pretrained}" if self.pretrained else arch


@dataclass
class LoadedModel:
    """A model ready to embed: eval mode on its device, with its eval preprocess and tokenizer."""

    spec: ModelSpec
    arch: str
    model: torch.nn.Module
    preprocess: Callable            # PIL image -> float tensor (C, H, W)
    tokenizer: Callable             # list[str] -> int tensor (n, context_length)
    device: torch.device
    precision: str
    identity: dict                  # everything the fingerprint covers, readable
    fingerprint: str

    @property
    def name(self) -> str:
        """The model's part of artifact names: the spec's label, with the architecture filled in."""
        return replace(self.spec, model=self.arch).label

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


# ---- checkpoints ---------------------------------------------------------------------------
def make_checkpoint(state_dict: dict, config: dict, **extra) -> dict:
    """clipstore's checkpoint format (the trainer writes it): {"format", "model": state_dict,
    "config": {"model": architecture, ...optional "preprocess": {...}}, **extra (optimiser, step, ...)}.
    Save it with `save_checkpoint` or torch.save; it loads with weights_only=True as long as the
    extras are tensors, numbers, strings, lists and dicts."""
    if not isinstance(config, dict) or not config.get("model"):
        raise ClipstoreError("a clipstore checkpoint's config must name its architecture",
                             fix='pass config={"model": "ViT-B-32", ...}')
    return {"format": CHECKPOINT_FORMAT, "model": dict(state_dict), "config": dict(config), **extra}


def save_checkpoint(path: str | Path, state_dict: dict, config: dict, **extra) -> Path:
    """Write a clipstore checkpoint: `.safetensors` (weights + config as metadata, no extras) or
    a torch file. Written to a temp file and renamed, so a reader never sees half a checkpoint."""
    path = Path(path)
    payload = make_checkpoint(state_dict, config, **extra)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if path.suffix == ".safetensors":
        if extra:
            raise ClipstoreError("a .safetensors checkpoint holds weights and config only",
                                 fix=f"save optimiser state etc. in a torch file (.pt); extras: {sorted(extra)}")
        from safetensors.torch import save_file
        tensors = {k: v.detach().contiguous().cpu() for k, v in payload["model"].items()}
        save_file(tensors, str(tmp), metadata={"format": CHECKPOINT_FORMAT,
                                               "config": json.dumps(payload["config"], sort_keys=True)})
    else:
        torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """(state_dict, clipstore config or None) from a checkpoint file, never running pickle."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"checkpoint {path} does not exist", fix="pass the path of a .safetensors/.pt file")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ClipstoreError(
            f"checkpoint {path.name} holds Python objects besides tensors; clipstore loads weights only "
            "and never runs pickle", where=f"{path}: {str(exc).splitlines()[0][:300]}",
            fix="re-save just the weights: torch.save(model.state_dict(), 'weights.pt'), or safetensors") from None
    except Exception as exc:   # truncated zip, not a torch file at all, ...
        raise InputError(f"cannot read checkpoint {path.name}: {str(exc).splitlines()[0][:300]}", where=str(path),
                         fix="check the file is a complete torch (.pt/.pth/.bin) or .safetensors checkpoint") from None
    return _unwrap(payload, path)


def _read_safetensors(path: Path) -> tuple[dict, dict | None]:
    from safetensors import safe_open
    from safetensors.torch import load_file
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        state = load_file(str(path))
    except Exception as exc:
        raise InputError(f"cannot read safetensors checkpoint {path.name}: {str(exc).splitlines()[0][:300]}",
                         where=str(path), fix="check the file is a complete .safetensors file") from None
    config = json.loads(metadata["config"]) if metadata.get("format") == CHECKPOINT_FORMAT else None
    return _strip_prefixes(state), config


def _unwrap(payload, path: Path) -> tuple[dict, dict | None]:
    config = None
    if isinstance(payload, dict) and isinstance(payload.get("model"), dict) and isinstance(payload.get("config"), dict):
        state, config = payload["model"], payload["config"]            # clipstore
    elif isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        state = payload["state_dict"]                                   # open_clip's trainer
    else:
        state = payload                                                 # a bare state_dict
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        keys = sorted(payload)[:8] if isinstance(payload, dict) else type(payload).__name__
        raise InputError(f"no state_dict in checkpoint {path.name} (top-level: {keys})", where=str(path),
                         fix='expected a state_dict, {"state_dict": ...} or a clipstore checkpoint {"model", "config"}')
    return _strip_prefixes(state), config


def _strip_prefixes(state: dict) -> dict:
    for prefix in _WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


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


# ---- pretrained tags -------------------------------------------------------------------------
def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _cached_pretrained(cfg: dict) -> str | None:
    """The local file of a pretrained tag when a previous download left it in the cache."""
    if cfg.get("file"):
        return cfg["file"] if os.path.isfile(cfg["file"]) else None
    if cfg.get("hf_hub"):
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return None
        repo, filename = os.path.split(cfg["hf_hub"])
        if not filename:   # "org/repo/" means the repo's default file
            repo, filename = repo.rstrip("/"), "open_clip_pytorch_model.bin"
        stem = filename.rsplit(".", 1)[0]
        for name in (f"{stem}.safetensors", "open_clip_model.safetensors", filename):   # open_clip prefers these
            hit = try_to_load_from_cache(repo, name)
            if isinstance(hit, str):
                return hit
    if cfg.get("url"):
        local = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(cfg["url"])
        if local.is_file():
            return str(local)
    return None


def _pretrained_weights(arch: str, tag: str, allow_download: bool) -> tuple[str, dict]:
    """(local weights file, pretrained config) of an open_clip tag; downloads only when allowed."""
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise InputError(f"{arch} has no pretrained tag {tag!r}",
                         fix=(f"use one of: {', '.join(tags)}" if tags else f"open_clip has no pretrained {arch}")
                         + "; or pass --checkpoint FILE")
    cached = _cached_pretrained(cfg)
    if cached:
        return cached, cfg
    how = "pass --checkpoint FILE with weights you downloaded elsewhere"
    if not allow_download:
        raise ClipstoreError(f"the weights of {arch} ({tag}) are not on this machine, and downloading is off",
                             fix=f"add --allow-download where the network allows it, or {how}")
    if _offline() and not cfg.get("hf_hub"):
        raise ClipstoreError(f"cannot download {arch} ({tag}): HF_HUB_OFFLINE is set", fix=f"unset it, or {how}")
    try:
        path = open_clip.download_pretrained(cfg)
    except Exception as exc:   # no network, offline mode, hub errors: all end the same way for the user
        detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        offline = " (HF_HUB_OFFLINE is set)" if _offline() else ""
        raise ClipstoreError(f"could not download the weights of {arch} ({tag}){offline}: {detail}",
                             fix=f"check the network, or {how}") from None
    if not path or not os.path.isfile(path):
        raise ClipstoreError(f"open_clip returned no weights file for {arch} ({tag})", fix=how)
    return path, cfg


# ---- identity ---------------------------------------------------------------------------------
def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over (key, dtype, shape, bytes) of every tensor, in key order."""
    h = hashlib.sha256()
    for key, tensor in state.items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{key}\0{str(t.dtype)}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


_WEIGHT_DIGESTS: dict[tuple, str] = {}  # (source, stat) -> weights digest: loading a model again hashes nothing


@lru_cache(maxsize=None)
def _file_sha256(path: str) -> str:
    from clipstore.warehouse.hashing import file_sha256
    return file_sha256(path)


def tokenizer_identity(tokenizer) -> dict:
    ident = {"class": type(tokenizer).__name__, "context_length": getattr(tokenizer, "context_length", None)}
    if isinstance(tokenizer, SimpleTokenizer):
        ident.update(vocab_size=tokenizer.vocab_size, vocab_sha256=_file_sha256(default_bpe()),
                     clean=getattr(tokenizer.clean_fn, "__name__", str(tokenizer.clean_fn)),
                     reduction=getattr(tokenizer.reduction_fn, "__name__", None))
    else:
        ident["name"] = getattr(tokenizer, "tokenizer_name", None) or repr(tokenizer)[:200]
    return ident


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


def load_model(spec: ModelSpec) -> LoadedModel:
    """Build the model a spec names, load its weights, fingerprint it; raises ClipstoreError with a
    fix for anything the user can correct (unknown name, missing weights, mismatched checkpoint)."""
    if spec.pretrained and spec.checkpoint:
        raise InputError("pass either --pretrained or --checkpoint, not both")
    device = _resolve_device(spec)
    precision = _resolve_precision(spec, device)
    state, weights_source, ckpt_config, pretrained_cfg = None, None, None, {}

    if spec.checkpoint is not None:
        path = Path(spec.checkpoint).resolve()
        state, ckpt_config = read_checkpoint(path)
        weights_source = str(path)
        trained_as = (ckpt_config or {}).get("model")
        if spec.model and trained_as and spec.model != trained_as:
            raise InputError(f"the checkpoint was trained as {trained_as}, not {spec.model}", where=str(path),
                             fix=f"drop --model (the checkpoint names its architecture) or pass --model {trained_as}")
        arch = _check_arch(spec.model or trained_as)
    else:
        arch = _check_arch(spec.model)
        if spec.pretrained and spec.pretrained != RANDOM:
            if os.path.isfile(spec.pretrained):   # open_clip accepts a path as `pretrained`: treat it as a checkpoint
                return load_model(replace(spec, pretrained=None, checkpoint=spec.pretrained))
            weights_source, pretrained_cfg = _pretrained_weights(arch, spec.pretrained, spec.allow_download)
            state, _ = read_checkpoint(weights_source)
        elif not spec.pretrained and arch not in TEST_MODELS:
            raise ClipstoreError(
                f"{arch} needs weights: none were given", fix=f"pass --pretrained TAG (tags: "
                f"{', '.join(open_clip.list_pretrained_tags_by_model(arch)[:6]) or 'none'}) with --allow-download "
                "where the network allows, or --checkpoint FILE; `--pretrained random` gives a seeded random init")

    preprocess_overrides = {k: v for k, v in pretrained_cfg.items() if k in _PREPROCESS_KEYS}
    preprocess_overrides.update((ckpt_config or {}).get("preprocess") or {})
    preprocess_overrides.update(spec.preprocess or {})
    unknown = sorted(set(preprocess_overrides) - set(_PREPROCESS_KEYS))
    if unknown:
        raise InputError(f"unknown preprocessing option(s) {unknown}", fix=f"use {', '.join(_PREPROCESS_KEYS)}")
    quick_gelu = bool(pretrained_cfg.get("quick_gelu", False))

    with _quiet_open_clip(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)   # the random init is part of the weights: seed it, leave the caller's RNG alone
        try:
            model = open_clip.create_model(arch, pretrained=None, precision="fp32", device="cpu",
                                           force_quick_gelu=quick_gelu,
                                           force_preprocess_cfg=preprocess_overrides or None)
        except (AssertionError, ValueError, KeyError) as exc:
            raise InputError(f"open_clip cannot build {arch} with preprocessing {preprocess_overrides}: {exc}",
                             fix="check the preprocessing options") from None
    if state is not None:
        model.load_state_dict(_check_compatible(model, state, arch, weights_source), strict=True)
        del state

    config = open_clip.get_model_config(arch)
    if quick_gelu:
        config["quick_gelu"] = True
    preprocess_cfg = dict(model.visual.preprocess_cfg)
    try:
        preprocess = image_transform_v2(PreprocessCfg(**preprocess_cfg), is_train=False)
    except (AssertionError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"invalid preprocessing {preprocess_overrides}: {exc}",
                         fix="check mean/std (3 floats), interpolation (bicubic, bilinear, nearest) "
                             "and resize_mode (shortest, longest, squash)") from None
    tokenizer = _tokenizer(arch)
    identity = {"arch": arch, "config": config,
                "weights_sha256": _weights_digest(model, weights_source, arch, spec.seed),
                "preprocess": _jsonable(preprocess_cfg), "tokenizer": tokenizer_identity(tokenizer),
                "precision": precision}
    fingerprint = hashlib.sha256(canonical_json(identity).encode()).hexdigest()
    identity["weights_source"] = weights_source or f"random init, seed {spec.seed}"  # shown, not hashed
    model.to(device).eval().requires_grad_(False)
    return LoadedModel(spec=spec, arch=arch, model=model, preprocess=preprocess, tokenizer=tokenizer,
                       device=device, precision=precision, identity=identity, fingerprint=fingerprint)


@lru_cache(maxsize=8)
def _tokenizer(arch: str):
    """Building the BPE tables takes a while; a tokenizer holds no per-call state worth isolating."""
    return open_clip.get_tokenizer(arch)


def _weights_digest(model: torch.nn.Module, source: str | None, arch: str, seed: int) -> str:
    """Hash the loaded weights once per file version (or random init) per process."""
    if source is None:
        key: tuple = ("random", arch, seed, torch.__version__)
    else:
        st = os.stat(source)
        key = ("file", arch, source, st.st_size, st.st_mtime_ns)
    if key not in _WEIGHT_DIGESTS:
        _WEIGHT_DIGESTS[key] = weights_sha256(model.state_dict())
    return _WEIGHT_DIGESTS[key]


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
