"""`clipstore pseudolabel classes`: kNN class votes (`pseudo_classes`, producer `knn`).

Where a split's labeled images carry a class (their corpus has class labels), each unlabeled
image gets the class distribution of its labeled neighbours in the stored kNN graph over the
split's labeled and unlabeled images (features/graph.py `build_set_graph`, built or reused),
similarity-weighted (vote.py), with the winning share as confidence. Unlabeled images never
vote, so their own classes — kept in the corpus as the audit's truth — are never read.

Incremental: the recipe is the split, the image tower, the labeled images' vectors and k, not
the unlabeled set, so new unlabeled images add only their rows (voted in the graph of that
run, whose id each row carries in `graph_id`); a changed labeled set or k is a new artifact.

`pseudo_classes` is shared with label propagation (propagate.py); its audit (class accuracy
against the corpus's classes, accuracy by confidence) is here."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pyarrow as pa

from clipstore.features.pseudolabels.audit import calibration_rows, register_audit
from clipstore.features.pseudolabels.common import (check_pool, classes_by_sample, default_name,
                                                     produce_pseudolabels, resolve_vectors)
from clipstore.features.pseudolabels.tables import FLOATS, STRINGS, pseudo_schema
from clipstore.features.pseudolabels.vote import knn_vote
from clipstore.warehouse.errors import ClipstoreError, InputError
from clipstore.warehouse.store import Artifact, Store

PRODUCER = "knn"
CLI_ORDER = 40
K = 20

PSEUDO_CLASSES = pseudo_schema([
    ("image_id", pa.string()),
    ("sample_id", pa.string()),
    ("corpus", pa.string()),
    ("label", pa.string()),               # the class; null when no labeled neighbour / no anchor reached it
    ("confidence", pa.float32()),         # knn: the winning share of the vote; propagate: 1 − H/log C
    ("classes", STRINGS),                 # the distribution's classes with mass, most probable first
    ("probs", FLOATS),                    # aligned with classes, sum 1 (empty without a label)
    ("voters", pa.int32()),               # knn: labeled neighbours that voted; propagate: null
    ("zero_shot", pa.string()),           # propagate: the zero-shot class of the same vectors; knn: null
])
CLASS_TABLES = {"pseudo_classes": PSEUDO_CLASSES}


def classes(store: Store, *, split: str, model=None, embeddings: list[str] | None = None, k: int = K,
            method: str = "exact", name: str | None = None, batch_size: int = 64, workers: int | None = None,
            wait: bool = False, progress: bool = True) -> Artifact:
    """kNN class votes for the unlabeled images of `split` (see the module doc)."""
    from clipstore.features.graph import build_set_graph, load_knn_graph
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise InputError(f"--k must be a positive integer, got {k!r}", fix="e.g. --k 20")
    vectors = resolve_vectors(store, split=split, model=model, embeddings=embeddings, batch_size=batch_size,
                              workers=workers, wait=wait, progress=progress)
    nodes = len(vectors.labeled) + len(vectors.unlabeled) + sum(vectors.excluded.values())
    check_pool(k, nodes - 1, f"each image in the graph over split {split}'s labeled and unlabeled images",
               option="--k")
    truth = classes_by_sample(store, sorted(set(vectors.labeled.column("corpus"))))
    labeled_class = [truth.get(s) for s in vectors.labeled.column("sample_id")]
    if not any(c is not None for c in labeled_class):
        raise InputError(f"none of the {len(vectors.labeled)} labeled images of split {split!r} carries a class",
                         where=vectors.split.artifact_id,
                         fix="vote classes from a split over a corpus with class labels (e.g. one ingested with "
                             "`clipstore ingest imagefolder`), or use `clipstore pseudolabel propagate --corpus C`")
    graph_art = build_set_graph(store, vectors.embeddings, k, split=split, roles=["labeled", "unlabeled"],
                                method=method, wait=wait)
    class_names = sorted({c for c in labeled_class if c is not None})
    params = {**{key: v for key, v in vectors.recipe().items() if key != "unlabeled"}, "k": k, "method": method,
              "weights": "(1+sim)/2"}
    lineage = {**vectors.lineage(), "graph_id": graph_art.artifact_id}
    wanted = vectors.unlabeled.column("item_id")
    labeled_ids = dict(zip(vectors.labeled.column("item_id"), labeled_class))

    def build(run) -> None:
        if not run.todo:
            return
        graph = load_knn_graph(store, graph_art.artifact_id)
        row_of = {item: r for r, item in enumerate(graph.nodes.column("item_id").to_pylist())}
        index = {c: i for i, c in enumerate(class_names)}
        # only labeled nodes vote: an unlabeled node's class (the audit's truth) is never read
        node_class = np.asarray([index[c] if (c := labeled_ids.get(item)) is not None else -1
                                 for item in graph.nodes.column("item_id").to_pylist()], dtype=np.int64)
        targets = [row_of.get(i) for i in run.todo]
        if any(t is None for t in targets):
            raise ClipstoreError(f"internal: graph {graph_art.artifact_id} lacks unlabeled images of split {split!r}")
        votes = knn_vote(graph.neighbors, graph.sims, node_class, len(class_names), np.asarray(targets))
        u = vectors.unlabeled
        by_id = {item: r for r, item in enumerate(u.column("item_id"))}
        rows = np.asarray([by_id[i] for i in run.todo], dtype=np.int64)
        run.write({"pseudo_classes": class_rows(u, rows, class_names, votes.labels, votes.confidence,
                                                votes.distribution, voters=votes.voters)})
        run.stats.update({"k": graph.k, "graph": graph_art.artifact_id, "classes": len(class_names),
                          "no_labeled_neighbour": int((votes.labels < 0).sum())})

    name = name or default_name(split, PRODUCER, vectors.model_name)
    return produce_pseudolabels(store, producer=PRODUCER, name=name, params=params, tables=CLASS_TABLES,
                                lineage=lineage, build=build,
                                sources=vectors.embeddings + [vectors.split, graph_art], wanted=wanted,
                                config={"graph": graph_art.artifact_id}, wait=wait)


def class_rows(side, rows: np.ndarray, class_names: list[str], labels: np.ndarray, confidence: np.ndarray,
               distribution: np.ndarray, *, voters: np.ndarray | None = None,
               zero_shot: np.ndarray | None = None) -> pa.Table:
    """`pseudo_classes` rows for the side's rows `rows` (labels −1: null)."""
    names = np.asarray(class_names, dtype=object)
    ids, samples, corpora = (np.asarray(side.column(c), dtype=object)[rows] for c in ("item_id", "sample_id", "corpus"))
    listed, probs = [], []
    for p in distribution:
        order = np.argsort(-p, kind="stable")        # ties: the class listed first
        order = order[p[order] > 0]
        listed.append(names[order].tolist())
        probs.append(p[order].astype(np.float32))
    n = len(rows)
    table = {
        "image_id": pa.array(ids.tolist(), pa.string()), "sample_id": pa.array(samples.tolist(), pa.string()),
        "corpus": pa.array(corpora.tolist(), pa.string()),
        "label": pa.array([names[c] if c >= 0 else None for c in labels], pa.string()),
        "confidence": pa.array(np.asarray(confidence, dtype=np.float32)),
        "classes": pa.array(listed, STRINGS), "probs": pa.array(probs, FLOATS),
        "voters": pa.array(voters, pa.int32()) if voters is not None else pa.nulls(n, pa.int32()),
        "zero_shot": pa.array(names[zero_shot].tolist(), pa.string()) if zero_shot is not None
        else pa.nulls(n, pa.string()),
    }
    return pa.table(table)


