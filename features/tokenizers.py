"""The tokenizer of an architecture, loaded without surprises.

Most CLIPs use open_clip's built-in BPE tokenizer (no extra package, no files to fetch). Others
(SigLIP, the RoBERTa/mT5/NLLB text towers) use a Hugging Face tokenizer: that needs the
`transformers` package, and its files come from the Hugging Face Hub. They are read from the
local cache only, unless the user allowed downloads (`--allow-download`): the Hub client is
switched to offline mode for the load, so nothing is fetched behind the user's back."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from functools import lru_cache

import open_clip

from clipstore.warehouse.errors import ClipstoreError

_OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def hf_tokenizer_name(arch: str) -> str | None:
    """The Hugging Face tokenizer an architecture uses, or None for open_clip's own BPE."""
    text_cfg = (open_clip.get_model_config(arch) or {}).get("text_cfg", {})
    name = text_cfg.get("hf_tokenizer_name")
    if name:
        return name
    return f"SigLIP ({arch})" if "siglip" in arch.lower() else None


def load_tokenizer(arch: str, allow_download: bool = False):
    """The tokenizer open_clip pairs with `arch`; raises ClipstoreError with a fix when it needs a
    package that is not installed or files that are not cached and may not be downloaded."""
    hf_name = hf_tokenizer_name(arch)
    if hf_name is None:
        return _builtin(arch)
    if importlib.util.find_spec("transformers") is None:
        raise ClipstoreError(f"the tokenizer of {arch} is the Hugging Face tokenizer {hf_name}, which needs the "
                             "`transformers` package (not installed)",
                             fix=f"install it into clipstore's environment: `{sys.executable} -m pip install "
                                 "transformers`, or pick a model with open_clip's own tokenizer (ViT-B-32, RN50, ...)")
    return _hf(arch, hf_name, allow_download)


@lru_cache(maxsize=8)
def _builtin(arch: str):
    """Building the BPE tables takes a while; a tokenizer holds no per-call state worth isolating."""
    return open_clip.get_tokenizer(arch)


@lru_cache(maxsize=8)
def _hf(arch: str, hf_name: str, allow_download: bool):
    try:
        with contextlib.nullcontext() if allow_download else hub_offline():
            return open_clip.get_tokenizer(arch)
    except ModuleNotFoundError as exc:   # transformers is there, one of its own optional packages is not
        raise ClipstoreError(f"the tokenizer of {arch} ({hf_name}) needs the package `{exc.name}`",
                             fix=f"`{sys.executable} -m pip install {exc.name}`") from None
    except Exception as exc:   # not cached (offline), or the hub failed
        detail = " ".join(str(exc).split())[:300] or type(exc).__name__
        if not allow_download:
            raise ClipstoreError(f"the tokenizer of {arch} ({hf_name}) is not in the local Hugging Face cache, "
                                 f"and downloading is off ({detail})",
                                 fix="add --allow-download where the network allows it (once: it is cached after)") \
                from None
        raise ClipstoreError(f"could not load the tokenizer of {arch} ({hf_name}): {detail}",
                             fix="check the network and the Hugging Face cache (HF_HOME)") from None


@contextlib.contextmanager
def hub_offline():
    """Hugging Face Hub and transformers in offline mode for the block: the environment variables
    for code that reads them per call, and the hub's constant for code that read them at import."""
    saved_env = {k: os.environ.get(k) for k in _OFFLINE_ENV}
    os.environ.update(_OFFLINE_ENV)
    constants = sys.modules.get("huggingface_hub.constants")
    saved_constant = getattr(constants, "HF_HUB_OFFLINE", None) if constants else None
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if constants is not None:
            constants.HF_HUB_OFFLINE = saved_constant
