"""The Python API in a plain script, without an `if __name__ == "__main__":` guard: run as a file
(`python api.py`) and read from stdin (`python - < api.py`), with multi-worker ingest and embed.
Before, every worker re-ran the script: StoreLockedError in the worker, BrokenProcessPool here."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import write_karpathy
from fixtures import write_image

SCRIPT = '''\
from clipstore.features.embed import embed
from clipstore.features.models import ModelSpec
from clipstore.ingest.pipeline import ingest
from clipstore.warehouse import Store
from clipstore.warehouse.sql import query

store = Store({store!r})
corpus = ingest(store, "karpathy", {corpus!r}, name="gen", workers=2, shard_size=10, progress=False)
[images] = embed(store, model=ModelSpec("tiny-vit"), corpus="gen", workers=2, progress=False)
n = query(store, "SELECT count(*) AS n FROM samples").to_pylist()[0]["n"]
print("RESULT", corpus.counts["images"], n, images.counts["vectors"])
'''


@pytest.fixture
def script(tmp_path):
    root = tmp_path / "corpus"
    for i in range(40):
        write_image(root / "images" / f"{i}.jpg", seed=i, size=32)
    write_karpathy(root, [{"filename": f"{i}.jpg", "captions": [f"picture number {i} ."]} for i in range(40)])
    text = SCRIPT.format(store=str(tmp_path / "store"), corpus=str(root))
    path = tmp_path / "api.py"
    path.write_text(text)
    return path


def check(proc):
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    [line] = [out for out in proc.stdout.splitlines() if out.startswith("RESULT")]   # the script ran once
    assert line == "RESULT 40 40 40"   # images ingested, samples in the store, image vectors


@pytest.mark.slow
def test_api_script_run_as_a_file(script):
    check(subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=script.parent,
                         timeout=300))


@pytest.mark.slow
def test_api_script_read_from_stdin(script):
    with open(script) as f:
        check(subprocess.run([sys.executable, "-"], stdin=f, capture_output=True, text=True, cwd=script.parent,
                             timeout=300))
