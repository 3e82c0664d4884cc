"""`clipstore mine ...` end to end through the command line (in process), on the real UCM captions."""

from __future__ import annotations

import json

import pytest

from conftest import run_main as run_cli


@pytest.fixture(scope="module")
def ucm_store(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("cli_mining") / "store"
    ucm = shared_data / "ucmerced_landuse"
    run_cli("--store", root, "-q", "ingest", "ucm_captions", shared_data / "ucm_captions", "--images", ucm,
            "--image-map", ucm / "ucm_captions_filename_map.tsv", "--keep-missing")
    run_cli("--store", root, "-q", "ingest", "imagefolder", ucm / "Images", "--name", "ucm_cls")
    return root


def test_keywords_export_import_and_sql(ucm_store, tmp_path):
    out = run_cli("--store", ucm_store, "-q", "mine", "keywords", "--corpus", "ucm_captions", "--source-split", "train",
                  "--top", "100", "--export-sclip", tmp_path / "kw", "--sizes", "50", "100").stdout
    assert "keywords 100" in out and "wrote" in out
    lines = (tmp_path / "kw" / "yake-100.txt").read_text().splitlines()
    assert (tmp_path / "kw" / "yake-50.txt").read_text().splitlines() == lines[:50]

    again = run_cli("--store", ucm_store, "-q", "mine", "keywords", "--import", tmp_path / "kw", "--name", "imported",
                    "--match-corpus", "ucm_captions").stdout
    assert "keywords 100" in again
    ranked = json.loads(run_cli("--store", ucm_store, "sql", "--format", "json",
                                "SELECT k.keyword FROM keywords k JOIN vocabularies v USING (vocab_id) "
                                "WHERE v.vocab = 'imported' ORDER BY k.rank").stdout)
    assert [r["keyword"] for r in ranked] == lines

    top = json.loads(run_cli("--store", ucm_store, "sql", "--format", "json",
                             "SELECT k.keyword, count(*) n FROM caption_keywords ck JOIN keywords k "
                             "USING (vocab_id, keyword_id) JOIN vocabularies v USING (vocab_id) "
                             "WHERE v.vocab = 'imported' GROUP BY 1 ORDER BY n DESC LIMIT 3").stdout)
    assert len(top) == 3 and top[0]["n"] >= top[2]["n"] > 100


def test_classnames_and_errors(ucm_store):
    out = run_cli("--store", ucm_store, "-q", "mine", "classnames", "--corpus", "ucm_cls",
                  "--match-corpus", "ucm_captions").stdout
    assert "keywords 21" in out
    names = json.loads(run_cli("--store", ucm_store, "sql", "--format", "json",
                               "SELECT name FROM classnames WHERE class = 'denseresidential'").stdout)
    assert names == [{"name": "dense residential"}]

    bad = run_cli("--store", ucm_store, "mine", "keywords", "--split", "nope", "--role", "labeled", check=False)
    assert bad.returncode != 0 and "no split 'nope'" in bad.stderr and "Traceback" not in bad.stderr
    bad = run_cli("--store", ucm_store, "mine", "keywords", "--import", "/nonexistent.txt", check=False)
    assert bad.returncode != 0 and "needs a name" in bad.stderr
