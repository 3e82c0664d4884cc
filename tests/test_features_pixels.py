"""The pixel cache: bytes equal a direct Pillow decode + resize and open_clip's eval geometry, a grown
corpus adds only its new images, a shared image is copied, the reader maps without copying, embed
from the cache equals embed from the shards, and the tensor augmentation does what it says."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from open_clip.transform import image_transform
from PIL import Image

from clipstore.features.embed import embed, model_pixel_spec
from clipstore.features.models import ModelSpec, load_model
from clipstore.features.pixels import cache_pixels
from clipstore.features.vectors import load_embeddings
from clipstore.ingest.pipeline import ingest
from clipstore.ingest.splits import make_split
from clipstore.warehouse.errors import ClipstoreError, InputError, NotFoundError
from clipstore.warehouse.pixel_tensors import TrainAugment, to_model_input
from clipstore.warehouse.pixels import PixelSpec, find_pixel_cache, open_pixel_cache
from clipstore.warehouse.sql import query
from conftest import karpathy_from_real_images, real_ucm_tiffs, run_main, write_karpathy

# (width, height, format, mode): landscape, portrait, square, thin, JPEG, and modes that need converting
SHAPES = [(61, 37, "PNG", "RGB"), (37, 61, "PNG", "RGB"), (40, 40, "JPEG", "RGB"), (100, 21, "PNG", "RGBA"),
          (23, 90, "PNG", "L"), (33, 47, "PNG", "P"), (64, 64, "PNG", "RGB"), (80, 50, "JPEG", "RGB")]


@pytest.fixture(scope="module")
def tiny():
    return load_model(ModelSpec("tiny-vit"))


def noisy_image(seed: int, width: int, height: int, mode: str = "RGB") -> Image.Image:
    """Random pixels over a gradient: every resampling weight shows in the result."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], axis=-1)
    rgb = np.clip(base + rng.integers(-60, 60, base.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(rgb)
    if mode == "RGBA":
        image = image.convert("RGBA")
        image.putalpha(Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8)))
    elif mode == "P":
        image = image.quantize(64)
    elif mode != "RGB":
        image = image.convert(mode)
    return image


