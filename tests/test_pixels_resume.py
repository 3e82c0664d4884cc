"""A `clipstore pixels` run SIGKILLed midway keeps the parts it committed, leaves no process behind,
shows nothing of the unfinished version, and the next run completes it to the very parts of an
uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np

from clipstore.features.pixels import cache_pixels
from clipstore.ingest.pipeline import ingest
from clipstore.warehouse.pixels import open_pixel_cache
from clipstore.warehouse.store import Store
from conftest import REPO
from test_features_embed import wait_until_gone
from test_features_pixels import part_digests, run_summaries, write_corpus


def test_sigkill_midway_then_resume_equals_uninterrupted(tmp_path):
    write_corpus(tmp_path / "raw", 12)
    killed, clean = Store(tmp_path / "killed"), Store(tmp_path / "clean")
    for s in (killed, clean):
        ingest(s, "karpathy", tmp_path / "raw", name="gen", shard_size=3, workers=1, progress=False)
    script = tmp_path / "slow_pixels.py"
    script.write_text(textwrap.dedent("""
        import sys, time
        from clipstore.warehouse import pixels
        prepare = pixels.PixelSpec.prepare
        def slow(self, image):          # slow enough to be killed between parts (decoded in this process)
            time.sleep(0.25)
            return prepare(self, image)
        pixels.PixelSpec.prepare = slow
        from clipstore.features.pixels import cache_pixels
        cache_pixels(sys.argv[1], corpus="gen", size=20, workers=0, progress=False)
    """))
    proc = subprocess.Popen([sys.executable, str(script), str(killed.root)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list(killed.root.glob("artifacts/pixels-*/pixels/*.npy"))) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert wait_until_gone(str(tmp_path), timeout=15) == [], "the killed run left processes behind"
    [partial] = killed.list("pixels")
    assert partial.status == "building" and 1 <= len(killed.parts(partial.artifact_id, "pixels", pending=True)) < 4
    assert killed.current("pixels", partial.name) is None    # nothing of the unfinished version is visible

    [resumed] = cache_pixels(killed, corpus="gen", size=20, workers=2, progress=False)
    [reference] = cache_pixels(clean, corpus="gen", size=20, workers=0, progress=False)
    assert resumed.artifact_id == partial.artifact_id == reference.artifact_id and resumed.counts["images"] == 12
    assert run_summaries(killed, "pixels")[-1]["decoded"] < 12      # the committed parts were not decoded again
    assert part_digests(killed) == part_digests(clean)               # byte for byte, part for part
    a, b = open_pixel_cache(killed, resumed), open_pixel_cache(clean, reference)
    assert a.ids == b.ids and np.array_equal(a[list(range(12))], b[list(range(12))])
    leftovers = [p for p in killed.root.glob("artifacts/pixels-*/*/*")
                 if p not in {path for _, _, path in killed.parts(resumed.artifact_id)}]
    assert [p.name for p in leftovers] == ["manifest.json", "stats.json"] or all(
        p.suffix == ".json" for p in leftovers), leftovers
