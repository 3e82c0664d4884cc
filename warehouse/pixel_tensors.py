"""uint8 pixel batches (a pixel cache's rows, (n, height, width, 3)) -> model inputs, in torch:

  to_model_input   the rest of a model's eval transform: to float / 255, then (x - mean) / std, with
                   the same float32 operations as torchvision's ToTensor + Normalize, so a cache of the
                   model's own spec gives bit-identical tensors to decoding (docs/pixels.md);
  TrainAugment     random resized crop + horizontal flip on the batch, then the same normalisation:
                   the trainer's augmentation with no decode and no PIL (the crop boxes are drawn as
                   torchvision's RandomResizedCrop draws them, from a torch.Generator).

Here because the trainer and embed both read pixel caches and neither imports the other."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from clipstore.warehouse.errors import InputError

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)   # open_clip's defaults when a config names none
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_ATTEMPTS = 10                                      # as torchvision's RandomResizedCrop.get_params


def _channels(batch, device=None) -> torch.Tensor:
    """(n, h, w, 3) uint8 (numpy or torch) -> a contiguous (n, 3, h, w) uint8 tensor, on `device` when
    given (moved before the reordering: the copy runs there, and a pinned batch stays pinned)."""
    if isinstance(batch, np.ndarray):
        with warnings.catch_warnings():   # a read-only memory map: nothing here writes to it (we convert first)
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            t = torch.from_numpy(np.ascontiguousarray(batch))
    else:
        t = batch
    if t.dtype != torch.uint8 or t.ndim != 4 or t.shape[-1] != 3:
        raise InputError(f"expected a (n, height, width, 3) uint8 batch, got {tuple(t.shape)} {t.dtype}")
    if device is not None:
        t = t.to(device, non_blocking=True)
    return t.permute(0, 3, 1, 2).contiguous()   # as ToTensor: the model sees the layout decoding gives it


def _stats(values, device) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.float32, device=device).view(1, -1, 1, 1)


def normalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    """float (n, 3, h, w) on the 0..1 scale -> (x - mean) / std, in place, as Normalize does it."""
    return x.sub_(_stats(mean, x.device)).div_(_stats(std, x.device))


def to_model_input(batch, mean=OPENAI_MEAN, std=OPENAI_STD, device: str | torch.device | None = None) -> torch.Tensor:
    """The eval transform's ToTensor + Normalize on a uint8 batch -> float32 (n, 3, h, w). With
    `device`, the uint8 batch moves first (a quarter of the bytes) and the arithmetic runs there."""
    return normalise(_channels(batch, device).to(torch.float32).div_(255), mean, std)


@dataclass(frozen=True)
class TrainAugment:
    """Random resized crop (area share `scale`, aspect `ratio`, resized to `size` with antialiasing)
    and a horizontal flip with probability `flip`, then normalisation with mean/std. The defaults are
    open_clip's train transform (scale 0.9-1.0, bicubic) plus the flip. Call on a uint8 batch:
    `augment(cache[rows], generator=g, device="cuda")` -> float32 (n, 3, height, width)."""

    size: tuple[int, int]
    mean: tuple[float, ...] = OPENAI_MEAN
    std: tuple[float, ...] = OPENAI_STD
    scale: tuple[float, float] = (0.9, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5
    interpolation: str = "bicubic"

    def __post_init__(self):
        if not (0 < self.scale[0] <= self.scale[1] <= 1) or not (0 < self.ratio[0] <= self.ratio[1]):
            raise InputError(f"bad crop ranges: scale {self.scale}, ratio {self.ratio}",
                             fix="scale within (0, 1] and ratio > 0, each as (low, high)")
        if self.interpolation not in ("bicubic", "bilinear"):
            raise InputError(f"unknown interpolation {self.interpolation!r}", fix="use bicubic or bilinear")

    @classmethod
    def from_preprocess(cls, cfg: dict, **options) -> "TrainAugment":
        """For a model: its input size and mean/std from its preprocess config
        (`LoadedModel.identity["preprocess"]`)."""
        size = cfg.get("size", 224)
        size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[-1]))
        return cls(size, tuple(cfg.get("mean") or OPENAI_MEAN), tuple(cfg.get("std") or OPENAI_STD), **options)

    def boxes(self, n: int, height: int, width: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, 4) int64 crop boxes (top, left, h, w) drawn as RandomResizedCrop.get_params draws one:
        up to ten (area, aspect) tries, the first that fits wins, else the central crop."""
        area = height * width
        lo, hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        u = torch.rand((n, _ATTEMPTS, 2), generator=generator, dtype=torch.float64)
        target = area * (self.scale[0] + (self.scale[1] - self.scale[0]) * u[..., 0])
        aspect = torch.exp(lo + (hi - lo) * u[..., 1])
        w = torch.round(torch.sqrt(target * aspect)).long()
        h = torch.round(torch.sqrt(target / aspect)).long()
        fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = fits.to(torch.int8).argmax(dim=1)
        w, h = w.gather(1, first[:, None])[:, 0], h.gather(1, first[:, None])[:, 0]
        fw, fh = self._fallback(height, width)
        found = fits.any(dim=1)
        w, h = torch.where(found, w, fw), torch.where(found, h, fh)
        pos = torch.rand((n, 2), generator=generator, dtype=torch.float64)
        top = torch.where(found, (pos[:, 0] * (height - h + 1)).long(), (height - h) // 2)
        left = torch.where(found, (pos[:, 1] * (width - w + 1)).long(), (width - w) // 2)
        return torch.stack([top, left, h, w], dim=1)

    def _fallback(self, height: int, width: int) -> tuple[int, int]:
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            return width, int(round(width / self.ratio[0]))
        if in_ratio > self.ratio[1]:
            return int(round(height * self.ratio[1])), height
        return width, height

    def __call__(self, batch, generator: torch.Generator | None = None,
                 device: str | torch.device | None = None) -> torch.Tensor:
        x = _channels(batch, device)
        n, _, height, width = x.shape
        boxes = self.boxes(n, height, width, generator).tolist()
        flips = torch.rand(n, generator=generator) < self.flip
        out = torch.empty((n, 3, *self.size), dtype=torch.float32, device=x.device)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, (_, _, h, w) in enumerate(boxes):
            by_size.setdefault((h, w), []).append(i)
        for (h, w), rows in by_size.items():   # one resize per crop size (on a GPU, launches are the cost)
            crops = torch.stack([x[i, :, top:top + h, left:left + w] for i in rows
                                 for top, left, _, _ in [boxes[i]]]).to(torch.float32)
            if (h, w) != tuple(self.size):
                crops = F.interpolate(crops, size=self.size, mode=self.interpolation, align_corners=False,
                                      antialias=True)
            out[torch.tensor(rows, device=x.device)] = crops
        if flips.any():
            flipped = flips.nonzero()[:, 0].to(x.device)
            out[flipped] = out[flipped].flip(-1)
        if self.interpolation == "bicubic":
            out.clamp_(0, 255)   # bicubic overshoots; PIL would have clipped to bytes
        return normalise(out.div_(255), self.mean, self.std)