def write_corpus(root, n: int, start: int = 0) -> list[str]:
    """A Karpathy corpus of n generated images of the SHAPES in turn (files 0..n-1 under root/images)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(n):
        w, h, fmt, mode = SHAPES[i % len(SHAPES)]
        name = f"{i}.{'jpg' if fmt == 'JPEG' else 'png'}"
        if not (root / "images" / name).exists():
            noisy_image(start + i, w, h, mode).save(root / "images" / name, format=fmt,
                                                    **({"quality": 90} if fmt == "JPEG" else {}))
        entries.append({"filename": name, "captions": [f"image {i} ."]})
    write_karpathy(root, entries)
    return [e["filename"] for e in entries]


def reference_pixels(path, size: int) -> np.ndarray:
    """Straight from the file with Pillow: RGB, the shorter side to `size` (bicubic, the longer
    truncated), the central size x size window (offsets rounded)."""
    image = Image.open(path).convert("RGB")
    w, h = image.size
    scale = size / min(w, h)
    new_w, new_h = (size, int(h * size / w)) if w <= h else (int(w * size / h), size)
    assert abs(new_w - w * scale) < 1 and abs(new_h - h * scale) < 1
    image = image.resize((new_w, new_h), Image.Resampling.BICUBIC) if (new_w, new_h) != (w, h) else image
    left, top = int(round((new_w - size) / 2)), int(round((new_h - size) / 2))
    return np.asarray(image.crop((left, top, left + size, top + size)))


def pixels_by_file(store, cache) -> dict[str, np.ndarray]:
    keys = query(store, "SELECT image_id, source_key FROM images").to_pylist()
    return {r["source_key"]: np.asarray(cache.images([r["image_id"]])[0]) for r in keys if r["image_id"] in cache}


def run_summaries(store, stage: str) -> list[dict]:
    with store.connect() as con:
        rows = con.execute("SELECT summary FROM runs WHERE stage = ? ORDER BY started_at", [stage]).fetchall()
    return [json.loads(r[0]) for r in rows if r[0] is not None]   # a failed run has no summary


def part_digests(store, like: str = "pixels-%") -> list[tuple]:
    with store.connect() as con:
        return con.execute("SELECT table_name, part, rows, sha256 FROM parts WHERE artifact_id LIKE ? ORDER BY ALL",
                           [like]).fetchall()


def test_cached_pixels_equal_a_direct_pil_decode_and_resize(store, tmp_path):
    names = write_corpus(tmp_path / "raw", 16)
    ingest(store, "karpathy", tmp_path / "raw", name="gen", shard_size=6, workers=1, progress=False)
    [art] = cache_pixels(store, corpus="gen", size=32, workers=2, progress=False)
    assert art.counts == {"images": 16, "height": 32, "width": 32} and art.stats["pillow"] == Image.__version__
    cache = open_pixel_cache(store, art)
    got = pixels_by_file(store, cache)
    assert sorted(got) == sorted(names)
    for name in names:
        assert np.array_equal(got[name], reference_pixels(tmp_path / "raw" / "images" / name, 32)), name
    # one part per shard (6 + 6 + 4 images), and the part table is a SQL view
    assert [len(p) for p in cache.parts] == [6, 6, 4]
    assert query(store, "SELECT count(*) AS n FROM pixel_items WHERE corpus = 'gen'").to_pylist() == [{"n": 16}]


@pytest.mark.parametrize("mode", ["shortest", "longest", "squash"])
@pytest.mark.parametrize("size", [24, (20, 30), (30, 20)], ids=["24", "20x30", "30x20"])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_every_spec_equals_open_clips_eval_transform(mode, size, interpolation):
    """prepare() then to_model_input() is, bit for bit, open_clip's eval transform of the image."""
    cfg = {"size": size, "resize_mode": mode, "interpolation": interpolation, "fill_color": 7,
           "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.3, 0.25)}
    spec = PixelSpec.from_preprocess(cfg)
    transform = image_transform(size, is_train=False, mean=cfg["mean"], std=cfg["std"], resize_mode=mode,
                                interpolation=interpolation, fill_color=7)
    for i, (w, h, _, image_mode) in enumerate(SHAPES + [(24, 24, "PNG", "RGB"), (3, 50, "PNG", "RGB")]):
        image = noisy_image(i, w, h, image_mode).convert("RGB")
        pixels = spec.prepare(image)
        assert pixels.shape == (spec.height, spec.width, 3) and pixels.dtype == np.uint8
        assert torch.equal(to_model_input(pixels[None], cfg["mean"], cfg["std"])[0], transform(image)), (w, h)


def test_spec_key_and_validation():
    assert PixelSpec.square(64).recipe() == {"size": [64, 64], "resize_mode": "shortest", "interpolation": "bicubic",
                                            "fill_color": 0, "decode": "PIL RGB"}
    assert PixelSpec.square(64, fill_color=9) == PixelSpec.square(64)       # fill only matters for longest
    assert PixelSpec.square(64, resize_mode="longest", fill_color=9).slug == "64x64-longest-bicubic-fill9"
    assert PixelSpec.from_preprocess({"size": 224, "interpolation": "random"}).interpolation == "bicubic"
    assert PixelSpec.from_preprocess({"size": (20, 30), "interpolation": "bilinear"}).interpolation == "bicubic"
    for bad in [dict(resize_mode="crop"), dict(interpolation="lanczos"), dict(fill_color=300)]:
        with pytest.raises(InputError):
            PixelSpec.square(32, **bad)
    with pytest.raises(InputError):
        PixelSpec.square(0)


@pytest.mark.slow   # three ingests
def test_a_grown_corpus_adds_only_its_new_images_and_a_shared_image_is_copied(store, tmp_path):
    write_corpus(tmp_path / "raw", 10)
    ingest(store, "karpathy", tmp_path / "raw", name="gen", shard_size=4, workers=1, progress=False)
    [first] = cache_pixels(store, corpus="gen", size=24, workers=0, progress=False)
    before = part_digests(store)
    names = write_corpus(tmp_path / "raw", 16)              # 6 new files
    ingest(store, "karpathy", tmp_path / "raw", name="gen", shard_size=4, workers=1, progress=False)
    [grown] = cache_pixels(store, corpus="gen", size=24, workers=0, progress=False)
    assert grown.artifact_id == first.artifact_id and grown.counts["images"] == 16 and not grown.noop
    assert run_summaries(store, "pixels")[-1]["decoded"] == 6
    assert set(before) <= set(part_digests(store))          # the old parts are untouched
    got = pixels_by_file(store, open_pixel_cache(store, grown))
    for name in names:
        assert np.array_equal(got[name], reference_pixels(tmp_path / "raw" / "images" / name, 24)), name
    [again] = cache_pixels(store, corpus="gen", size=24, workers=0, progress=False)
    assert again.noop and again.artifact_id == grown.artifact_id

    # a second corpus over the same files: every image is copied from the first cache, none decoded
    ingest(store, "karpathy", tmp_path / "raw", name="gen2", shard_size=5, workers=1, progress=False)
    [other] = cache_pixels(store, corpus="gen2", size=24, workers=0, progress=False)
    assert run_summaries(store, "pixels")[-1] == {**run_summaries(store, "pixels")[-1], "decoded": 0, "copied": 16}
    a, b = open_pixel_cache(store, grown), open_pixel_cache(store, other)
    assert np.array_equal(a.images(a.ids), b.images(a.ids))
    both = open_pixel_cache(store, [grown, other])           # the corpora of a split, as one cache
    assert both.ids == a.ids and np.array_equal(both[list(range(16))], a[list(range(16))])
    # --split: every corpus of the split, each already up to date
    make_split(store, "both", corpora=["gen", "gen2"], labeled_ratio=0.5, seed=0)
    by_split = cache_pixels(store, split="both", size=24, workers=0, progress=False)
    assert [x.artifact_id for x in by_split] == [grown.artifact_id, other.artifact_id] and all(x.noop for x in by_split)
    # another spec is another artifact; find_pixel_cache tells them apart
    assert find_pixel_cache(store, "gen", PixelSpec.square(24)).artifact_id == grown.artifact_id
    assert find_pixel_cache(store, "gen", PixelSpec.square(24, interpolation="bilinear")) is None


def test_the_reader_maps_rows_without_copying(store, tmp_path):
    write_corpus(tmp_path / "raw", 9)
    ingest(store, "karpathy", tmp_path / "raw", name="gen", shard_size=4, workers=1, progress=False)
    [art] = cache_pixels(store, corpus="gen", size=16, workers=0, progress=False)
    cache = open_pixel_cache(store, art.name)               # by name, as the trainer would
    assert len(cache) == 9 and cache.shape == (16, 16, 3) and [len(p) for p in cache.parts] == [4, 4, 1]
    one = cache[5]
    assert isinstance(one, np.memmap) and np.shares_memory(one, cache.parts[1])   # a view of part 1, row 1
    window = cache[4:7]
    assert window.shape == (3, 16, 16, 3) and np.shares_memory(window, cache.parts[1])
    across = cache[2:6]                                      # spans two parts: gathered
    assert np.array_equal(across, np.stack([cache[i] for i in range(2, 6)]))
    rows = [8, 0, 0, 3]
    assert np.array_equal(cache[rows], np.stack([cache[i] for i in rows]))
    assert [cache.row_of(cache.ids[r]) for r in rows] == rows
    assert cache.missing([cache.ids[0], "nope"]) == ["nope"] and "nope" not in cache
    with pytest.raises(NotFoundError):
        cache.row_of("nope")
    with pytest.raises(IndexError):
        cache[9]
    assert not one.flags.writeable                          # read-only maps: the cache cannot be changed


@pytest.mark.slow   # two stores, two embeds
def test_embed_from_the_cache_equals_embed_from_the_shards(tmp_path, tiny):
    from clipstore.warehouse.store import Store
    write_corpus(tmp_path / "raw", 14)
    shards, cached = Store(tmp_path / "shards"), Store(tmp_path / "cached")
    for s in (shards, cached):
        ingest(s, "karpathy", tmp_path / "raw", name="gen", shard_size=5, workers=1, progress=False)
    [px] = cache_pixels(cached, corpus="gen", model=tiny, workers=0, progress=False)
    assert px.counts["height"] == 64 and find_pixel_cache(cached, "gen", model_pixel_spec(tiny)) is not None
    [a] = embed(shards, model=tiny, corpus="gen", batch_size=4, workers=0, progress=False)
    [b] = embed(cached, model=tiny, corpus="gen", batch_size=4, workers=0, progress=False)
    assert run_summaries(shards, "embed")[-1]["pixel_cache"] is None
    assert run_summaries(cached, "embed")[-1]["pixel_cache"] == {"artifact": px.artifact_id, "images": 14}
    va, vb = load_embeddings(shards, a.artifact_id), load_embeddings(cached, b.artifact_id)
    assert va.ids == vb.ids and np.array_equal(va.matrix(), vb.matrix())   # same tensors, same batches: same bits


def test_embed_pixel_cache_modes(tmp_path, tiny):
    from clipstore.warehouse.store import Store
    write_corpus(tmp_path / "raw", 6)
    store = Store(tmp_path / "s")
    ingest(store, "karpathy", tmp_path / "raw", name="gen", shard_size=5, workers=1, progress=False)
    with pytest.raises(NotFoundError, match="no pixel cache of gen for 64x64-shortest-bicubic"):
        embed(store, model=tiny, corpus="gen", pixel_cache="use", workers=0, progress=False)
    assert store.list("embeddings") == []                    # refused before anything was embedded
    with pytest.raises(InputError):
        embed(store, model=tiny, corpus="gen", pixel_cache="always", workers=0, progress=False)
    cache_pixels(store, corpus="gen", size=32, workers=0, progress=False)   # another spec: not the model's
    embed(store, model=tiny, corpus="gen", workers=0, progress=False)
    assert run_summaries(store, "embed")[-1]["pixel_cache"] is None


def test_a_cache_that_differs_from_decoding_is_not_used(tmp_path, tiny):
    """The first pending image is checked against the decoded path: a cache written by another
    decoder (here: bytes changed on disk) falls back to decoding with auto and is refused with use."""
    from clipstore.warehouse.store import Store
    write_corpus(tmp_path / "raw", 5)
    store = Store(tmp_path / "s")
    ingest(store, "karpathy", tmp_path / "raw", name="gen", shard_size=5, workers=1, progress=False)
    [px] = cache_pixels(store, corpus="gen", model=tiny, workers=0, progress=False)
    [npy] = store.table_paths(px, "pixels")
    array = np.load(npy, mmap_mode="r+")
    array[:, 0, 0, 0] ^= 1
    array.flush()
    del array
    with pytest.raises(ClipstoreError, match="differs from decoding"):
        embed(store, model=tiny, corpus="gen", pixel_cache="use", workers=0, progress=False)
    embed(store, model=tiny, corpus="gen", workers=0, progress=False)
    used = run_summaries(store, "embed")[-1]["pixel_cache"]
    assert used["images"] == 0 and "differs from decoding" in used["why"]


def test_real_ucm_pixels_and_embeddings(store, tmp_path, shared_data, tiny):
    """Real UC Merced TIFFs (stored as PNG): the cache equals Pillow on the original files, and
    embedding from it equals embedding from the shards."""
    from clipstore.warehouse.store import Store
    names = karpathy_from_real_images(shared_data, tmp_path / "ucm", 12)
    ingest(store, "karpathy", tmp_path / "ucm", name="ucm", shard_size=5, workers=1, progress=False)
    [px] = cache_pixels(store, corpus="ucm", model=tiny, workers=2, progress=False)
    got = pixels_by_file(store, open_pixel_cache(store, px))
    for name, original in zip(names, real_ucm_tiffs(shared_data, 12)):
        assert np.array_equal(got[name], reference_pixels(original, 64)), name
    plain = Store(tmp_path / "plain")
    ingest(plain, "karpathy", tmp_path / "ucm", name="ucm", shard_size=5, workers=1, progress=False)
    [a] = embed(plain, model=tiny, corpus="ucm", workers=0, progress=False)
    [b] = embed(store, model=tiny, corpus="ucm", pixel_cache="use", workers=0, progress=False)
    assert np.array_equal(load_embeddings(plain, a.artifact_id).matrix(), load_embeddings(store, b.artifact_id).matrix())


@pytest.mark.slow   # five CLI runs
def test_cli_pixels(tmp_path):
    write_corpus(tmp_path / "raw", 6)
    s = tmp_path / "store"
    run_main("--store", s, "ingest", "karpathy", tmp_path / "raw", "--name", "gen", "--workers", "1", "-q")
    out = run_main("--store", s, "pixels", "--corpus", "gen", "--size", "32", "-q").stdout
    assert "pixels gen.pixels.32x32-shortest-bicubic: images 6, 0.0 MiB" in out and "-> pixels-gen" in out
    again = run_main("--store", s, "pixels", "--corpus", "gen", "--size", "32", "-q").stdout
    assert "up to date (images 6" in again
    by_model = run_main("--store", s, "pixels", "--corpus", "gen", "--model", "tiny-vit", "-q").stdout
    assert "gen.pixels.64x64-shortest-bicubic: images 6" in by_model
    embedded = run_main("--store", s, "embed", "--model", "tiny-vit", "--corpus", "gen", "--pixel-cache", "use",
                        "--workers", "0", "-q")
    assert "embed gen.image.tiny-vit: vectors 6" in embedded.stdout
    neither = run_main("--store", s, "pixels", "--corpus", "gen", check=False)
    assert neither.returncode == 2 and "--size N or --model SPEC" in neither.stderr
    unknown = run_main("--store", s, "pixels", "--corpus", "nope", "--size", "8", check=False)
    assert unknown.returncode == 3 and "no corpus 'nope'" in unknown.stderr


# ---- tensor augmentation ------------------------------------------------------------------------
def uint8_batch(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def test_augment_identity_and_flip_are_exact():
    batch = uint8_batch(5, 24, 24)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.3, 0.25)
    plain = to_model_input(batch, mean, std)
    keep = TrainAugment((24, 24), mean, std, scale=(1, 1), ratio=(1, 1), flip=0)
    assert torch.equal(keep(batch, generator=torch.Generator().manual_seed(0)), plain)
    mirror = TrainAugment((24, 24), mean, std, scale=(1, 1), ratio=(1, 1), flip=1)
    assert torch.equal(mirror(batch), plain.flip(-1))


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_augment_equals_torchvisions_resized_crop_on_its_boxes(interpolation):
    batch = uint8_batch(16, 40, 30, seed=1)
    aug = TrainAugment((20, 20), scale=(0.3, 1.0), flip=0.5, interpolation=interpolation)
    out = aug(batch, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)                      # the same draws, in the same order
    boxes, flips = aug.boxes(16, 40, 30, g), torch.rand(16, generator=g) < 0.5
    mode = TF.InterpolationMode.BICUBIC if interpolation == "bicubic" else TF.InterpolationMode.BILINEAR
    for i, ((top, left, h, w), flip) in enumerate(zip(boxes.tolist(), flips.tolist())):
        image = torch.from_numpy(batch[i]).permute(2, 0, 1).float()
        ref = TF.resized_crop(image, top, left, h, w, [20, 20], interpolation=mode, antialias=True)
        ref = (TF.hflip(ref) if flip else ref).clamp(0, 255) / 255
        ref = TF.normalize(ref, aug.mean, aug.std)
        assert torch.allclose(out[i], ref, atol=1e-5), i
    assert 0 < flips.sum() < 16


def test_augment_boxes_follow_scale_and_ratio_and_the_seed():
    aug = TrainAugment((32, 32), scale=(0.5, 0.8), ratio=(0.75, 4 / 3))
    boxes = aug.boxes(2000, 50, 60, torch.Generator().manual_seed(0))
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 50).all() and (left + w <= 60).all()
    share = (h * w).double() / (50 * 60)
    assert share.min() > 0.47 and share.max() < 0.83                 # scale, up to rounding to whole pixels
    aspect = w.double() / h
    assert aspect.min() > 0.7 and aspect.max() < 1.4
    assert share.std() > 0.05 and len(set(top.tolist())) > 5          # spread, not a constant box
    again = aug.boxes(2000, 50, 60, torch.Generator().manual_seed(0))
    assert torch.equal(boxes, again) and not torch.equal(boxes, aug.boxes(2000, 50, 60, torch.Generator().manual_seed(1)))
    # a box that cannot fit ten times falls back to the central crop of the allowed aspect
    tall = TrainAugment((8, 8), scale=(1, 1), ratio=(1, 1)).boxes(3, 40, 10)
    assert tall.tolist() == [[15, 0, 10, 10]] * 3


def test_augment_from_a_models_preprocess(tiny):
    aug = TrainAugment.from_preprocess(tiny.identity["preprocess"])
    assert aug.size == (64, 64) and aug.mean == tuple(tiny.identity["preprocess"]["mean"])
    out = aug(uint8_batch(3, 72, 72))
    assert out.shape == (3, 3, 64, 64) and out.dtype == torch.float32
    with pytest.raises(InputError):
        aug(np.zeros((3, 8, 8), dtype=np.uint8))
