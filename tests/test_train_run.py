"""Training runs on a small synthetic corpus: a CLIP run from the command line (train_log rows,
checkpoint artifacts that are model specs, validation metrics linked to the checkpoint, a re-run
that is a no-op), S-CLIP's named terms on a split, global caption targets from a
`pseudo_captions` table, and `--trainable text` reading image features from the cache and
embedding only the images it lacks."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from clipstore.features.checkpoints import read_checkpoint
from clipstore.features.identity import IMAGE_TOWER, TEXT_TOWER, weight_digests
from clipstore.ingest.pipeline import ingest
from clipstore.ingest.splits import make_split
from clipstore.ingest.synth import write_synthetic
from clipstore.mining.keywords import mine_keywords
from clipstore.train.config import resolve
from clipstore.train.loop import train
from clipstore.warehouse.parquet import commit_part_tables
from clipstore.warehouse.sql import query
from clipstore.warehouse.store import Store

TINY = {"model": "tiny-vit", "batch_size": 8, "epochs": 1, "validate": False}


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
    """40 synthetic images (32 train, 4 val, 4 test) and a half-labeled split with its keywords."""
    root = tmp_path_factory.mktemp("train")
    write_synthetic(root / "synth", seed=0, n_images=40, size=32)
    store = Store(root / "store")
    ingest(store, "karpathy", root / "synth" / "captions", name="synth", workers=1, progress=False)
    make_split(store, "half", corpora=["synth"], labeled_ratio=0.5, seed=0)
    mine_keywords(store, split="half", role="labeled", top=20, progress=False)
    return store


@pytest.fixture(scope="module")
def stand_in(synth):
    """A stand-in "pretrained" CLIP: one epoch of CLIP on the whole corpus."""
    return train(synth, resolve(overrides={"method": "clip", "corpus": "synth", **TINY}), progress=False)


def test_a_short_run_makes_a_checkpoint_that_loads_as_a_model(synth, stand_in):
    """The fast tier's one end-to-end run (the stand-in fixture): 5 steps, a log, a model spec."""
    from clipstore.features.checkpoint_artifacts import resolve_model_spec
    from clipstore.features.models import ModelSpec, load_model
    log = log_of(synth, stand_in.run.name)
    assert [r["step"] for r in log if r["metric"] == "loss"] == [1, 2, 3, 4, 5]       # 40 images, batch 8
    assert stand_in.run.stats["labeled_seen"] == 40 and stand_in.checkpoint.params["final"]
    loaded = load_model(resolve_model_spec(synth, ModelSpec(stand_in.checkpoint.artifact_id)))
    assert loaded.identity["weights_sha256"] == stand_in.checkpoint.params["weights_sha256"]


def log_of(store, name):
    return query(store, "SELECT step, phase, metric, value, checkpoint, evaluation FROM train_log WHERE name = ? "
                        "ORDER BY step, metric", [name]).to_pylist()


@pytest.mark.slow
def test_clip_from_the_command_line(synth, cli):
    root = synth.root
    args = ["--store", root, "-q", "train", "--method", "clip", "--corpus", "synth", "--model", "tiny-vit",
            "--epochs", "2", "--batch-size", "16", "--val-every", "0", "--name", "cli"]
    out = cli(*args).stdout
    ckpt = out.strip().rsplit("-> ", 1)[1]
    assert out.startswith("train cli: 2 epochs, 4 steps") and ckpt.startswith("checkpoint-cli-")
    log = log_of(synth, "cli")
    losses = [r for r in log if r["metric"] == "loss"]
    assert [r["step"] for r in losses] == [1, 2, 3, 4]
    assert {"lr", "logit_scale", "samples_per_s", "labeled_seen", "loss/contrastive"} <= {r["metric"] for r in log}
    assert max(r["value"] for r in log if r["metric"] == "labeled_seen") == 4 * 16
    val = [r for r in log if r["phase"] == "val"]
    assert val and {r["checkpoint"] for r in val} == {ckpt}
    assert {"synth/retrieval/all/mR", "synth/zeroshot/aerial/top1"} <= {r["metric"] for r in val}
    linked = query(synth, "SELECT count(*) AS n FROM metrics WHERE name = ?", [f"eval.{ckpt}"]).to_pylist()[0]["n"]
    assert linked > 0 and {r["evaluation"] for r in val} == {synth.get(f"eval.{ckpt}").artifact_id}

    # the checkpoint: weights + config, and a resumable state that loads without pickle
    art = synth.get(ckpt)
    weights, config = read_checkpoint(synth.table_paths(art, "checkpoint")[0])
    assert config["model"] == "tiny-vit" and config["train"]["config"]["epochs"] == 2
    assert config["train"]["step"] == 4 and config["train"]["final"] and config["train"]["round"] == 0
    state = torch.load(synth.table_paths(art, "train_state")[0], weights_only=True)
    assert state["step"] == 4 and "optimizer" in state and len(state["log"]) > 0
    assert weight_digests(weights)["model"] == art.params["weights_sha256"]

    # a model spec everywhere, and the same command again is a no-op
    embedded = cli("--store", root, "-q", "embed", "--model", ckpt, "--corpus", "synth", "--modality", "image").stdout
    assert "synth.image.tiny-vit@" in embedded
    again = cli(*args).stdout
    assert "up to date" in again and again.strip().endswith(ckpt)
    resumed = cli("--store", root, "-q", "train", "--resume", ckpt, "--epochs", "2").stdout   # agrees: a no-op
    assert "up to date" in resumed and resumed.strip().endswith(ckpt)
    clash = cli("--store", root, "-q", "train", "--resume", ckpt, "--epochs", "3", check=False)
    assert clash.returncode == 2 and "epochs: 3 given, 2 in the checkpoint" in clash.stderr


