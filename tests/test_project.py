"""`clipstore project STAGE` over a small project file with generated corpora, and the project
file's checks: unknown keys, missing keys and wrong types are clear errors before anything runs."""

from __future__ import annotations

import dataclasses
import inspect
import json

import pytest

from clipstore import project as proj
from clipstore.warehouse.errors import InputError
from conftest import run_main
from fixtures import write_tiny_project


PROJECT = """
[data]
root = "raw"

[[corpus]]
name = "tiny"
format = "karpathy"
path = "tiny"
shard_size = 8

[[corpus]]
name = "tiny_cls"
format = "imagefolder"
path = "cls"

[[split]]
name = "tiny_split"
corpora = ["tiny"]
labeled_ratio = 0.5
seed = 0

[[mine.keywords]]
corpora = ["tiny"]
top = 5
export_sclip = "out/keywords"
export_sizes = [3, 5]

[[mine.classnames]]
corpora = ["tiny_cls"]
match_corpora = ["tiny"]

[[embed]]
model = "tiny-vit"
corpus = "tiny"
modality = ["image", "caption"]
workers = 1

[[pixels]]
model = "tiny-vit"
corpus = ["tiny", "tiny_cls"]
workers = 0
"""


@pytest.fixture
def project_dir(tmp_path):
    """A project folder: clipstore.toml, a Karpathy corpus of 20 generated images, class folders."""
    return write_tiny_project(tmp_path, PROJECT, 20, lambda i, cls: [f"a {cls} with {i} green trees .",
                                                                    f"the {cls} seen from above ."])


def _sql(store, sql):
    return json.loads(run_main("--store", store, "sql", "--format", "json", sql).stdout)


def test_project_ingest_builds_then_is_up_to_date(project_dir):
    store = project_dir / "store"
    first = run_main("project", "ingest", "--config", project_dir / "clipstore.toml", "--store", store, "-q").stdout
    assert "corpus tiny: built (samples 20" in first and "corpus tiny_cls: built (samples 6" in first
    assert "split tiny_split: built (labeled" in first and "3 artifacts, 3 built, 0 up to date" in first
    assert _sql(store, "SELECT corpus, count(*) AS n FROM samples GROUP BY 1 ORDER BY 1") == \
        [{"corpus": "tiny", "n": 20}, {"corpus": "tiny_cls", "n": 6}]
    assert _sql(store, "SELECT count(DISTINCT shard) AS n FROM samples WHERE corpus = 'tiny'") == [{"n": 3}]

    again = run_main("--store", store, "-q", "project", "ingest", "--config", project_dir / "clipstore.toml").stdout
    assert "corpus tiny: up to date (samples 20" in again and "split tiny_split: up to date (" in again
    assert "3 artifacts, 0 built, 3 up to date" in again


def test_project_data_root_and_cwd_default(project_dir, tmp_path_factory):
    """--data overrides [data].root; without --config the runner reads ./clipstore.toml."""
    moved = tmp_path_factory.mktemp("elsewhere")
    (project_dir / "raw").rename(moved / "raw")
    bad = run_main("project", "ingest", "--store", project_dir / "store", "-q", cwd=project_dir, check=False)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    ok = run_main("project", "ingest", "--data", moved / "raw", "--store", project_dir / "store", "-q",
                  cwd=project_dir).stdout
    assert "corpus tiny: built (samples 20" in ok


@pytest.mark.slow
def test_project_mine_and_embed(project_dir):
    config, store = project_dir / "clipstore.toml", project_dir / "store"
    run_main("project", "ingest", "--config", config, "--store", store, "-q")
    mined = run_main("project", "mine", "--config", config, "--store", store, "-q").stdout
    assert "vocab keywords.tiny: built (vocabularies 1, keywords 5," in mined and "2 artifacts, 2 built" in mined
    five = (project_dir / "out" / "keywords" / "yake-5.txt").read_text().splitlines()
    assert len(five) == 5 and (project_dir / "out" / "keywords" / "yake-3.txt").read_text().splitlines() == five[:3]
    assert "2 artifacts, 0 built, 2 up to date" in run_main("project", "mine", "--config", config,
                                                           "--store", store, "-q").stdout
    embedded = run_main("project", "embed", "--config", config, "--store", store, "-q").stdout
    assert "tiny.image.tiny-vit: built (vectors 20" in embedded
    assert "tiny.caption.tiny-vit: built (vectors 40" in embedded
    assert "0 built, 2 up to date" in run_main("project", "embed", "--config", config, "--store", store, "-q").stdout


