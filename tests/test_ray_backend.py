"""The Ray Data backend (`--ray`): ingest and embed on a Ray cluster give the local path's
artifacts (byte-identical shards and tables; vectors equal within float16 rounding), through
rejects, incremental re-runs, a killed driver and killed workers. The cluster is the session's
`ray_cluster` (tests/conftest.py): two CPUs on 127.0.0.1, started and stopped by the tests."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from clipstore.features.embed import embed
from clipstore.features.models import ModelSpec
from clipstore.features.vectors import load_embeddings
from clipstore.ingest.pipeline import ingest
from clipstore.warehouse.sql import query
from clipstore.warehouse.store import Store
from conftest import karpathy_from_real_images, real_ucm_tiffs

pytestmark = pytest.mark.slow


def part_digests(store: Store) -> list[tuple]:
    """Every committed part file, by content: the store's own sha256 of each."""
    with store.connect() as con:
        return con.execute("SELECT table_name, part, rows, sha256, retired FROM parts ORDER BY ALL").fetchall()


def tables(store: Store) -> dict[str, list]:
    return {t: query(store, f"SELECT * FROM {t} ORDER BY ALL").to_pylist()
            for t in ("samples", "images", "captions", "rejects", "classes")}


def last_run(store: Store) -> tuple[str, dict]:
    with store.connect() as con:
        status, summary = con.execute("SELECT status, summary FROM runs ORDER BY started_at DESC LIMIT 1").fetchone()
    return status, json.loads(summary)


def corpus_with_rejects(shared: Path, root: Path, n: int) -> Path:
    """n real UC Merced TIFFs as a Karpathy corpus, with a truncated image, an empty one, a
    missing one and a repeated entry."""
    karpathy_from_real_images(shared, root, n, splits=("train", "val"))
    images = root / "images"
    (images / "3.tif").write_bytes((images / "3.tif").read_bytes()[:4000])
    (images / "5.tif").write_bytes(b"")
    (images / "8.tif").unlink()
    doc = json.loads((root / "dataset.json").read_text())
    doc["images"].append(doc["images"][1])
    (root / "dataset.json").write_text(json.dumps(doc))
    return root / "dataset.json"


def test_the_test_cluster_stays_on_loopback(ray_cluster):
    """Every socket of every process of the cluster is on 127.0.0.1; Ray's files are in the test's
    folder; no usage statistics."""
    from ray._common.usage import usage_lib
    procs = [psutil.Process(), *psutil.Process().children(recursive=True)]
    names = {p.name() for p in procs}
    assert {"gcs_server", "raylet"} <= names, names
    sockets = [(p.name(), c) for p in procs for c in p.net_connections(kind="inet")]
    listening = [c for _, c in sockets if c.status == psutil.CONN_LISTEN]
    assert len(listening) >= 3   # the GCS, the raylet and the drivers/workers' own servers
    for name, c in sockets:
        for addr in filter(None, (c.laddr, c.raddr)):
            ip = ipaddress.ip_address(addr.ip)
            ip = ip.ipv4_mapped or ip if ip.version == 6 else ip
            assert ip.is_loopback, f"{name} has a socket on {addr.ip}:{addr.port} ({c.status})"
    assert ray_cluster.address.startswith("127.0.0.1:")
    assert list((ray_cluster.root / "tmp").glob("session_*")), "Ray's temp dir is the test's"
    assert not usage_lib.usage_stats_enabled()
    assert os.environ["RAY_AUTH_TOKEN_PATH"].startswith(str(ray_cluster.root))


def test_ingest_on_ray_equals_the_local_ingest(ray_cluster, tmp_path, shared_data, monkeypatch):
    """Same parts (sha256 of every shard and Parquet file), rejects included, first run and
    incremental re-run; relative paths read the same on the workers (reject reasons name them)."""
    annotations = corpus_with_rejects(shared_data, tmp_path / "corpus", 40)
    monkeypatch.chdir(tmp_path)
    relative = annotations.relative_to(tmp_path)
    local, remote = Store(tmp_path / "local"), Store(tmp_path / "ray")

    def both() -> None:   # shard_size 4: 11 parts, more than one window of the cluster's 2 slots
        ingest(local, "karpathy", relative, shard_size=4, workers=2, progress=False)
        ingest(remote, "karpathy", relative, shard_size=4, workers=2, progress=False, ray=ray_cluster.address)

    both()
    assert part_digests(remote) == part_digests(local)
    assert tables(remote) == tables(local)
    reasons = [r["reason"] for r in tables(remote)["rejects"]]
    assert len(reasons) == 4 and any("corpus/images/3.tif" in r for r in reasons), reasons

    # the source changes: a caption edited, an image replaced (its old shard is compacted), 5 new entries
    doc = json.loads(annotations.read_text())
    doc["images"][0]["sentences"][0]["raw"] = "a changed caption ."
    spare = real_ucm_tiffs(shared_data, 50)
    shutil.copyfile(spare[45], tmp_path / "corpus" / "images" / "10.tif")
    for i, src in enumerate(spare[40:45]):
        shutil.copyfile(src, tmp_path / "corpus" / "images" / f"new{i}.tif")
        doc["images"].append({"filename": f"new{i}.tif", "imgid": 100 + i, "split": "train",
                              "sentences": [{"raw": f"new image {i} .", "sentid": 1000 + i}]})
    annotations.write_text(json.dumps(doc))
    both()
    assert part_digests(remote) == part_digests(local)
    assert tables(remote) == tables(local)
    assert last_run(remote)[1]["processed"] == 7 and last_run(remote)[1]["rewritten_parts"] == 2

    ingest(remote, "karpathy", relative, shard_size=4, progress=False, ray=ray_cluster.address)
    assert last_run(remote)[0] == "noop"


