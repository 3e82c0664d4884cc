"""`clipstore eval`: one evaluation run = one `evaluation` artifact.

Its recipe is the model fingerprint, the tasks (corpus, task, split, protocol, templates, class
names, seed) and the pinned versions of the corpora and embeddings it read, so the same recipe is
a no-op, and a grown corpus or another model is a new run. Every image, caption and class vector
comes from the embedding cache (embedded once per model; a cache hit runs no model pass).
The numbers are rows of the `metrics` table (and `confusion` for zero-shot)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from clipstore.eval import cache, data, metrics
from clipstore.eval.tables import CONFUSION, EVAL_TABLES, METRICS
from clipstore.warehouse.errors import ClipstoreError, InputError
from clipstore.warehouse.hashing import digest
from clipstore.warehouse.parquet import commit_part_tables
from clipstore.warehouse.sql import Session
from clipstore.warehouse.store import Artifact, Store

STAGE_VERSION = 1
ZEROSHOT, RETRIEVAL = "zeroshot", "retrieval"
PROTOCOLS = ("all", "one-caption")


@dataclass(frozen=True)
class Task:
    """One row of a suite: what to evaluate on which corpus."""

    corpus: str
    task: str                         # zeroshot | retrieval
    protocol: str | None = None       # retrieval: all | one-caption
    templates: str = "aerial"         # zero-shot template set (name or file)
    split: str | None = None          # retrieval: default val; zero-shot: None = every labelled image
    raw_names: bool = False           # zero-shot: the corpus's own class names, not the normalised ones
    seed: int = 0                     # one-caption draw

    def __post_init__(self):
        if self.task not in (ZEROSHOT, RETRIEVAL):
            raise InputError(f"unknown task {self.task!r}", fix="use zeroshot or retrieval")
        if self.task == RETRIEVAL and self.protocol not in PROTOCOLS:
            raise InputError(f"unknown retrieval protocol {self.protocol!r}", fix=f"use one of {', '.join(PROTOCOLS)}")

    @property
    def label(self) -> str:
        if self.task == ZEROSHOT:
            return f"{self.corpus} zeroshot ({self.templates}{', raw names' if self.raw_names else ''})"
        return f"{self.corpus} retrieval {self.split or 'val'} ({self.protocol})"


@dataclass
class Outcome:
    artifact: Artifact
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (task label, why)

    @property
    def run(self) -> str:
        return self.artifact.artifact_id


@dataclass
class _Prepared:
    task: Task
    recipe: dict
    inputs: list[Artifact]
    compute: object           # () -> (metric rows, confusion rows), run only when the recipe is new


def evaluate(store: Store, model, tasks: list[Task], *, name: str | None = None, label: str | None = None,
             keep_going: bool = False, progress: bool = False, wait: bool = False) -> Outcome:
    """Evaluate a model on tasks. With keep_going (suites), a task that cannot run is skipped and
    reported; otherwise its error is raised. `model` is a ModelSpec, a LoadedModel or a name.
    The run is named `name`, or eval.<label or corpus>.<model>.<digest of the recipe's parameters>."""
    if not tasks:
        raise InputError("nothing to evaluate", fix="name a corpus, or a suite whose corpora are ingested")
    loaded = cache.model_of(store, model)
    prepared, skipped = [], []
    embedded = _embedder(store, loaded, progress, wait)
    for task in tasks:
        try:
            prepared.append(_prepare(store, loaded, task, embedded))
        except ClipstoreError as exc:
            if not keep_going:
                raise
            skipped.append((task.label, exc.what))
    if not prepared:
        raise InputError("no task of this evaluation could run",
                         fix="; ".join(f"{label}: {why}" for label, why in skipped)[:2000])
    checkpoint = str(loaded.spec.checkpoint) if loaded.spec.checkpoint is not None else None
    params = {"fingerprint": loaded.fingerprint, "model": loaded.name, "checkpoint": checkpoint,
              "tasks": [p.recipe for p in prepared]}
    inputs = {a.artifact_id: a for p in prepared for a in p.inputs}
    # SQL shows the current version of each name: a default name per recipe keeps every run queryable
    what = label or (prepared[0].task.corpus if len(prepared) == 1 else "tasks")
    run_name = name or f"eval.{what}.{loaded.name}.{digest(params)[:8]}"
    started = time.monotonic()
    with store.writing(wait=wait):
        built = store.produce(kind="evaluation", name=run_name, stage="eval", version=STAGE_VERSION, params=params,
                              inputs=list(inputs.values()), tables=EVAL_TABLES,
                              config={**params, "device": str(loaded.device), "skipped": skipped})
        if isinstance(built, Artifact):
            return Outcome(built, skipped)
        with built.failing_on_error():
            base = {"run": built.artifact_id, "name": run_name, "fingerprint": loaded.fingerprint,
                    "model": loaded.name, "checkpoint": checkpoint}
            metric_rows, confusion_rows = [], []
            for p in prepared:
                m, c = p.compute()
                metric_rows += [{**base, **r} for r in m]
                confusion_rows += [{"run": built.artifact_id, **r} for r in c]
            commit_part_tables(built, 0, {"metrics": (metric_rows, METRICS), "confusion": (confusion_rows, CONFUSION)})
            headline = {f"{r['corpus']}/{r['protocol']}/{r['metric']}": round(r["value"], 2) for r in metric_rows
                        if r["metric"] in ("top1", "mR")}
            art = built.finish(counts={"tasks": len(prepared), "metrics": len(metric_rows), "skipped": len(skipped)},
                               stats={"headline": headline, "skipped": skipped, "model": loaded.name,
                                      "fingerprint": loaded.fingerprint},
                               summary={"seconds": round(time.monotonic() - started, 3), **headline})
    return Outcome(art, skipped)


