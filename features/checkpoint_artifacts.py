"""Checkpoints as store artifacts, so a model spec can name one (`--model <checkpoint artifact id>`).

The contract (what the trainer writes and every stage reads):
  - kind "checkpoint", any name; the recipe is the weights digest (SHA-256 over the state_dict's
    tensors, features/identity.py) and the architecture, so registering the same weights again
    is a no-op whatever file they came in;
  - one file part, table `checkpoint`: `checkpoint/000000.safetensors`, a clipstore checkpoint
    (features/checkpoints.py: weights + {"model": arch, optional "preprocess"} as metadata);
  - stats: {"file": that path relative to the artifact folder, "arch", "weights_sha256",
    "tensors", "source": the file it was registered from}.
`checkpoint_path(store, ref)` returns the file; `resolve_model_spec` turns a spec whose `model`
is a checkpoint artifact id or name into one whose `checkpoint` is that file."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import open_clip

from clipstore.features.checkpoints import read_checkpoint, save_checkpoint
from clipstore.features.identity import weights_sha256
from clipstore.warehouse.errors import ClipstoreError, InputError, NotFoundError
from clipstore.warehouse.store import Artifact, Store

KIND = "checkpoint"
TABLE = "checkpoint"           # the file part's table name (a file, not a SQL view)
STAGE_VERSION = 1              # bump when the same weights would be stored otherwise


def register_checkpoint(store: Store | str | Path, path: str | Path, name: str, *, model: str | None = None,
                        wait: bool = False) -> Artifact:
    """Copy a checkpoint file into the store as a `checkpoint` artifact named `name` and return it.
    `model` names the architecture when the file does not (a bare state_dict); the weights are
    checked to fit it later, when the model is built."""
    store = store if isinstance(store, Store) else Store(store)
    if not name or not isinstance(name, str):
        raise InputError("a checkpoint artifact needs a name", fix="e.g. register_checkpoint(store, path, 'round1')")
    state, config = read_checkpoint(path)
    config = dict(config or {})
    if model and config.get("model") and model != config["model"]:
        raise InputError(f"the checkpoint was trained as {config['model']}, not {model}", where=str(path),
                         fix=f"drop model= or pass model={config['model']!r}")
    config["model"] = model or config.get("model")
    if not config["model"]:
        raise InputError(f"checkpoint {Path(path).name} does not name its architecture", where=str(path),
                         fix="pass model='ViT-B-32' (the architecture it was trained as)")
    if config["model"] not in open_clip.list_models():
        raise InputError(f"unknown model architecture {config['model']!r}", where=str(path),
                         fix="pass the open_clip architecture the checkpoint was trained as")
    digest = weights_sha256(state)
    params = {"weights_sha256": digest, "config": config}
    with store.writing(wait=wait):
        builder = store.produce(kind=KIND, name=name, stage="register_checkpoint", version=STAGE_VERSION,
                                params=params, config=params)
        if isinstance(builder, Artifact):
            return builder
        with builder.failing_on_error():
            if not builder.is_committed(0):
                tmp = builder.temp_dir("part-000000") / "000000.safetensors"
                save_checkpoint(tmp, state, config)
                builder.commit_part(0, {TABLE: (tmp, len(state))})
            [(_, _, file)] = builder.committed_parts(TABLE)
            stats = {"file": str(file.relative_to(builder.path)), "arch": config["model"], "weights_sha256": digest,
                     "tensors": len(state), "source": str(Path(path).resolve())}
            return builder.finish({"tensors": len(state)}, stats)


def find_checkpoint(store: Store, ref: str) -> Artifact | None:
    """The checkpoint artifact with this id or name, or None when there is none."""
    for art in store.list(KIND):
        if art.artifact_id == ref:
            return art
    return store.current(KIND, ref)


def checkpoint_path(store: Store, ref: str | Artifact) -> Path:
    """The checkpoint file of a checkpoint artifact (by id, name or the artifact itself)."""
    art = ref if isinstance(ref, Artifact) else find_checkpoint(store, ref)
    if art is None or art.kind != KIND:
        raise NotFoundError(f"no checkpoint artifact {ref!r} in the store", where=str(store.root),
                            fix="`clipstore ls --kind checkpoint` lists them")
    files = store.table_paths(art, TABLE)
    if art.status != "complete" or not files:
        raise ClipstoreError(f"checkpoint artifact {art.artifact_id} has no committed checkpoint file",
                             fix="register the checkpoint again")
    return files[0]


def resolve_model_spec(store: Store, spec):
    """`spec` with a checkpoint artifact in `model` replaced by its file (`checkpoint=`, the
    architecture taken from the file); any other spec unchanged."""
    if not spec.model or spec.checkpoint is not None or spec.model in open_clip.list_models():
        return spec
    art = find_checkpoint(store, spec.model)
    if art is None:
        return spec          # an unknown architecture: the model registry says so, with suggestions
    if spec.pretrained:
        raise InputError(f"{spec.model} is a checkpoint artifact: it brings its own weights",
                         fix="drop --pretrained")
    return replace(spec, model=None, checkpoint=checkpoint_path(store, art))
