"""Processes: a killed run leaves no helper behind, Ctrl-C stops a multi-worker ingest with one
line, and a closed stdout (`clipstore ... | head -1`) ends quietly with every file written.

Each test runs the real CLI in a subprocess on real images (UC Merced, 2,100 JPEGs)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from conftest import write_karpathy

UCM_FULL = "ucmerced_landuse_full"   # 2,100 images: an ingest that lasts long enough to interrupt


def clipstore(*args) -> list[str]:
    return [sys.executable, "-m", "clipstore", *map(str, args)]


def start_ingest(store, shared_data, **popen) -> subprocess.Popen:
    """A multi-worker ingest, returned once its worker processes run (fork server, resource
    tracker and both decode workers: at least 4 descendants)."""
    cmd = clipstore("--store", store, "-q", "ingest", "imagefolder", shared_data / UCM_FULL / "Images",
                    "--name", "ucm_full", "--workers", "2", "--shard-size", "50")
    proc = subprocess.Popen(cmd, text=True, **popen)
    main = psutil.Process(proc.pid)
    deadline = time.monotonic() + 60
    while len(main.children(recursive=True)) < 4:
        assert proc.poll() is None, "the ingest ended before its workers ran"
        assert time.monotonic() < deadline, "the ingest's workers did not start"
        time.sleep(0.05)
    time.sleep(0.5)   # into the work: parts are being built
    assert proc.poll() is None, "the ingest ended before it could be interrupted"
    return proc


def survivors(processes: list[psutil.Process], within: float) -> list[psutil.Process]:
    """The processes still alive (zombies count as gone) after waiting up to `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        alive = [p for p in processes if _alive(p)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def describe(processes) -> list[str]:
    out = []
    for p in processes:
        try:
            out.append(f"{p.pid}: {' '.join(p.cmdline())[:100]}")
        except psutil.Error:
            out.append(str(p.pid))
    return out


@pytest.mark.slow
def test_sigkill_of_the_main_process_leaves_no_helper_alive(tmp_path, shared_data):
    # no pipes: helpers that outlived the run would hold them open, and reading them would hang
    proc = start_ingest(tmp_path / "store", shared_data, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    helpers = psutil.Process(proc.pid).children(recursive=True)
    names = " ".join(" ".join(p.cmdline()) for p in helpers)
    assert "forkserver" in names and "resource_tracker" in names
    proc.kill()
    proc.wait()
    left = survivors(helpers, within=5.0)
    for p in left:   # do not leave them to the next test either
        p.kill()
    assert not left, f"helpers outlived the killed ingest: {describe(left)}"


@pytest.mark.slow
def test_ctrl_c_stops_a_multi_worker_ingest_with_one_line(tmp_path, shared_data, cli):
    store = tmp_path / "store"
    # a new session: SIGINT goes to the whole process group, as a terminal's Ctrl-C does
    err_file = tmp_path / "stderr.txt"
    with open(err_file, "w") as err:
        proc = start_ingest(store, shared_data, start_new_session=True, stdout=subprocess.DEVNULL, stderr=err)
        helpers = psutil.Process(proc.pid).children(recursive=True)
        # Ctrl-C while the workers wait for work (as they do whenever the parent writes a part):
        # the parent is paused until they have drained what was queued, then the group is sent
        # SIGINT and the parent resumes
        os.kill(proc.pid, signal.SIGSTOP)
        time.sleep(2.0)
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.5)
        os.kill(proc.pid, signal.SIGCONT)
        try:
            returncode = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            returncode = None
    left = survivors(helpers, within=5.0)
    for p in left:
        p.kill()
    assert returncode is not None, "the interrupted ingest did not stop within 60 s"
    assert err_file.read_text() == "clipstore: interrupted\n"   # no worker's traceback before it
    assert returncode == 130
    assert not left, f"helpers outlived the interrupted ingest: {describe(left)}"
    # what was committed stays; the re-run completes the corpus
    again = cli("--store", store, "-q", "ingest", "imagefolder", shared_data / UCM_FULL / "Images",
                "--name", "ucm_full", "--workers", "2", "--shard-size", "50")
    assert "2100 samples (2100 with image" in again.stdout and "0 rejects" in again.stdout


# ---- a closed stdout --------------------------------------------------------------------------
def closed_pipe() -> int:
    """The write end of a pipe whose reader has gone: every write to it fails with EPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    return write_end


@pytest.fixture
def small_store(tmp_path, cli):
    """A store with one corpus of 40 generated JPEGs."""
    from fixtures import write_image
    root = tmp_path / "corpus"
    for i in range(40):
        write_image(root / "images" / f"{i}.jpg", seed=i)
    write_karpathy(root, [{"filename": f"{i}.jpg"} for i in range(40)])
    store = tmp_path / "store"
    cli("--store", store, "-q", "ingest", "karpathy", root, "--name", "small", "--workers", "1")
    return store


def test_sql_into_head_ends_quietly(small_store):
    """`clipstore sql ... | head -1`: the reader leaves after one line of a 6 MB answer."""
    sql = "SELECT a.sample_id, b.sample_id AS b, c.sample_id AS c FROM samples a, samples b, samples c"  # 64,000 rows
    proc = subprocess.Popen(clipstore("--store", small_store, "sql", sql, "--format", "csv"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()   # as head does after its line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0
    assert first.replace(b'"', b"").startswith(b"sample_id,b,c")
    assert err == "", err


@pytest.mark.parametrize("command", [("ls",), ("sql", "SELECT * FROM samples")])
def test_any_command_into_a_closed_pipe_ends_quietly(small_store, command):
    w = closed_pipe()
    proc = subprocess.run(clipstore("--store", small_store, *command), stdout=w, stderr=subprocess.PIPE, text=True)
    os.close(w)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_export_files_are_all_written_when_stdout_is_closed(tmp_path, cli):
    """The keyword files of `mine keywords --export-sclip` do not depend on anyone reading stdout."""
    words = ["river", "forest", "bridge", "harbor", "runway", "beach", "meadow", "church", "stadium", "desert"]
    entries = [{"filename": f"{i}.jpg", "captions": [f"a {words[i % 10]} near a {words[(i * 3 + 1) % 10]} .",
                                                    f"the {words[(i + 4) % 10]} beside green {words[i % 10]} ."]}
               for i in range(40)]
    write_karpathy(tmp_path / "corpus", entries)
    store = tmp_path / "store"
    cli("--store", store, "-q", "ingest", "karpathy", tmp_path / "corpus", "--name", "words", "--keep-missing",
        "--workers", "1")
    mine = ("--store", store, "-q", "mine", "keywords", "--corpus", "words", "--top", "12", "--name", "kw",
            "--sizes", "4", "8", "12")
    w = closed_pipe()
    proc = subprocess.run(clipstore(*mine, "--export-sclip", tmp_path / "closed"), stdout=w,
                          stderr=subprocess.PIPE, text=True)
    os.close(w)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    reference = cli(*mine, "--export-sclip", tmp_path / "open")
    assert "wrote" in reference.stdout
    written = sorted(p.name for p in (tmp_path / "open").iterdir())
    assert written == ["yake-12.txt", "yake-4.txt", "yake-8.txt"]
    for name in written:
        assert (tmp_path / "closed" / name).read_bytes() == (tmp_path / "open" / name).read_bytes()