@pytest.mark.slow
def test_sclip_logs_each_term_and_draws_unlabeled_images(synth, stand_in):
    cfg = resolve(overrides={"method": "sclip", "split": "half", "init_from": stand_in.checkpoint.artifact_id,
                             **TINY, "batch_size": 4, "unlabeled_batch_size": 3})
    out = train(synth, cfg, progress=False)
    log = log_of(synth, out.run.name)
    terms = {r["metric"] for r in log if r["metric"].startswith("loss/")}
    assert terms == {"loss/contrastive", "loss/caption", "loss/keyword"}
    steps = max(r["step"] for r in log)
    assert steps == 16 // 4
    seen = {r["metric"]: r["value"] for r in log if r["step"] == steps}
    assert seen["unlabeled_seen"] == 3 * steps and seen["labeled_seen"] == 4 * steps
    total = [r["value"] for r in log if r["metric"] == "loss"]
    parts = [sum(r["value"] for r in log if r["step"] == s and r["metric"].startswith("loss/")) for s in
             range(1, steps + 1)]
    assert total == pytest.approx(parts)
    assert out.run.stats["parent"] == stand_in.checkpoint.artifact_id and out.run.stats["round"] == 1
    assert out.checkpoint.stats["parent"] == stand_in.checkpoint.artifact_id
    lineage = dict(synth.lineage(out.checkpoint.artifact_id))
    assert stand_in.checkpoint.artifact_id in lineage


PSEUDO = pa.schema([("artifact_id", pa.string()), ("image_id", pa.string()), ("matches", pa.list_(pa.string())),
                    ("weights", pa.list_(pa.float32())), ("match_caption_ids", pa.list_(pa.string())),
                    ("confidence", pa.float32())])
PSEUDO_COLUMNS = {"artifact_id": "VARCHAR", "image_id": "VARCHAR", "matches": "VARCHAR[]", "weights": "FLOAT[]",
                  "match_caption_ids": "VARCHAR[]", "confidence": "FLOAT"}


@pytest.mark.slow
def test_sclip_with_caption_targets_from_a_global_ot_table(synth, stand_in):
    labeled = query(synth, "SELECT s.image_id, min(c.caption_id) AS caption_id FROM splits s JOIN captions c "
                           "USING (corpus, sample_id) WHERE s.split = 'half' AND s.role = 'labeled' GROUP BY 1 "
                           "ORDER BY 1").to_pylist()
    unlabeled = query(synth, "SELECT image_id FROM splits WHERE split = 'half' AND role = 'unlabeled' "
                             "ORDER BY image_id").column("image_id").to_pylist()
    with synth.writing():
        b = synth.produce(kind="pseudo", name="ot.half", stage="test", version=1, params={},
                          tables={"pseudo_captions": {"key": None, "columns": PSEUDO_COLUMNS}})
        rows = [{"artifact_id": b.artifact_id, "image_id": u,
                 "matches": [labeled[i % 16]["image_id"], labeled[(i + 1) % 16]["image_id"]], "weights": [0.75, 0.25],
                 "match_caption_ids": [labeled[i % 16]["caption_id"], labeled[(i + 1) % 16]["caption_id"]],
                 "confidence": 0.5} for i, u in enumerate(unlabeled[:-2])]       # two images without a target
        commit_part_tables(b, 0, {"pseudo_captions": (rows, PSEUDO)})
        targets = b.finish({"rows": len(rows)})
    cfg = resolve(overrides={"method": "sclip", "split": "half", "init_from": stand_in.checkpoint.artifact_id,
                             "caption_targets": targets.artifact_id, **TINY, "batch_size": 4})
    out = train(synth, cfg, progress=False)
    caption = [r["value"] for r in log_of(synth, out.run.name) if r["metric"] == "loss/caption"]
    assert len(caption) == 4 and all(v > 0 for v in caption)
    assert targets.artifact_id in dict(synth.lineage(out.checkpoint.artifact_id))