class Killer:
    """Kills, once, the first process of the cluster whose title shows it running `what`."""

    def __init__(self, what: str):
        self.what, self.killed, self._stop = what, None, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set() and self.killed is None:
            for p in psutil.Process().children(recursive=True):
                try:
                    if self.what in " ".join(p.cmdline()):
                        p.kill()
                        self.killed = p.pid
                        return
                except psutil.Error:
                    pass
            time.sleep(0.005)

    def stop(self) -> int | None:
        self._stop.set()
        self._thread.join()
        return self.killed


def vectors_match(a, b) -> None:
    """Same items in the same order; vectors equal within float16 rounding (one unit in the last place)."""
    assert a.items.drop_columns(["norm"]).to_pylist() == b.items.drop_columns(["norm"]).to_pylist()
    np.testing.assert_allclose(a.items.column("norm").to_numpy(), b.items.column("norm").to_numpy(), rtol=1e-5)
    x, y = np.asarray(a.matrix()), np.asarray(b.matrix())
    ulp = np.spacing(np.maximum(np.abs(x), np.abs(y))).astype(np.float32)
    assert (np.abs(x.astype(np.float32) - y.astype(np.float32)) <= ulp).all()


def test_embed_on_ray_equals_the_local_embed(ray_cluster, tmp_path, shared_data, cli):
    """Images (3 shards, batches that do not divide them) and captions through the CLI's --ray,
    with the image actor killed along the way (Ray restarts it and runs its shard again); then an
    increment: only the new images are embedded, and the caches still match."""
    corpus = tmp_path / "corpus"
    karpathy_from_real_images(shared_data, corpus, 24)
    local = Store(tmp_path / "local")
    ingest(local, "karpathy", corpus / "dataset.json", name="c", shard_size=8, workers=1, progress=False)
    shutil.copytree(local.root, tmp_path / "ray")
    remote = Store(tmp_path / "ray")

    def both(modality: tuple[str, ...]) -> list[str]:
        arts = embed(local, model=ModelSpec(model="tiny-vit"), corpus="c", modality=modality, batch_size=3,
                     workers=0, progress=False)
        out = cli("--store", remote.root, "-q", "embed", "--model", "tiny-vit", "--corpus", "c", "--modality",
                  ",".join(modality), "--batch-size", "3", "--ray", ray_cluster.address).stdout
        ids = [a.artifact_id for a in arts]
        assert all(i in out for i in ids), out    # the same cache keys, hence the same artifacts
        for i in ids:
            vectors_match(load_embeddings(remote, i), load_embeddings(local, i))
        return ids

    killer = Killer("MapBatches(Encoder)")
    both(("image", "caption"))
    assert killer.stop() is not None, "no embedding actor was seen"

    more = real_ucm_tiffs(shared_data, 30)[24:]
    doc = json.loads((corpus / "dataset.json").read_text())
    for i, src in enumerate(more):
        shutil.copyfile(src, corpus / "images" / f"more{i}.tif")
        doc["images"].append({"filename": f"more{i}.tif", "imgid": 100 + i, "split": "train",
                              "sentences": [{"raw": f"more {i} .", "sentid": 1000 + i}]})
    (corpus / "dataset.json").write_text(json.dumps(doc))
    for store in (local, remote):
        ingest(store, "karpathy", corpus / "dataset.json", name="c", shard_size=8, workers=1, progress=False)
    [image] = both(("image",))
    assert remote.get(image).counts["vectors"] == 30
    with remote.connect() as con:
        summary = json.loads(con.execute("SELECT summary FROM runs WHERE stage = 'embed' "
                                         "ORDER BY started_at DESC LIMIT 1").fetchone()[0])
    assert summary["embedded"] == 6   # the increment only


def _clipstore(*args) -> list[str]:
    return [sys.executable, "-m", "clipstore", *map(str, args)]


def test_a_killed_driver_resumes_to_the_local_result(ray_cluster, tmp_path, shared_data):
    """A second driver (the CLI in a subprocess, on the same cluster) is SIGKILLed after some parts:
    nothing is visible, and the next run on Ray, one of whose part tasks is killed too (Ray runs
    it again), finishes exactly what the local path makes."""
    annotations = corpus_with_rejects(shared_data, tmp_path / "corpus", 80)
    killed = Store(tmp_path / "killed")
    proc = subprocess.Popen(_clipstore("-q", "--store", killed.root, "ingest", "karpathy", annotations,
                                       "--shard-size", "5", "--ray", ray_cluster.address),
                            env={**os.environ, **ray_cluster.env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list(killed.root.glob("artifacts/*/samples/*.parquet"))) >= 2:
            break
        time.sleep(0.01)
    assert proc.poll() is None, f"the ingest ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    building = killed.list("corpus")[0]
    committed = len(killed.parts(building.artifact_id, "samples", pending=True))
    assert 0 < committed < 17 and killed.current("corpus", building.name) is None

    killer = Killer("Map(build_part_task)")   # and a worker dies while the resumed run builds a part
    ingest(killed, "karpathy", annotations, shard_size=5, progress=False, ray=ray_cluster.address)
    assert killer.stop() is not None, "no part task was seen running"
    reference = Store(tmp_path / "reference")
    ingest(reference, "karpathy", annotations, shard_size=5, workers=2, progress=False)
    assert part_digests(killed) == part_digests(reference)
    assert tables(killed) == tables(reference)
    assert not list(killed.root.glob("tmp/*")), "temporary folders are cleaned up"
