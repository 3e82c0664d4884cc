"""open_clip pretrained tags: found in the local open_clip / Hugging Face cache, downloaded only
when the user allows it (`--allow-download`); every failure is one clear error with a fix."""

from __future__ import annotations

import os
from pathlib import Path

import open_clip

from clipstore.warehouse.errors import ClipstoreError, InputError


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


def pretrained_weights(arch: str, tag: str, allow_download: bool) -> tuple[str, dict]:
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
