"""Storage faults are errors, not tracebacks: a full disk (ENOSPC from the shard writer, the Parquet
writer or the lock file) and a read-only store (EROFS, EACCES) print what failed, where and how to
fix it; the catalog stays consistent (the run is recorded failed, every part row has its file with
the recorded sha256, nothing half-written is visible), and a re-run after the fix completes.

The full disk is a real tmpfs and the read-only store a real read-only bind mount where the test
may mount (root); the Parquet writer's ENOSPC, and EACCES (root is never refused), are simulated
at the lowest write the code makes."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from clipstore.warehouse.faults import StorageError, storage_error
from clipstore.warehouse.lock import check_writable, writer_lock
from clipstore.warehouse.store import Store
from conftest import karpathy_from_real_images, run_cli


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size) -> a fresh tmpfs of that size (unmounted afterwards); skips where we may not mount."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        point = tmp_path / f"fs{len(mounted)}"
        point.mkdir()
        if os.geteuid() != 0 or not _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)):
            pytest.skip("cannot mount a tmpfs here (needs root)")
        mounted.append(point)
        return point

    yield mount
    for point in reversed(mounted):
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def consistent(root: Path) -> dict:
    """The catalog's view of the store, checked: every part row's file exists and matches its sha256."""
    store = Store(root, create=False)
    with store.connect() as con:
        parts = con.execute("SELECT path, sha256 FROM parts").fetchall()
        runs = con.execute("SELECT status, error FROM runs ORDER BY started_at").fetchall()
    for path, digest in parts:
        assert hashlib.sha256((root / path).read_bytes()).hexdigest() == digest, path
    tmp = root / "tmp"
    assert not tmp.exists() or not any(tmp.rglob("*.*")), "work in progress left behind"
    return {"parts": len(parts), "runs": runs}


def ingest_cli(root: Path, corpus: Path, *extra: str):
    return run_cli("-q", "--store", root, "ingest", "karpathy", corpus, "--name", "c", "--shard-size", "4",
                   "--workers", "1", *extra, check=False)


def assert_storage_message(proc, *words: str):
    assert proc.returncode == StorageError.exit_code, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    for w in ("where:", "fix:", *words):
        assert w in proc.stderr, proc.stderr


@pytest.fixture
def corpus(tmp_path, shared_data):
    root = tmp_path / "corpus"
    karpathy_from_real_images(shared_data, root, 16)   # about 3 MB once stored as PNG
    return root


@pytest.mark.slow
def test_disk_full_in_the_shard_writer_is_an_error_and_resumes_after_freeing_space(tmpfs, corpus, tmp_path):
    point = tmpfs("2500k")
    root = point / "store"
    proc = ingest_cli(root, corpus)
    assert_storage_message(proc, "the disk is full", "ingest", "free space")
    state = consistent(root)
    assert state["runs"][-1][0] == "failed" and "No space left" in state["runs"][-1][1]
    assert 0 < state["parts"] < 4 * 5   # some parts committed, not all
    # nothing of the unfinished version is visible: no current corpus, no samples table
    assert Store(root, create=False).current("corpus", "c") is None
    visible = run_cli("--store", root, "sql", "SELECT count(*) AS n FROM samples", check=False)
    assert visible.returncode != 0 and "samples does not exist" in visible.stderr
    # free space, run again: it completes, and ends identical to a run that never failed
    assert _mount("-o", "remount,size=64m", str(point))
    assert ingest_cli(root, corpus).returncode == 0
    reference = tmp_path / "reference"
    assert ingest_cli(reference, corpus).returncode == 0
    digests = lambda r: Store(r, create=False).version_digests([Store(r, create=False).get("c").artifact_id])  # noqa: E731
    assert list(digests(root).values()) == list(digests(reference).values())


def test_disk_full_when_writing_the_lock_file(tmpfs, corpus):
    point = tmpfs("2m")
    root = point / "store"
    Store(root)
    (root / "writer.lock").unlink()
    fd = os.open(point / "filler", os.O_WRONLY | os.O_CREAT)   # fill the filesystem to the last block
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    proc = ingest_cli(root, corpus)
    assert_storage_message(proc, "the disk is full", "writer.lock")
    assert consistent(root)["parts"] == 0


def test_disk_full_in_the_parquet_writer_records_the_run_failed(store, corpus, monkeypatch, capsys):
    """Simulated: the second part's Parquet write fails as a full disk makes pyarrow fail."""
    import pyarrow.parquet as pq

    from clipstore import cli
    real_write, calls = pq.write_table, []

    def write_table(table, where, *a, **kw):
        calls.append(where)
        if len(calls) > 5:   # part 0's five tables are written, then the disk is full
            raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")
        return real_write(table, where, *a, **kw)

    monkeypatch.setattr(pq, "write_table", write_table)
    code = cli.main(["-q", "--store", str(store.root), "ingest", "karpathy", str(corpus), "--name", "c",
                     "--shard-size", "4", "--workers", "1"])
    err = capsys.readouterr().err
    assert code == StorageError.exit_code and "the disk is full" in err and str(store.root) in err
    state = consistent(store.root)
    assert state["runs"][-1][0] == "failed"
    assert state["parts"] == 5   # part 0 (shard + four tables), nothing of part 1
    monkeypatch.setattr(pq, "write_table", real_write)
    assert cli.main(["-q", "--store", str(store.root), "ingest", "karpathy", str(corpus), "--name", "c",
                     "--shard-size", "4", "--workers", "1"]) == 0


@pytest.fixture
def read_only_store(tmp_path, corpus):
    """A store with one corpus, seen through a read-only bind mount."""
    src = tmp_path / "src"
    assert ingest_cli(src, corpus).returncode == 0
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0 or not _mount("--bind", str(src), str(ro)):
        pytest.skip("cannot bind-mount here (needs root)")
    try:
        if not _mount("-o", "remount,ro,bind", str(ro)):
            pytest.skip("cannot remount read-only here")
        yield ro
    finally:
        subprocess.run(["umount", "-l", str(ro)], capture_output=True)


def test_a_read_only_store_refuses_writes_with_a_message_and_still_reads(read_only_store, corpus):
    before = consistent(read_only_store)
    proc = ingest_cli(read_only_store, corpus)
    assert_storage_message(proc, "cannot be written", "Read-only file system", "writer.lock", "make it writable")
    with pytest.raises(OSError) as err:
        check_writable(read_only_store)   # what embed calls before loading a model
    assert storage_error(err.value).what.startswith("the store cannot be written")
    out = run_cli("--store", read_only_store, "sql", "SELECT count(*) AS n FROM samples", "--format", "csv")
    assert out.stdout.split()[1] == "16"
    assert consistent(read_only_store) == before


def test_permission_denied_on_the_lock_file_is_a_read_only_error(tmp_path, monkeypatch):
    """Simulated (root is never refused): the lock file's open fails with EACCES."""
    root = tmp_path / "store"
    Store(root)
    real_open = os.open

    def refuse(path, *a, **kw):
        if str(path).endswith("writer.lock"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *a, **kw)

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(PermissionError) as err:
        with writer_lock(root):
            pass
    mapped = storage_error(err.value, root)
    assert mapped is not None and mapped.where == str(root / "writer.lock")
    assert "cannot be written" in mapped.what and "make it writable" in mapped.fix


def test_other_errors_are_not_storage_errors():
    assert storage_error(ValueError("bad value")) is None
    assert storage_error(OSError(errno.ENOENT, "No such file or directory", "x")) is None
    chained = RuntimeError("wrapper")
    chained.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert "the disk is full" in storage_error(chained, "store").what
