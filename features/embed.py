"""`clipstore embed`: the embedding cache. One embeddings artifact per (model fingerprint, source,
modality, view spec); its recipe holds exactly those, not the source's version, so the artifact
grows with its source: only items whose id it does not hold yet are embedded, and asking again
for what is there runs no model forward at all.

Images stream from the corpus's shard tars: DataLoader workers (one per shard at a time) read the
stored bytes at their recorded offsets, decode, augment and apply the model's eval preprocess; the
main process runs the model (autocast on GPU) and commits one part per shard, in shard order. A
run killed at any point leaves a prefix of parts, and the next run embeds exactly the rest, with
the same batches, hence the same vectors. Texts are embedded in the main process, in parts of
TEXT_PART_SIZE items."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from clipstore.features import items as sources
from clipstore.features.augment import ViewSpec, parse_views
from clipstore.features.items import (CAPTION, CLASSNAME, CORPUS_MODALITIES, IMAGE, KEYWORD, MODALITIES,
                                      VOCAB_MODALITIES)
from clipstore.features.models import LoadedModel, ModelSpec, load_model
from clipstore.features.prompts import TemplateSet, prompt_item_id, template_set
from clipstore.features.vectors import EMBEDDING_TABLES, commit_vectors
from clipstore.warehouse.errors import ClipstoreError, InputError
from clipstore.warehouse.lock import check_writable
from clipstore.warehouse.shards import StoredImage, corpus_images, decode
from clipstore.warehouse.sql import Session
from clipstore.warehouse.store import Artifact, ArtifactBuilder, Store
from clipstore.warehouse.workers import context as workers_context

TEXT_PART_SIZE = 8192


@dataclass(frozen=True)
class Job:
    """One artifact to bring up to date."""

    modality: str
    source: Artifact                    # the corpus or vocabulary the items come from
    views: ViewSpec | None = None
    templates: TemplateSet | None = None
    per_template: bool = False

    @property
    def source_name(self) -> str:
        return self.source.name

    def params(self, model: LoadedModel) -> dict:
        is_vocab = self.modality in VOCAB_MODALITIES
        params = {"fingerprint": model.fingerprint, "model": model.name, "modality": self.modality,
                  "corpus": None if is_vocab else self.source_name, "vocab": self.source_name if is_vocab else None,
                  "views": self.views.recipe() if self.views else None}
        if self.templates is not None:
            params.update(templates=self.templates.recipe(), per_template=self.per_template)
        return params

    def artifact_name(self, model: LoadedModel) -> str:
        name = f"{self.source_name}.{self.modality}.{model.name}"
        if self.views:
            name += f".aug-{self.views.augment.replace(',', '+')}-s{self.views.seed}"
        if self.templates is not None and self.templates.name != "default":
            name += f".{self.templates.name}"
        return name


def embed(store: Store | str | Path, *, model: ModelSpec | LoadedModel, corpus: str | None = None,
          modality: str | tuple[str, ...] | list[str] = ("image",), vocab: str | None = None,
          classnames_corpus: str | None = None, templates: str = "default", per_template: bool = False,
          views: int = 0, augment: str | None = None, seed: int = 0, batch_size: int = 64,
          workers: int | None = None, wait: bool = False, progress: bool = True) -> list[Artifact]:
    """Embed the items of a corpus or vocabulary with a model and return the embeddings artifacts,
    one per modality (plus one for augmented image views when `views` > 0). See the module doc."""
    store = store if isinstance(store, Store) else Store(store)
    check_writable(store.root, wait=wait)   # refuse in a second, not after loading the model
    modalities = _modalities(modality)
    view_spec = parse_views(views, augment, seed)
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    if workers is not None and workers < 0:
        raise InputError(f"--workers must be >= 0, got {workers}")
    if view_spec and IMAGE not in modalities:
        raise InputError("--views augments images", fix="add image to --modality, or drop --views")
    jobs = _jobs(store, modalities, corpus, vocab, classnames_corpus, templates, per_template, view_spec)
    if IMAGE in modalities and workers != 0:
        start_worker_server()   # it imports torch while we load the model
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    with store.writing(wait=wait):
        with Session(store) as session:   # read every job's items first: the session holds the catalog open
            work = [(job, _items(store, session, job)) for job in jobs]
        return [_run(store, job, found, loaded, batch_size, workers, progress) for job, found in work]


def _modalities(modality) -> list[str]:
    names = modality.split(",") if isinstance(modality, str) else list(modality)
    names = list(dict.fromkeys(n.strip() for n in names if n and n.strip()))
    unknown = [n for n in names if n not in MODALITIES]
    if unknown or not names:
        raise InputError(f"unknown modality {', '.join(unknown) or repr(modality)}",
                         fix=f"use a comma-separated subset of {', '.join(MODALITIES)}")
    return names


def _jobs(store: Store, modalities: list[str], corpus: str | None, vocab: str | None,
          classnames_corpus: str | None, templates: str, per_template: bool, view_spec: ViewSpec | None) -> list[Job]:
    """Check every source before any work starts, so a typo in the last one costs nothing."""
    jobs = []
    for m in modalities:
        if m in CORPUS_MODALITIES:
            if not corpus:
                raise InputError(f"--modality {m} embeds a corpus", fix="add --corpus NAME")
            art = sources.corpus_artifact(store, corpus)
            jobs.append(Job(m, art))
            if m == IMAGE and view_spec:
                jobs.append(Job(m, art, views=view_spec))
        elif m in VOCAB_MODALITIES:
            jobs.append(Job(m, sources.vocab_artifact(store, vocab) if vocab else _default_vocab(store, m, corpus)))
        else:
            name = classnames_corpus or corpus
            if not name:
                raise InputError("--modality classname embeds the classes of a classification corpus",
                                 fix="add --corpus NAME (a corpus with class labels)")
            jobs.append(Job(m, sources.corpus_artifact(store, name), templates=template_set(templates),
                            per_template=per_template))
    return jobs


def _default_vocab(store: Store, modality: str, corpus: str | None) -> Artifact:
    """Without --vocab, the vocabulary mined over the whole --corpus: `mine keywords|concepts
    --corpus C` names it `keywords.C` / `concepts.C`."""
    kind = "keywords" if modality == KEYWORD else "concepts"
    mined = store.current("vocab", f"{kind}.{corpus}") if corpus else None
    if mined is not None:
        return mined
    why = f"no {kind} vocabulary of corpus {corpus} yet" if corpus else "no --corpus"
    raise InputError(f"--modality {modality} embeds a vocabulary: pass --vocab NAME ({why})",
                     fix=(f"mine it with `clipstore mine {kind} --corpus {corpus}`, or " if corpus else "")
                     + "pick one from `clipstore ls --kind vocab`")


def _items(store: Store, session: Session, job: Job) -> list:
    if job.modality == IMAGE:
        return corpus_images(store, session, job.source)
    if job.modality == CLASSNAME:
        return sources.class_prompts(session, job.source, job.templates)
    if job.modality == CAPTION:
        return sources.corpus_captions(session, job.source)
    return sources.vocab_texts(session, job.source, job.modality)


def _run(store: Store, job: Job, found: list, model: LoadedModel, batch_size: int, workers: int | None,
         progress: bool) -> Artifact:
    params = job.params(model)
    source_version = store.versions([job.source.artifact_id])[job.source.artifact_id]
    config = {**params, "identity": model.identity, "device": str(model.device), "batch_size": batch_size,
              "workers": workers, "source_artifact": job.source.artifact_id, "source_version": source_version}
    builder = store.begin(kind="embeddings", name=job.artifact_name(model), stage="embed", params=params,
                          tables=EMBEDDING_TABLES, config=config)
    with builder.failing_on_error():
        builder.add_lineage([job.source.artifact_id])  # outside the recipe: the cache grows with its source
        started = time.monotonic()
        committed = builder.committed_parts("embedding_items")
        have = _committed_keys([path for _, _, path in committed])
        first_part = max((p for p, _, _ in committed), default=-1) + 1
        if job.modality == IMAGE:
            new = _embed_images(builder, first_part, job, model, found, have, batch_size, workers, progress)
        elif job.modality == CLASSNAME:
            new = _embed_classes(builder, first_part, job, model, [c for c in found if (c.item_id, 0) not in have],
                                 batch_size)
        else:
            new = _embed_texts(builder, first_part, model, [t for t in found if (t["item_id"], 0) not in have],
                               batch_size, progress, job.source_name)
        seconds = time.monotonic() - started
        rows = len(have) + new
        counts = {"vectors": rows, "dim": model.embed_dim}
        stats = {"fingerprint": model.fingerprint, "model": model.name, "precision": model.precision,
                 "device": str(model.device), "source": {job.source.artifact_id: source_version}}
        summary = {"embedded": new, "vectors": rows, "seconds": round(seconds, 3),
                   "per_second": round(new / seconds, 1) if new and seconds > 0 else None}
        return builder.finish(counts=counts, stats=stats, summary=summary, noop=new == 0)


def _committed_keys(paths: list[Path]) -> set[tuple[str, int]]:
    keys: set[tuple[str, int]] = set()
    for path in paths:
        t = pq.read_table(str(path), columns=["item_id", "view"])
        keys.update(zip(t.column("item_id").to_pylist(), t.column("view").to_pylist()))
    return keys


# ---- images ----------------------------------------------------------------------------------
@dataclass
class ShardTask:
    """The pending (image, view) items of one shard, in byte order; becomes one part."""

    index: int
    shard: Path
    items: list[tuple[StoredImage, int]] = field(default_factory=list)


class ShardImages(IterableDataset):
    """Yields ready batches {task, pixels, last} (or {task, error}). Each worker takes every
    num_workers-th shard, so a shard is read sequentially by one process and a batch never
    mixes shards."""

    def __init__(self, tasks: list[ShardTask], preprocess, views: ViewSpec | None, batch_size: int):
        self.tasks, self.preprocess, self.views, self.batch_size = tasks, preprocess, views, batch_size

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        mine = self.tasks if info is None else self.tasks[info.id::info.num_workers]
        for task in mine:
            yield from self._batches(task)

    def _batches(self, task: ShardTask) -> Iterator[dict]:
        pixels: list[torch.Tensor] = []
        decoded: tuple[str, Image.Image] | None = None
        with open(task.shard, "rb") as tar:
            for n, (ref, view) in enumerate(task.items, start=1):
                try:
                    if decoded is None or decoded[0] != ref.image_id:   # an image's views are adjacent: decode once
                        decoded = (ref.image_id, decode(tar, ref))
                    image = self.views.apply(decoded[1], ref.image_id, view) if self.views else decoded[1]
                    pixels.append(self.preprocess(image))
                except Exception as exc:   # reported by the main process, with the shard and image
                    yield {"task": task.index, "error": f"image {ref.image_id} at byte {ref.offset}: {exc}"}
                    return
                if len(pixels) == self.batch_size or n == len(task.items):
                    yield {"task": task.index, "pixels": torch.stack(pixels), "last": n == len(task.items)}
                    pixels = []


def _worker_context():
    """Workers fork from a clean server process (imports preloaded), not from this one: this
    process runs the model on torch's OpenMP thread pool, which is not fork-safe, and the
    workers' preprocess runs torch ops too."""
    return workers_context("forkserver", preload=["clipstore.features.embed"])


