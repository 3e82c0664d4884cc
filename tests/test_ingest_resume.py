"""Crash safety, resume, incremental re-ingest and determinism of the ingest stage."""

import os
import shutil
import signal
import subprocess
import sys
import time

from clipstore.ingest.pipeline import ingest
from clipstore.warehouse.sql import query
from clipstore.warehouse.store import Store
from conftest import karpathy_from_real_images, real_ucm_tiffs, write_karpathy


def part_digests(store: Store) -> list[tuple]:
    with store.connect() as con:
        return con.execute("SELECT table_name, part, rows, sha256 FROM parts ORDER BY ALL").fetchall()


def logical(store: Store) -> dict[str, list]:
    return {t: query(store, f"SELECT * EXCLUDE (part) FROM {t} ORDER BY ALL").to_pylist()
            for t in ("samples", "images", "captions", "rejects")}


def test_sigkill_midway_then_resume_equals_uninterrupted_run(tmp_path, shared_data):
    corpus = tmp_path / "corpus"
    karpathy_from_real_images(shared_data, corpus, 120, splits=("train", "val"))
    (corpus / "images" / "7.tif").write_bytes(b"")  # a reject among the parts, too
    args = ["ingest", "karpathy", str(corpus), "--shard-size", "10", "--workers", "1"]

    killed = Store(tmp_path / "killed")
    proc = subprocess.Popen([sys.executable, "-m", "clipstore", "-q", "--store", str(killed.root), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        written = list(killed.root.glob("artifacts/*/samples/*.parquet"))
        if len(written) >= 3 or proc.poll() is not None:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "ingest finished before it could be killed: make the corpus larger"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    building = killed.list("corpus")[0]
    committed = len(killed.parts(building.artifact_id, "samples", pending=True))
    assert 0 < committed < 12
    # the half-built version is not visible: no current corpus, no samples view yet
    assert killed.current("corpus", building.name) is None and not killed.table_paths(building, "samples")

    ingest(killed, "karpathy", corpus, shard_size=10, workers=1, progress=False)
    reference = Store(tmp_path / "reference")
    ingest(reference, "karpathy", corpus, shard_size=10, workers=2, progress=False)

    assert part_digests(killed) == part_digests(reference)
    assert logical(killed) == logical(reference)
    dupes = query(killed, "SELECT sample_id FROM samples GROUP BY 1 HAVING count(*) > 1").num_rows
    assert dupes == 0
    assert query(killed, "SELECT count(*) n FROM samples").to_pylist() == [{"n": 119}]
    assert not list(killed.root.glob("tmp/*")), "temporary folders are cleaned up"


def test_rerun_of_unchanged_source_does_no_work(store, tmp_path, shared_data):
    corpus = tmp_path / "corpus"
    karpathy_from_real_images(shared_data, corpus, 12)
    first = ingest(store, "karpathy", corpus, shard_size=5, workers=1, progress=False)
    before = part_digests(store)
    again = ingest(store, "karpathy", corpus, shard_size=5, workers=1, progress=False)
    assert again.artifact_id == first.artifact_id
    assert part_digests(store) == before
    with store.connect() as con:
        status, summary = con.execute("SELECT status, summary FROM runs ORDER BY started_at DESC LIMIT 1").fetchone()
    assert status == "noop" and '"processed": 0' in summary


def test_source_that_gained_images_ingests_only_those(store, tmp_path, shared_data):
    corpus = tmp_path / "corpus"
    names = karpathy_from_real_images(shared_data, corpus, 10)
    held_back = tmp_path / "later"
    held_back.mkdir()
    for name in names[5:]:
        shutil.move(corpus / "images" / name, held_back / name)
    art = ingest(store, "karpathy", corpus, workers=1, progress=False)
    assert art.counts["images"] == 5 and art.counts["rejects"] == 5
    parts_before = len(store.parts(art.artifact_id))

    for name in names[5:]:
        shutil.move(held_back / name, corpus / "images" / name)
    art = ingest(store, "karpathy", corpus, workers=1, progress=False)
    assert art.counts["images"] == 10 and art.counts["rejects"] == 0  # the old rejects are superseded
    new_parts = store.parts(art.artifact_id)[parts_before:]
    new_keys = query(store, "SELECT source_key FROM samples WHERE part = ? ORDER BY source_index",
                     [new_parts[0][0]]).column("source_key").to_pylist()
    assert new_keys == names[5:]


def test_changed_captions_replace_the_old_rows(store, tmp_path, shared_data):
    corpus = tmp_path / "corpus"
    karpathy_from_real_images(shared_data, corpus, 3)
    ingest(store, "karpathy", corpus, workers=1, progress=False)
    write_karpathy(corpus, [{"filename": f"{i}.tif", "captions": [f"caption version two {i} ."]} for i in (1, 2, 3)])
    ingest(store, "karpathy", corpus, workers=1, progress=False)
    caps = query(store, "SELECT raw FROM captions ORDER BY raw").column("raw").to_pylist()
    assert caps == [f"caption version two {i} ." for i in (1, 2, 3)]
    assert query(store, "SELECT count(*) n FROM samples").to_pylist() == [{"n": 3}]


def test_same_inputs_give_byte_identical_shards_and_tables(tmp_path, shared_data):
    corpus = tmp_path / "corpus"
    karpathy_from_real_images(shared_data, corpus, 15, splits=("train", "val", "test"))
    a, b = Store(tmp_path / "a"), Store(tmp_path / "b")
    ingest(a, "karpathy", corpus, shard_size=4, workers=1, progress=False)
    ingest(b, "karpathy", corpus, shard_size=4, workers=2, progress=False)
    assert part_digests(a) == part_digests(b)
    files = lambda s: sorted(p.relative_to(s.root) for p in s.root.glob("artifacts/*/*/*") if p.is_file())  # noqa
    assert files(a) == files(b)
    for rel in files(a):
        assert (a.root / rel).read_bytes() == (b.root / rel).read_bytes(), rel
    assert len(real_ucm_tiffs(shared_data, 15)) == 15


def test_run_interrupted_while_rewriting_shards_resumes_to_the_same_bytes(tmp_path, shared_data, monkeypatch):
    """Ctrl-C between two shard rewrites of a superseding re-ingest: the resumed run equals an
    uninterrupted one, byte for byte, and the previous version stays in view meanwhile."""
    from clipstore.ingest import compact
    corpus = tmp_path / "corpus"
    karpathy_from_real_images(shared_data, corpus, 12)
    stores = {"interrupted": Store(tmp_path / "interrupted"), "reference": Store(tmp_path / "reference")}
    for s in stores.values():
        ingest(s, "karpathy", corpus, shard_size=4, workers=1, progress=False)
    before = logical(stores["interrupted"])
    others = real_ucm_tiffs(shared_data, 30)[-3:]
    for i, name in enumerate(("1.tif", "5.tif", "9.tif")):     # one sample superseded in each of parts 0..2
        (corpus / "images" / name).write_bytes(others[i].read_bytes())

    real_rewrite, calls = compact._rewrite, []

    def interrupted_after_one(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_rewrite(*args, **kwargs)

    monkeypatch.setattr(compact, "_rewrite", interrupted_after_one)
    try:
        ingest(stores["interrupted"], "karpathy", corpus, shard_size=4, workers=1, progress=False)
    except KeyboardInterrupt:
        pass
    monkeypatch.setattr(compact, "_rewrite", real_rewrite)
    assert calls == [0, 1]
    assert logical(stores["interrupted"]) == before          # nothing of the unfinished run is visible

    ingest(stores["interrupted"], "karpathy", corpus, shard_size=4, workers=1, progress=False)
    ingest(stores["reference"], "karpathy", corpus, shard_size=4, workers=2, progress=False)
    a, b = stores["interrupted"], stores["reference"]
    assert part_digests(a) == part_digests(b)
    with a.connect() as con_a, b.connect() as con_b:
        flags = "SELECT part, table_name, published, retired FROM parts ORDER BY ALL"
        assert con_a.execute(flags).fetchall() == con_b.execute(flags).fetchall()
    files = lambda s: sorted(p.relative_to(s.root) for p in s.root.glob("artifacts/*/*/*") if p.is_file())  # noqa
    assert files(a) == files(b)
    for rel in files(a):
        assert (a.root / rel).read_bytes() == (b.root / rel).read_bytes(), rel
    assert logical(a) == logical(b) != before
