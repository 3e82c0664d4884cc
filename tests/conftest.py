"""Shared fixtures: the real data beside the checkout, fresh stores, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
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


@pytest.fixture
def cli():
    return run_cli