def _prepare(store: Store, model, task: Task, embedded) -> _Prepared:
    """Check the task and bring its embeddings up to date; the metrics wait for compute()."""
    corpus = data.corpus_artifact(store, task.corpus)
    if task.task == ZEROSHOT:
        return _prepare_zeroshot(store, model, task, corpus, embedded)
    return _prepare_retrieval(store, model, task, corpus, embedded)


def _embedder(store: Store, model, progress: bool, wait: bool):
    """cache.cached, memoised per run: two protocols on one corpus ask the cache once."""
    memo: dict[tuple, dict[str, Artifact]] = {}

    def embedded(corpus: str, modalities: tuple[str, ...], templates: str | None,
                 class_names: tuple[str, ...] = ()) -> dict[str, Artifact]:
        key = (corpus, modalities, templates, class_names)
        if key not in memo:
            memo[key] = cache.cached(store, model, corpus, modalities, templates, class_names,
                                     progress=progress, wait=wait)
        return memo[key]

    return embedded


def _prepare_zeroshot(store, model, task: Task, corpus: Artifact, embedded) -> _Prepared:
    templates = cache.templates_of(task.templates)
    with Session(store) as session:
        labelled = data.labelled_images(session, task.corpus, task.split, task.raw_names)
    # names the corpus does not use (normalised ones) are prompted once and join its class cache
    arts = embedded(task.corpus, ("image", "classname"), task.templates, tuple(labelled.class_names))
    images_art, classes_art = arts["image"], arts["classname"]
    inputs = list(arts.values()) + [corpus]
    vocab = store.current("vocab", labelled.names_vocab) if labelled.names_vocab else None
    if vocab is not None:
        inputs.append(vocab)   # a re-mined vocabulary (other names) makes a new run
    recipe = {"corpus": task.corpus, "task": ZEROSHOT, "split": labelled.split, "templates": templates.recipe(),
              "names": labelled.names, "names_vocab": labelled.names_vocab, "class_names": labelled.class_names}

    def compute():
        images = cache.vectors_by_id(store, images_art, labelled.image_ids, "image", "images")
        classes = cache.class_vectors_from_cache(store, classes_art, labelled.class_names)
        result = metrics.zeroshot(images, classes, np.asarray(labelled.labels))
        common = {"corpus": task.corpus, "split": labelled.split, "task": ZEROSHOT, "protocol": templates.name,
                  "templates": templates.name, "names": labelled.names, "seed": None}
        rows = [{**common, "metric": k, "class": None, "value": v} for k, v in result.metrics().items()]
        rows += [{**common, "metric": "class_acc", "class": n, "value": float(a)}
                 for n, a in zip(labelled.class_names, result.per_class_accuracy())]
        rows += [{**common, "metric": "class_support", "class": n, "value": float(s)}
                 for n, s in zip(labelled.class_names, result.confusion.sum(axis=1))]
        conf = [{"corpus": task.corpus, "split": labelled.split, "templates": templates.name, "names": labelled.names,
                 "true_index": t, "true_class": labelled.class_names[t], "pred_index": p,
                 "pred_class": labelled.class_names[p], "count": int(result.confusion[t, p])}
                for t, p in zip(*np.nonzero(result.confusion))]
        return rows, conf

    return _Prepared(task, recipe, inputs, compute)


def _prepare_retrieval(store, model, task: Task, corpus: Artifact, embedded) -> _Prepared:
    split = task.split or "val"
    with Session(store) as session:
        captioned = data.captioned_images(session, task.corpus, split)
    arts = embedded(task.corpus, ("image", "caption"), None)
    images_art, captions_art = arts["image"], arts["caption"]
    seed = task.seed if task.protocol == "one-caption" else None
    recipe = {"corpus": task.corpus, "task": RETRIEVAL, "split": split, "protocol": task.protocol, "seed": seed}

    def compute():
        images = cache.vectors_by_id(store, images_art, captioned.image_ids, "image", "images")
        captions = cache.vectors_by_id(store, captions_art, captioned.caption_ids, "caption", "captions")
        result = metrics.retrieval(images, captions, np.asarray(captioned.caption_image), task.protocol, task.seed)
        common = {"corpus": task.corpus, "split": split, "task": RETRIEVAL, "protocol": task.protocol,
                  "templates": None, "names": None, "seed": seed}
        return [{**common, "metric": k, "class": None, "value": v} for k, v in result.metrics().items()], []

    return _Prepared(task, recipe, [corpus, images_art, captions_art], compute)


def task_from_dict(row: dict, where: str) -> Task:
    """A Task from a suite-file row, with a clear error naming the row."""
    known = set(Task.__dataclass_fields__)
    unknown = set(row) - known
    if unknown or "corpus" not in row or "task" not in row:
        extra = f"; unknown keys {sorted(unknown)}" if unknown else ""
        raise InputError(f"suite row {row} needs corpus and task{extra}",
                         where=where, fix=f"use the keys {', '.join(sorted(known))}")
    return Task(**row)

