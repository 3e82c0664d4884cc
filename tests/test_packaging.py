"""The wheel holds every stage: built from a copy of the checkout (no network, no build isolation),
installed into a clean venv, and each stage imported from it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from conftest import REPO

NOT_STAGES = {"clipstore", "tests", "bench", "build", "docs"}
SKIP = shutil.ignore_patterns(".git", ".venv", "store", "out", "build", "*.egg-info", "__pycache__",
                              ".pytest_cache", ".ruff_cache")


def stage_folders() -> list[str]:
    return sorted(p.name for p in REPO.iterdir() if (p / "__init__.py").is_file() and p.name not in NOT_STAGES)


def run(*cmd, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    import setuptools
    major = int(setuptools.__version__.split(".")[0])
    assert major >= 68, f"setuptools {setuptools.__version__} cannot build this project: pip install -e '.[dev]'"
    root = tmp_path_factory.mktemp("packaging")
    src = root / "src"
    shutil.copytree(REPO, src, ignore=SKIP)
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
        "-w", root / "dist", src)
    (found,) = (root / "dist").glob("clipstore-*.whl")
    return found


@pytest.mark.slow
def test_the_wheel_holds_every_stage_and_the_model_configs(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert stage_folders(), "no stage folders found beside clipstore/"
    for stage in stage_folders():
        assert f"clipstore/{stage}/__init__.py" in names, f"stage {stage}/ is missing from the wheel"
        for sub in (REPO / stage).rglob("__init__.py"):
            rel = sub.relative_to(REPO).as_posix()
            assert f"clipstore/{rel}" in names, f"subpackage {rel} is missing from the wheel"
    configs = sorted(p.name for p in (REPO / "features" / "model_configs").glob("*.json"))
    assert configs and all(f"clipstore/features/model_configs/{c}" in names for c in configs)


@pytest.mark.slow
def test_every_stage_imports_from_the_wheel_in_a_clean_venv(wheel, tmp_path):
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel)
    # dependencies come from this environment, appended after the venv's own site-packages (a .pth
    # line adds a path only: this environment's editable clipstore finder is not installed)
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    deps = [p for p in sys.path if p.endswith("site-packages")] or [sysconfig.get_paths()["purelib"]]
    (site / "_deps.pth").write_text("".join(f"{p}\n" for p in deps))
    stages = ", ".join(f"clipstore.{s}" for s in stage_folders())
    script = ("import importlib, json, clipstore\n"
              f"mods = [importlib.import_module(m) for m in {[f'clipstore.{s}' for s in stage_folders()]!r}]\n"
              "from clipstore.features.models import ModelSpec, load_model\n"
              "files = [m.__file__ for m in [clipstore, *mods]]\n"
              "print(json.dumps({'files': files, 'version': clipstore.__version__}))\n")
    out = run(python, "-c", script, cwd=tmp_path).stdout
    import json
    info = json.loads(out.strip().splitlines()[-1])
    assert all(f.startswith(str(site)) for f in info["files"]), f"{stages} not all imported from the wheel: {info}"
    assert info["version"] == wheel.name.split("-")[1]
    shown = run(venv / "bin" / "clipstore", "--version", cwd=tmp_path).stdout
    assert shown.strip() == f"clipstore {info['version']}"
