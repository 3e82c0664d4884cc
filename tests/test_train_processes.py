"""The trainer across processes: a run killed with SIGKILL mid-epoch and resumed from its last
checkpoint ends with the weights of an uninterrupted run, bit for bit (CPU); two torchrun
processes (gloo) with batch B each compute the losses and parameters of one process with 2B."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from clipstore.features.checkpoints import read_checkpoint
from clipstore.features.models import ModelSpec, build_model
from clipstore.ingest.pipeline import ingest
from clipstore.ingest.splits import make_split
from clipstore.ingest.synth import write_synthetic
from clipstore.mining.keywords import mine_keywords
from clipstore.train.config import resolve
from clipstore.train.loop import train
from clipstore.train.run import prepare
from clipstore.warehouse.sql import query
from clipstore.warehouse.store import Store


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """tiny-vit is too small for a second intra-op thread to pay: on a busy machine the threads'
    synchronisation costs more than the matmuls (measured: 10x the CPU time per step)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_proc")
    write_synthetic(root / "synth", seed=0, n_images=40, size=32)
    store = Store(root / "store")
    ingest(store, "karpathy", root / "synth" / "captions", name="synth", workers=1, progress=False)
    make_split(store, "half", corpora=["synth"], labeled_ratio=0.5, seed=0)
    mine_keywords(store, split="half", role="labeled", top=20, progress=False)
    return store


def losses(store, name):
    return [r["value"] for r in query(store, "SELECT value FROM train_log WHERE name = ? AND metric = 'loss' "
                                             "ORDER BY step", [name]).to_pylist()]


def final_weights(store, name):
    return read_checkpoint(store.table_paths(store.current("checkpoint", name), "checkpoint")[0])[0]


def test_a_killed_run_resumes_to_the_weights_of_an_uninterrupted_one(synth):
    base = ["--store", synth.root, "-q", "train", "--method", "sclip", "--split", "half", "--model", "tiny-vit",
            "--epochs", "1", "--batch-size", "4", "--unlabeled-batch-size", "4", "--no-validate",
            "--save-every-steps", "2", "--lr", "1e-3"]
    env = {"OMP_NUM_THREADS": "1"}             # one thread, as this process runs (the one_thread fixture)
    options = {"method": "sclip", "split": "half", "model": "tiny-vit", "epochs": 1, "batch_size": 4,
               "unlabeled_batch_size": 4, "validate": False, "save_every_steps": 2, "lr": 1e-3}
    train(synth, resolve(overrides={**options, "name": "whole"}), progress=False)
    proc = subprocess.Popen([sys.executable, "-m", "clipstore", *map(str, base), "--name", "cut"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **env})
    deadline, first = time.monotonic() + 120, None
    while first is None and time.monotonic() < deadline and proc.poll() is None:
        done = [a for a in synth.list("checkpoint") if a.name == "cut" and a.status == "complete"]
        first = done[0] if done else None
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first is not None and first.params["step"] == 2 and not first.params["final"]   # the epoch has 4 steps
    assert synth.current("train", "cut") is None                                           # it did not finish
    again = prepare(synth, resolve(overrides={**options, "name": "cut"}))
    assert again.resume[0].name == "cut" and again.resume[0].params["run"] == first.params["run"]   # a re-run
    # of the command would continue from the latest checkpoint by itself

    resumed = train(synth, resume=first.artifact_id, progress=False)       # `clipstore train --resume ID`
    assert resumed.checkpoint.artifact_id == synth.current("checkpoint", "cut").artifact_id
    assert synth.current("checkpoint", "cut").params["weights_sha256"] == \
        synth.current("checkpoint", "whole").params["weights_sha256"]
    assert losses(synth, "cut") == losses(synth, "whole") and len(losses(synth, "whole")) == 4
    assert ("resumed_from" in {role for _, role in synth.lineage(synth.current("checkpoint", "cut").artifact_id)})


def test_two_processes_match_one_with_the_same_global_batch(synth):
    common = ["--method", "sclip", "--split", "half", "--model", "tiny-vit", "--epochs", "2", "--no-validate",
              "--lr", "1e-3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "clipstore", "--store", str(synth.root), "-q", "train", *common, "--batch-size", "4",
                           "--unlabeled-batch-size", "4", "--name", "two"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = resolve(overrides={"method": "sclip", "split": "half", "model": "tiny-vit", "epochs": 2, "validate": False,
                             "lr": 1e-3, "batch_size": 8, "unlabeled_batch_size": 8, "name": "one"})
    train(synth, cfg, progress=False)
    two, one = losses(synth, "two"), losses(synth, "one")
    assert len(one) == 4 and two == pytest.approx(one, rel=1e-5)
    wa, wb = final_weights(synth, "two"), final_weights(synth, "one")
    assert wa.keys() == wb.keys()
    start = build_model(ModelSpec("tiny-vit"), train=True).model.state_dict()
    assert max(float((wb[k] - start[k]).abs().max()) for k in wb) > 1e-3      # the weights did move
    for k in wb:
        assert torch.allclose(wa[k], wb[k], atol=1e-6, rtol=1e-5), k
    stats = synth.current("train", "two").stats
    assert stats["labeled_seen"] == 4 * 8 and stats["unlabeled_seen"] == 4 * 8
