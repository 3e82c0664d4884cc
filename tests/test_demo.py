"""`clipstore demo` on small data: its steps, its re-run (every artifact "up to date"), and a
closing hint that runs as printed."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import pytest

from clipstore import demo
from clipstore.project import load
from clipstore.warehouse.store import Store
from conftest import run_main, write_karpathy
from fixtures import write_image, write_tiny_project

PROJECT = """
[data]
root = "raw"

[[corpus]]
name = "tiny"
format = "karpathy"
path = "tiny"

[[corpus]]
name = "tiny_cls"
format = "imagefolder"
path = "cls"

[[split]]
name = "rs_all"
corpora = ["tiny"]
labeled_ratio = 0.5
seed = 0

[[mine.keywords]]
corpora = ["tiny"]
top = 5

[[mine.concepts]]
corpora = ["tiny"]
min_images = 1

[[embed]]
model = "tiny-vit"
corpus = "tiny"
modality = ["image"]
workers = 1
"""


@pytest.fixture
def project_dir(tmp_path):
    return write_tiny_project(tmp_path, PROJECT, 12, lambda i, cls: [f"a {cls} with {i} green trees and a road .",
                                                                    f"the {cls} near a river ."])


@pytest.mark.slow
def test_ingest_step_then_up_to_date_and_the_questions(project_dir, capsys):
    store = Store(project_dir / "store")
    project = load(project_dir / "clipstore.toml")
    arts = demo.ingest_step(store, project, project_dir / "synth", synth_images=30, quiet=True)
    first = capsys.readouterr().out
    assert [a.name for a in arts] == ["tiny", "tiny_cls", "rs_all", "synth", "synth_cls"]
    assert "corpus tiny: built (samples 12" in first and "corpus synth: built (samples 30" in first
    assert "writing the synthetic learnable corpus" in first

    demo.ingest_step(store, project, project_dir / "synth", synth_images=30, quiet=True)
    again = capsys.readouterr().out
    assert "writing the synthetic" not in again  # written once per seed and size
    assert again.count(": up to date (") == 5 and ": built (" not in again

    demo.ask(store)
    answers = capsys.readouterr().out
    for title, _ in demo.QUESTIONS:
        assert f"-- {title}" in answers
    assert "synth_cls" in answers and "tiny" in answers


def test_the_hint_names_a_command_this_shell_can_run(monkeypatch, tmp_path):
    script = Path(sys.executable).parent / "clipstore"
    assert script.exists(), "the clipstore script is not installed beside this python"
    monkeypatch.setenv("PATH", "/usr/bin:/bin")                      # a shell without the venv activated
    monkeypatch.chdir(tmp_path)
    assert demo.cli_command() == str(script)
    hint = demo.closing_hint(Path("store"))
    assert f"{script} --store store sql " in hint and f"source {script.parent}/activate" in hint
    monkeypatch.setenv("PATH", f"{script.parent}:/usr/bin:/bin")     # activated: plain `clipstore` works
    assert demo.cli_command() == "clipstore" and "activate" not in demo.closing_hint(Path("store"))


@pytest.mark.slow
def test_the_printed_hint_runs(tmp_path):
    import subprocess  # here, not at the top: conftest marks whole modules that import it slow
    write_image(tmp_path / "c" / "images" / "0.png", seed=0)
    write_karpathy(tmp_path / "c", [{"filename": "0.png", "captions": ["a beach ."]}])
    run_main("--store", tmp_path / "store", "-q", "ingest", "karpathy", tmp_path / "c", "--name", "one")
    line = demo.closing_hint(tmp_path / "store").splitlines()[0]
    command = line.split("explore with: ", 1)[1]
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(shlex.split(command), capture_output=True, text=True, env=env, cwd=os.getcwd())
    assert proc.returncode == 0, proc.stderr
    assert "one" in proc.stdout and "(1 rows)" in proc.stdout


@pytest.mark.slow
def test_the_whole_demo_on_small_data_and_its_rerun(project_dir):
    args = ("--store", project_dir / "store", "-q", "demo", "--config", project_dir / "clipstore.toml",
            "--synth-dir", project_dir / "synth", "--synth-images", "30")
    out = run_main(*args).stdout
    assert "vocab keywords.tiny: built" in out and "embeddings tiny.image.tiny-vit: built (vectors 12" in out
    assert "knn tiny.image.tiny-vit.knn10: built (nodes 12" in out and "near-duplicate pairs" in out
    for producer in ("nn", "soft_nn", "ot"):
        assert f"pseudolabels synth_10.{producer}.tiny-vit: built (pseudo_captions 22" in out
        assert f"audit {producer}: match class acc " in out
    assert "audit keywords: keyword precision " in out and "-- Pseudo-labels per producer" in out
    assert "== done in" in out
    assert "explore with: " in out
    again = run_main(*args).stdout
    assert ": built (" not in again and again.count(": up to date (") >= 10
