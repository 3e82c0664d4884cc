"""`clipstore ingest | split | mine | show` in process on a generated corpus: the summary lines
(a re-run says "up to date"), and `show`'s summary, `--json` and KIND:NAME look-ups."""

from __future__ import annotations

import json

import pytest

from conftest import run_main, write_karpathy
from fixtures import write_image


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "raw"
    entries = []
    for i in range(10):
        write_image(root / "images" / f"{i}.png", seed=i)
        entries.append({"filename": f"{i}.png", "split": "train" if i < 8 else "test",
                        "captions": [f"a beach with {i} boats .", "green trees beside a road ."]})
    write_karpathy(root, entries)
    return root


def test_summary_lines_say_up_to_date_on_a_rerun(tmp_path, corpus):
    store = tmp_path / "store"
    ingest = ("ingest", "karpathy", corpus, "--name", "beach", "--workers", "1", "--store", store, "-q")
    first = run_main(*ingest).stdout
    assert first.startswith("ingest beach: 10 samples (10 with image, 0 caption-only), 20 captions, 0 rejects in ")
    again = run_main(*ingest).stdout
    assert again.startswith("ingest beach: up to date (10 samples (10 with image, 0 caption-only), 20 captions, "
                            "0 rejects) -> corpus-beach-")
    split = ("split", "s", "--corpus", "beach", "--labeled-ratio", "0.5", "--seed", "0", "--store", store)
    assert run_main(*split).stdout.startswith("split s: labeled 4, unlabeled 4, val 0, test 2 -> split-s-")
    assert run_main(*split).stdout.startswith("split s: up to date (labeled 4, unlabeled 4, val 0, test 2) -> split-s-")


@pytest.mark.slow
def test_mine_says_up_to_date_on_a_rerun(tmp_path, corpus):
    store = tmp_path / "store"
    run_main("ingest", "karpathy", corpus, "--name", "beach", "--workers", "1", "--store", store, "-q")
    mine = ("mine", "keywords", "--corpus", "beach", "--top", "4", "--store", store, "-q")
    assert ": up to date (" not in run_main(*mine).stdout
    assert run_main(*mine).stdout.startswith("mine keywords keywords.beach: up to date (vocabularies 1, keywords 4")


def test_show_summary_json_and_kind_name(tmp_path, corpus):
    store = tmp_path / "store"
    run_main("ingest", "karpathy", corpus, "--name", "beach", "--workers", "1", "--store", store, "-q")
    run_main("split", "beach", "--corpus", "beach", "--labeled-ratio", "0.5", "--seed", "0", "--store", store)
    corpus_id = json.loads(run_main("--store", store, "sql", "--format", "json",
                                    "SELECT artifact_id FROM artifacts WHERE kind = 'corpus'").stdout)[0]["artifact_id"]

    text = run_main("--store", store, "show", "corpus:beach").stdout
    lines = text.splitlines()
    assert lines[0] == "corpus beach  (complete)" and f"  id:       {corpus_id}" in lines
    assert "    format: karpathy" in lines and "    shard_size: 1,000" in lines           # recipe params
    assert "  counts:   samples 10, images 10, caption_only 0" in text                      # counts, in full
    assert "    splits: test 2, train 8" in lines                                             # key stats
    assert "  lineage:  none" in lines and "samples 1" in text and "shards 1" in text     # parts per table
    assert not text.lstrip().startswith("{")

    split = run_main("--store", store, "show", "split:beach").stdout
    assert split.startswith("split beach  (complete)") and f"  lineage:  {corpus_id} (input)" in split

    full = json.loads(run_main("--store", store, "show", corpus_id, "--json").stdout)
    assert full["artifact_id"] == corpus_id and full["kind"] == "corpus" and full["counts"]["samples"] == 10
    assert full["tables"]["samples"] == 1 and full["recipe"]["params"]["format"] == "karpathy"

    bad = run_main("--store", store, "show", "vocab:beach", check=False)
    assert bad.returncode == 3 and "no vocab 'beach'" in bad.stderr and "Traceback" not in bad.stderr


def test_doctor_exit_status_in_process(tmp_path, corpus):
    ok = run_main("doctor", "karpathy", corpus)
    assert ok.returncode == 0 and "READY" in ok.stdout
    bad = run_main("doctor", "karpathy", tmp_path / "nothing", check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
