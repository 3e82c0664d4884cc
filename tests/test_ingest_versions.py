"""No silent shrinking: a new version that loses most of the corpus is refused unless --replace;
nonsense options are input errors; generic formats name the corpus after its folder; the
progress bar knows its total."""

import json
import shutil

import pytest

from clipstore.cli import main
from clipstore.ingest.pipeline import ingest
from clipstore.warehouse.errors import InputError
from clipstore.warehouse.sql import Session, query
from clipstore.warehouse.store import Store
from conftest import karpathy_from_real_images


@pytest.fixture
def corpus(tmp_path, shared_data):
    """10 entries, 10 real images."""
    root = tmp_path / "ucm_small"
    karpathy_from_real_images(shared_data, root, 10)
    return root


def last_run(store):
    with store.connect() as con:
        status, summary, error = con.execute(
            "SELECT status, summary, error FROM runs ORDER BY started_at DESC LIMIT 1").fetchone()
    return status, json.loads(summary) if summary else None, error


def test_typo_in_images_is_refused_and_publishes_nothing(store, corpus, tmp_path, capsys):
    code = main(["--store", str(store.root), "-q", "ingest", "karpathy", str(corpus), "--name", "ucm",
                 "--images", str(tmp_path / "imgaes"), "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "no image was found: all 10 entries were rejected (10 image file missing)" in err
    assert "--replace" in err and "--images" in err
    assert store.current("corpus", "ucm") is None
    with Session(store) as session:
        assert "samples" not in session.tables()              # no corpus version is in view
    assert last_run(store)[0] == "failed"


def test_losing_most_samples_is_refused_then_replace_finishes_without_redoing_work(store, corpus):
    kept = ingest(store, "karpathy", corpus, name="ucm", keep_missing=True, workers=1, progress=False)
    for name in [f"{i}.tif" for i in range(3, 11)]:
        (corpus / "images" / name).unlink()
    with pytest.raises(InputError) as err:     # a new recipe (no --keep-missing): 2 of 10 samples left
        ingest(store, "karpathy", corpus, name="ucm", workers=1, progress=False)
    msg = str(err.value)
    assert f"lose 8 of 10 samples and 8 of 10 images of the current version {kept.artifact_id}" in msg
    assert "--replace" in msg and "8 image file missing" in msg
    assert store.current("corpus", "ucm").artifact_id == kept.artifact_id     # still current ...
    assert query(store, "SELECT count(*) n FROM samples").to_pylist() == [{"n": 10}]   # ... and in view
    refused = [v for v in store.history("ucm") if not v.current][0]
    assert refused.state == "incomplete" and refused.pending_parts > 0

    smaller = ingest(store, "karpathy", corpus, name="ucm", workers=1, progress=False, replace=True)
    assert smaller.artifact_id == refused.artifact.artifact_id and smaller.counts["samples"] == 2
    status, summary, _ = last_run(store)
    assert status == "done" and summary["processed"] == 0     # the refused run's parts were reused
    assert store.current("corpus", "ucm").artifact_id == smaller.artifact_id
    assert query(store, "SELECT count(*) n FROM samples").to_pylist() == [{"n": 2}]


def test_the_same_artifact_shrinking_is_refused_too(store, corpus):
    first = ingest(store, "karpathy", corpus, name="ucm", workers=1, progress=False)
    (corpus / "images" / "1.tif").unlink()      # 1 of 10: within the 10% allowance
    assert ingest(store, "karpathy", corpus, name="ucm", workers=1, progress=False).counts["samples"] == 9
    for i in (2, 3, 4):
        (corpus / "images" / f"{i}.tif").unlink()
    with pytest.raises(InputError, match="lose 3 of 9 samples"):
        ingest(store, "karpathy", corpus, name="ucm", workers=1, progress=False)
    assert query(store, "SELECT count(*) n FROM samples").to_pylist() == [{"n": 9}]
    assert ingest(store, "karpathy", corpus, name="ucm", workers=1, progress=False,
                  replace=True).artifact_id == first.artifact_id
    assert query(store, "SELECT count(*) n FROM samples").to_pylist() == [{"n": 6}]


def test_growing_or_a_small_loss_needs_no_flag(store, corpus):
    ingest(store, "karpathy", corpus, name="ucm", workers=1, progress=False)
    (corpus / "images" / "1.tif").unlink()
    assert ingest(store, "karpathy", corpus, name="ucm", keep_missing=True, workers=1,
                  progress=False).counts["samples"] == 10


@pytest.mark.parametrize("argv, flag", [(["--shard-size", "0"], "--shard-size 0"),
                                        (["--workers", "-1"], "--workers -1"),
                                        (["--max-pixels", "0"], "--max-pixels 0")])
def test_nonsense_option_values_are_input_errors(store, corpus, capsys, argv, flag):
    code = main(["--store", str(store.root), "-q", "ingest", "karpathy", str(corpus), *argv])
    err = capsys.readouterr().err
    assert code == 2 and f"{flag} is not a valid value" in err and "Traceback" not in err
    assert not list(store.root.glob("artifacts/*"))


def test_generic_formats_name_the_corpus_after_the_folder(store, corpus, tmp_path, capsys):
    assert main(["--store", str(store.root), "-q", "ingest", "karpathy", str(corpus / "dataset.json"),
                 "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "corpus name 'ucm_small' derived from the folder 'ucm_small'" in out
    assert store.current("corpus", "ucm_small") is not None and store.current("corpus", "karpathy") is None

    other = tmp_path / "Second Set"
    shutil.copytree(corpus, other)
    art = ingest(store, "karpathy", other, workers=1, progress=False)
    assert art.name == "second_set"                       # two generic corpora no longer collide
    assert ingest(store, "karpathy", other, name="mine", workers=1, progress=False).name == "mine"
    with Store(store.root).connect() as con:
        names = sorted(r[0] for r in con.execute("SELECT name FROM current_versions").fetchall())
    assert names == ["mine", "second_set", "ucm_small"]


def test_imagefolder_takes_its_name_from_the_preset_or_a_preset_named_folder(store, tmp_path):
    from fixtures import write_preset_folders
    root = tmp_path / "RSSCN7"
    n = write_preset_folders(root, "rsscn7")
    art = ingest(store, "imagefolder", root, workers=1, progress=False)
    assert art.name == "rsscn7" and art.counts["samples"] == n
    assert art.params["preset"] == "rsscn7"                # the folder's name chose the preset
    assert ingest(store, "imagefolder", root, preset="rsscn7", workers=1, progress=False).name == "rsscn7"


def test_progress_bar_shows_the_pending_total(store, corpus, capsys):
    ingest(store, "karpathy", corpus, name="ucm", workers=1, progress=True)
    assert "0/10 [" in capsys.readouterr().err                 # a total, so a percentage and an ETA
    (corpus / "images" / "3.tif").write_bytes((corpus / "images" / "4.tif").read_bytes())
    ingest(store, "karpathy", corpus, name="ucm", workers=1, progress=True)
    assert "0/1 [" in capsys.readouterr().err                  # only the changed entry is pending