def start_worker_server() -> None:
    """Start the workers' fork server now; it preloads in the background (a second or two)."""
    _worker_context()
    from multiprocessing import forkserver
    forkserver.ensure_running()


def _worker_init(_worker_id: int) -> None:
    # (the context's processes also exit with this one and ignore Ctrl-C: warehouse.workers)
    torch.set_num_threads(1)   # decode workers share the cores with the model: one thread each


IN_PROCESS_IMAGES = 256   # starting workers costs about as much as decoding this many images here


def default_workers(n_tasks: int, n_images: int) -> int:
    """Half the cores decode (the model's threads take the rest), at least one, at most one per
    shard; none for a small job (an increment of a few images), which decodes in this process."""
    if n_images <= IN_PROCESS_IMAGES:
        return 0
    return max(1, min(n_tasks, (os.cpu_count() or 2) // 2, 16))


def _image_tasks(refs: list[StoredImage], view_ids: list[int], have: set) -> list[ShardTask]:
    tasks: list[ShardTask] = []
    for shard, group in groupby(refs, key=lambda r: r.shard):
        pending = [(ref, v) for ref in group for v in view_ids if (ref.image_id, v) not in have]
        if pending:
            tasks.append(ShardTask(len(tasks), shard, pending))
    return tasks


def _embed_images(builder: ArtifactBuilder, part: int, job: Job, model: LoadedModel, refs: list[StoredImage],
                  have: set, batch_size: int, workers: int | None, progress: bool) -> int:
    view_ids = list(range(1, job.views.views + 1)) if job.views else [0]
    tasks = _image_tasks(refs, view_ids, have)
    if not tasks:
        return 0
    n_images = sum(len(t.items) for t in tasks)
    workers = default_workers(len(tasks), n_images) if workers is None else min(workers, len(tasks))
    loader = DataLoader(ShardImages(tasks, model.preprocess, job.views, batch_size), batch_size=None,
                        num_workers=workers, worker_init_fn=_worker_init if workers else None,
                        multiprocessing_context=_worker_context() if workers else None,
                        pin_memory=model.device.type == "cuda", persistent_workers=False)
    bar = _progress(progress, f"embed {job.source_name} images", n_images, "img")
    done: dict[int, list[torch.Tensor]] = {t.index: [] for t in tasks}
    finished: set[int] = set()
    next_commit, total = 0, 0
    for batch in loader:
        task = tasks[batch["task"]]
        if "error" in batch:
            raise ClipstoreError(f"cannot read an image of corpus {job.source_name}: {batch['error']}",
                                 where=str(task.shard), fix="re-ingest the corpus (the shard may be damaged)")
        done[task.index].append(model.encode_images(batch["pixels"]))
        if bar is not None:
            bar.update(len(batch["pixels"]))
        if batch["last"]:
            finished.add(task.index)
        while next_commit in finished:   # parts go in shard order, whichever worker finished first
            t = tasks[next_commit]
            rows = [{"item_id": ref.image_id, "modality": IMAGE, "view": view, "corpus": job.source_name,
                     "sample_id": ref.sample_id, "text": None} for ref, view in t.items]
            total += commit_vectors(builder, part, rows, torch.cat(done.pop(next_commit)).numpy())
            part, next_commit = part + 1, next_commit + 1
    if bar is not None:
        bar.close()
    return total


# ---- texts -----------------------------------------------------------------------------------
def _encode_texts(model: LoadedModel, texts: list[str], batch_size: int) -> np.ndarray:
    chunks = [model.encode_texts(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)]
    return torch.cat(chunks).numpy() if chunks else np.zeros((0, model.embed_dim), dtype=np.float32)


def _embed_texts(builder: ArtifactBuilder, part: int, model: LoadedModel, pending: list[dict], batch_size: int,
                 progress: bool, source: str) -> int:
    bar = _progress(progress, f"embed {source} texts", len(pending), "text")
    total = 0
    for start in range(0, len(pending), TEXT_PART_SIZE):
        chunk = pending[start:start + TEXT_PART_SIZE]
        total += commit_vectors(builder, part, chunk, _encode_texts(model, [r["text"] for r in chunk], batch_size))
        part += 1
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return total


def _embed_classes(builder: ArtifactBuilder, part: int, job: Job, model: LoadedModel,
                   classes: list[sources.ClassPrompts], batch_size: int) -> int:
    """One row per class: the renormalised mean of its normalised prompt vectors (METHODS §4);
    with per_template, also one row per prompt (modality "prompt"). Returns the rows written."""
    if not classes:
        return 0
    prompts = [p for c in classes for p in c.prompts]
    raw = _encode_texts(model, prompts, batch_size)
    unit = raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12)
    rows = [{"item_id": c.item_id, "modality": CLASSNAME, "view": 0, "corpus": job.source_name, "sample_id": None,
             "text": c.classname} for c in classes]
    vectors = [unit.reshape(len(classes), len(job.templates.templates), -1).mean(axis=1)]
    if job.per_template:
        rows += [{"item_id": prompt_item_id(p), "modality": "prompt", "view": 0, "corpus": job.source_name,
                  "sample_id": None, "text": p} for p in prompts]
        vectors.append(unit)
    return commit_vectors(builder, part, rows, np.concatenate(vectors))


def _progress(enabled: bool, desc: str, total: int, unit: str):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(desc=desc, total=total, unit=f" {unit}", dynamic_ncols=True, leave=False)
