"""The writer lock: only its holder writes `writer.lock`, so every refused writer names the holder;
`check_writable` refuses at once, before a stage's expensive set-up."""

from __future__ import annotations

import json
import multiprocessing
import time

import pytest

from clipstore.warehouse import StoreLockedError
from clipstore.warehouse.lock import check_writable, writer_lock
from clipstore.warehouse.store import Store


def _hold(root, ready, release):
    with Store(root).writing():
        ready.set()
        release.wait(30)


@pytest.fixture
def held(tmp_path):
    """A store whose writer lock another process holds; yields (root, holder pid)."""
    root = tmp_path / "store"
    Store(root)
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(root, ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        yield root, holder.pid
    finally:
        release.set()
        holder.join(10)


def test_every_refused_writer_names_the_holder(held):
    root, pid = held
    before = (root / "writer.lock").read_text()
    assert json.loads(before)["pid"] == pid
    for _ in range(3):   # the second refusal used to say "another process": the first emptied the file
        with pytest.raises(StoreLockedError) as err:
            with writer_lock(root):
                pass
        assert f"pid {pid}" in str(err.value)
    assert (root / "writer.lock").read_text() == before


def test_check_writable_refuses_at_once_and_leaves_the_lock_file_alone(held):
    root, pid = held
    before = (root / "writer.lock").read_text()
    started = time.monotonic()
    with pytest.raises(StoreLockedError) as err:
        check_writable(root)
    assert time.monotonic() - started < 1
    assert f"pid {pid}" in str(err.value) and "--wait" in str(err.value)
    check_writable(root, wait=True)   # a writer that queues is not refused
    assert (root / "writer.lock").read_text() == before


def test_check_writable_passes_on_a_free_store_and_inside_our_own_lock(tmp_path):
    store = Store(tmp_path / "store")
    check_writable(store.root)
    with store.writing():
        check_writable(store.root)   # this process is the holder
        holder = json.loads((store.root / "writer.lock").read_text())
    with store.writing():             # the probe released what it took
        pass
    assert holder["pid"] > 0
    check_writable(tmp_path / "not-yet")   # a store that does not exist yet: its writer creates it


def test_embed_is_refused_before_it_loads_a_model(held, tmp_path):
    """The checkpoint does not exist, so a model load would fail with a different error: the
    lock error proves the probe ran first."""
    from clipstore.features.embed import embed
    from clipstore.features.models import ModelSpec
    root, pid = held
    started = time.monotonic()
    with pytest.raises(StoreLockedError) as err:
        embed(root, model=ModelSpec(model="tiny-vit", checkpoint=tmp_path / "missing.safetensors"),
              corpus="anything", progress=False)
    assert f"pid {pid}" in str(err.value)
    assert time.monotonic() - started < 2


def test_cli_embed_is_refused_before_torch_is_imported(held):
    """`clipstore embed` spent 7-15 s importing torch and loading the model before the lock refused it."""
    from conftest import run_cli
    root, pid = held
    started = time.monotonic()
    proc = run_cli("--store", root, "embed", "--model", "tiny-vit", "--corpus", "anything", check=False)
    elapsed = time.monotonic() - started
    assert proc.returncode == StoreLockedError.exit_code and f"pid {pid}" in proc.stderr
    assert elapsed < 5, f"refused after {elapsed:.1f}s"
