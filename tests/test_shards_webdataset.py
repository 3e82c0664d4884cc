"""Shards are read unchanged by a webdataset pipeline built the way open_clip's trainer builds it."""

import json

import numpy as np
import webdataset as wds
from PIL import Image

from clipstore.ingest.pipeline import ingest
from clipstore.warehouse.sql import query


def open_clip_style_loader(urls, transform):
    """open_clip's get_wds_dataset in miniature: shard list, tar -> samples, drop samples without
    caption or image, decode to PIL RGB, rename, map, to_tuple, batch."""
    return wds.DataPipeline(
        wds.SimpleShardList(urls),
        wds.tarfile_to_samples(handler=wds.reraise_exception),
        wds.select(lambda s: "txt" in s and ("png" in s or "jpg" in s)),
        wds.decode("pilrgb", handler=wds.reraise_exception),
        wds.rename(image="jpg;png;jpeg;webp", text="txt"),
        wds.map_dict(image=transform, text=lambda t: t),
        wds.to_tuple("image", "text", "__key__"),
    )


def test_open_clip_reads_shards_unchanged(store, shared_data):
    d = shared_data
    art = ingest(store, "ucm_captions", d / "ucm_captions", images=d / "ucmerced_landuse",
                 image_map=d / "ucmerced_landuse" / "ucm_captions_filename_map.tsv", workers=2, progress=False)
    shards = sorted((art.path / "shards").glob("*.tar"))
    sizes = json.loads((art.path / "shards" / "sizes.json").read_text())
    assert sum(sizes.values()) == 210 and set(sizes) == {p.name for p in shards}

    # the README's one-liner: decode, then to_tuple("jpg;png", "txt")
    plain = list(wds.WebDataset([str(p) for p in shards], shardshuffle=False).decode("pil").to_tuple("jpg;png", "txt"))
    assert len(plain) == 210

    rows = {r["sample_id"]: r for r in query(store, """
        SELECT s.sample_id, s.meta, c.raw FROM samples s JOIN captions c USING (sample_id)
        WHERE c.ordinal = 0""").to_pylist()}
    seen = 0
    for image, text, key in open_clip_style_loader([str(p) for p in shards], lambda im: np.asarray(im)):
        row = rows[key]
        assert text == row["raw"]  # txt = the first caption, verbatim
        original = Image.open(d / "ucmerced_landuse" / json.loads(row["meta"])["image_path"]).convert("RGB")
        assert np.array_equal(image, np.asarray(original))  # TIFF -> PNG is lossless
        seen += 1
    assert seen == 210


def test_jpeg_bytes_are_stored_as_they_are(store, shared_data):
    d = shared_data / "rsicd"
    art = ingest(store, "rsicd", d / "dataset_rsicd.reconstructed.json", images=d / "RSICD_images",
                 workers=1, progress=False)
    shards = [str(p) for p in sorted((art.path / "shards").glob("*.tar"))]
    for sample in wds.WebDataset(shards, shardshuffle=False):
        meta = json.loads(sample["json"])
        assert sample["jpg"] == (d / "RSICD_images" / meta["source_key"]).read_bytes()
        assert sample["txt"].decode() == meta["captions"][0]
        assert sample["__key__"] == meta["sample_id"]
    offsets = query(store, "SELECT source_key, shard, \"offset\", stored_bytes FROM images").to_pylist()
    for o in offsets:  # the byte offset lets a reader seek straight to an image
        with open(art.path / "shards" / o["shard"], "rb") as f:
            f.seek(o["offset"])
            assert f.read(o["stored_bytes"]) == (d / "RSICD_images" / o["source_key"]).read_bytes()
