"""Versions a user can trust: a name's current version moves only when a new one is complete,
going back to a completed recipe restores it with its own counts, `versions` lists them and
`--use` moves the pointer; look-ups are bound to a kind; stage versions invalidate."""

import os
import signal
import subprocess
import sys
import time

import pytest

from clipstore.cli import main
from clipstore.ingest import splits
from clipstore.ingest.pipeline import ingest
from clipstore.ingest.splits import make_split
from clipstore.warehouse.errors import InputError, NotFoundError
from clipstore.warehouse.sql import query
from clipstore.warehouse.store import Store, git_revision
from conftest import REPO, karpathy_from_real_images, write_karpathy


def _samples(store) -> int:
    return query(store, "SELECT count(*) AS n FROM samples").to_pylist()[0]["n"]


def _partly_missing(shared_data, root, n=12, present=4) -> None:
    """A Karpathy corpus naming n images of which only `present` are on disk."""
    karpathy_from_real_images(shared_data, root, present)
    write_karpathy(root, [{"filename": f"{i + 1}.tif", "captions": [f"scene {i} from above ."]} for i in range(n)])


def test_going_back_to_a_completed_recipe_restores_it_with_its_own_counts(store, tmp_path, shared_data):
    corpus = tmp_path / "corpus"
    _partly_missing(shared_data, corpus)
    kept = ingest(store, "karpathy", corpus, name="c", keep_missing=True, workers=1, progress=False)
    assert kept.counts["samples"] == 12 and _samples(store) == 12
    strict = ingest(store, "karpathy", corpus, name="c", workers=1, progress=False, replace=True)
    assert strict.counts["samples"] == 4 and strict.counts["rejects"] == 8 and _samples(store) == 4
    again = ingest(store, "karpathy", corpus, name="c", keep_missing=True, workers=1, progress=False)
    assert again.artifact_id == kept.artifact_id and again.noop
    assert again.counts["samples"] == 12 and again.counts["rejects"] == 0
    assert store.current("corpus", "c").artifact_id == kept.artifact_id
    assert _samples(store) == 12
    assert query(store, "SELECT count(*) AS n FROM rejects").to_pylist()[0]["n"] == 0


def test_versions_lists_and_use_moves_the_pointer(store, tmp_path, shared_data, capsys):
    corpus = tmp_path / "corpus"
    _partly_missing(shared_data, corpus)
    kept = ingest(store, "karpathy", corpus, name="c", keep_missing=True, workers=1, progress=False)
    strict = ingest(store, "karpathy", corpus, name="c", workers=1, progress=False, replace=True)
    history = store.history("c")
    assert [v.artifact.artifact_id for v in history] == [kept.artifact_id, strict.artifact_id]
    assert [v.current for v in history] == [False, True] and {v.state for v in history} == {"complete"}

    assert main(["--store", str(store.root), "versions", "c"]) == 0
    out = capsys.readouterr().out
    assert kept.artifact_id in out and strict.artifact_id in out and "keep_missing=True" in out
    assert main(["--store", str(store.root), "versions", "c", "--use", kept.artifact_id]) == 0
    assert store.current("corpus", "c").artifact_id == kept.artifact_id and _samples(store) == 12
    # an id of another name is refused, and the pointer stays
    other = ingest(store, "karpathy", corpus, name="d", keep_missing=True, workers=1, progress=False)
    assert main(["--store", str(store.root), "versions", "c", "--use", other.artifact_id]) == 2
    assert "not of c" in capsys.readouterr().err
    assert store.current("corpus", "c").artifact_id == kept.artifact_id


