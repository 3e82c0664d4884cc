"""clipstore's checkpoint files: the format the trainer writes and every loader reads.

A checkpoint is `{"format": CHECKPOINT_FORMAT, "model": state_dict, "config": {"model": arch,
...optional "preprocess"}, **extras}`, saved as `.safetensors` (weights + config as metadata) or
as a torch file. Reading never runs pickle: torch files load with `weights_only=True`, and a bare
state_dict or open_clip's `{"state_dict": ...}` (DDP/torch.compile prefixes stripped) load too.
See docs/models.md."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import torch

from clipstore.warehouse.errors import ClipstoreError, InputError, NotFoundError

CHECKPOINT_FORMAT = "clipstore.checkpoint.v1"
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")   # DistributedDataParallel, torch.compile


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