@pytest.mark.slow   # ingest, then a model built for its preprocessing
def test_project_pixels(project_dir):
    config, store = project_dir / "clipstore.toml", project_dir / "store"
    run_main("project", "ingest", "--config", config, "--store", store, "-q")
    cached = run_main("project", "pixels", "--config", config, "--store", store, "-q").stdout
    assert "pixels tiny.pixels.64x64-shortest-bicubic: built (images 20, height 64, width 64)" in cached
    assert "pixels tiny_cls.pixels.64x64-shortest-bicubic: built (images 6," in cached
    assert "0 built, 2 up to date" in run_main("project", "pixels", "--config", config, "--store", store,
                                               "-q").stdout


BAD = [
    # (replace this, with this, the error must say all of these)
    ('root = "raw"', 'rot = "raw"', ["unknown key 'rot' in [data]", "did you mean 'root'",
                                     "known keys of [data]: root"]),
    ('shard_size = 8', 'shard_sise = 8', ["unknown key 'shard_sise' in [[corpus]] #1 (name 'tiny')",
                                          "did you mean 'shard_size'", "image_map", "keep_missing"]),
    ('labeled_ratio', 'labeled_ratoi', ["unknown key 'labeled_ratoi' in [[split]] #1", "known keys of [[split]]:"]),
    ('top = 5', 'topp = 5', ["unknown key 'topp' in [[mine.keywords]] #1", "did you mean 'top'"]),
    ('[[mine.classnames]]', '[[mine.classname]]', ["unknown key 'classname' in [mine]",
                                                    "keywords, classnames, concepts"]),
    ('modality = ["image", "caption"]', 'modalities = ["image"]', ["unknown key 'modalities' in [[embed]] #1",
                                                                    "did you mean 'modality'"]),
    ('[[split]]', '[[splits]]', ["unknown key 'splits' in the project file",
                                 "data, corpus, split, mine, embed, pixels, train, pseudolabel"]),
    ('shard_size = 8', 'shard_size = "8"', ["shard_size in [[corpus]] #1 (name 'tiny') is '8': it must be an integer"]),
    ('shard_size = 8', 'shard_size = true', ["shard_size", "is True: it must be an integer"]),
    ('corpora = ["tiny"]\nlabeled', 'corpora = "tiny"\nlabeled', ["corpora in [[split]] #1", "a list of strings"]),
    ('corpora = ["tiny_cls"]', 'corpora = [1, 2]', ["corpora in [[mine.classnames]] #1", "a list of strings"]),
    ('seed = 0\n', '\n', ["[[split]] #1 (name 'tiny_split') lacks seed", "add seed = ..."]),
    ('labeled_ratio = 0.5', 'labeled_ratio = "half"', ["labeled_ratio", "it must be a number"]),
    ('[[embed]]', '[embed]', ["[[embed]] must be an array of tables"]),
]


