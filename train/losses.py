"""One loss module per method. The loop does not know which one runs: it hands a method the
features of the global batch (gathered across processes) and the batch's shared tensors, and
gets back named loss terms, which it sums.

A method is an `nn.Module` (so it may own learnable parameters; they join the optimiser) with:
  uses_unlabeled, uses_keywords, uses_targets   what the batches must hold;
  setup(ctx)                  once, before the optimiser is built: the run, model and data are known
                              (read tables, add parameters: they join the optimiser);
  on_epoch_start(epoch, ctx)  before each epoch: pseudo-label refresh, a second training stage;
  forward(f, batch) -> {name: scalar tensor}.
`f` holds unit vectors: image (B, d), text (B, d), unlabeled (U, d), keywords (M, d),
targets (C, d), and logit_scale s (a scalar tensor).

  CLIP    L = ½[CE(Z, I) + CE(Zᵀ, I)], Z = s·X Tᵀ.
  S-CLIP  L = L_con + L_cap + L_kw (Mo et al., NeurIPS 2023; the public code's custom/loss.py):
    L_con  as CLIP, but the text->image softmax runs over [X; U] (unlabeled images as extra
           negatives; `unlabeled_negatives`);
    L_cap  ½·SCE(s·U Tᵀ, Π): Π = the row-normalised entropic OT plan between unlabeled and
           labeled images, cost C_jk = 1 − u_j·x_k, uniform marginals, ε = 1/s, log-domain
           Sinkhorn (clipstore.ops.sinkhorn), stop-gradient unless `ot_grad`. With global
           caption targets, Π is the OT table's weights over the matched labeled captions;
    L_kw   ½·SCE(s·U Wᵀ, q): candidates S_j = keywords of the caption of n(j) = argmax_k Π_jk;
           q_j = 0 if S_j is empty, one-hot if it has one keyword, else the detached scaled
           cosines s·u_j·w_k renormalised linearly within S_j (or by a softmax within S_j).
           Rows with empty S_j count in the mean with a zero term."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clipstore.ops.sinkhorn import sinkhorn


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """mean_j Σ_k −t_jk log softmax(logits_j)_k (a zero target row contributes 0)."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def contrastive(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor,
                extra_images: torch.Tensor | None = None) -> torch.Tensor:
    """½[CE(s·X Tᵀ, I) + CE(s·T [X; U]ᵀ, I)] (U = extra_images; none: the CLIP loss)."""
    labels = torch.arange(len(image), device=image.device)
    candidates = image if extra_images is None else torch.cat([image, extra_images])
    return (F.cross_entropy(scale * image @ text.T, labels) + F.cross_entropy(scale * text @ candidates.T, labels)) / 2


def caption_plan(unlabeled: torch.Tensor, labeled: torch.Tensor, scale: torch.Tensor, *, epsilon: float | None = None,
                 iters: int = 10, stop_gradient: bool = True) -> torch.Tensor:
    """Π: the entropic OT plan for C = 1 − U Xᵀ with uniform marginals, rows normalised to 1."""
    eps = epsilon if epsilon is not None else 1.0 / float(scale.detach())
    plan = sinkhorn(1.0 - unlabeled @ labeled.T, eps, iters=iters, stop_gradient=stop_gradient)
    return plan / plan.sum(dim=1, keepdim=True)


def keyword_targets(unlabeled: torch.Tensor, keywords: torch.Tensor, scale: torch.Tensor, candidates: torch.Tensor,
                    rule: str = "linear") -> torch.Tensor:
    """q (U, M): 0 without candidates, one-hot with one, else the candidates' detached scaled
    cosines renormalised linearly (the public code) or by a softmax within the candidates."""
    sim = (scale * unlabeled @ keywords.T).detach()
    count = candidates.sum(dim=1, keepdim=True)
    if rule == "softmax":
        q = torch.softmax(sim.masked_fill(~candidates, float("-inf")), dim=1)
    else:
        masked = torch.where(candidates, sim, torch.zeros_like(sim))
        q = masked / masked.sum(dim=1, keepdim=True)
    q = torch.where(count == 1, candidates.to(sim.dtype), q)
    return torch.where(count == 0, torch.zeros_like(q), q)


class Method(nn.Module):
    """The interface every method's loss module follows (see the module doc)."""

    uses_unlabeled = False
    uses_keywords = False
    uses_targets = False

    def setup(self, ctx) -> None:
        """Once, before the optimiser is built (loop.Context: run, model, data, dist)."""

    def on_epoch_start(self, epoch: int, ctx) -> None:
        """Before each epoch (pseudo-label refresh, switching stage)."""

    def forward(self, f: dict, batch: dict) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class Clip(Method):
    """Supervised CLIP fine-tuning on the labeled pairs."""

    def forward(self, f: dict, batch: dict) -> dict[str, torch.Tensor]:
        return {"contrastive": contrastive(f["image"], f["text"], f["logit_scale"])}


class SClip(Method):
    """S-CLIP (see the module doc)."""

    uses_unlabeled = True

    def __init__(self, *, unlabeled_negatives: bool = True, caption_loss: bool = True, keyword_loss: bool = True,
                 global_targets: bool = False, ot_iters: int = 10, ot_epsilon: float | None = None,
                 ot_grad: bool = False, keyword_rule: str = "linear"):
        super().__init__()
        self.unlabeled_negatives, self.caption_loss, self.keyword_loss = unlabeled_negatives, caption_loss, keyword_loss
        self.uses_keywords, self.uses_targets = keyword_loss, global_targets
        self.ot_iters, self.ot_epsilon, self.ot_grad, self.keyword_rule = ot_iters, ot_epsilon, ot_grad, keyword_rule

    def forward(self, f: dict, batch: dict) -> dict[str, torch.Tensor]:
        x, t, u, s = f["image"], f["text"], f["unlabeled"], f["logit_scale"]
        terms = {"contrastive": contrastive(x, t, s, u if self.unlabeled_negatives else None)}
        if self.uses_targets:          # the global OT table: weights over the matched labeled captions
            logits, target = s * u @ f["targets"].T, batch["target_weights"]
            candidates = batch.get("target_keyword_labels")
        else:                          # per batch: OT between this batch's unlabeled and labeled images
            target = caption_plan(u, x, s, epsilon=self.ot_epsilon, iters=self.ot_iters, stop_gradient=not self.ot_grad)
            logits = s * u @ t.T
            candidates = batch["keyword_labels"][target.detach().argmax(dim=1)] if self.keyword_loss else None
        if self.caption_loss:
            terms["caption"] = soft_cross_entropy(logits, target) / 2
        if self.keyword_loss:
            w = f["keywords"]
            q = keyword_targets(u, w, s, candidates, self.keyword_rule)
            terms["keyword"] = soft_cross_entropy(s * u @ w.T, q) / 2
        return terms


def build_method(cfg) -> Method:
    """The loss module a config names."""
    if cfg.method == "clip":
        return Clip()
    return SClip(unlabeled_negatives=cfg.unlabeled_negatives, caption_loss=cfg.caption_loss,
                 keyword_loss=cfg.keyword_loss, global_targets=bool(cfg.caption_targets), ot_iters=cfg.ot_iters,
                 ot_epsilon=cfg.ot_epsilon, ot_grad=cfg.ot_grad, keyword_rule=cfg.keyword_targets)
