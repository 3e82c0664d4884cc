"""Bad input never loses data: each broken entry is a reject row with a reason (or the whole
file is refused with an error naming file and position), and every valid entry is ingested."""

import os
import shutil

import pytest
from PIL import Image

from clipstore.ingest.pipeline import ingest
from clipstore.warehouse import InputError
from clipstore.warehouse.sql import query
from conftest import karpathy_from_real_images, real_ucm_tiffs, write_karpathy

N_GOOD = 4


@pytest.fixture
def corpus(tmp_path, shared_data):
    """A Karpathy corpus of N_GOOD real UC Merced TIFFs; tests add one bad entry each."""
    root = tmp_path / "corpus"
    karpathy_from_real_images(shared_data, root, N_GOOD)
    return root


def add_entry(root, filename, data: bytes | None = None, captions=("a bad one .",)):
    import json
    doc = json.loads((root / "dataset.json").read_text())
    write_karpathy(root, [{"filename": i["filename"], "split": i["split"],
                           "captions": [s["raw"] for s in i["sentences"]]} for i in doc["images"]]
                   + [{"filename": filename, "captions": list(captions)}])
    if data is not None:
        (root / "images" / filename).write_bytes(data)


def run(store, root, **kw):
    return ingest(store, "karpathy", root, workers=1, progress=False, **kw)


def rejects(store):
    return {r["source_key"]: r["reason"] for r in query(store, "SELECT source_key, reason FROM rejects").to_pylist()}


def n_samples(store):
    return query(store, "SELECT count(*) n FROM samples WHERE has_image").to_pylist()[0]["n"]


def test_corrupt_bytes_are_rejected(store, corpus):
    add_entry(corpus, "noise.jpg", os.urandom(5000))
    run(store, corpus)
    assert "not an image" in rejects(store)["noise.jpg"]
    assert n_samples(store) == N_GOOD


