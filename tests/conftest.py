"""Shared fixtures: the real data beside the checkout, fresh stores, and CLI runners.

Test tiers: a test that reads the real data (the `shared_data` fixture, directly or through another
fixture) or lives in a module that starts processes (imports `subprocess`) is marked `slow` here,
centrally; `make test-fast` runs the rest (`pytest -m "not slow"`)."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CLIPSTORE_SHARED_DATA", REPO.parent / "shared" / "data")).resolve()

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")   # tests run on the CPU, as CI does
os.environ.setdefault("HF_HUB_OFFLINE", "1")        # and never touch the network


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"the real data folder is missing: {SHARED_DATA} (set CLIPSTORE_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture
def store(tmp_path):
    from clipstore.warehouse.store import Store
    return Store(tmp_path / "store")


def run_cli(*args: str, check: bool = True, env: dict | None = None, cwd: Path | None = None):
    """Run `python -m clipstore ...` in a subprocess; returns CompletedProcess with text output."""
    proc = subprocess.run([sys.executable, "-m", "clipstore", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"clipstore {' '.join(map(str, args))} failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


@dataclass
class CliResult:
    """What a command printed and returned, shaped like subprocess.CompletedProcess."""
    args: list[str]
    returncode: int
    stdout: str
    stderr: str


def run_main(*args, check: bool = True, env: dict | None = None, cwd: Path | None = None) -> CliResult:
    """Run `clipstore.cli.main(argv)` in this process, capturing stdout and stderr (argparse's
    exits, `--help` included, become return codes as in a subprocess)."""
    from clipstore.cli import main
    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    try:
        os.environ.update(env or {})
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    result = CliResult(argv, code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"clipstore {' '.join(argv)} failed ({code}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture
def cli():
    """The command line, in process: cli("--store", root, "ls").stdout."""
    return run_main


def pytest_collection_modifyitems(config, items):
    slow = pytest.mark.slow
    for item in items:
        module = getattr(item, "module", None)
        if "shared_data" in getattr(item, "fixturenames", ()) or getattr(module, "subprocess", None) is subprocess:
            item.add_marker(slow)


def write_karpathy(root: Path, entries: list[dict], name: str = "dataset.json") -> Path:
    """Write a Karpathy caption file: entries are {filename, split, captions}."""
    import json
    images, sentid = [], 0
    for i, e in enumerate(entries):
        sentences = []
        for raw in e.get("captions", ["a caption ."]):
            sentences.append({"raw": raw, "tokens": raw.replace(".", "").split(), "imgid": i, "sentid": sentid})
            sentid += 1
        images.append({"filename": e["filename"], "imgid": i, "split": e.get("split", "train"),
                       "sentids": [s["sentid"] for s in sentences], "sentences": sentences})
    root.mkdir(parents=True, exist_ok=True)
    path = root / name
    path.write_text(json.dumps({"images": images, "dataset": "test"}))
    return path


def real_ucm_tiffs(shared: Path, n: int) -> list[Path]:
    """The first n real UC Merced TIFFs, in a stable order."""
    files = sorted((shared / "ucmerced_landuse" / "Images").glob("*/*.tif"))
    assert len(files) >= n
    return files[:n]


def karpathy_from_real_images(shared: Path, root: Path, n: int, splits=("train",)) -> list[str]:
    """A Karpathy corpus of n real UC Merced TIFFs copied to root/images; returns the filenames."""
    import shutil
    (root / "images").mkdir(parents=True, exist_ok=True)
    entries = []
    for i, src in enumerate(real_ucm_tiffs(shared, n)):
        name = f"{i + 1}.tif"
        shutil.copyfile(src, root / "images" / name)
        cls = src.parent.name
        entries.append({"filename": name, "split": splits[i % len(splits)],
                        "captions": [f"an aerial image of {cls} number {i} .", f"{cls} seen from above ."]})
    write_karpathy(root, entries)
    return [e["filename"] for e in entries]


# ---- a local Ray cluster for the tests of the Ray backend (--ray) --------------------------------
@dataclass
class RayCluster:
    """A 2-CPU Ray cluster on 127.0.0.1 that this test process started (and so drives)."""
    address: str          # the GCS address, for a second driver (a subprocess) to connect to
    root: Path            # Ray's temp dir and auth token live here, inside the test's tmp folder
    env: dict             # what a subprocess driver needs in its environment to join


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """One cluster for every Ray test of the session (start-up costs seconds): every process
    bound to 127.0.0.1, usage statistics off, token auth on with the token in the test's tmp
    folder (not ~/.ray), stopped at the end however the tests went."""
    import logging
    import secrets
    root = tmp_path_factory.mktemp("ray")
    token = root / "auth_token"
    token.write_text(secrets.token_hex(16))
    env = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",   # Ray's loopback switch
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        import ray
        from ray._private import ray_constants
        mp.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)   # read at import: in case ray was imported before
        if ray.is_initialized():
            ray.shutdown()
        try:
            ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(root / "tmp"),
                     logging_level=logging.WARNING, log_to_driver=False)
            from clipstore.warehouse.raydata import warm_up
            warm_up()   # Ray Data's own actors start on first use: once, here
            yield RayCluster(ray.get_runtime_context().gcs_address, root, env)
        finally:
            ray.shutdown()
