"""Readers during a write: SQL sessions opened while an ingest commits part after part, in another
process, never fail, and each sees a whole version only: the previous complete one until the
run finishes, then the new one (never some of the new parts)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

import shutil

from clipstore.ingest.pipeline import ingest
from clipstore.warehouse.sql import Session
from clipstore.warehouse.store import Store
from conftest import karpathy_from_real_images, run_cli

N_IMAGES, FIRST, SHARD = 60, 20, 2
READ = ("SELECT (SELECT count(*) FROM samples) AS samples, (SELECT count(*) FROM captions) AS captions, "
        "(SELECT count(*) FROM images) AS images")


def _snapshot_is_whole(row: dict) -> bool:
    # each sample of this corpus has an image and two captions: a part half-seen would break this
    return row["captions"] == 2 * row["samples"] and row["images"] == row["samples"] and row["samples"] % SHARD == 0


@pytest.mark.slow
def test_reads_during_an_ingest_never_fail(tmp_path, shared_data):
    corpus = tmp_path / "corpus"
    names = karpathy_from_real_images(shared_data, corpus, N_IMAGES)
    later = tmp_path / "later"
    later.mkdir()
    for name in names[FIRST:]:    # a first version with FIRST images (the rest rejected as missing)
        shutil.move(corpus / "images" / name, later / name)
    store = Store(tmp_path / "store")
    ingest(store, "karpathy", corpus, name="busy", shard_size=SHARD, workers=1, progress=False)
    for name in names[FIRST:]:    # the images arrive: the re-ingest below grows the corpus part by part
        shutil.move(later / name, corpus / "images" / name)
    writer = subprocess.Popen([sys.executable, "-m", "clipstore", "-q", "--store", str(store.root), "ingest",
                               "karpathy", str(corpus), "--name", "busy", "--shard-size", str(SHARD),
                               "--workers", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    failures, seen, cli_calls = [], [], []
    deadline = time.monotonic() + 120
    while (writer.poll() is None or len(seen) < 40) and time.monotonic() < deadline:
        try:
            with Session(store) as session:
                if "samples" in session.tables():
                    row = session.query(READ).to_pylist()[0]
                    seen.append({**row, "writing": writer.poll() is None})
                    if not _snapshot_is_whole(row) or row["samples"] not in (FIRST, N_IMAGES):
                        failures.append(f"part of a version visible: {row}")
                else:
                    seen.append(None)   # before the first commit: no samples table yet
        except Exception as exc:   # noqa: BLE001 - any failure of a reader is what this test counts
            failures.append(f"{type(exc).__name__}: {exc}")
        if writer.poll() is None and len(cli_calls) < 4 and len(seen) % 10 == 5:
            cli_calls.append(run_cli("--store", store.root, "sql", READ, "--format", "json", check=False))
    out, err = writer.communicate(timeout=120)
    assert writer.returncode == 0, err
    assert len(seen) >= 40
    assert sum(1 for r in seen if r and r["writing"] and r["samples"] == FIRST) >= 3, "no read overlapped the ingest"
    for proc in cli_calls:
        if proc.returncode != 0:
            failures.append(f"clipstore sql exited {proc.returncode}: {proc.stderr}")
    assert failures == []
    with Session(store) as session:
        assert session.query(READ).to_pylist() == [{"samples": N_IMAGES, "captions": 2 * N_IMAGES,
                                                    "images": N_IMAGES}]
