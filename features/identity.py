"""What a model's outputs depend on, per tower, as digests: the keys of every embedding cache.

A CLIP model is two towers that never see each other's weights at inference:
  - the image tower: the `visual.*` weights, the vision config and the image preprocessing;
  - the text tower: every other weight except the logit scale/bias (token embedding, positional
    embedding, transformer, ln_final, text_projection; `text.*` in open_clip's custom-text
    models), the text config, the tokenizer and its context length.
The autocast precision belongs to both. Image caches key on the image-tower fingerprint and text
caches on the text-tower one, so a checkpoint whose training froze one tower keeps that tower's
caches valid. Weight digests hash (key, dtype, shape, bytes) in sorted key order, so the same weights
hash alike whatever file format held them."""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np
import torch
from open_clip.tokenizer import SimpleTokenizer, default_bpe

from clipstore.warehouse.hashing import canonical_json

IMAGE_TOWER, TEXT_TOWER = "image", "text"
TOWERS = (IMAGE_TOWER, TEXT_TOWER)
_SHARED_KEYS = ("logit_scale", "logit_bias")   # used by the training loss only, in neither tower


def tower_of(key: str) -> str | None:
    """Which tower a state_dict key belongs to (None: the logit scale/bias)."""
    if key.startswith("visual."):
        return IMAGE_TOWER
    return None if key in _SHARED_KEYS else TEXT_TOWER


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over (key, dtype, shape, bytes) of every tensor, in sorted key order (files list
    their tensors in different orders: safetensors sorts them, torch keeps the module's)."""
    h = hashlib.sha256()
    for key, tensor in sorted(state.items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{key}\0{str(t.dtype)}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def weight_digests(state: dict[str, torch.Tensor]) -> dict[str, str]:
    """{"model": all weights, "image": the image tower's, "text": the text tower's}."""
    return {"model": weights_sha256(state),
            IMAGE_TOWER: weights_sha256({k: v for k, v in state.items() if tower_of(k) == IMAGE_TOWER}),
            TEXT_TOWER: weights_sha256({k: v for k, v in state.items() if tower_of(k) == TEXT_TOWER})}


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


def tower_identities(config: dict, digests: dict[str, str], preprocess: dict, tokenizer: dict,
                     precision: str) -> dict[str, dict]:
    """Everything each tower's outputs depend on (readable; hashed by `fingerprint`)."""
    shared = {k: v for k, v in config.items() if k not in ("vision_cfg", "text_cfg")}   # embed_dim, quick_gelu, ...
    return {IMAGE_TOWER: {"config": {**shared, "vision_cfg": config.get("vision_cfg")},
                          "weights_sha256": digests[IMAGE_TOWER], "preprocess": jsonable(preprocess),
                          "precision": precision},
            TEXT_TOWER: {"config": {**shared, "text_cfg": config.get("text_cfg")},
                         "weights_sha256": digests[TEXT_TOWER], "tokenizer": tokenizer, "precision": precision}}


def fingerprint(identity: dict) -> str:
    return hashlib.sha256(canonical_json(identity).encode()).hexdigest()


def jsonable(value):
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
