"""What the Ray backend needs of clipstore without a cluster: Ray stays optional (imported only for
--ray, a clear message when it is missing), the driver's part ordering, errors that keep their
class through a remote call, and the threaded decoding of a GPU actor giving the local pixels."""

from __future__ import annotations

import ast
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from clipstore.ingest.pipeline import ingest
from clipstore.warehouse import raydata
from clipstore.warehouse.errors import ClipstoreError, InputError
from conftest import REPO
from fixtures import write_class_folders

STAGES = [p for p in REPO.iterdir() if (p / "__init__.py").exists() and p.name not in ("tests", "bench")]


def test_no_module_imports_ray_at_import_time():
    """`import ray` appears only inside functions, so clipstore imports without Ray installed."""
    found = []
    for folder in STAGES:
        for path in folder.rglob("*.py"):
            tree = ast.parse(path.read_text())
            for node in tree.body:   # module level, including under if/try at module level
                for sub in ast.walk(node) if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) else ():
                    names = ([a.name for a in sub.names] if isinstance(sub, ast.Import) else
                             [sub.module or ""] if isinstance(sub, ast.ImportFrom) else [])
                    if any(n == "ray" or n.startswith("ray.") for n in names):
                        found.append(f"{path.relative_to(REPO)}:{sub.lineno}")
    assert not found, found
    assert len(STAGES) >= 5


@pytest.mark.slow   # the embed command imports torch
def test_without_ray_installed_the_error_names_the_extra(tmp_path, cli, monkeypatch):
    write_class_folders(tmp_path / "folder", ["a", "b"], per_class=2)
    monkeypatch.setitem(sys.modules, "ray", None)   # what `import ray` meets where it is not installed
    monkeypatch.setitem(sys.modules, "ray.data", None)
    store = tmp_path / "store"
    r = cli("--store", store, "ingest", "imagefolder", tmp_path / "folder", "--ray", "auto", check=False)
    assert r.returncode == 1 and "pip install 'clipstore[ray]'" in r.stderr, r.stderr
    ingest(store, "imagefolder", tmp_path / "folder", name="f", workers=1, progress=False)
    r = cli("--store", store, "embed", "--model", "tiny-vit", "--corpus", "f", "--ray", "auto", check=False)
    assert r.returncode == 1 and "pip install 'clipstore[ray]'" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    r = cli("--store", store, "pseudolabel", "classes", "--split", "none-yet", "--model", "tiny-vit",
            "--ray", "auto", check=False)   # refused before the split is even looked up
    assert r.returncode == 1 and "pip install 'clipstore[ray]'" in r.stderr, r.stderr


def test_parts_are_committed_in_part_order_whatever_order_they_complete_in():
    """Completed parts wait for the ones before them; what becomes committable at once is one batch."""
    completed = [[{"part": 5}], [{"part": 3}, {"part": 4}], [{"part": 7}], [{"part": 6}]]
    assert [[r["part"] for r in batch] for batch in raydata.in_order(completed, 3)] == [[3, 4, 5], [6, 7]]
    with pytest.raises(ClipstoreError, match="part 4 never did"):
        list(raydata.in_order([[{"part": 3}], [{"part": 5}]], 3))


def test_an_error_returned_by_a_remote_function_is_raised_with_its_class_and_fix():
    row = {"part": 0, **raydata.error_row(InputError("no such image", where="x.tif", fix="add it"))}
    with pytest.raises(InputError) as caught:
        raydata.raise_errors(row)
    assert caught.value.fix == "add it" and caught.value.where == "x.tif"
    assert raydata.raise_errors({"part": 1}) == {"part": 1}


def test_threaded_decoding_gives_the_same_batches(tmp_path):
    """A GPU actor decodes on threads (`shard_batches(pool=...)`): same batches, same pixels, and
    a damaged member is reported at the same image."""
    from clipstore.features.embed import ShardTask, shard_batches
    from clipstore.features.models import ModelSpec, load_model
    from clipstore.warehouse.shards import corpus_images
    from clipstore.warehouse.sql import Session
    from clipstore.warehouse.store import Store
    write_class_folders(tmp_path / "folder", ["a", "b", "c"], per_class=4)
    store = Store(tmp_path / "store")
    art = ingest(store, "imagefolder", tmp_path / "folder", name="f", workers=1, progress=False)
    with Session(store) as session:
        refs = corpus_images(store, session, art)
    task = ShardTask(0, refs[0].shard, compute=[(r, 0) for r in refs])
    preprocess = load_model(ModelSpec(model="tiny-vit")).preprocess

    def batches(pool):
        return list(shard_batches(task, preprocess, None, 5, pool))

    with ThreadPoolExecutor(3) as pool:
        plain, threaded = batches(None), batches(pool)
        assert [len(b["pixels"]) for b in plain] == [5, 5, 2] and [b["last"] for b in plain] == [False, False, True]
        assert [len(b["pixels"]) for b in threaded] == [5, 5, 2]
        assert all(torch.equal(a["pixels"], b["pixels"]) for a, b in zip(plain, threaded))
        data = bytearray(refs[0].shard.read_bytes())   # damage the 7th image's bytes
        bad = refs[6]
        data[bad.offset:bad.offset + bad.size] = b"\0" * bad.size
        refs[0].shard.write_bytes(bytes(data))
        for result in (batches(None), batches(pool)):
            assert len(result) == 2 and "pixels" in result[0] and f"image {bad.image_id}" in result[1]["error"]
