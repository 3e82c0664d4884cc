"""`clipstore sql` from the command line: named parameters, empty queries, refusals as messages."""

from __future__ import annotations

import json

import pytest

from clipstore.ingest.pipeline import ingest
from clipstore.warehouse.store import Store
from conftest import karpathy_from_real_images, run_cli


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory, shared_data):
    base = tmp_path_factory.mktemp("sqlcli")
    karpathy_from_real_images(shared_data, base / "corpus", 4)
    ingest(Store(base / "store"), "karpathy", base / "corpus", name="little", workers=1, progress=False)
    run_cli("-q", "--store", base / "store", "mine", "keywords", "--corpus", "little", "--top", "10",
            "--name", "keywords.sclip")
    return base / "store"


def sql(store_dir, *args, check=True):
    return run_cli("--store", store_dir, "sql", *args, check=check)


def test_named_parameters_bind_as_text(store_dir):
    out = sql(store_dir, "SELECT s.corpus, count(*) AS n FROM samples s JOIN captions c USING (sample_id) "
                         "WHERE s.corpus = $corpus AND c.ordinal < $k GROUP BY ALL LIMIT $rows",
              "--param", "corpus=little", "--param", "k=1", "--param", "rows=5", "--format", "json")
    assert json.loads(out.stdout) == [{"corpus": "little", "n": 4}]


def test_the_readme_question_runs_as_printed(store_dir):
    from clipstore.mining.examples import QUERIES
    title, text = QUERIES[0]
    assert "$keywords" in text
    out = sql(store_dir, text, "--param", "keywords=keywords.sclip", "--format", "json")
    rows = json.loads(out.stdout)
    assert rows and set(rows[0]) == {"keyword", "rank", "captions", "images"}
    assert all(r["images"] <= 4 for r in rows)


def test_an_integer_looking_value_binds_as_a_number_where_duckdb_needs_one(store_dir):
    out = sql(store_dir, "SELECT 1 + $k AS x, $name AS name", "--param", "k=41", "--param", "name=007",
              "--format", "json")
    # bound again with every integer-looking value as an integer (the documented rule)
    assert json.loads(out.stdout) == [{"x": 42, "name": 7}]
    text = sql(store_dir, "SELECT $name AS name", "--param", "name=007", "--format", "json")
    assert json.loads(text.stdout) == [{"name": "007"}]   # text when text binds


def test_parameter_mistakes_are_input_errors(store_dir):
    missing = sql(store_dir, "SELECT $corpus AS c", check=False)
    assert missing.returncode == 2 and "--param corpus=VALUE" in missing.stderr
    unused = sql(store_dir, "SELECT $corpus AS c", "--param", "corpus=x", "--param", "corpsu=y", check=False)
    assert unused.returncode == 2 and "corpsu" in unused.stderr
    malformed = sql(store_dir, "SELECT $corpus AS c", "--param", "corpus", check=False)
    assert malformed.returncode == 2 and "NAME=VALUE" in malformed.stderr
    for proc in (missing, unused, malformed):
        assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("text", ["", "-- only a comment", "/* nothing */ ;"])
def test_empty_query_is_a_clear_input_error(store_dir, text):
    proc = sql(store_dir, text, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "the query is empty" in proc.stderr and "Traceback" not in proc.stderr


def test_a_refused_statement_is_a_message_with_its_exit_code(store_dir):
    proc = sql(store_dir, "EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1", check=False)
    assert proc.returncode == 5 and "read-only" in proc.stderr and "Traceback" not in proc.stderr