@pytest.mark.slow
def test_an_interrupted_reingest_leaves_the_previous_version_in_view(tmp_path, shared_data):
    corpus = tmp_path / "corpus"
    karpathy_from_real_images(shared_data, corpus, 60)
    store = Store(tmp_path / "store")
    first = ingest(store, "karpathy", corpus, name="c", shard_size=30, workers=1, progress=False)
    proc = subprocess.Popen([sys.executable, "-m", "clipstore", "-q", "--store", str(store.root), "ingest",
                             "karpathy", str(corpus), "--name", "c", "--shard-size", "5", "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list(store.root.glob("artifacts/*/samples/*.parquet"))) >= 2 + 3:   # 2 of the first version
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the re-ingest finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert store.current("corpus", "c").artifact_id == first.artifact_id
    assert _samples(store) == 60
    [building] = [v for v in store.history("c") if v.artifact.artifact_id != first.artifact_id]
    assert building.state == "incomplete" and building.pending_parts > 0 and not building.current
    with store.connect() as con:   # the killed run is still "running": nothing could close it
        assert con.execute("SELECT count(*) FROM runs WHERE status = 'running'").fetchone()[0] == 1

    resumed = ingest(store, "karpathy", corpus, name="c", shard_size=5, workers=1, progress=False)
    assert resumed.artifact_id == building.artifact.artifact_id
    assert store.current("corpus", "c").artifact_id == resumed.artifact_id and _samples(store) == 60
    assert query(store, "SELECT count(DISTINCT shard) AS n FROM samples").to_pylist()[0]["n"] == 12
    with store.connect() as con:   # the resume closed the killed run
        statuses = [r[0] for r in con.execute("SELECT status FROM runs ORDER BY started_at").fetchall()]
    assert statuses == ["done", "interrupted", "done"]
    assert all(v.state == "complete" for v in store.history("c"))


def test_a_name_used_by_several_kinds_must_say_which(store, tmp_path, shared_data):
    corpus = tmp_path / "corpus"
    karpathy_from_real_images(shared_data, corpus, 4)
    art = ingest(store, "karpathy", corpus, name="rs", workers=1, progress=False)
    split = make_split(store, "rs", corpora=["rs"], labeled_ratio=0.5, seed=0)
    with pytest.raises(InputError) as err:
        store.get("rs")
    assert "corpus:rs" in str(err.value) and "split:rs" in str(err.value)
    assert store.get("rs", kind="corpus").artifact_id == art.artifact_id
    assert store.get("split:rs").artifact_id == split.artifact_id
    with pytest.raises(InputError):                 # an id is bound to its kind too
        store.get(split.artifact_id, kind="corpus")
    with pytest.raises(NotFoundError):
        store.get("rs", kind="vocab")


def test_a_bumped_stage_version_makes_a_new_artifact(store, tmp_path, shared_data, monkeypatch):
    corpus = tmp_path / "corpus"
    karpathy_from_real_images(shared_data, corpus, 4)
    ingest(store, "karpathy", corpus, name="rs", workers=1, progress=False)
    first = make_split(store, "s", corpora=["rs"], labeled_ratio=0.5, seed=0)
    same = make_split(store, "s", corpora=["rs"], labeled_ratio=0.5, seed=0)
    assert same.artifact_id == first.artifact_id and same.noop
    monkeypatch.setattr(splits, "STAGE_VERSION", splits.STAGE_VERSION + 1)
    bumped = make_split(store, "s", corpora=["rs"], labeled_ratio=0.5, seed=0)
    assert bumped.artifact_id != first.artifact_id and not bumped.noop
    assert bumped.recipe["stage_version"] == first.recipe["stage_version"] + 1
    assert store.current("split", "s").artifact_id == bumped.artifact_id


def test_runs_record_the_code_revision(store, tmp_path, shared_data):
    corpus = tmp_path / "corpus"
    karpathy_from_real_images(shared_data, corpus, 2)
    ingest(store, "karpathy", corpus, name="rs", workers=1, progress=False)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    with store.connect() as con:
        revision, dirty = con.execute("SELECT git_revision, git_dirty FROM runs").fetchone()
    if head.returncode != 0:
        assert (revision, dirty) == (None, None)
    else:
        # the process reads the revision once: compare with that, and check it is a commit of this repo
        assert (revision, dirty) == git_revision() and isinstance(dirty, bool)
        kind = subprocess.run(["git", "cat-file", "-t", revision], cwd=REPO, capture_output=True, text=True)
        assert kind.stdout.strip() == "commit"


def test_a_store_from_before_version_pointers_is_migrated(tmp_path, shared_data):
    """An old catalog (no pointers, no publish flags) opens with its newest complete versions current."""
    import duckdb
    corpus = tmp_path / "corpus"
    karpathy_from_real_images(shared_data, corpus, 3)
    store = Store(tmp_path / "store")
    art = ingest(store, "karpathy", corpus, name="rs", workers=1, progress=False)
    con = duckdb.connect(str(store.catalog_path))
    con.execute("DROP TABLE current_versions")
    con.execute("ALTER TABLE parts DROP COLUMN published")
    con.execute("ALTER TABLE parts DROP COLUMN retired")
    con.execute("ALTER TABLE runs DROP COLUMN git_revision")
    con.execute("ALTER TABLE runs DROP COLUMN git_dirty")
    con.close()
    reopened = Store(store.root)
    assert reopened.current("corpus", "rs").artifact_id == art.artifact_id
    assert _samples(reopened) == 3