@pytest.mark.slow
def test_pixels_from_a_pixel_cache(synth, stand_in):
    from clipstore.features.pixels import cache_pixels
    from clipstore.features.models import ModelSpec
    from clipstore.train.data import read_items
    from clipstore.warehouse.errors import InputError
    from clipstore.warehouse.pixels import PixelSpec
    from clipstore.warehouse.shards import decode
    options = {"method": "sclip", "split": "half", "init_from": stand_in.checkpoint.artifact_id, "pixel_cache": "use",
               **TINY, "batch_size": 4}
    with pytest.raises(InputError, match="clipstore pixels --corpus synth"):
        train(synth, resolve(overrides=options), progress=False)
    [pixels] = cache_pixels(synth, corpus="synth", model=ModelSpec("tiny-vit"), workers=0, progress=False)
    out = train(synth, resolve(overrides=options), progress=False)
    assert pixels.artifact_id in dict(synth.lineage(out.checkpoint.artifact_id))
    assert len([r for r in log_of(synth, out.run.name) if r["metric"] == "loss"]) == 4
    # what the source hands the train transform: the cached row, i.e. the decoded image at the model's geometry
    from clipstore.train.data import pixel_cache_source
    items = read_items(synth, split="half", role="labeled")
    spec = PixelSpec.square(64)
    factory, _ = pixel_cache_source(synth, ["synth"], spec, items.image_ids)
    ref = items.refs[3]
    with open(ref.shard, "rb") as f:
        assert (np.asarray(factory(items.refs).load(3)) == spec.prepare(decode(f, ref))).all()


@pytest.mark.slow
def test_trainable_text_reads_the_image_cache_and_embeds_only_missing_images(synth, stand_in, tmp_path):
    parent = stand_in.checkpoint.artifact_id
    distinct = query(synth, "SELECT count(DISTINCT image_id) AS n FROM images WHERE corpus = 'synth'").to_pylist()[0]
    cfg = resolve(overrides={"method": "sclip", "split": "half", "init_from": parent, "trainable": "text",
                             **TINY, "batch_size": 4})
    first = train(synth, cfg, progress=False)
    assert first.run.stats["features"]["image"]["embedded"] == distinct["n"]
    before, _ = read_checkpoint(synth.table_paths(synth.get(parent), "checkpoint")[0])
    after, _ = read_checkpoint(synth.table_paths(first.checkpoint, "checkpoint")[0])
    assert weight_digests(after)[IMAGE_TOWER] == weight_digests(before)[IMAGE_TOWER]
    assert weight_digests(after)[TEXT_TOWER] != weight_digests(before)[TEXT_TOWER]
    from clipstore.features.checkpoint_artifacts import resolve_model_spec
    from clipstore.features.models import ModelSpec, load_model
    fingerprints = [load_model(resolve_model_spec(synth, ModelSpec(a))).tower_fingerprints
                    for a in (parent, first.checkpoint.artifact_id)]
    assert fingerprints[0][IMAGE_TOWER] == fingerprints[1][IMAGE_TOWER]    # eval and embed reuse its image caches

    # the corpus grows (the first 40 images are the same bytes): round 2 embeds only the new ones
    write_synthetic(tmp_path / "synth", seed=0, n_images=48, size=32)
    ingest(synth, "karpathy", tmp_path / "synth" / "captions", name="synth", workers=1, progress=False)
    grown = query(synth, "SELECT count(DISTINCT image_id) AS n FROM images WHERE corpus = 'synth'").to_pylist()[0]
    assert grown["n"] > distinct["n"]
    make_split(synth, "half_v2", corpora=["synth"], labeled_ratio=0.5, seed=0)
    mine_keywords(synth, split="half_v2", role="labeled", top=20, progress=False)
    second = train(synth, resolve(overrides={**cfg.to_dict(), "split": "half_v2"}), progress=False)
    assert second.run.stats["features"]["image"]["embedded"] == grown["n"] - distinct["n"]
