"""`clipstore.data.open`: decoded samples of a split role or a corpus as a torch IterableDataset,
worker-sharded, and as a Hugging Face `datasets.Dataset`."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset

from clipstore.data import collate
from clipstore.data import open as open_data
from clipstore.warehouse.errors import ClipstoreError, InputError, NotFoundError
from clipstore.warehouse.sql import query
from fixtures import ucm_split_store


@pytest.fixture(scope="module")
def ucm(tmp_path_factory, shared_data):
    return ucm_split_store(tmp_path_factory.mktemp("ucm") / "store", shared_data)


def table_rows(store, split, role):
    return query(store, """
        SELECT s.sample_id, m.class, m.class_index, m.meta FROM splits s JOIN samples m USING (sample_id)
        WHERE s.split = $s AND s.role = $r ORDER BY s.position""", {"s": split, "r": role}).to_pylist()


def test_split_role_yields_decoded_samples_in_manifest_order(ucm, shared_data):
    ds = open_data(ucm.root, split="u30", role="labeled")
    assert isinstance(ds, IterableDataset) and len(ds) == 63
    samples = list(ds)
    rows = table_rows(ucm, "u30", "labeled")
    assert [s["sample_id"] for s in samples] == [r["sample_id"] for r in rows]
    captions = {}
    for r in query(ucm, "SELECT sample_id, raw FROM captions ORDER BY ordinal").to_pylist():
        captions.setdefault(r["sample_id"], []).append(r["raw"])
    for s, r in zip(samples, rows):
        assert s["corpus"] == "ucm_captions" and s["class"] == r["class"] and s["class_index"] == r["class_index"]
        assert s["captions"] == captions[s["sample_id"]] and len(s["captions"]) == 5   # raw, in order
        original = Image.open(shared_data / "ucmerced_landuse" / json.loads(r["meta"])["image_path"])
        assert s["image"].mode == "RGB"
        assert np.array_equal(np.asarray(s["image"]), np.asarray(original.convert("RGB")))   # lossless


def test_transform_and_dataloader_workers_read_each_sample_once(ucm):
    def to_tensor(image):
        return torch.from_numpy(np.asarray(image.resize((32, 32)))).permute(2, 0, 1)

    ds = open_data(ucm, split="u30", role="unlabeled", transform=to_tensor)
    assert len(ds.shards) == 11           # the source shards with images (11 parts of 200 entries)
    loader = DataLoader(ds, batch_size=16, num_workers=2, collate_fn=collate)
    ids, shapes = [], set()
    for batch in loader:
        assert isinstance(batch["captions"], list) and isinstance(batch["captions"][0], list)
        shapes.add(tuple(batch["image"].shape[1:]))
        ids += batch["sample_id"]
    assert len(ids) == 147 and set(ids) == {s.sample_id for s in ds.samples}     # no sample twice
    assert shapes == {(3, 32, 32)}
    # readers split by source shard: together they cover everything, apart they share nothing
    parts = [ds.refs_for(i, 3) for i in range(3)]
    assert sum(len(p) for p in parts) == 147
    assert not {r.image.shard for r in parts[0]} & {r.image.shard for r in parts[1]}


def test_corpus_yields_its_samples_with_images(ucm):
    ds = open_data(ucm, corpus="ucm_captions")
    assert len(ds) == 210 and ds.skipped == 1890           # 1,890 caption-only samples have no pixels
    first = next(iter(ds))
    assert first["sample_id"] == ds.samples[0].sample_id and first["image"].size == (256, 256)


def test_to_hf_gives_the_same_samples(ucm):
    import datasets
    ds = open_data(ucm, split="u30", role="labeled")
    hf = ds.to_hf()
    assert isinstance(hf, datasets.Dataset) and hf.num_rows == 63
    assert isinstance(hf.features["image"], datasets.Image)
    assert hf.column_names == ["sample_id", "image_id", "image", "captions", "class", "class_index", "corpus"]
    for torch_sample, row in zip(ds, hf):
        assert row["sample_id"] == torch_sample["sample_id"] and row["captions"] == torch_sample["captions"]
        assert row["class"] == torch_sample["class"]
        assert np.array_equal(np.asarray(row["image"].convert("RGB")), np.asarray(torch_sample["image"]))


def test_to_hf_without_datasets_names_the_extra(ucm, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)          # as if the package were not installed
    with pytest.raises(ClipstoreError, match="to_hf\\(\\) needs the Hugging Face `datasets` package") as err:
        open_data(ucm, corpus="ucm_captions").to_hf()
    assert "pip install 'clipstore[hf]'" in err.value.fix


def test_bad_requests(ucm, tmp_path):
    with pytest.raises(InputError, match="say which samples"):
        open_data(ucm)
    with pytest.raises(InputError, match="role 'labeled' needs a split"):
        open_data(ucm, corpus="ucm_captions", role="labeled")
    with pytest.raises(NotFoundError, match=r"no split 'rs_all' in the store \(splits: u30\)"):
        open_data(ucm, split="rs_all", role="labeled")
    with pytest.raises(NotFoundError, match="no corpus 'rsicd'"):
        open_data(ucm, corpus="rsicd")
    with pytest.raises(NotFoundError, match="no store at"):
        open_data(tmp_path / "nowhere", corpus="x")
    assert not (tmp_path / "nowhere").exists()
    with pytest.raises(ClipstoreError, match="has no role 'query'"):
        open_data(ucm, split="u30", role="query")