def test_truncated_image_is_rejected(store, corpus, shared_data):
    data = real_ucm_tiffs(shared_data, 1)[0].read_bytes()
    add_entry(corpus, "half.tif", data[: len(data) // 2])
    run(store, corpus)
    assert "corrupt or truncated" in rejects(store)["half.tif"]
    assert n_samples(store) == N_GOOD


def test_truncated_jpeg_is_rejected(store, corpus, shared_data):
    data = (shared_data / "rsicd" / "RSICD_images" / "00001.jpg").read_bytes()
    add_entry(corpus, "cut.jpg", data[: len(data) // 3])
    run(store, corpus)
    assert "corrupt or truncated" in rejects(store)["cut.jpg"]


def test_zero_byte_file_is_rejected(store, corpus):
    add_entry(corpus, "empty.tif", b"")
    run(store, corpus)
    assert rejects(store)["empty.tif"].startswith("empty file")
    assert n_samples(store) == N_GOOD


def test_non_image_file_is_rejected(store, corpus):
    add_entry(corpus, "readme.tif", b"This is a text file pretending to be a TIFF.\n" * 20)
    run(store, corpus)
    assert "not an image" in rejects(store)["readme.tif"]


def test_decompression_bomb_is_rejected_before_decoding(store, corpus):
    # 10,000 x 10,000 one-bit pixels: a few kB of PNG that would decode to 100 M pixels
    Image.new("1", (10_000, 10_000)).save(corpus / "images" / "bomb.png")
    add_entry(corpus, "bomb.png")
    run(store, corpus)
    reason = rejects(store)["bomb.png"]
    assert "100,000,000 pixels" in reason and "--max-pixels" in reason
    assert n_samples(store) == N_GOOD


def test_max_pixels_is_configurable(store, corpus):
    run(store, corpus, max_pixels=256 * 255)
    # UC Merced images are 256x256 (a few are smaller): all over this limit are rejected
    assert all("over the limit" in r for r in rejects(store).values())
    assert n_samples(store) + len(rejects(store)) == N_GOOD


def test_missing_images_are_rejects_and_keep_missing_keeps_captions(tmp_path, shared_data):
    from clipstore.warehouse.store import Store
    d = shared_data
    args = ("ucm_captions", d / "ucm_captions")
    kw = dict(images=d / "ucmerced_landuse", image_map=d / "ucmerced_landuse" / "ucm_captions_filename_map.tsv",
              workers=2, progress=False)
    s1 = Store(tmp_path / "a")
    art = ingest(s1, *args, **kw)
    assert art.counts["images"] == 210 and art.counts["rejects"] == 1890
    missing = query(s1, "SELECT count(*) n FROM rejects WHERE reason LIKE 'image file missing:%'").to_pylist()
    assert missing == [{"n": 1890}]
    s2 = Store(tmp_path / "b")
    art = ingest(s2, *args, keep_missing=True, **kw)
    assert art.counts["samples"] == 2100 and art.counts["caption_only"] == 1890 and art.counts["rejects"] == 0
    assert art.counts["captions"] == 10500
    row = query(s2, "SELECT image_id, shard, n_captions FROM samples WHERE source_key = '2100.tif'").to_pylist()
    assert row == [{"image_id": None, "shard": None, "n_captions": 5}]


def test_malformed_json_names_file_and_position(store, corpus):
    (corpus / "dataset.json").write_text('{"images": [{"filename": "1.tif",, }]}')
    with pytest.raises(InputError) as err:
        run(store, corpus)
    msg = str(err.value)
    assert "dataset.json" in msg and "line 1, column 34" in msg


def test_wrong_schema_top_level_is_an_error(store, corpus):
    (corpus / "dataset.json").write_text('{"annotations": []}')
    with pytest.raises(InputError) as err:
        run(store, corpus)
    assert "no top-level 'images' list" in str(err.value)


def test_wrong_schema_entry_is_a_reject(store, corpus):
    import json
    doc = json.loads((corpus / "dataset.json").read_text())
    doc["images"].append({"imgid": 99, "sentences": []})          # no filename
    doc["images"].append({"filename": "x.tif", "sentences": "oops"})  # sentences not a list
    (corpus / "dataset.json").write_text(json.dumps(doc))
    run(store, corpus)
    r = rejects(store)
    assert "has no 'filename'" in r[f"images[{N_GOOD}]"]
    assert "no 'sentences' list" in r["x.tif"]
    assert n_samples(store) == N_GOOD


def test_non_utf8_json_is_an_error_with_position(store, corpus):
    data = (corpus / "dataset.json").read_bytes().replace(b"aerial", b"a\xe9rial", 1)
    (corpus / "dataset.json").write_bytes(data)
    with pytest.raises(InputError) as err:
        run(store, corpus)
    assert "not valid UTF-8" in str(err.value) and "byte" in str(err.value)


@pytest.mark.parametrize("name", ["../outside.tif", "/etc/passwd", "link.tif"])
def test_file_names_escaping_the_root_are_rejected(store, corpus, tmp_path, shared_data, name):
    outside = tmp_path / "outside.tif"
    shutil.copyfile(real_ucm_tiffs(shared_data, 1)[0], outside)
    (corpus / "images" / "link.tif").symlink_to(outside)
    add_entry(corpus, name)
    run(store, corpus)
    reason = rejects(store)[name]
    assert reason.startswith("unsafe file name") and "outside the image root" in reason or "absolute" in reason
    assert n_samples(store) == N_GOOD


def test_duplicate_json_keys_are_an_error(store, corpus):
    (corpus / "dataset.json").write_text('{"images": [], "images": []}')
    with pytest.raises(InputError) as err:
        run(store, corpus)
    assert "duplicate key 'images'" in str(err.value)


def test_duplicate_source_keys_keep_the_first(store, corpus):
    add_entry(corpus, "1.tif", captions=("a second entry for the same file .",))
    run(store, corpus)
    r = rejects(store)
    assert "duplicate source key '1.tif'" in r["1.tif#1"]
    caps = query(store, "SELECT raw FROM captions WHERE source_key = '1.tif' ORDER BY ordinal").to_pylist()
    assert "second entry" not in caps[0]["raw"]
    assert n_samples(store) == N_GOOD
