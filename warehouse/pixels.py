"""The pixel cache's format and its reader: decoded, resized uint8 images, memory-mapped, keyed by
(image id, preprocessing). The contract between the stage that writes it (`clipstore pixels`,
features/pixels.py) and the stages that read it (embed, the trainer), which import only this module.

A `pixels` artifact holds the images of one corpus under one `PixelSpec`, per committed part:
  - `pixel_items/<part>.parquet`: one row per image (declared table, a SQL view), and
  - `pixels/<part>.npy`: uint8, shape (rows, height, width, 3), RGB; row i <-> items row i.
The spec is the geometric half of open_clip's eval transform (resize, crop or pad), applied with
Pillow exactly as that transform applies it; what follows in the model's transform (to float /255,
then mean/std) is left to the reader (`warehouse.pixel_tensors`). So the cache of a model's own
spec gives, after normalisation, the very tensors the eval transform gives: see docs/pixels.md."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageOps

from clipstore.warehouse.errors import InputError, NotFoundError
from clipstore.warehouse.hashing import canonical_json
from clipstore.warehouse.parquet import table_spec
from clipstore.warehouse.store import Artifact, Store

KIND = "pixels"
PIXEL_ITEMS = pa.schema([
    ("artifact_id", pa.string()),  # the pixels artifact (several share the SQL view)
    ("image_id", pa.string()),
    ("corpus", pa.string()),
    ("sample_id", pa.string()),    # the first sample of the corpus holding the image
    ("width", pa.int32()),         # the stored image's size before preprocessing
    ("height", pa.int32()),
    ("row", pa.int64()),           # row in this part's pixels file
    ("part", pa.int32()),
])
PIXEL_TABLES = {"pixel_items": table_spec(PIXEL_ITEMS)}   # pixels/ parts are .npy files, not a SQL view
RESIZE_MODES = ("shortest", "longest", "squash")
INTERPOLATIONS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


@dataclass(frozen=True)
class PixelSpec:
    """The preprocessing a cache holds, in open_clip's terms (`resize_mode`):
      shortest: resize the shorter side to fit, then center-crop to (height, width);
      longest:  resize the longer side to fit, then center-pad with `fill_color`;
      squash:   resize to (height, width), ignoring the aspect ratio.
    `fill_color` only matters for longest (it is 0 otherwise, so it never splits caches)."""

    height: int
    width: int
    resize_mode: str = "shortest"
    interpolation: str = "bicubic"
    fill_color: int = 0

    def __post_init__(self):
        if self.height < 1 or self.width < 1:
            raise InputError(f"a pixel cache needs a positive size, got {self.height}x{self.width}")
        if self.resize_mode not in RESIZE_MODES:
            raise InputError(f"unknown resize mode {self.resize_mode!r}", fix=f"use one of {', '.join(RESIZE_MODES)}")
        if self.interpolation not in INTERPOLATIONS:
            raise InputError(f"unknown interpolation {self.interpolation!r}",
                             fix=f"use one of {', '.join(INTERPOLATIONS)}")
        if not 0 <= self.fill_color <= 255:
            raise InputError(f"fill colour {self.fill_color} is not a byte value (0-255)")
        if self.resize_mode != "longest":
            object.__setattr__(self, "fill_color", 0)

    @classmethod
    def square(cls, size: int, **options) -> "PixelSpec":
        return cls(int(size), int(size), **options)

    @classmethod
    def from_preprocess(cls, cfg: dict) -> "PixelSpec":
        """The spec of a model's eval transform, from its preprocess config (open_clip's
        `model.visual.preprocess_cfg`, kept as `LoadedModel.identity["preprocess"]`). The
        interpolation recorded is the one the transform applies: open_clip eval-resizes with
        bicubic unless told bilinear ("random" included), and a non-square shortest resize is
        always bicubic."""
        size = cfg.get("size", 224)
        height, width = (size, size) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[-1]))
        mode = cfg.get("resize_mode") or "shortest"
        interpolation = "bilinear" if cfg.get("interpolation") == "bilinear" else "bicubic"
        if mode == "shortest" and height != width:
            interpolation = "bicubic"
        return cls(int(height), int(width), mode, interpolation, int(cfg.get("fill_color") or 0))

    @classmethod
    def from_recipe(cls, recipe: dict) -> "PixelSpec":
        h, w = recipe["size"]
        return cls(int(h), int(w), recipe["resize_mode"], recipe["interpolation"], int(recipe["fill_color"]))

    def recipe(self) -> dict:
        """What identifies the pixels: the part of the artifact's key that is not the corpus."""
        return {"size": [self.height, self.width], "resize_mode": self.resize_mode,
                "interpolation": self.interpolation, "fill_color": self.fill_color, "decode": "PIL RGB"}

    @property
    def slug(self) -> str:
        """For artifact names: 64x64-shortest-bicubic (plus -fill<N> for a longest resize)."""
        fill = f"-fill{self.fill_color}" if self.resize_mode == "longest" else ""
        return f"{self.height}x{self.width}-{self.resize_mode}-{self.interpolation}{fill}"

    @property
    def row_bytes(self) -> int:
        return self.height * self.width * 3

    def prepare(self, image: Image.Image) -> np.ndarray:
        """An RGB image -> (height, width, 3) uint8, as open_clip's eval transform resizes, crops and
        pads (torchvision's PIL paths: Resize, CenterCrop, open_clip's ResizeKeepRatio and
        CenterCropOrPad), so that ToTensor + Normalize of the result is that transform's output."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        w, h = image.size
        resample = INTERPOLATIONS[self.interpolation]
        if self.resize_mode == "squash":
            out = _resize(image, self.width, self.height, resample)
        elif self.resize_mode == "shortest" and self.height == self.width:
            # torchvision Resize(int): the shorter side to size, the longer truncated
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = self.height, int(self.height * long / short)
            new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
            out = _center_crop_or_pad(_resize(image, new_w, new_h, resample), self.height, self.width, 0)
        else:
            # open_clip ResizeKeepRatio: one ratio, each side rounded (Python's round)
            ratio_h, ratio_w = h / self.height, w / self.width
            ratio = max(ratio_h, ratio_w) if self.resize_mode == "longest" else min(ratio_h, ratio_w)
            new_h, new_w = round(h / ratio), round(w / ratio)
            fill = self.fill_color if self.resize_mode == "longest" else 0
            out = _center_crop_or_pad(_resize(image, new_w, new_h, resample), self.height, self.width, fill)
        return np.asarray(out, dtype=np.uint8)


def _resize(image: Image.Image, w: int, h: int, resample) -> Image.Image:
    return image if image.size == (w, h) else image.resize((w, h), resample)


def _center_crop_or_pad(image: Image.Image, height: int, width: int, fill: int) -> Image.Image:
    """torchvision's center_crop / open_clip's center_crop_or_pad on a PIL image."""
    w, h = image.size
    if width > w or height > h:
        left, top = (width - w) // 2 if width > w else 0, (height - h) // 2 if height > h else 0
        right, bottom = (width - w + 1) // 2 if width > w else 0, (height - h + 1) // 2 if height > h else 0
        image = ImageOps.expand(image, border=(left, top, right, bottom), fill=(fill,) * 3)
        w, h = image.size
        if (w, h) == (width, height):
            return image
    top, left = int(round((h - height) / 2.0)), int(round((w - width) / 2.0))
    return image.crop((left, top, left + width, top + height))


# ---- finding a cache ------------------------------------------------------------------------
def cache_params(corpus: str, spec: PixelSpec) -> dict:
    """The recipe parameters of the cache of (corpus, spec): one artifact per pair."""
    return {"corpus": corpus, "pixels": spec.recipe()}


def find_pixel_cache(store: Store, corpus: str, spec: PixelSpec) -> Artifact | None:
    """The current complete pixels artifact of this corpus and spec, or None. It may lack images the
    corpus gained since it was built: `PixelCache.missing(ids)` says which."""
    want = canonical_json(cache_params(corpus, spec))
    found = [a for a in store.current_all(KIND) if a.status == "complete" and canonical_json(a.params) == want]
    return found[0] if found else None


# ---- reading --------------------------------------------------------------------------------
class PixelCache:
    """A read view of one or several pixels artifacts of one spec: their images as rows, in part
    order (an image id several artifacts hold appears once, at its first row). Opening maps the
    part files and copies no pixels; `cache[i]` (an int) or a slice within one part is a view
    of the memory map, a sequence of rows one gathered (n, height, width, 3) array."""

    def __init__(self, artifacts: list[Artifact], spec: PixelSpec, items: pa.Table, parts: list[np.ndarray],
                 part_of: np.ndarray, local: np.ndarray):
        self.artifacts, self.spec, self.items, self.parts = artifacts, spec, items, parts
        self._part_of, self._local = part_of, local
        self.ids: list[str] = items.column("image_id").to_pylist()
        self._rows = {image_id: row for row, image_id in enumerate(self.ids)}

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.spec.height, self.spec.width, 3)

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._rows

    def row_of(self, image_id: str) -> int:
        try:
            return self._rows[image_id]
        except KeyError:
            raise NotFoundError(f"image {image_id} is not in the pixel cache",
                                where=", ".join(a.artifact_id for a in self.artifacts),
                                fix="bring the cache up to date: clipstore pixels --corpus NAME ...") from None

    def rows_of(self, image_ids) -> np.ndarray:
        return np.fromiter((self.row_of(i) for i in image_ids), dtype=np.int64, count=len(image_ids))

    def missing(self, image_ids) -> list[str]:
        return [i for i in image_ids if i not in self._rows]

    def __getitem__(self, rows) -> np.ndarray:
        if isinstance(rows, (int, np.integer)):
            row = int(rows) + (len(self) if rows < 0 else 0)
            if not 0 <= row < len(self):
                raise IndexError(f"row {rows} of a pixel cache of {len(self)} images")
            return self.parts[self._part_of[row]][self._local[row]]
        if isinstance(rows, slice):
            idx = np.arange(len(self))[rows]
            if len(idx) and (np.diff(idx) == 1).all() and self._part_of[idx[0]] == self._part_of[idx[-1]]:
                start = self._local[idx[0]]
                return self.parts[self._part_of[idx[0]]][start:start + len(idx)]
            rows = idx
        return self.gather(np.asarray(rows, dtype=np.int64))

    def gather(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Rows (any order, repeats allowed) -> (n, height, width, 3) uint8, read part by part."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"rows outside a pixel cache of {len(self)} images")
        out = np.empty((len(rows), *self.shape), dtype=np.uint8) if out is None else out
        parts, local = self._part_of[rows], self._local[rows]
        for p in np.unique(parts):
            where = np.flatnonzero(parts == p)
            out[where] = self.parts[p][local[where]]
        return out

    def images(self, image_ids) -> np.ndarray:
        """The pixels of these image ids, in this order."""
        return self.gather(self.rows_of(list(image_ids)))


def open_pixel_cache(store: Store, artifacts: Artifact | str | list[Artifact | str]) -> PixelCache:
    """Open one pixels artifact (an Artifact, id or name) or several of one spec, as one PixelCache."""
    given = artifacts if isinstance(artifacts, list) else [artifacts]
    arts = [a if isinstance(a, Artifact) else store.get(a, kind=KIND) for a in given]
    wrong = [a.artifact_id for a in arts if a.kind != KIND]
    if wrong or not arts:
        raise InputError(f"not pixels artifacts: {', '.join(wrong) or 'none given'}",
                         fix="pass ids or names from `clipstore ls --kind pixels`")
    specs = {canonical_json(a.params.get("pixels")) for a in arts}
    if len(specs) != 1:
        raise InputError("the pixel caches opened together must share one preprocessing spec",
                         where=", ".join(a.artifact_id for a in arts))
    spec = PixelSpec.from_recipe(arts[0].params["pixels"])
    found = store.all_parts([a.artifact_id for a in arts])
    tables, parts, part_of, local, seen = [], [], [], [], set()
    for art in arts:
        item_files = {p: path for p, path, _ in found.get((art.artifact_id, "pixel_items"), [])}
        for p, path, _ in found.get((art.artifact_id, "pixels"), []):
            table = pq.read_table(str(item_files[p]))
            keep = [i for i, image_id in enumerate(table.column("image_id").to_pylist()) if image_id not in seen]
            seen.update(table.column("image_id").to_pylist())
            array = np.load(str(path), mmap_mode="r")
            if array.shape[1:] != (spec.height, spec.width, 3) or len(array) != table.num_rows:
                raise NotFoundError(f"pixel part {path} does not match its items ({array.shape}, "
                                    f"{table.num_rows} rows)", where=str(path), fix="rebuild the pixel cache")
            rows = table.column("row").to_numpy()[keep]
            tables.append(table.take(pa.array(keep, type=pa.int64())))
            part_of.append(np.full(len(keep), len(parts), dtype=np.int32))
            local.append(rows.astype(np.int64))
            parts.append(array)
    items = pa.concat_tables(tables) if tables else PIXEL_ITEMS.empty_table()
    return PixelCache(arts, spec, items, parts,
                      np.concatenate(part_of) if part_of else np.zeros(0, np.int32),
                      np.concatenate(local) if local else np.zeros(0, np.int64))
