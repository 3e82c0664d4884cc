"""The model being trained: an open_clip CLIP, what of it trains (`--trainable`), and where each
tower's features come from.

  all    both towers fine-tune, from pixels and tokens;
  text   the image tower is locked (LiT): image features come from the embedding cache;
  image  the text tower is locked: caption and keyword features come from the cache;
  heads  both towers are locked: a d x d adapter on each cache's vectors trains (initialised
         to the identity, folded into the tower's projection when saved, so a checkpoint stays
         a plain open_clip model);
  ln     only LayerNorms train (both towers run, from pixels and tokens).
The logit scale trains in every mode. A locked tower's BatchNorm statistics are frozen too, so
its fingerprint, and with it the cache, stays valid for the whole run."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from clipstore.features.identity import IMAGE_TOWER, TEXT_TOWER, tower_of
from clipstore.warehouse.errors import InputError

CACHED = {"all": (), "text": (IMAGE_TOWER,), "image": (TEXT_TOWER,), "heads": (IMAGE_TOWER, TEXT_TOWER), "ln": ()}


def _identity(dim: int) -> nn.Linear:
    layer = nn.Linear(dim, dim, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(dim))
    return layer


class TrainModel(nn.Module):
    """`forward(batch)` -> normalised features of whatever the batch holds (image, text,
    unlabeled, keywords, targets) and the logit scale s = exp(logit_scale)."""

    def __init__(self, clip: nn.Module, mode: str, embed_dim: int):
        super().__init__()
        self.clip, self.mode = clip, mode
        self.cached = CACHED[mode]
        self.image_adapter = _identity(embed_dim) if mode == "heads" else None
        self.text_adapter = _identity(embed_dim) if mode == "heads" else None
        self._norms = {n for n, m in clip.named_modules() if isinstance(m, nn.LayerNorm)}
        for name, p in self.clip.named_parameters():
            p.requires_grad_(self._trains(name))

    def _trains(self, name: str) -> bool:
        tower = tower_of(name)
        if tower is None:                       # the logit scale (and bias)
            return True
        if self.mode == "ln":
            return name.rsplit(".", 1)[0] in self._norms
        return tower not in self.cached

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.clip.modules():          # a frozen BatchNorm keeps its statistics
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
                m.eval()
        return self

    @property
    def image_cached(self) -> bool:
        return IMAGE_TOWER in self.cached

    @property
    def text_cached(self) -> bool:
        return TEXT_TOWER in self.cached

    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.exp()

    def clamp_logit_scale(self, maximum: float) -> None:
        with torch.no_grad():
            self.clip.logit_scale.clamp_(0, math.log(maximum))

    def images(self, pixels: torch.Tensor | None = None, features: torch.Tensor | None = None) -> torch.Tensor:
        x = features.float() if features is not None else self.clip.encode_image(pixels).float()
        if self.image_adapter is not None:
            x = self.image_adapter(x)
        return F.normalize(x, dim=-1)

    def texts(self, tokens: torch.Tensor | None = None, features: torch.Tensor | None = None) -> torch.Tensor:
        x = features.float() if features is not None else self.clip.encode_text(tokens).float()
        if self.text_adapter is not None:
            x = self.text_adapter(x)
        return F.normalize(x, dim=-1)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        out = {"image": self.images(batch.get("image"), batch.get("image_features")),
               "text": self.texts(batch.get("text"), batch.get("text_features")),
               "logit_scale": self.logit_scale().float()}
        if "unlabeled" in batch or "unlabeled_features" in batch:
            out["unlabeled"] = self.images(batch.get("unlabeled"), batch.get("unlabeled_features"))
        if "keyword_tokens" in batch or "keyword_features" in batch:
            out["keywords"] = self.texts(batch.get("keyword_tokens"), batch.get("keyword_features"))
        if "target_tokens" in batch or "target_features" in batch:
            out["targets"] = self.texts(batch.get("target_tokens"), batch.get("target_features"))
        return out

    # ---- what a checkpoint holds ----------------------------------------------------------
    def deployable_state(self) -> dict[str, torch.Tensor]:
        """The open_clip state dict, on the CPU, with the adapters folded into the projections
        (exact: a bias-free linear map after the projection, before normalisation)."""
        state = {k: v.detach().cpu().clone() for k, v in self.clip.state_dict().items()}
        if self.image_adapter is not None:
            _fold(state, self.image_adapter.weight.detach().cpu(), ("visual.proj",),
                  ("visual.attnpool.c_proj", "visual.head.proj"))
            _fold(state, self.text_adapter.weight.detach().cpu(), ("text_projection",), ("text.proj",))
        return state

    def extra_state(self) -> dict[str, torch.Tensor]:
        """Trained tensors outside the open_clip state dict (the adapters), for resuming."""
        return {k: v.detach().cpu().clone() for k, v in self.state_dict().items() if not k.startswith("clip.")}


def _fold(state: dict, a: torch.Tensor, matrices: tuple[str, ...], linears: tuple[str, ...]) -> None:
    """y = A (x P) = x (P Aᵀ) for a projection matrix; y = A (W z + b) for a Linear layer."""
    for key in matrices:
        if key in state and state[key].ndim == 2:
            state[key] = state[key] @ a.T
            return
    for key in linears:
        if f"{key}.weight" in state:
            state[f"{key}.weight"] = a @ state[f"{key}.weight"]
            if f"{key}.bias" in state:
                state[f"{key}.bias"] = a @ state[f"{key}.bias"]
            return
    raise InputError(f"--trainable heads cannot fold its adapter into this architecture (none of "
                     f"{', '.join(matrices + linears)})", fix="use --trainable text, image or all")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no decay on gains, biases, norms, the logit scale and the adapters (the
    public rule: ndim < 2 or bn/ln/bias/logit_scale in the name), decay on the rest."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exempt = p.ndim < 2 or any(s in name for s in ("bn", "ln", "bias", "logit_scale", "adapter"))
        (no_decay if exempt else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]
