"""The store: recipe-derived ids, atomic parts, orphan sweeping, the writer lock, read-only SQL."""

import json
import multiprocessing
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipstore.warehouse import ClipstoreError, ReadOnlyError, StoreLockedError
from clipstore.warehouse.sql import Session, query, render
from clipstore.warehouse.store import Artifact, Store


def _write_part(builder, part, rows):
    tmp = builder.temp_dir("t") / f"{part:06d}.parquet"
    pq.write_table(pa.Table.from_pylist(rows), tmp)
    builder.commit_part(part, {"things": (tmp, len(rows))})


def _produce(store, params=None, version=1):
    return store.produce(kind="vocab", name="demo", stage="test", version=version, params=params or {},
                         tables={"things": {}})


def _build(store, params, rows=({"x": 1, "part": 0},)):
    with store.writing():
        b = _produce(store, params)
        if isinstance(b, Artifact):
            return b
        _write_part(b, 0, list(rows))
        return b.finish({"rows": len(rows)})


def test_same_recipe_same_artifact_and_no_work(store):
    a = _build(store, {"k": 1})
    b = _build(store, {"k": 1})
    c = _build(store, {"k": 2})
    assert a.artifact_id == b.artifact_id != c.artifact_id
    assert a.recipe_digest == b.recipe_digest
    assert len(store.parts(a.artifact_id)) == 1
    assert store.current("vocab", "demo").artifact_id == c.artifact_id  # the newest recipe is current
    manifest = json.loads((a.path / "manifest.json").read_text())
    assert manifest["recipe"]["params"] == {"k": 1}


def test_uncommitted_part_is_invisible_and_swept(store):
    with store.writing():
        b = _produce(store)
        _write_part(b, 0, [{"x": 1, "part": 0}])
    # a run killed between rename and catalog commit leaves a file the catalog does not know
    orphan = b.path / "things" / "000001.parquet"
    pq.write_table(pa.table({"x": [99], "part": [1]}), orphan)
    # committed but unfinished: readers see nothing of this version yet
    assert "things" not in Session(store).tables()
    with store.writing():
        resumed = _produce(store)
        assert resumed.is_committed(0) and not resumed.is_committed(1)
        resumed.finish({"rows": 1})
    assert not orphan.exists()
    assert query(store, "SELECT sum(x) s FROM things").to_pylist() == [{"s": 1}]


def _hold_lock(root, ready, release):
    s = Store(root)
    with s.writing():
        ready.set()
        release.wait(10)


def test_writer_lock_names_holder_and_wait_queues(tmp_path):
    root = tmp_path / "store"
    Store(root)
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(root, ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(StoreLockedError) as err:
            with Store(root).writing():
                pass
        assert f"pid {holder.pid}" in str(err.value) and "--wait" in str(err.value)
        # readers are not blocked by the writer
        assert query(Store(root), "SELECT count(*) n FROM artifacts").to_pylist() == [{"n": 0}]
        # --wait queues behind the holder until it lets go
        started = time.monotonic()
        threading.Timer(0.5, release.set).start()
        with Store(root).writing(wait=True, timeout=30):
            assert time.monotonic() - started >= 0.4
    finally:
        release.set()
        holder.join(10)


def test_a_forked_child_does_not_keep_the_writer_lock(tmp_path):
    """Helpers forked by a writer (caption parsing) must not hold the store after it lets go, or
    after it is killed: the child closes its inherited copy of the lock."""
    root = tmp_path / "store"
    store = Store(root)
    ctx = multiprocessing.get_context("fork")
    running, release = ctx.Event(), ctx.Event()
    with store.writing():
        child = ctx.Process(target=_signal_and_wait, args=(running, release), daemon=True)
        child.start()
        assert running.wait(10)   # past the fork hooks
    try:
        assert child.is_alive()
        with store.writing():   # without the child's close this raises StoreLockedError
            pass
    finally:
        release.set()
        child.join(10)


def _signal_and_wait(running, release):
    running.set()
    release.wait(20)


@pytest.mark.parametrize("sql", [
    "CREATE TABLE t AS SELECT 1",
    "INSERT INTO artifacts SELECT * FROM artifacts",
    "DROP VIEW artifacts",
    "COPY (SELECT 1) TO '/tmp/clipstore_copy_test.csv'",
    "ATTACH '/tmp/other.duckdb' AS other",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET threads = 1",
    "PRAGMA threads = 1",
    "SELECT 1; DROP VIEW artifacts",
])
def test_sql_refuses_anything_but_reading(store, sql):
    with pytest.raises(ReadOnlyError) as err:
        query(store, sql)
    assert "read-only" in str(err.value)


def test_sql_bound_parameters_and_formats(store, tmp_path):
    _build(store, {"k": 1}, rows=[{"x": 1, "part": 0}, {"x": 2, "part": 0}, {"x": 3, "part": 0}])
    t = query(store, "SELECT x FROM things WHERE x >= ? ORDER BY x", [2])
    assert t.column("x").to_pylist() == [2, 3]
    assert render(t, "csv").splitlines() == ['"x"', "2", "3"]
    assert json.loads(render(t, "json")) == [{"x": 2}, {"x": 3}]
    assert "(2 rows)" in render(t, "table")
    out = tmp_path / "r.parquet"
    render(t, "parquet", out)
    assert pq.read_table(out).column("x").to_pylist() == [2, 3]
    with pytest.raises(ClipstoreError):
        render(t, "parquet")
    with pytest.raises(ClipstoreError) as err:
        query(store, "SELECT * FROM no_such_table")
    assert "SHOW TABLES" in str(err.value)
