"""`clipstore embed | index | knn | dedup | neighbors` end to end through the command line (in process)."""

from __future__ import annotations

import json

import pytest

from conftest import karpathy_from_real_images, run_main as run_cli


def test_embed_index_knn_neighbors(tmp_path, shared_data):
    store = tmp_path / "store"
    karpathy_from_real_images(shared_data, tmp_path / "corpus", 12, splits=("train", "val"))
    run_cli("--store", store, "-q", "ingest", "karpathy", tmp_path / "corpus", "--name", "tiny")

    out = run_cli("--store", store, "-q", "embed", "--model", "tiny-vit", "--corpus", "tiny",
                  "--modality", "image,caption", "--workers", "1").stdout
    assert "tiny.image.tiny-vit: vectors 12" in out and "tiny.caption.tiny-vit: vectors 24" in out
    again = run_cli("--store", store, "-q", "embed", "--model", "tiny-vit", "--corpus", "tiny",
                    "--modality", "image", "--workers", "1")
    runs = json.loads(run_cli("--store", store, "sql", "--format", "json",
                              "SELECT status FROM runs WHERE stage = 'embed' ORDER BY started_at").stdout)
    assert again.returncode == 0 and runs[-1]["status"] == "noop"  # a cache hit does no work

    items = json.loads(run_cli("--store", store, "sql", "--format", "json",
                               "SELECT modality, count(*) AS n FROM embedding_items GROUP BY 1 ORDER BY 1").stdout)
    assert items == [{"modality": "caption", "n": 24}, {"modality": "image", "n": 12}]

    assert "exact" in run_cli("--store", store, "-q", "index", "--embeddings", "tiny.image.tiny-vit").stdout
    assert "edges 36" in run_cli("--store", store, "-q", "knn", "--embeddings", "tiny.image.tiny-vit",
                                 "--k", "3").stdout
    assert "pairs" in run_cli("--store", store, "-q", "dedup", "--embeddings", "tiny.image.tiny-vit").stdout

    sample = json.loads(run_cli("--store", store, "sql", "--format", "json",
                                "SELECT sample_id FROM samples ORDER BY source_index LIMIT 1").stdout)[0]["sample_id"]
    shown = run_cli("--store", store, "neighbors", sample, "--k", "2").stdout
    assert "nearest images (2)" in shown and "nearest captions (2)" in shown


def test_embed_errors_are_clear(tmp_path, shared_data):
    store = tmp_path / "store"
    bad = run_cli("--store", store, "embed", "--model", "tiny-vit", "--corpus", "x", check=False)
    assert bad.returncode != 0 and "no corpus 'x'" in bad.stderr and "Traceback" not in bad.stderr
    karpathy_from_real_images(shared_data, tmp_path / "corpus", 2)
    run_cli("--store", store, "-q", "ingest", "karpathy", tmp_path / "corpus", "--name", "two")
    bad = run_cli("--store", store, "embed", "--model", "ViT-B-32", "--pretrained", "openai", "--corpus", "two",
                  check=False)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "--allow-download" in bad.stderr
    bad = run_cli("--store", store, "embed", "--model", "tiny-vit", "--modality", "image,sound", "--corpus", "x",
                  check=False)
    assert bad.returncode != 0 and "unknown modality 'sound'" in bad.stderr


@pytest.mark.slow
def test_the_issue_command_embeds_all_four_modalities_of_synth(tmp_path):
    """`embed --corpus synth --modality image,caption,keyword,classname`: the keywords are the
    vocabulary mined over the corpus (`keywords.synth`), the classes the synth scenes."""
    store = tmp_path / "store"
    run_cli("synth", tmp_path / "synth", "--images", "40")
    run_cli("--store", store, "-q", "ingest", "karpathy", tmp_path / "synth" / "captions", "--name", "synth")
    command = ("--store", store, "-q", "embed", "--model", "tiny-vit", "--corpus", "synth",
               "--modality", "image,caption,keyword,classname", "--workers", "1")
    before = run_cli(*command, check=False)
    assert before.returncode != 0 and "clipstore mine keywords --corpus synth" in before.stderr
    run_cli("--store", store, "-q", "mine", "keywords", "--corpus", "synth", "--top", "20")
    out = run_cli(*command).stdout
    for line in ("synth.image.tiny-vit: vectors 40", "synth.caption.tiny-vit: vectors 200",
                 "keywords.synth.keyword.tiny-vit: vectors 20", "synth.classname.tiny-vit: vectors"):
        assert line in out, out
    classes = json.loads(run_cli("--store", store, "sql", "--format", "json",
                                 "SELECT count(DISTINCT class) AS n FROM samples WHERE corpus = 'synth'").stdout)
    assert f"synth.classname.tiny-vit: vectors {classes[0]['n']}," in out
