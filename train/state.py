"""Checkpoints as artifacts: what the trainer saves and what `--resume` reads.

A checkpoint is a `checkpoint` artifact (the contract of features/checkpoint_artifacts.py, so
`--model <id>` works in embed, eval and train) named after its run, with one part of two files:
  checkpoint/000000.safetensors  the weights (adapters folded in) and, as metadata, the config
                                 {"model": arch, "preprocess", "quick_gelu"?, "train": the run's
                                 config and lineage};
  train_state/000000.pt          everything else a resume needs, loadable with
                                 torch.load(weights_only=True): step, epoch and sampler
                                 positions, the optimiser's state, extra trained tensors, the
                                 train_log rows so far, the config and the RNG state.
Its recipe: the run's digest, the step, whether it is final, the weights digest and the
architecture; its inputs pin the run's data, the parent checkpoint and the label tables."""

from __future__ import annotations

from pathlib import Path

import torch

from clipstore.features.checkpoint_artifacts import KIND, TABLE, find_checkpoint
from clipstore.features.checkpoints import save_checkpoint
from clipstore.features.identity import weights_sha256
from clipstore.warehouse.errors import ClipstoreError, InputError, NotFoundError
from clipstore.warehouse.store import Artifact, Store

STATE_TABLE = "train_state"
STATE_FORMAT = "clipstore.train_state.v1"
STAGE_VERSION = 1   # bump when the same run would train other weights


def save(run, weights: dict[str, torch.Tensor], state: dict, *, step: int, final: bool) -> Artifact:
    """Publish one checkpoint of `run` (train/run.py's Run) at `step`; a checkpoint with the
    same recipe is reused as it is."""
    digest = weights_sha256(weights)
    params = {"run": run.digest, "step": step, "final": final, "weights_sha256": digest,
              "config": {"model": run.arch}}
    lineage = {"run": run.digest, "name": run.name, "step": step, "epoch": state["epoch"], "final": final,
               "round": run.round, "parent": run.parent.artifact_id if run.parent else None,
               "resumed_from": run.resumed_from.artifact_id if run.resumed_from else None,
               "method": run.cfg.method, "trainable": run.cfg.trainable}
    ckpt_config = {"model": run.arch, **run.model_config, "train": {**lineage, "config": run.cfg.to_dict()}}
    state = {**state, "format": STATE_FORMAT, "config": run.cfg.to_dict(), "run": run.digest, "name": run.name,
             "step": step, "final": final}
    store = run.store
    with store.writing(wait=True):
        builder = store.produce(kind=KIND, name=run.name, stage="train", version=STAGE_VERSION, params=params,
                                inputs=run.inputs, config={**lineage, "config": run.cfg.to_dict()})
        if isinstance(builder, Artifact):
            return builder
        with builder.failing_on_error():
            if run.resumed_from is not None:
                builder.add_lineage([run.resumed_from.artifact_id], role="resumed_from")
            if not builder.is_committed(0):
                tmp = builder.temp_dir("part-000000")
                save_checkpoint(tmp / "000000.safetensors", weights, ckpt_config)
                torch.save(state, tmp / "000000.pt")
                builder.commit_part(0, {TABLE: (tmp / "000000.safetensors", len(weights)),
                                        STATE_TABLE: (tmp / "000000.pt", 1)})
            [(_, _, file)] = builder.committed_parts(TABLE)
            stats = {"file": str(file.relative_to(builder.path)), "arch": run.arch, "weights_sha256": digest,
                     "tensors": len(weights), "source": "train", **lineage, "config": run.cfg.to_dict()}
            return builder.finish({"tensors": len(weights), "step": step}, stats)


def run_checkpoints(store: Store, name: str, digest: str) -> list[Artifact]:
    """The complete checkpoints of one run (by name and run digest), by step."""
    found = [a for a in store.list(KIND) if a.name == name and a.status == "complete"
             and a.params.get("run") == digest]
    return sorted(found, key=lambda a: (a.params.get("step", 0), bool(a.params.get("final"))))


def load_state(store: Store, ref: str | Artifact) -> tuple[Artifact, Path, dict]:
    """(checkpoint artifact, its weights file, its training state) for `--resume`."""
    art = ref if isinstance(ref, Artifact) else find_checkpoint(store, ref)
    if art is None and Path(str(ref)).exists():
        raise InputError(f"--resume takes a checkpoint artifact, not a file ({ref})",
                         fix="pass the id or name `clipstore ls --kind checkpoint` shows; to start from a file's "
                             "weights use --init-from FILE")
    if art is None or art.kind != KIND:
        raise NotFoundError(f"no checkpoint artifact {ref!r} in the store", where=str(store.root),
                            fix="`clipstore ls --kind checkpoint` lists them")
    states = store.table_paths(art, STATE_TABLE)
    weights = store.table_paths(art, TABLE)
    if not states or not weights:
        raise InputError(f"checkpoint {art.artifact_id} holds weights only (no training state to resume)",
                         fix="start a new run from it with --init-from")
    state = torch.load(states[0], map_location="cpu", weights_only=True)
    if state.get("format") != STATE_FORMAT:
        raise ClipstoreError(f"checkpoint {art.artifact_id} has training state {state.get('format')!r}, "
                             f"not {STATE_FORMAT}", fix="resume it with the clipstore version that wrote it")
    return art, weights[0], state
