"""Optimisation pieces the loop calls: AdamW over the trainable parameters (no decay on gains,
biases, norms and the logit scale: model.param_groups), the cosine schedule with linear warm-up
(open_clip's `cosine_lr`, a pure function of the step, so resuming needs no scheduler object),
and per-step seeding of the global RNGs (dropout and anything else drawing from them)."""

from __future__ import annotations

import math
import random

import numpy as np
import torch

from clipstore.train.data import seed_of
from clipstore.train.model import param_groups

STEP_SEED = 7   # the per-step RNG stream (data.py's streams are 0-4)


def build_optimizer(model: torch.nn.Module, cfg) -> torch.optim.AdamW:
    """AdamW, fused (one kernel for all tensors: about 9x faster than the per-tensor loop on a CPU
    for tiny-vit, whose token embedding is most of its weights) where torch supports it."""
    groups = param_groups(model, cfg.weight_decay)
    kwargs = {"lr": cfg.lr, "betas": (cfg.beta1, cfg.beta2), "eps": cfg.eps}
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, **kwargs)


def lr_at(step: int, base: float, warmup: int, total: int) -> float:
    """Linear warm-up over `warmup` steps, then a cosine from `base` to 0 at `total`."""
    if step < warmup:
        return base * (step + 1) / warmup
    span = max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / span)) * base


def seed_step(seed: int, step: int, rank: int) -> None:
    """Seed torch, numpy and random from (seed, step, rank): a resumed run draws what an
    uninterrupted one would, with no RNG state to carry."""
    s = seed_of(seed, STEP_SEED, step, rank)
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)