@pytest.mark.parametrize("old, new, said", BAD, ids=[b[1].splitlines()[0][:24] for b in BAD])
def test_a_bad_project_file_is_a_clear_error_before_anything_runs(project_dir, old, new, said):
    config = project_dir / "clipstore.toml"
    assert old in PROJECT
    config.write_text(PROJECT.replace(old, new, 1))
    bad = run_main("project", "ingest", "--config", config, "--store", project_dir / "store", check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    for text in said:
        assert text in bad.stderr, bad.stderr
    assert str(config) in bad.stderr
    assert not (project_dir / "store").exists()  # checked before the store is opened


def test_a_missing_or_broken_project_file(tmp_path):
    bad = run_main("project", "ingest", "--config", tmp_path / "nope.toml", "--store", tmp_path / "s", check=False)
    assert bad.returncode == 2 and "no project file" in bad.stderr and "--config" in bad.stderr
    (tmp_path / "broken.toml").write_text("[[corpus]\nname = 1\n")
    bad = run_main("project", "ingest", "--config", tmp_path / "broken.toml", check=False)
    assert bad.returncode == 2 and "is not valid TOML" in bad.stderr


def test_the_repository_project_file_is_valid(shared_data):
    from conftest import REPO
    project = proj.load(REPO / "clipstore.toml", data_root=shared_data)
    assert len(project.corpora) >= 7 and project.splits[0]["name"] == "rs_all"
    assert all(c["path"].exists() for c in project.corpora)


def _api_keys(fn, skip=("store", "wait", "progress")) -> set[str]:
    return {n for n, p in inspect.signature(fn).parameters.items()
            if n not in skip and p.kind is not inspect.Parameter.VAR_KEYWORD}


def test_the_schema_follows_the_stage_apis():
    """Every key the project file accepts is an argument of its stage's API and vice versa; a new
    API argument must be added to clipstore/project.py's schema (or this test names it)."""
    from clipstore.features.embed import embed
    from clipstore.features.models import ModelSpec
    from clipstore.ingest.pipeline import ingest
    from clipstore.ingest.splits import make_split
    from clipstore.mining.classnames import mine_classnames
    from clipstore.mining.concepts import mine_concepts
    from clipstore.mining.keywords import mine_keywords
    assert set(proj.CORPUS) == (_api_keys(ingest) - {"fmt"}) | {"format"}
    assert set(proj.SPLIT) == _api_keys(make_split)
    export = {"export_sclip", "export_sizes"}  # the runner's own: export_sclip() after mining
    assert set(proj.MINE["keywords"]) == _api_keys(mine_keywords) | export
    assert set(proj.MINE["classnames"]) == _api_keys(mine_classnames) | export
    assert set(proj.MINE["concepts"]) == _api_keys(mine_concepts)
    assert set(proj.EMBED) - set(proj.MODEL_KEYS) == _api_keys(embed) - {"model"}
    from clipstore.features.pixels import cache_pixels
    assert set(proj.PIXELS) - set(proj.MODEL_KEYS) == _api_keys(cache_pixels) - {"model"}
    assert set(proj.MODEL_KEYS) <= {f.name for f in dataclasses.fields(ModelSpec)}
    from clipstore.train.config import TrainConfig
    assert set(proj.TRAIN) == {f.name for f in dataclasses.fields(TrainConfig)}
    import importlib
    assert set(proj.PSEUDOLABEL) == set(proj.PSEUDOLABEL_VERBS)
    for kind, path in proj.PSEUDOLABEL_VERBS.items():
        module, verb = path.split(":")
        api = _api_keys(getattr(importlib.import_module(module), verb))
        keys = set(proj.PSEUDOLABEL[kind])
        if "model" in api:    # the model spec is inline, as in [[embed]]
            assert keys - set(proj.MODEL_KEYS) == api - {"model"}, kind
        else:
            assert keys == api, kind


def test_a_train_entry_is_checked_like_the_others(tmp_path):
    (tmp_path / "clipstore.toml").write_text('[[train]]\nmethod = "clip"\ncorpus = "tiny"\nepochs = "two"\n')
    with pytest.raises(InputError, match="epochs in \\[\\[train\\]\\] #1 is 'two'"):
        proj.load(tmp_path / "clipstore.toml")
    (tmp_path / "clipstore.toml").write_text('[[train]]\nmethod = "clip"\ncorpus = "tiny"\nepoch = 2\n')
    with pytest.raises(InputError, match="did you mean 'epochs'"):
        proj.load(tmp_path / "clipstore.toml")
    (tmp_path / "clipstore.toml").write_text('[[train]]\nmethod = "clip"\ncorpus = "tiny"\nepochs = 2\nlr = 1\n')
    assert proj.load(tmp_path / "clipstore.toml").train == [{"method": "clip", "corpus": "tiny", "epochs": 2, "lr": 1}]
