"""Generic formats: JSON lines, Hugging Face save_to_disk folders (Arrow IPC streams) and Parquet
folders, read with pyarrow alone."""

from __future__ import annotations

import json

import pytest

from clipstore.ingest.pipeline import ingest
from clipstore.warehouse.errors import InputError
from clipstore.warehouse.sql import query

from fixtures import HF_CLASS_NAMES, image_bytes, write_hf_parquet, write_hf_save_to_disk, write_jsonl


def rows(store, sql, *params):
    return query(store, sql, list(params)).to_pylist()


def run(store, fmt, path, name, **kw):
    return ingest(store, fmt, path, name=name, workers=1, progress=False, **kw)


def test_jsonl_folder(store, tmp_path):
    root = write_jsonl(tmp_path / "jl")
    art = run(store, "jsonl", root, "jl")
    assert art.counts["samples"] == 4 and art.counts["captions"] == 6
    samples = rows(store, "SELECT source_key, split, class, n_captions FROM samples ORDER BY source_index")
    assert samples == [
        {"source_key": "img/a.jpg", "split": "train", "class": "red", "n_captions": 2},   # two lines merged
        {"source_key": "img/b.png", "split": "train", "class": "green", "n_captions": 2},
        {"source_key": "img/d.jpg", "split": "val", "class": "blue", "n_captions": 1},    # split from val.jsonl
        {"source_key": "img/c.jpg", "split": "test", "class": "blue", "n_captions": 1}]   # the line's own split
    assert [r["raw"] for r in rows(store, "SELECT raw FROM captions WHERE source_key = 'img/a.jpg' ORDER BY ordinal")] \
        == ["a red square", "a red square once more"]
    rejects = {r["source_key"]: r["reason"] for r in rows(store, "SELECT source_key, reason FROM rejects")}
    assert rejects["train.jsonl:3"].startswith("line 3 of train.jsonl is malformed JSON")
    assert rejects["train.jsonl:6"] == 'line 6 of train.jsonl: no "image" path string'
    assert rejects["img/missing.jpg"].startswith("image file missing")
    classes = rows(store, "SELECT class FROM classes ORDER BY class_index")
    assert [r["class"] for r in classes] == ["blue", "green", "red"]
    assert json.loads(rows(store, "SELECT meta FROM samples WHERE source_key = 'img/b.png'")[0]["meta"])["id"] == 7


def test_jsonl_conflicting_repeat_is_rejected(store, tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "x.png").write_bytes(image_bytes(1, "PNG"))
    (tmp_path / "pairs.jsonl").write_text(
        json.dumps({"image": "img/x.png", "caption": "one", "split": "train"}) + "\n"
        + json.dumps({"image": "img/x.png", "caption": "two", "split": "test"}) + "\n")
    run(store, "jsonl", tmp_path / "pairs.jsonl", "pairs")
    assert rows(store, "SELECT source_key, split, n_captions FROM samples") == [
        {"source_key": "img/x.png", "split": "train", "n_captions": 1}]
    reason = rows(store, "SELECT reason FROM rejects")[0]["reason"]
    assert "pairs.jsonl:2 names img/x.png again with split 'test'" in reason and "pairs.jsonl:1" in reason


def test_hf_save_to_disk_dataset_dict(store, tmp_path):
    root = write_hf_save_to_disk(tmp_path / "hf_disk")
    art = run(store, "hf", root, "hfd")
    assert art.counts["samples"] == 4 and art.counts["images"] == 4 and art.counts["rejects"] == 0
    # ClassLabel names keep the dataset's own order
    assert [r["class"] for r in rows(store, "SELECT class FROM classes ORDER BY class_index")] == HF_CLASS_NAMES
    samples = rows(store, "SELECT s.source_key, s.split, s.class, s.class_index, c.raw, i.format FROM samples s "
                          "JOIN captions c ON c.sample_id = s.sample_id JOIN images i ON i.image_id = s.image_id "
                          "ORDER BY s.source_index")
    assert samples[0] == {"source_key": "train/data-00000-of-00001.arrow:0", "split": "train", "class": "cat",
                          "class_index": 0, "raw": "a cat on a mat", "format": "PNG"}
    assert [(s["split"], s["class"]) for s in samples] == [("train", "cat"), ("train", "dog"), ("train", "bird"),
                                                           ("test", "dog")]
    assert any("captions=['text']" in n for n in art.stats["notes"])


def test_hf_parquet_folder(store, tmp_path):
    root = write_hf_parquet(tmp_path / "hf_parquet")
    art = run(store, "hf", root, "hfp")
    assert art.counts["samples"] == 3
    samples = rows(store, "SELECT source_key, split, class, n_captions, meta FROM samples ORDER BY source_key")
    assert [(s["source_key"], s["split"], s["class"], s["n_captions"]) for s in samples] == [
        ("t0.jpg", "train", "harbour", 2), ("t1.jpg", "train", "forest", 1), ("v0.jpg", "test", "beach", 1)]
    assert json.loads(samples[1]["meta"])["image_path"] == "files/on_disk.jpg"   # an image stored as a path
    assert rows(store, "SELECT raw FROM captions WHERE source_key = 't0.jpg' ORDER BY ordinal") == [
        {"raw": "harbour with boats"}, {"raw": "many boats"}]
    assert rows(store, "SELECT source_key, reason FROM rejects") == [
        {"source_key": "t2.jpg", "reason": f"image file missing: {root / 'files' / 'gone.jpg'}"}]


def test_hf_column_override_file(store, tmp_path):
    root = write_hf_parquet(tmp_path / "hf_parquet")
    (root / "clipstore_columns.json").write_text(json.dumps({"class": "filename", "key": "filename"}))
    run(store, "hf", root, "hfo")
    assert [r["class"] for r in rows(store, "SELECT class FROM classes ORDER BY class_index")] == \
        ["t0.jpg", "t1.jpg", "t2.jpg", "v0.jpg"]
    (root / "clipstore_columns.json").write_text(json.dumps({"captions": ["nope"]}))
    with pytest.raises(InputError, match="role 'captions'"):
        run(store, "hf", root, "hfo2")


def test_hf_folder_without_data_is_refused(store, tmp_path):
    with pytest.raises(InputError, match="no Hugging Face dataset"):
        run(store, "hf", tmp_path, "empty")