# ---- audit ------------------------------------------------------------------------------------------
@register_audit("pseudo_classes")
def audit_classes(store: Store, rows: pa.Table) -> tuple[dict, list[dict]]:
    """Class accuracy of the labels against the images' own classes (rows without a label count
    as wrong in `accuracy`, and are left out of `accuracy_labeled`), coverage, the chance level
    of predictions with the same class frequencies, the zero-shot accuracy of the same vectors
    where the producer recorded it, and accuracy by confidence."""
    truth = classes_by_sample(store, sorted(set(rows.column("corpus").to_pylist())))
    own = [truth.get(s) for s in rows.column("sample_id").to_pylist()]
    label = rows.column("label").to_pylist()
    has = np.asarray([t is not None for t in own], dtype=bool)
    given = np.asarray([p is not None for p in label], dtype=bool)
    hit = np.asarray([t is not None and t == p for t, p in zip(own, label)], dtype=bool)
    confidence = rows.column("confidence").to_numpy(zero_copy_only=False)
    predicted = Counter(p for p, h in zip(label, has) if p is not None and h)
    actual = Counter(t for t in own if t is not None)
    chance = None
    if predicted and actual:
        n_p, n_a = sum(predicted.values()), sum(actual.values())
        chance = round(sum(actual[c] / n_a * predicted[c] / n_p for c in actual), 4)
    zs = rows.column("zero_shot").to_pylist() if "zero_shot" in rows.column_names else []
    zs_rows = np.asarray([z is not None for z in zs], dtype=bool) & has if zs else np.zeros(0, bool)

    def rate(x: np.ndarray) -> float | None:
        return round(float(np.mean(x)), 4) if len(x) else None

    summary = {"accuracy": rate(hit[has]), "chance": chance, "coverage": rate(given[has]),
               "accuracy_labeled": rate(hit[has & given]), "rows": rows.num_rows,
               "with_class_truth": int(has.sum()), "labeled_rows": int(given.sum()), "classes": len(actual),
               "mean_confidence": rate(confidence[given])}
    if zs_rows.any():
        zs_hit = np.asarray([z == t for z, t in zip(zs, own)], dtype=bool)
        summary = {"accuracy": summary.pop("accuracy"), "zero_shot_accuracy": rate(zs_hit[zs_rows]), **summary}
    mask = has & given
    calibration = calibration_rows("class_accuracy", confidence[mask], hit[mask]) if mask.any() else []
    return summary, calibration


# ---- CLI --------------------------------------------------------------------------------------------
def add_parser(sub, cli) -> None:
    p = sub.add_parser("classes", help="kNN class votes for a split's unlabeled images from its labeled ones",
                       description="Each unlabeled image's class distribution from its labeled neighbours in the "
                                   "kNN graph over the split's labeled and unlabeled images (built or reused), "
                                   "similarity-weighted, with confidence: table pseudo_classes, producer knn. "
                                   "Incremental: new unlabeled images add only their rows.")
    cli.add_vector_options(p)
    g = p.add_argument_group("vote")
    g.add_argument("--k", type=int, default=K, help="neighbours per image in the graph (default: %(default)s)")
    g.add_argument("--method", default="exact",
                   help="neighbour search: exact, or a FAISS factory such as HNSW32 (default: %(default)s)")
    p.set_defaults(func=cmd_classes)


def cmd_classes(args) -> None:
    from clipstore.cli_pseudolabel import done, store, vector_kwargs
    t0 = time.monotonic()
    art = classes(store(args), **vector_kwargs(args), k=args.k, method=args.method, name=args.name)
    done("pseudolabel classes", art, t0)
