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


# ---- after a re-ingest that supersedes samples, the shards are the corpus -------------------------
def live_shards(art):
    """The shards open_clip is given: those sizes.json lists."""
    sizes = json.loads((art.path / "shards" / "sizes.json").read_text())
    return sizes, [str(art.path / "shards" / name) for name in sorted(sizes)]


def supersede(corpus, shared_data):
    """Change two images' bytes (in different shards), one caption, and delete one image."""
    from conftest import real_ucm_tiffs, write_karpathy
    doc = json.loads((corpus / "dataset.json").read_text())
    entries = [{"filename": i["filename"], "split": i["split"], "captions": [s["raw"] for s in i["sentences"]]}
               for i in doc["images"]]
    others = real_ucm_tiffs(shared_data, 40)[-2:]           # two images the corpus does not hold yet
    (corpus / "images" / "2.tif").write_bytes(others[0].read_bytes())
    (corpus / "images" / "10.tif").write_bytes(others[1].read_bytes())
    entries[5]["captions"] = ["a new first caption for six .", "and a second one ."]
    (corpus / "images" / "12.tif").unlink()                 # 1 of 12 samples lost: under the 10% guard
    write_karpathy(corpus, entries)


def test_reingest_that_supersedes_samples_rewrites_only_the_affected_shards(store, tmp_path, shared_data):
    from conftest import karpathy_from_real_images
    from clipstore.warehouse import shards as store_shards
    from clipstore.warehouse.sql import Session
    corpus = tmp_path / "corpus"
    karpathy_from_real_images(shared_data, corpus, 16)
    first = ingest(store, "karpathy", corpus, shard_size=4, workers=1, progress=False)   # parts 0..3
    untouched = (first.path / "shards" / "000003.tar").read_bytes()    # holds 13..16: nothing changes
    supersede(corpus, shared_data)
    art = ingest(store, "karpathy", corpus, shard_size=4, workers=1, progress=False)
    assert art.artifact_id == first.artifact_id and art.counts["samples"] == 15

    # parts 0..2 held a superseded sample: rewritten as 5..7 and retired; 3 is untouched, 4 is new
    with store.connect() as con:
        retired = [r[0] for r in con.execute("SELECT DISTINCT part FROM parts WHERE retired ORDER BY 1").fetchall()]
    assert retired == [0, 1, 2]
    sizes, urls = live_shards(art)
    assert sorted(sizes) == ["000003.tar", "000004.tar", "000005.tar", "000006.tar", "000007.tar"]
    assert (art.path / "shards" / "000003.tar").read_bytes() == untouched

    current = {r["sample_id"]: r for r in query(store, """
        SELECT s.sample_id, s.source_key, s.shard, c.raw FROM samples s JOIN captions c USING (sample_id)
        WHERE c.ordinal = 0 AND s.has_image""").to_pylist()}
    assert len(current) == 15
    seen = []
    per_shard = {}
    for sample in wds.WebDataset(urls, shardshuffle=False).decode("pilrgb"):
        row = current[sample["__key__"]]
        seen.append(sample["__key__"])
        per_shard[sample["__url__"].rsplit("/", 1)[1]] = per_shard.get(sample["__url__"].rsplit("/", 1)[1], 0) + 1
        assert sample["txt"] == row["raw"]                                  # the newest caption
        original = Image.open(corpus / "images" / row["source_key"]).convert("RGB")
        assert np.array_equal(np.asarray(sample["png"]), np.asarray(original))   # the newest pixels
        assert sample["__url__"].endswith(row["shard"])
    assert sorted(seen) == sorted(current)                                   # every sample, once
    assert per_shard == sizes and sum(sizes.values()) == 15
    assert current[next(k for k, r in current.items() if r["source_key"] == "6.tif")]["raw"] == \
        "a new first caption for six ."

    # the images table's offsets point at the right bytes in the rewritten shards
    with Session(store) as session:
        refs = store_shards.corpus_images(store, session, art)
    assert len(refs) == 15
    keys = {r["sample_id"]: r["source_key"] for r in current.values()}
    for ref in refs:
        with open(ref.shard, "rb") as f:
            image = store_shards.decode(f, ref)
        assert np.array_equal(np.asarray(image),
                              np.asarray(Image.open(corpus / "images" / keys[ref.sample_id]).convert("RGB")))


def test_superseding_reingest_is_deterministic(tmp_path, shared_data):
    from conftest import karpathy_from_real_images
    corpus = tmp_path / "corpus"
    karpathy_from_real_images(shared_data, corpus, 12)
    stores = [tmp_path / "a", tmp_path / "b"]
    for root, workers in zip(stores, (1, 2)):
        ingest(root, "karpathy", corpus, name="c", shard_size=4, workers=workers, progress=False)
    supersede(corpus, shared_data)
    for root, workers in zip(stores, (2, 1)):
        ingest(root, "karpathy", corpus, name="c", shard_size=4, workers=workers, progress=False)
    files = lambda s: sorted(p.relative_to(s) for p in s.glob("artifacts/*/*/*") if p.is_file())  # noqa: E731
    assert files(stores[0]) == files(stores[1]) and any(p.name == "000005.tar" for p in files(stores[0]))
    for rel in files(stores[0]):
        assert (stores[0] / rel).read_bytes() == (stores[1] / rel).read_bytes(), rel
