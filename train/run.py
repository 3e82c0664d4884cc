"""Everything a run is decided by, resolved before the first step: the data, the model to start
from (and its lineage), the label sources, the run's identity, and where it resumes.

A run's identity (`digest`) covers its config (less the options that only say how it is carried
out: name, workers, device), the versions of everything it reads (split or corpus, parent
checkpoint, keyword vocabulary, caption targets), the starting model's fingerprint and the number
of processes. Its checkpoints record it, so re-running a command that was killed resumes from its
latest checkpoint, and re-running a finished one is a no-op."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from clipstore.features.checkpoint_artifacts import checkpoint_path, find_checkpoint, resolve_model_spec
from clipstore.features.checkpoints import read_checkpoint
from clipstore.features.models import _PREPROCESS_KEYS as PREPROCESS_KEYS, LoadedModel, ModelSpec, build_model
from clipstore.train import config as configs
from clipstore.train.data import CaptionTargets, Items, Keywords, pixel_cache_source, training_items
from clipstore.train.model import CACHED
from clipstore.train.losses import build_method
from clipstore.train.state import STAGE_VERSION, load_state, run_checkpoints
from clipstore.train.targets import default_vocab, read_caption_targets, read_keywords
from clipstore.warehouse.errors import InputError, NotFoundError
from clipstore.warehouse.hashing import digest as digest_of
from clipstore.warehouse.store import Artifact, Store


@dataclass
class Run:
    store: Store
    cfg: configs.TrainConfig
    name: str
    digest: str
    spec: ModelSpec                    # the starting weights (what the frozen caches are keyed on)
    loaded: LoadedModel                # built from spec, train mode
    labeled: Items
    unlabeled: Items | None
    keywords: Keywords | None
    targets: CaptionTargets | None
    inputs: list[Artifact]
    parent: Artifact | None
    round: int
    world: int
    resume: tuple[Artifact, Path, dict] | None = None   # (checkpoint, weights file, state)
    image_source: Callable | None = None                 # refs -> ImageSource (a pixel cache); None: shards

    @property
    def arch(self) -> str:
        return self.loaded.arch

    @property
    def model_config(self) -> dict:
        """What a checkpoint's config must say besides its architecture for the model to load as it
        trained: the effective preprocessing (from a pretrained tag, a parent checkpoint or the spec)
        and QuickGELU (OpenAI's weights)."""
        effective = self.loaded.identity["preprocess"]
        out = {"preprocess": {k: effective[k] for k in PREPROCESS_KEYS if k in effective}}
        if self.loaded.identity["config"].get("quick_gelu"):
            out["quick_gelu"] = True
        return out

    @property
    def resumed_from(self) -> Artifact | None:
        return self.resume[0] if self.resume else None


def _start_spec(store: Store, cfg: configs.TrainConfig, device: str | None) -> tuple[ModelSpec, Artifact | None]:
    """The spec of the starting weights and the parent checkpoint artifact (None: not one)."""
    spec = ModelSpec(model=cfg.model, pretrained=cfg.pretrained, checkpoint=cfg.checkpoint,
                     allow_download=cfg.allow_download, precision=cfg.precision, device=device, seed=cfg.seed)
    if cfg.init_from:
        parent = find_checkpoint(store, cfg.init_from)
        if parent is not None:
            return replace(spec, checkpoint=checkpoint_path(store, parent)), parent
        if Path(cfg.init_from).is_file():
            return replace(spec, checkpoint=cfg.init_from), None
        raise NotFoundError(f"--init-from {cfg.init_from}: no checkpoint artifact or file of that name",
                            where=str(store.root), fix="`clipstore ls --kind checkpoint` lists the checkpoints")
    resolved = resolve_model_spec(store, spec)
    parent = find_checkpoint(store, cfg.model) if resolved.checkpoint != spec.checkpoint else None
    return resolved, parent


def prepare(store: Store, cfg: configs.TrainConfig | None, *, resume: str | None = None,
            overrides: dict | None = None, world: int = 1, device: str | None = None) -> Run:
    """Resolve a run (see the module doc). With `resume`, the config is the checkpoint's, and
    the options in `overrides` (those given explicitly) must agree with it."""
    resumed = None
    if resume is not None:
        resumed = load_state(store, resume)
        stored = resumed[2]["config"]
        clash = {k: (v, stored.get(k)) for k, v in (overrides or {}).items()
                 if k not in configs.NOT_IN_RECIPE and stored.get(k) != v}
        if clash:
            listed = "; ".join(f"{k}: {a!r} given, {b!r} in the checkpoint" for k, (a, b) in clash.items())
            raise InputError(f"--resume continues the checkpoint's run exactly: {listed}",
                             fix="drop those options, or start a new run with --init-from")
        keep = {k: v for k, v in (overrides or {}).items() if k in configs.NOT_IN_RECIPE}
        cfg = configs.resolve(base=stored, overrides=keep)
    cfg = configs.check(cfg)
    method = build_method(cfg)
    labeled, unlabeled = training_items(store, split=cfg.split, corpus=cfg.corpus, unlabeled=method.uses_unlabeled)
    keywords = read_keywords(store, cfg.vocab or default_vocab(cfg.split, cfg.corpus), labeled) \
        if method.uses_keywords else None
    targets = read_caption_targets(store, cfg.caption_targets, labeled, unlabeled) if method.uses_targets else None
    spec, parent = _start_spec(store, cfg, device)
    loaded = build_model(spec, train=True)
    inputs = {**labeled.inputs, **(unlabeled.inputs if unlabeled is not None else {})}
    extra = [parent, keywords.vocab if keywords else None, targets.artifact if targets else None]
    image_source = None
    if cfg.pixel_cache == "use" and "image" not in CACHED[cfg.trainable]:   # pixels are read at all
        image_source, pixel_arts = _pixel_source(store, cfg, loaded, labeled, unlabeled)
        extra += pixel_arts
    arts = list({a.artifact_id: a for a in [*inputs.values(), *extra] if a is not None}.values())
    versions = store.version_digests(sorted(a.artifact_id for a in arts))
    digest = digest_of({"stage_version": STAGE_VERSION, "config": cfg.recipe(), "inputs": versions,
                        "start": loaded.fingerprint, "world": world})
    name = cfg.name or f"train.{cfg.method}.{cfg.split or cfg.corpus}.{loaded.name}.{digest[:8]}"
    parent_round = int(parent.stats.get("round") or 0) if parent is not None else -1
    run = Run(store, cfg, name, digest, spec, loaded, labeled, unlabeled, keywords, targets, arts, parent,
              cfg.round if cfg.round is not None else parent_round + 1, world, image_source=image_source)
    if resumed is not None:
        if resumed[2]["run"] != digest:
            raise InputError(f"checkpoint {resumed[0].artifact_id} belongs to a run whose inputs differ from what the "
                             "store holds now (a corpus, split, vocabulary or parent changed, or the process count)",
                             fix="start a new run with --init-from instead")
        run.resume = resumed
    else:
        found = run_checkpoints(store, name, digest)
        if found:                      # the same run was stopped: continue from its latest checkpoint
            run.resume = load_state(store, found[-1])
    return run


def _pixel_source(store: Store, cfg, loaded: LoadedModel, labeled: Items, unlabeled: Items | None):
    """`--pixel-cache use`: the caches of the model's eval geometry (or `--pixel-size N` squares)."""
    from clipstore.warehouse.pixels import PixelSpec
    pre = loaded.identity["preprocess"]
    spec = PixelSpec.from_preprocess(pre) if cfg.pixel_size is None else \
        PixelSpec.square(cfg.pixel_size, resize_mode=pre.get("resize_mode", "shortest"),
                         interpolation="bilinear" if pre.get("interpolation") == "bilinear" else "bicubic")
    items = [labeled] + ([unlabeled] if unlabeled is not None else [])
    corpora = sorted({c for it in items for c in it.corpora})
    return pixel_cache_source(store, corpora, spec, [i for it in items for i in it.image_ids])


def restore(run: Run, model, optimizer, method) -> dict:
    """Load a resumed checkpoint into the model, optimiser and method; returns its state."""
    art, weights_file, state = run.resume
    weights, _ = read_checkpoint(weights_file)
    if run.cfg.trainable == "heads":   # the saved projections hold the adapters: keep the starting towers
        weights = {k: v for k, v in weights.items() if k in ("logit_scale", "logit_bias")}
    model.clip.load_state_dict(weights, strict=run.cfg.trainable != "heads")
    model.load_state_dict(state["extra"], strict=False)
    optimizer.load_state_dict(state["optimizer"])
    method.load_state_dict(state["method"])
    return state
