"""The trainer's configuration: one dataclass, filled from its defaults, then a TOML file
(`--config`), then the options given on the command line (each later source wins). The resolved
config is stored in every checkpoint and in the run's recipe. See docs/train.md."""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from clipstore.warehouse.errors import InputError

METHODS = ("clip", "sclip")
TRAINABLE = ("all", "text", "image", "heads", "ln")
KEYWORD_TARGETS = ("linear", "softmax")
PIXEL_CACHE = ("off", "use")
# Options that say how a run is carried out, not what it computes: left out of the run's identity.
NOT_IN_RECIPE = ("name", "workers", "device")
# One choice, whichever source makes it: a layer that names one of these clears the others an
# earlier layer set (the command line's --checkpoint replaces the TOML file's pretrained tag).
WEIGHTS = ("pretrained", "checkpoint", "init_from")


@dataclass
class TrainConfig:
    """Every option of `clipstore train` (TOML keys are the field names)."""

    method: str = "clip"                  # clip | sclip (the loss module; train/losses.py)
    # data: a corpus (all its captioned images) or a split (its labeled role, + unlabeled for sclip)
    corpus: str | None = None
    split: str | None = None
    # the model to start from (features/models.py specs) and what of it trains
    model: str | None = None              # architecture, or a checkpoint artifact id/name
    pretrained: str | None = None
    checkpoint: str | None = None         # a weights file
    init_from: str | None = None          # a checkpoint artifact (or file): the parent of this run
    allow_download: bool = False
    trainable: str = "all"                # all | text | image | heads | ln
    precision: str | None = None          # fp32 | bf16; None = bf16 autocast on GPU, fp32 on CPU
    device: str | None = None
    # optimisation (AdamW, cosine schedule with linear warm-up, in optimiser steps)
    epochs: int = 10
    batch_size: int = 32                  # labeled images per process and step
    unlabeled_batch_size: int | None = None   # unlabeled images per process and step; None = batch_size
    lr: float = 5e-5
    weight_decay: float = 0.2
    warmup: int = 10
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    grad_clip: float = 1.0                # max global gradient norm; 0 = no clipping
    logit_scale_max: float = 100.0
    seed: int = 0
    # S-CLIP
    unlabeled_negatives: bool = True      # L_con's text->image softmax also over the unlabeled images
    caption_loss: bool = True
    keyword_loss: bool = True
    ot_iters: int = 10
    ot_epsilon: float | None = None       # None = 1 / logit scale
    ot_grad: bool = False                 # let gradients flow through the OT plan (the public code)
    caption_targets: str | None = None    # a pseudo_captions artifact: targets from the global OT table
    vocab: str | None = None              # keyword vocabulary; None = keywords.<split>.labeled
    keyword_targets: str = "linear"       # linear | softmax: how the candidates' cosines become q
    # validation, checkpoints, logging
    validate: bool = True                 # validate at all (through the evaluation stage)
    val_every: int = 5                    # epochs between validations (and the last epoch); 0 = only the last
    val_templates: str = "aerial"
    val_zeroshot: list[str] = field(default_factory=list)   # classification corpora, besides the split's val
    save_every: int = 0                   # epochs between checkpoints; 0 = at validations and the end
    save_every_steps: int = 0             # also every N steps (mid-epoch resume points); 0 = off
    log_every: int = 1                    # steps between train_log rows
    name: str | None = None               # the run's (and its checkpoints') name
    round: int | None = None              # None = parent's round + 1 (0 without a trained parent)
    workers: int | None = None            # image decoding processes; None = 0 on CPU, 4 on GPU
    pixel_cache: str = "off"              # off: decode the shards | use: read decoded pixels from a pixel cache
    pixel_size: int | None = None         # the cache's square size; None = the model's eval geometry

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def recipe(self) -> dict:
        """What the run's identity covers: every field except NOT_IN_RECIPE."""
        return {k: v for k, v in self.to_dict().items() if k not in NOT_IN_RECIPE}

    @property
    def unlabeled_batch(self) -> int:
        return self.batch_size if self.unlabeled_batch_size is None else self.unlabeled_batch_size


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _check_type(key: str, value, where: str):
    default = TrainConfig().to_dict()[key]
    kind = FIELDS[key].type
    ok = True
    if "list" in kind:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    elif "bool" in kind:
        ok = isinstance(value, bool)
    elif "int" in kind and "float" not in kind:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif "float" in kind:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif "str" in kind:
        ok = isinstance(value, str)
    if value is None and "None" in kind:
        ok = True
    if not ok:
        raise InputError(f"{key} = {value!r} has the wrong type (expected {kind}, e.g. {default!r})", where=where)
    return value


