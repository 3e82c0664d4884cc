"""Augmented views for feature caches. Overhead imagery has no "up", so its natural
views are the dihedral transforms: 90-degree rotations and mirror flips, all exact (no resampling).

View k (1, 2, ...) of an image is fixed by (augment spec, seed, image_id, k): the allowed
transforms are put in an order drawn from a hash of (spec, seed, image_id) and view k takes the
k-th, so an image's views are distinct, asking for more views later keeps the earlier ones, and
the same request always yields the same pixels. View 0 is the plain eval view (no transform)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from PIL import Image

from clipstore.warehouse.errors import InputError

T = Image.Transpose
OPS: dict[str, dict[str, T]] = {
    "rot90": {"rot90": T.ROTATE_90, "rot180": T.ROTATE_180, "rot270": T.ROTATE_270},
    "flip": {"hflip": T.FLIP_LEFT_RIGHT, "vflip": T.FLIP_TOP_BOTTOM},
}
# With rotations and flips together, the two diagonal mirrors complete the dihedral group D4.
DIAGONALS = {"transpose": T.TRANSPOSE, "transverse": T.TRANSVERSE}
DEFAULT_AUGMENT = "rot90,flip"


@dataclass(frozen=True)
class ViewSpec:
    augment: str          # canonical spec, e.g. "flip,rot90"
    seed: int
    views: int            # how many augmented views per image (1..views)

    def recipe(self) -> dict:
        """What identifies the views' pixels. The count is not in it: views 1..k are the same for any count."""
        return {"augment": self.augment, "seed": self.seed}

    @property
    def transforms(self) -> dict[str, T]:
        ops = self.augment.split(",")
        chosen: dict[str, T] = {}
        for op in ops:
            chosen.update(OPS[op])
        if {"rot90", "flip"} <= set(ops):
            chosen.update(DIAGONALS)
        return chosen

    def transform_name(self, image_id: str, view: int) -> str:
        """The transform of view `view` (>= 1) of an image."""
        names = sorted(self.transforms, key=lambda n: hashlib.sha256(
            f"{self.augment}\0{self.seed}\0{image_id}\0{n}".encode()).digest())
        return names[(view - 1) % len(names)]

    def apply(self, image: Image.Image, image_id: str, view: int) -> Image.Image:
        if view == 0:
            return image
        return image.transpose(self.transforms[self.transform_name(image_id, view)])


def parse_views(views: int, augment: str | None, seed: int) -> ViewSpec | None:
    """None for plain embeddings; else a checked spec. Asking for more views than there are
    distinct transforms is refused: the extra views would repeat earlier ones exactly."""
    if not views:
        if augment:
            raise InputError("--augment needs --views N (how many augmented views per image)")
        return None
    if views < 0:
        raise InputError(f"--views must be >= 0, got {views}")
    ops = sorted({op.strip() for op in (augment or DEFAULT_AUGMENT).split(",") if op.strip()})
    unknown = [op for op in ops if op not in OPS]
    if unknown or not ops:
        raise InputError(f"unknown augmentation {', '.join(unknown) or repr(augment)}",
                         fix=f"use a comma-separated subset of {', '.join(OPS)} (overhead imagery: rot90,flip)")
    spec = ViewSpec(",".join(ops), int(seed), int(views))
    if views > len(spec.transforms):
        raise InputError(f"{spec.augment} gives {len(spec.transforms)} distinct views, {views} were asked for",
                         fix=f"use --views {len(spec.transforms)} or fewer")
    return spec
