"""`clipstore export openclip`: shards holding exactly one split role (or a corpus), members copied
byte for byte from the corpus shards, atomic and deterministic, read by open_clip_train's own
webdataset pipeline."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile

import braceexpand
import numpy as np
import pytest

from clipstore.data import open as open_data
from clipstore.export import export_openclip
from clipstore.warehouse.errors import ClipstoreError, InputError, NotFoundError
from clipstore.warehouse.sql import query
from clipstore.warehouse.store import Store
from fixtures import ucm_split_store


@pytest.fixture(scope="module")
def ucm(tmp_path_factory, shared_data):
    return ucm_split_store(tmp_path_factory.mktemp("ucm") / "store", shared_data)


def members_by_key(tars) -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = {}
    for path in tars:
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                out.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return out


def corpus_shards(store, corpus="ucm_captions"):
    return sorted((store.current("corpus", corpus).path / "shards").glob("*.tar"))


def role_ids(store, split, role):
    return query(store, "SELECT sample_id FROM splits WHERE split = $s AND role = $r ORDER BY position",
                 {"s": split, "r": role}).column("sample_id").to_pylist()


def test_export_holds_exactly_the_role_with_its_corpus_members(ucm, tmp_path):
    out = tmp_path / "labeled"
    done = export_openclip(ucm, out, split="u30", role="labeled", shard_size=16)
    labeled = role_ids(ucm, "u30", "labeled")
    assert done.samples == len(labeled) == 63 and not done.up_to_date
    assert [p.name for p in done.shards] == ["000000.tar", "000001.tar", "000002.tar", "000003.tar"]
    sizes = json.loads((out / "sizes.json").read_text())
    assert sizes == {"000000.tar": 16, "000001.tar": 16, "000002.tar": 16, "000003.tar": 15}
    assert sorted(braceexpand.braceexpand(done.train_data)) == [str(p) for p in done.shards]

    exported = members_by_key(done.shards)
    source = members_by_key(corpus_shards(ucm))
    assert set(exported) == set(labeled)                        # exactly the role, nothing else
    for key, members in exported.items():
        assert members == source[key]                           # every member, byte for byte
        assert set(members) == {"png", "txt", "cls", "json"}    # UCM TIFFs are stored as PNG
    # in manifest order, with tar headers exactly as ingest writes them
    with tarfile.open(done.shards[0]) as tar:
        names = tar.getnames()
        assert [n.split(".")[0] for n in names[::4]] == labeled[:16]
        assert all(m.mtime == 946684800 and m.uid == 0 and m.mode == 0o444 for m in tar.getmembers())
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["request"] == {"split": "u30", "role": "labeled"} and manifest["samples"] == 63
    assert manifest["inputs"]["split:u30"] == ucm.current("split", "u30").artifact_id


def test_same_store_same_bytes_and_a_rerun_is_up_to_date(ucm, tmp_path):
    a = export_openclip(ucm, tmp_path / "a", split="u30", role="unlabeled", shard_size=40)
    b = export_openclip(ucm, tmp_path / "b", split="u30", role="unlabeled", shard_size=40)
    assert [p.read_bytes() for p in a.shards] == [p.read_bytes() for p in b.shards]
    assert (tmp_path / "a" / "export.json").read_bytes() == (tmp_path / "b" / "export.json").read_bytes()
    mtimes = [p.stat().st_mtime_ns for p in a.shards]
    again = export_openclip(ucm, tmp_path / "a", split="u30", role="unlabeled", shard_size=40)
    assert again.up_to_date and [p.stat().st_mtime_ns for p in again.shards] == mtimes


def test_a_different_export_into_an_existing_folder_needs_overwrite(ucm, tmp_path):
    out = tmp_path / "x"
    export_openclip(ucm, out, split="u30", role="labeled")
    with pytest.raises(InputError, match="already exists and holds an earlier export") as err:
        export_openclip(ucm, out, split="u30", role="unlabeled")
    assert "--overwrite" in err.value.fix
    assert json.loads((out / "export.json").read_text())["request"]["role"] == "labeled"   # untouched
    replaced = export_openclip(ucm, out, split="u30", role="unlabeled", overwrite=True)
    assert replaced.samples == 147 and set(members_by_key(replaced.shards)) == set(role_ids(ucm, "u30", "unlabeled"))
    assert sorted(p.name for p in out.iterdir()) == ["000000.tar", "export.json", "sizes.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["x"]                  # no temp or old folder left
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="files that are not an export"):
        export_openclip(ucm, other, split="u30", role="labeled", overwrite=True)
    assert (other / "notes.txt").read_text() == "keep me"


def test_a_failed_export_leaves_nothing(ucm, tmp_path):
    broken = Store(shutil.copytree(ucm.root, tmp_path / "store"))
    shard = sorted((broken.current("corpus", "ucm_captions").path / "shards").glob("*.tar"))[2]
    shard.write_bytes(shard.read_bytes()[:20000])                         # a shard cut short
    out = tmp_path / "out"
    with pytest.raises(ClipstoreError, match="cannot read sample .* from its corpus shard"):
        export_openclip(broken, out, corpus="ucm_captions")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def test_a_killed_exports_temp_folder_is_swept(ucm, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    killed = tmp_path / f".x.tmp-{dead.pid}"               # what a SIGKILLed export leaves beside x
    killed.mkdir()
    (killed / "000000.tar").write_bytes(b"half a shard")
    running = tmp_path / f".x.tmp-{os.getppid()}"          # another export still at work: left alone
    running.mkdir()
    export_openclip(ucm, tmp_path / "x", split="u30", role="labeled")
    assert sorted(p.name for p in tmp_path.iterdir()) == [running.name, "x"]


def test_whole_corpus_skips_caption_only_samples(ucm, tmp_path):
    done = export_openclip(ucm, tmp_path / "all", corpus="ucm_captions", shard_size=100)
    assert done.samples == 210 and done.skipped == 1890 and len(done.shards) == 3
    assert members_by_key(done.shards) == members_by_key(corpus_shards(ucm))


def test_bad_requests(ucm, tmp_path):
    with pytest.raises(NotFoundError, match="no split 'nope'"):
        export_openclip(ucm, tmp_path / "o", split="nope", role="labeled")
    with pytest.raises(InputError, match="has no role 'train'") as err:
        export_openclip(ucm, tmp_path / "o", split="u30", role="train")
    assert "labeled" in err.value.fix
    with pytest.raises(InputError, match="without a role"):
        export_openclip(ucm, tmp_path / "o", split="u30")
    with pytest.raises(InputError, match="say which samples"):
        export_openclip(ucm, tmp_path / "o", split="u30", role="labeled", corpus="ucm_captions")
    with pytest.raises(NotFoundError, match="no corpus 'rsicd'"):
        export_openclip(ucm, tmp_path / "o", corpus="rsicd")
    with pytest.raises(InputError, match="--shard-size 0"):
        export_openclip(ucm, tmp_path / "o", corpus="ucm_captions", shard_size=0)
    with pytest.raises(InputError, match="no sample with a stored image"):
        export_openclip(ucm, tmp_path / "o", split="u30", role="val")
    assert not (tmp_path / "o").exists()


def test_cli_prints_the_open_clip_arguments(ucm, tmp_path, capsys):
    from clipstore.cli import main
    out = tmp_path / "cli"
    argv = ["--store", str(ucm.root), "export", "openclip", "--split", "u30", "--role", "labeled",
            "--shard-size", "32", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"--train-data '{out}/{{000000..000001}}.tar' --train-num-samples 63" in printed
    assert "export openclip u30.labeled: 63 samples in 2 shards" in printed
    assert main(argv) == 0 and "up to date" in capsys.readouterr().out
    assert main(["--store", str(ucm.root), "export", "openclip", "--split", "nope", "--role", "labeled",
                 str(out)]) == 3
    assert "clipstore: error: no split 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", "openclip", "--help"])
    helptext = capsys.readouterr().out
    assert "default 1000" in helptext and "--overwrite" in helptext


def pixels_digest(image) -> str:
    return hashlib.sha256(np.asarray(image.convert("RGB")).tobytes()).hexdigest()


def test_open_clip_train_pipeline_reads_every_exported_sample(ucm, tmp_path):
    """open_clip_train's get_wds_dataset, exactly as its trainer calls it for --train-data (shard
    shuffle, the nothrow tar reader, sample shuffle, decode, rename, batch): with webdataset
    >= 0.2.96 this raises KeyError 'fname' at the end of the first shard."""
    from open_clip_train.data import get_wds_dataset
    done = export_openclip(ucm, tmp_path / "oc", split="u30", role="labeled", shard_size=16)
    args = argparse.Namespace(train_data=done.train_data, val_data=None, dataset_resampled=False,
                              train_num_samples=None, train_data_upsampling_factors=None, seed=0,
                              batch_size=1, world_size=1, workers=0)
    # the image transform and tokenizer report what they were given, so every sample is identified
    info = get_wds_dataset(args, pixels_digest, is_train=True, epoch=0, tokenizer=lambda text: [text])
    assert info.dataloader.num_samples == 63                     # read from sizes.json
    seen = sorted((image, text) for batch_images, batch_texts in info.dataloader
                  for image, text in zip(batch_images, batch_texts))
    expected = sorted((pixels_digest(s["image"]), s["captions"][0])
                      for s in open_data(ucm, split="u30", role="labeled"))
    assert len(seen) == 63 and seen == expected
