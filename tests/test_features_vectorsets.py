"""Vector sets and graphs across corpora, on real UC Merced images: an image shared by two corpora
is embedded once per image tower, `embed --split` embeds every corpus of a split, one kNN graph
spans a split's corpora (roles recorded), the graph reads back as a typed object with a CSR view,
and a vector set reads the stored parts without copying them."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from clipstore.cli import build_parser, main
from clipstore.features.embed import embed
from clipstore.features.graph import build_set_graph, build_split_graph, load_knn_graph
from clipstore.features.knn import self_knn
from clipstore.features.models import ModelSpec, load_model
from clipstore.features.vectors import load_embeddings
from clipstore.features.vectorset import find_embeddings, vector_set
from clipstore.ingest.pipeline import ingest
from clipstore.ingest.splits import make_split
from clipstore.warehouse.errors import InputError, NotFoundError
from clipstore.warehouse.sql import query
from conftest import karpathy_from_real_images, real_ucm_tiffs
from test_features_embed import forward_counter


@pytest.fixture(scope="module")
def tiny():
    return load_model(ModelSpec("tiny-vit"))


def caption_and_class_corpora(store, shared_data, tmp_path, n=8, shard_size=3):
    """`caps`: a Karpathy corpus of n real UCM TIFFs (train and val); `cls`: the same TIFFs as an
    imagefolder (UCM-CLS to UCM captions: every image id shared); `more`: 4 other TIFFs."""
    karpathy_from_real_images(shared_data, tmp_path / "caps", n, splits=("train", "train", "val"))
    ingest(store, "karpathy", tmp_path / "caps", name="caps", shard_size=shard_size, workers=1, progress=False)
    for f in real_ucm_tiffs(shared_data, n):
        (tmp_path / "cls" / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, tmp_path / "cls" / f.parent.name / f.name)
    ingest(store, "imagefolder", tmp_path / "cls", name="cls", shard_size=shard_size, workers=1, progress=False)
    others = real_ucm_tiffs(shared_data, n + 4)[n:]
    for i, f in enumerate(others):
        (tmp_path / "more" / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, tmp_path / "more" / f.parent.name / f"x{i}.tif")
    ingest(store, "imagefolder", tmp_path / "more", name="more", workers=1, progress=False)


@pytest.mark.slow
def test_an_image_reached_through_a_second_corpus_is_copied_not_recomputed(store, tmp_path, shared_data, tiny):
    caption_and_class_corpora(store, shared_data, tmp_path)
    [caps] = embed(store, model=tiny, corpus="caps", workers=0, progress=False)
    with forward_counter(tiny) as seen:
        [cls] = embed(store, model=tiny, corpus="cls", workers=0, progress=False)
    assert seen["images"] == 0                                   # all 8 images were embedded for `caps`
    assert cls.artifact_id != caps.artifact_id and cls.counts["vectors"] == 8
    a, b = load_embeddings(store, caps.artifact_id), load_embeddings(store, cls.artifact_id)
    by_a = dict(zip(a.ids, np.asarray(a.matrix())))
    for item, vector in zip(b.ids, np.asarray(b.matrix())):
        assert np.array_equal(vector, by_a[item])                # the stored bytes, copied
    norms = dict(zip(a.ids, a.items.column("norm").to_pylist()))
    assert b.items.column("norm").to_pylist() == [norms[i] for i in b.ids]
    # the copy's rows are its own: this corpus, its samples
    assert set(b.items.column("corpus").to_pylist()) == {"cls"}
    cls_samples = set(query(store, "SELECT sample_id FROM samples WHERE corpus = 'cls'").column("sample_id")
                      .to_pylist())
    assert set(b.items.column("sample_id").to_pylist()) == cls_samples
    run = query(store, "SELECT summary FROM runs WHERE artifact_id = ? AND status = 'done'",
                [cls.artifact_id]).column("summary")[0].as_py()
    assert '"copied": 8' in run

    with forward_counter(tiny) as seen:                          # a new corpus: only its own images
        embed(store, model=tiny, corpus="more", workers=0, progress=False)
    assert seen["images"] == 4
    other = load_model(ModelSpec("tiny-rn"))                     # another image tower copies nothing
    with forward_counter(other) as seen:
        embed(store, model=other, corpus="cls", workers=0, progress=False)
    assert seen["images"] == 8


@pytest.mark.slow
def test_embedding_items_name_their_artifact_model_and_fingerprint(store, tmp_path, shared_data, tiny):
    caption_and_class_corpora(store, shared_data, tmp_path, n=4)
    rn = load_model(ModelSpec("tiny-rn"))
    for model in (tiny, rn):
        embed(store, model=model, corpus="caps", modality="image,caption", workers=0, progress=False)
    rows = query(store, "SELECT model, modality, fingerprint, count(*) AS n, count(DISTINCT artifact_id) AS arts "
                        "FROM embedding_items GROUP BY ALL ORDER BY ALL").to_pylist()
    assert rows == sorted([
        {"model": "tiny-rn", "modality": "caption", "fingerprint": rn.text_fingerprint, "n": 8, "arts": 1},
        {"model": "tiny-rn", "modality": "image", "fingerprint": rn.image_fingerprint, "n": 4, "arts": 1},
        {"model": "tiny-vit", "modality": "caption", "fingerprint": tiny.text_fingerprint, "n": 8, "arts": 1},
        {"model": "tiny-vit", "modality": "image", "fingerprint": tiny.image_fingerprint, "n": 4, "arts": 1},
    ], key=lambda r: (r["model"], r["modality"], r["fingerprint"]))
    joined = query(store, "SELECT count(*) AS n FROM embedding_items e JOIN artifacts a USING (artifact_id) "
                          "WHERE a.kind = 'embeddings'").column("n")[0].as_py()
    assert joined == 24


@pytest.mark.slow
def test_a_vector_set_reads_the_parts_in_place(store, tmp_path, shared_data, tiny):
    caption_and_class_corpora(store, shared_data, tmp_path, n=8, shard_size=3)
    caps, more = (embed(store, model=tiny, corpus=c, workers=0, progress=False)[0] for c in ("caps", "more"))
    one = vector_set(store, [more])                              # one artifact of one part
    assert len(store.parts(more.artifact_id, "vectors")) == 1
    assert isinstance(one.matrix(), np.memmap)                   # the stored file itself, no copy
    both = vector_set(store, [caps, more])
    assert len(both) == 12 and both.corpora == ["caps", "more"] and both.dim == tiny.embed_dim
    segments = list(both.segments())
    assert [start for start, _ in segments] == [0, 3, 6, 8]     # parts of 3, 3, 2 images, then `more`
    assert all(isinstance(v, np.memmap) for _, v in segments)    # views of the memory maps
    matrix = both.matrix()
    stored = np.concatenate([np.asarray(load_embeddings(store, a.artifact_id).matrix()) for a in (caps, more)])
    assert np.array_equal(matrix, stored)
    rows = np.array([11, 0, 5, 6])
    assert np.array_equal(both.take(rows), matrix[rows])
    ids = both.ids
    assert both.row_of(ids[7]) == 7 and both.row_of("nope") is None
    assert both.rows_of([ids[2], "nope"]).tolist() == [2, -1]
    # an image held by two artifacts is one item of the set, from the first
    cls = embed(store, model=tiny, corpus="cls", workers=0, progress=False)[0]
    merged = vector_set(store, [caps, cls])
    assert len(merged) == 8 and set(merged.items.column("embeddings_id").to_pylist()) == {caps.artifact_id}
    assert len(vector_set(store, [caps, cls], distinct=False)) == 16
    assert find_embeddings(store, tiny.image_fingerprint, corpora=["cls", "caps"]) == [cls, caps]
    rn = embed(store, model=load_model(ModelSpec("tiny-rn")), corpus="more", workers=0, progress=False)[0]
    with pytest.raises(InputError, match="one tower's vectors"):
        vector_set(store, [caps, rn])


@pytest.mark.slow
def test_a_split_is_embedded_and_linked_as_one_graph(store, tmp_path, shared_data, tiny):
    caption_and_class_corpora(store, shared_data, tmp_path, n=9)
    make_split(store, "shift", corpora=["caps"], unlabeled_corpora=["more"], labeled_ratio=0.5, seed=0)
    split_rows = query(store, "SELECT role, corpus, image_id FROM splits WHERE split = 'shift'").to_pylist()
    assert {r["corpus"] for r in split_rows} == {"caps", "more"}

    with forward_counter(tiny) as seen:
        arts = embed(store, model=tiny, split="shift", workers=0, progress=False)
    assert sorted(a.params["corpus"] for a in arts) == ["caps", "more"] and seen["images"] == 9 + 4

    graph = build_split_graph(store, ModelSpec("tiny-vit"), k=4, split="shift", workers=0, progress=False)
    assert graph.name == "shift.image.tiny-vit.knn4" and graph.params["split"] == "shift"
    in_split = {}
    for r in {(r["corpus"], r["image_id"]) for r in split_rows}:
        in_split[r[0]] = in_split.get(r[0], 0) + 1
    assert graph.stats["corpora"] == in_split == {"caps": 6, "more": 4}    # caps' other train images: not in the split
    roles = {}
    for r in split_rows:
        roles[r["role"]] = roles.get(r["role"], 0) + 1
    assert graph.stats["roles"] == dict(sorted(roles.items()))
    assert sorted(graph.inputs) == sorted([a.artifact_id for a in arts] + [store.current("split", "shift").artifact_id])

    g = load_knn_graph(store, graph.artifact_id)
    assert len(g) == 10 and g.k == 4
    by_image = {r["image_id"]: r["role"] for r in split_rows}
    assert [by_image[i] for i in g.ids] == g.nodes.column("role").to_pylist()
    vset = vector_set(store, arts, split="shift")
    assert g.ids.tolist() == vset.ids.tolist()
    ref_idx, ref_sims = self_knn(vset.matrix(), 4)
    assert (g.neighbors == ref_idx).all() and np.allclose(g.sims, ref_sims)
    csr = g.csr()
    assert csr.shape == (10, 10) and csr.nnz == 10 * 4
    assert csr[0, int(ref_idx[0, 0])] == pytest.approx(float(ref_sims[0, 0]))
    src, dst, sim = g.edges()
    assert len(src) == 40 and not (src == dst).any()

    # the same request again: nothing embedded, the graph reused
    with forward_counter(tiny) as seen:
        again = build_split_graph(store, tiny, k=4, split="shift", workers=0, progress=False)
    assert again.artifact_id == graph.artifact_id and again.noop and seen == {"images": 0, "texts": 0}
    # one role only: the labeled images of caps
    labeled = build_split_graph(store, tiny, k=2, split="shift", roles=["labeled"], workers=0, progress=False)
    assert labeled.name.endswith(".labeled") and set(labeled.stats["roles"]) == {"labeled"}
    assert labeled.counts["nodes"] == roles["labeled"]
    # several corpora, no split: every image of each, once
    over = build_set_graph(store, arts, k=3)
    assert over.stats["corpora"] == {"caps": 9, "more": 4} and over.stats["roles"] is None
    with pytest.raises(NotFoundError, match="no split 'nope'"):
        build_split_graph(store, tiny, k=3, split="nope", progress=False)
    with pytest.raises(InputError, match="not both"):
        build_split_graph(store, tiny, k=3, split="shift", corpora=["caps"], progress=False)


@pytest.mark.slow
def test_knn_over_corpora_from_the_command_line(store, tmp_path, shared_data, capsys):
    caption_and_class_corpora(store, shared_data, tmp_path, n=4)
    argv = ["--store", str(store.root), "-q", "knn", "--corpus", "caps", "--corpus", "more", "--model", "tiny-vit",
            "--k", "3", "--workers", "0"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "knn caps+more.image.tiny-vit.knn3: nodes 8, edges 24 over caps 4, more 4, exact" in out
    make_split(store, "both", corpora=["caps"], unlabeled_corpora=["more"], labeled_ratio=0.5, seed=0)
    assert main(["--store", str(store.root), "-q", "embed", "--model", "tiny-vit", "--split", "both",
                 "--modality", "image,caption", "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "caps.image.tiny-vit: vectors 4" in out and "more.image.tiny-vit: vectors 4" in out
    assert "caps.caption.tiny-vit: vectors 8" in out
    assert main(["--store", str(store.root), "-q", "knn", "--split", "both", "--role", "labeled", "--role",
                 "unlabeled", "--model", "tiny-vit", "--k", "2"]) == 0
    out = capsys.readouterr().out
    counts = query(store, "SELECT role, count(*) AS n FROM splits WHERE split = 'both' GROUP BY role").to_pylist()
    roles = {r["role"]: r["n"] for r in counts}
    assert roles["unlabeled"] == 4 and roles["labeled"] >= 1
    assert (f"knn both.image.tiny-vit.knn2.labeled+unlabeled: nodes {roles['labeled'] + 4}" in out
            and f"(labeled {roles['labeled']}, unlabeled 4)" in out)
    assert main(["--store", str(store.root), "-q", "knn", "--corpus", "caps", "--k", "3"]) == 2
    assert "needs --model" in capsys.readouterr().err
    assert main(["--store", str(store.root), "-q", "knn", "--embeddings", "x", "--split", "s"]) == 2
    parser = build_parser()
    for command in ("knn", "embed", "index", "dedup", "neighbors"):
        sub = parser._subparsers._group_actions[0].choices[command]
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{command} {action.option_strings} has no help"
                if action.default not in (None, False, [], "==SUPPRESS=="):
                    assert "default" in action.help, f"{command} {action.option_strings}: no default in help"