def read_toml(path: str | Path) -> dict:
    """The fields a TOML config sets, type-checked; unknown keys are refused with a suggestion."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no config file {path}", fix="pass --config FILE (e.g. configs/sclip_rs.toml)")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path} is not valid TOML: {exc}", where=str(path)) from None
    out = {}
    for key, value in doc.items():
        if key not in FIELDS:
            close = difflib.get_close_matches(key, list(FIELDS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise InputError(f"unknown key {key!r} in {path.name}{hint}", where=str(path),
                             fix=f"known keys: {', '.join(FIELDS)}")
        out[key] = _check_type(key, value, str(path))
    return out


def resolve(toml: str | Path | None = None, overrides: dict | None = None, base: dict | None = None) -> TrainConfig:
    """Defaults (or `base`, a stored config), then the TOML file, then `overrides`; checked."""
    values = TrainConfig().to_dict()
    values.update(base or {})
    layers = [read_toml(toml) if toml is not None else {}, dict(overrides or {})]
    for key in layers[1]:
        if key not in FIELDS:
            raise InputError(f"unknown training option {key!r}", fix=f"known options: {', '.join(FIELDS)}")
    for layer in layers:
        if any(layer.get(k) is not None for k in WEIGHTS):
            values.update(dict.fromkeys(WEIGHTS))
        values.update({k: _check_type(k, v, "the command line") for k, v in layer.items()})
    return check(TrainConfig(**values))


def check(cfg: TrainConfig) -> TrainConfig:
    """Refuse combinations that cannot run, before anything is loaded."""
    def bad(what: str, fix: str | None = None):
        raise InputError(what, fix=fix)
    if cfg.method not in METHODS:
        bad(f"unknown method {cfg.method!r}", f"use one of: {', '.join(METHODS)}")
    if cfg.trainable not in TRAINABLE:
        bad(f"unknown trainable mode {cfg.trainable!r}", f"use one of: {', '.join(TRAINABLE)}")
    if cfg.keyword_targets not in KEYWORD_TARGETS:
        bad(f"unknown keyword target rule {cfg.keyword_targets!r}", f"use one of: {', '.join(KEYWORD_TARGETS)}")
    if cfg.pixel_cache not in PIXEL_CACHE:
        bad(f"unknown pixel cache mode {cfg.pixel_cache!r}", f"use one of: {', '.join(PIXEL_CACHE)}")
    if cfg.pixel_size is not None and cfg.pixel_size < 1:
        bad(f"pixel_size must be at least 1, got {cfg.pixel_size}")
    if bool(cfg.corpus) == bool(cfg.split):
        bad("say what to train on: --corpus NAME (all its captioned images) or --split NAME (its labeled role)")
    if cfg.method == "sclip" and not cfg.split:
        bad("S-CLIP needs unlabeled images: train on a --split that has an unlabeled role",
            "e.g. --split rs_all (clipstore split NAME --corpus C --labeled-ratio 0.1 --seed 0)")
    if cfg.caption_targets and cfg.method != "sclip":
        bad("--caption-targets sets S-CLIP's caption targets", "add --method sclip, or drop --caption-targets")
    if cfg.init_from and (cfg.checkpoint or cfg.pretrained):
        bad("--init-from names the weights to start from", "drop --checkpoint / --pretrained")
    if cfg.precision not in (None, "fp32", "bf16"):
        bad(f"precision {cfg.precision!r} is not supported for training", "use bf16 (GPU) or fp32")
    for key in ("epochs", "batch_size", "ot_iters", "log_every"):
        if getattr(cfg, key) < 1:
            bad(f"{key} must be at least 1, got {getattr(cfg, key)}")
    for key in ("warmup", "val_every", "save_every", "save_every_steps"):
        if getattr(cfg, key) < 0:
            bad(f"{key} must be >= 0, got {getattr(cfg, key)}")
    if cfg.unlabeled_batch < 1 and cfg.method == "sclip":
        bad("unlabeled_batch_size must be at least 1 for S-CLIP")
    if cfg.lr <= 0 or cfg.grad_clip < 0 or cfg.logit_scale_max <= 1 or cfg.weight_decay < 0:
        bad("lr must be > 0, grad_clip and weight_decay >= 0, logit_scale_max > 1")
    if cfg.ot_epsilon is not None and cfg.ot_epsilon <= 0:
        bad(f"ot_epsilon must be > 0, got {cfg.ot_epsilon}")
    return cfg
