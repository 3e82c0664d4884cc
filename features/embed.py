"""`clipstore embed`: the embedding cache. One embeddings artifact per (tower fingerprint, source,
modality, view spec): image caches key on the image tower, text caches (caption, keyword,
concept, classname) on the text tower, so a checkpoint that changed one tower reuses the other's
caches. The recipe holds exactly those, not the source's version, so the artifact grows with its
source: only items whose id it does not hold yet are embedded, and asking again for what is there
runs no model forward at all. An image is embedded once per image tower: vectors of the same
image_id (and view) already in another embeddings artifact of that tower are copied, not
recomputed (UCM captions and UCM-CLS share every image).

Images stream from the corpus's shard tars: DataLoader workers (one per shard at a time) read the
stored bytes at their recorded offsets, decode, augment and apply the model's eval preprocess; the
main process runs the model (autocast on GPU) and commits one part per shard, in shard order. A
run killed at any point leaves a prefix of parts, and the next run embeds exactly the rest, with
the same batches, hence the same vectors. When the corpus has a pixel cache of the model's
preprocessing (`clipstore pixels`, docs/pixels.md), the plain view of every shard it covers is read
from it instead, in the same batches (no decode, bit-identical inputs; checked on the first image).
Texts are embedded in the main process, in parts of
TEXT_PART_SIZE items (progress per batch). NaN/Inf outputs are refused before their part is written.
See docs/vector-sets.md and docs/models.md."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from itertools import chain, groupby
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
from clipstore.features.checkpoint_artifacts import resolve_model_spec
from clipstore.features.identity import IMAGE_TOWER, TEXT_TOWER
from clipstore.features.models import LoadedModel, ModelSpec, load_model
from clipstore.features.prompts import TemplateSet, prompt_item_id, template_set
from clipstore.features.vectors import (EMBEDDING_TABLES, check_finite, commit_unit_vectors, commit_vectors,
                                        normalise, open_embeddings)
from clipstore.warehouse.errors import ClipstoreError, InputError, NotFoundError
from clipstore.warehouse.hashing import canonical_json
from clipstore.warehouse.lock import check_writable
from clipstore.warehouse.pixels import PixelCache, PixelSpec, find_pixel_cache, open_pixel_cache
from clipstore.warehouse.pixel_tensors import to_model_input
from clipstore.warehouse.shards import StoredImage, corpus_images, decode
from clipstore.warehouse.sql import Session
from clipstore.warehouse.store import Artifact, ArtifactBuilder, Store
from clipstore.warehouse.workers import context as workers_context

TEXT_PART_SIZE = 8192
STAGE_VERSION = 1   # bump when the same model and items would give other vectors
PIXEL_CACHE_MODES = ("auto", "use", "off")   # read a pixel cache of the model's spec: if one exists / must / never


@dataclass(frozen=True)
class Job:
    """One artifact to bring up to date."""

    modality: str
    source: Artifact                    # the corpus or vocabulary the items come from
    views: ViewSpec | None = None
    templates: TemplateSet | None = None
    per_template: bool = False
    # classname: display names prompted besides the corpus's own (e.g. the normalised names of
    # `mine classnames`); items are keyed by name, so they join the same cache
    extra_names: tuple[str, ...] = ()

    @property
    def source_name(self) -> str:
        return self.source.name

    @property
    def tower(self) -> str:
        return IMAGE_TOWER if self.modality == IMAGE else TEXT_TOWER

    def params(self, model: LoadedModel) -> dict:
        """The cache key: the tower's fingerprint and what is embedded; not the model's name, so
        two models sharing a tower share its caches."""
        is_vocab = self.modality in VOCAB_MODALITIES
        params = {"fingerprint": model.tower_fingerprints[self.tower], "tower": self.tower, "modality": self.modality,
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


def embed(store: Store | str | Path, *, model: ModelSpec | LoadedModel, corpus: str | list[str] | None = None,
          split: str | None = None, modality: str | tuple[str, ...] | list[str] = ("image",), vocab: str | None = None,
          classnames_corpus: str | None = None, templates: str = "default", per_template: bool = False,
          class_names: list[str] | None = None, views: int = 0, augment: str | None = None, seed: int = 0,
          batch_size: int = 64, workers: int | None = None, pixel_cache: str = "auto", wait: bool = False,
          progress: bool = True) -> list[Artifact]:
    """Embed the items of one or more corpora (`corpus`, a name or a list; `split`: every corpus
    of that split) or of a vocabulary with a model and return the embeddings artifacts, one per
    (corpus, modality) (plus one for augmented image views when `views` > 0). `model` may be a
    spec naming a checkpoint artifact. `class_names`: display names to prompt besides a corpus's
    own classes (the normalised names of `mine classnames`). `pixel_cache`: "auto" reads the plain
    view of images from the corpus's pixel cache of the model's preprocessing when there is one
    (docs/pixels.md), "use" requires it, "off" always decodes. See the module doc."""
    if isinstance(model, LoadedModel) and model.train:
        raise InputError("a train-mode model embeds with random train transforms",
                         fix="embed with load_model(spec) (build_model(spec, train=False))")
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
    if pixel_cache not in PIXEL_CACHE_MODES:
        raise InputError(f"unknown pixel cache mode {pixel_cache!r}", fix=f"use one of {', '.join(PIXEL_CACHE_MODES)}")
    corpora = _corpora(store, corpus, split)
    jobs = _jobs(store, modalities, corpora, vocab, classnames_corpus, templates, per_template, view_spec,
                 tuple(class_names or ()))
    if IMAGE in modalities and workers != 0:
        start_worker_server()   # it imports torch while we load the model
    loaded = model if isinstance(model, LoadedModel) else load_model(resolve_model_spec(store, model))
    if pixel_cache == "use":   # refused before anything is embedded
        lacking = [j.source_name for j in jobs if j.modality == IMAGE and j.views is None
                   and find_pixel_cache(store, j.source_name, model_pixel_spec(loaded)) is None]
        if lacking:
            raise NotFoundError(f"--pixel-cache use: no pixel cache of {', '.join(lacking)} for "
                                f"{model_pixel_spec(loaded).slug} (the preprocessing of {loaded.name})",
                                where=str(store.root), fix=f"build it: clipstore pixels --corpus {lacking[0]} "
                                                           f"--model {loaded.arch} (or --pixel-cache auto)")
    with store.writing(wait=wait):
        with Session(store) as session:   # read every job's items first: the session holds the catalog open
            work = [(job, _items(store, session, job)) for job in jobs]
        return [_run(store, job, found, loaded, batch_size, workers, progress, pixel_cache) for job, found in work]


def _corpora(store: Store, corpus, split: str | None) -> list[str]:
    """The corpora to embed: --corpus (one or several), plus every corpus of --split."""
    names = [corpus] if isinstance(corpus, str) else list(corpus or [])
    if split:
        names += split_corpora(store, split)
    return list(dict.fromkeys(names))


def split_corpora(store: Store, split: str) -> list[str]:
    """The corpora a split's manifest draws from (labeled, unlabeled, val and test alike)."""
    art = store.current("split", split)
    if art is None:
        have = ", ".join(sorted(a.name for a in store.current_all("split"))) or "none yet"
        raise NotFoundError(f"no split {split!r} in the store (splits: {have})", where=str(store.root),
                            fix="make it first: clipstore split NAME --corpus A --corpus B ...")
    with Session(store) as session:
        rows = session.query("SELECT DISTINCT corpus FROM splits WHERE split = $split ORDER BY corpus",
                             {"split": split}).column("corpus").to_pylist()
    return rows


def _modalities(modality) -> list[str]:
    names = modality.split(",") if isinstance(modality, str) else list(modality)
    names = list(dict.fromkeys(n.strip() for n in names if n and n.strip()))
    unknown = [n for n in names if n not in MODALITIES]
    if unknown or not names:
        raise InputError(f"unknown modality {', '.join(unknown) or repr(modality)}",
                         fix=f"use a comma-separated subset of {', '.join(MODALITIES)}")
    return names


def _jobs(store: Store, modalities: list[str], corpora: list[str], vocab: str | None,
          classnames_corpus: str | None, templates: str, per_template: bool, view_spec: ViewSpec | None,
          extra_names: tuple[str, ...] = ()) -> list[Job]:
    """Check every source before any work starts, so a typo in the last one costs nothing."""
    jobs = []
    for m in modalities:
        if m in CORPUS_MODALITIES:
            if not corpora:
                raise InputError(f"--modality {m} embeds a corpus", fix="add --corpus NAME or --split NAME")
            for name in corpora:
                art = sources.corpus_artifact(store, name)
                jobs.append(Job(m, art))
                if m == IMAGE and view_spec:
                    jobs.append(Job(m, art, views=view_spec))
        elif m in VOCAB_MODALITIES:
            if vocab:
                jobs.append(Job(m, sources.vocab_artifact(store, vocab)))
            elif len(corpora) > 1:
                raise InputError(f"--modality {m} embeds one vocabulary; {len(corpora)} corpora give no default",
                                 fix="pass --vocab NAME (`clipstore ls --kind vocab`)")
            else:
                jobs.append(Job(m, _default_vocab(store, m, corpora[0] if corpora else None)))
        else:
            names = [classnames_corpus] if classnames_corpus else corpora
            if not names:
                raise InputError("--modality classname embeds the classes of a classification corpus",
                                 fix="add --corpus NAME (a corpus with class labels)")
            jobs += [Job(m, sources.corpus_artifact(store, name), templates=template_set(templates),
                         per_template=per_template, extra_names=extra_names) for name in names]
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
        return sources.class_prompts(session, job.source, job.templates, job.extra_names)
    if job.modality == CAPTION:
        return sources.corpus_captions(session, job.source)
    return sources.vocab_texts(session, job.source, job.modality)


def _run(store: Store, job: Job, found: list, model: LoadedModel, batch_size: int, workers: int | None,
         progress: bool, pixel_cache: str = "auto") -> Artifact:
    params = job.params(model)
    source_version = store.version_digests([job.source.artifact_id])[job.source.artifact_id]  # reported only
    config = {**params, "model": model.name, "model_fingerprint": model.fingerprint, "identity": model.identity,
              "device": str(model.device), "batch_size": batch_size, "workers": workers,
              "source_artifact": job.source.artifact_id, "source_version": source_version}
    # the source is lineage, not recipe: the cache grows with its corpus, so it never pins its version,
    # and there is no reuse check (a grown corpus adds parts to this same artifact)
    builder = store.produce(kind="embeddings", name=_cache_name(store, job, model, params), stage="embed",
                            version=STAGE_VERSION, params=params, sources=[job.source], tables=EMBEDDING_TABLES,
                            config=config, reuse=False)
    with builder.failing_on_error():
        started = time.monotonic()
        committed = builder.committed_parts("embedding_items")
        have = _committed_keys([path for _, _, path in committed])
        first_part = max((p for p, _, _ in committed), default=-1) + 1
        writer = PartWriter(builder, first_part, model.name, params["fingerprint"])
        copied, from_pixels = 0, None
        if job.modality == IMAGE:
            new, copied, from_pixels = _embed_images(store, writer, job, model, found, have, batch_size, workers,
                                                     progress, pixel_cache)
        elif job.modality == CLASSNAME:
            new = _embed_classes(writer, job, model, [c for c in found if (c.item_id, 0) not in have], batch_size)
        else:
            new = _embed_texts(writer, model, [t for t in found if (t["item_id"], 0) not in have],
                               batch_size, progress, job.source_name)
        seconds = time.monotonic() - started
        rows = len(have) + new
        counts = {"vectors": rows, "dim": model.embed_dim}
        stats = {"fingerprint": params["fingerprint"], "tower": job.tower, "model": model.name,
                 "model_fingerprint": model.fingerprint, "tower_fingerprints": dict(model.tower_fingerprints),
                 "precision": model.precision, "device": str(model.device),
                 "source": {job.source.artifact_id: source_version}}
        summary = {"embedded": new, "copied": copied, "vectors": rows, "seconds": round(seconds, 3),
                   "pixel_cache": from_pixels,
                   "per_second": round((new - copied) / seconds, 1) if new > copied and seconds > 0 else None}
        return builder.finish(counts=counts, stats=stats, summary=summary, noop=new == 0)


def _cache_name(store: Store, job: Job, model: LoadedModel, params: dict) -> str:
    """The artifact name: that of the cache this key already has (a checkpoint that left the
    tower unchanged continues the same artifact, whatever model first made it), else
    `<source>.<modality>.<model name>[.aug-...][.templates]`."""
    for art in store.list("embeddings"):       # oldest first
        if art.status != "failed" and canonical_json(art.params) == canonical_json(params):
            return art.name
    return job.artifact_name(model)


@dataclass
class PartWriter:
    """Commits an artifact's next parts, each row tagged with the model and tower fingerprint."""

    builder: ArtifactBuilder
    part: int
    model: str
    fingerprint: str

    def raw(self, items: list[dict], vectors: np.ndarray) -> int:
        n = commit_vectors(self.builder, self.part, items, vectors, model=self.model, fingerprint=self.fingerprint)
        self.part += 1
        return n

    def unit(self, items: list[dict], unit: np.ndarray, norms: np.ndarray) -> int:
        n = commit_unit_vectors(self.builder, self.part, items, unit, norms, model=self.model,
                                fingerprint=self.fingerprint)
        self.part += 1
        return n


def _committed_keys(paths: list[Path]) -> set[tuple[str, int]]:
    keys: set[tuple[str, int]] = set()
    for path in paths:
        t = pq.read_table(str(path), columns=["item_id", "view"])
        keys.update(zip(t.column("item_id").to_pylist(), t.column("view").to_pylist()))
    return keys


# ---- images ----------------------------------------------------------------------------------
@dataclass
class ShardTask:
    """The pending (image, view) items of one shard, in byte order; becomes one part. `compute`
    are those no other artifact of the image tower holds (the rest are copied)."""

    index: int
    shard: Path
    items: list[tuple[StoredImage, int]] = field(default_factory=list)
    compute: list[tuple[StoredImage, int]] = field(default_factory=list)


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
            for n, (ref, view) in enumerate(task.compute, start=1):
                try:
                    if decoded is None or decoded[0] != ref.image_id:   # an image's views are adjacent: decode once
                        decoded = (ref.image_id, decode(tar, ref))
                    image = self.views.apply(decoded[1], ref.image_id, view) if self.views else decoded[1]
                    pixels.append(self.preprocess(image))
                except Exception as exc:   # reported by the main process, with the shard and image
                    yield {"task": task.index, "error": f"image {ref.image_id} at byte {ref.offset}: {exc}"}
                    return
                if len(pixels) == self.batch_size or n == len(task.compute):
                    yield {"task": task.index, "pixels": torch.stack(pixels), "last": n == len(task.compute)}
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


@dataclass(frozen=True)
class Copy:
    """A vector another artifact of the same image tower already holds: (its part, row, norm)."""

    vectors: np.ndarray
    row: int
    norm: float


def reusable_vectors(store: Store, own_id: str, params: dict, wanted: set[tuple[str, int]]) -> dict[tuple, Copy]:
    """(image_id, view) -> the stored vector of that image in any other embeddings artifact with
    the same image-tower fingerprint and view spec (memory-mapped, nothing copied yet)."""
    donors = [a for a in store.list("embeddings") if a.artifact_id != own_id and a.status != "failed"
              and a.params.get("fingerprint") == params["fingerprint"] and a.params.get("modality") == IMAGE
              and canonical_json(a.params.get("views")) == canonical_json(params.get("views"))]
    found: dict[tuple, Copy] = {}
    if not donors or not wanted:
        return found
    parts = store.all_parts([a.artifact_id for a in donors])
    for art in donors:
        emb = open_embeddings(store, art, parts)
        by_part = {p: i for i, (p, _, _) in enumerate(parts.get((art.artifact_id, "vectors"), []))}
        cols = {c: emb.items.column(c).to_pylist() for c in ("item_id", "view", "part", "row", "norm")}
        for item, view, part, row, norm in zip(*cols.values()):
            key = (item, view)
            if key in wanted and key not in found and part in by_part:
                found[key] = Copy(emb.parts[by_part[part]], row, norm)
    return found


def _embed_images(store: Store, writer: PartWriter, job: Job, model: LoadedModel, refs: list[StoredImage],
                  have: set, batch_size: int, workers: int | None, progress: bool,
                  pixel_cache: str = "auto") -> tuple[int, int, dict | None]:
    """Embed (or copy) the pending images; returns (rows written, rows copied, what the pixel cache
    gave: its artifact and how many images, or None when none was used)."""
    view_ids = list(range(1, job.views.views + 1)) if job.views else [0]
    tasks = _image_tasks(refs, view_ids, have)
    if not tasks:
        return 0, 0, None
    copies = reusable_vectors(store, writer.builder.artifact_id, job.params(model),
                              {key for t in tasks for key in ((r.image_id, v) for r, v in t.items)})
    for t in tasks:
        t.compute = [(ref, v) for ref, v in t.items if (ref.image_id, v) not in copies]
    computing = [t for t in tasks if t.compute]
    cache, used = _usable_pixel_cache(store, job, model, computing, pixel_cache)
    cached = [t for t in computing if cache is not None and not cache.missing([r.image_id for r, _ in t.compute])]
    decoding = [t for t in computing if t not in cached]
    n_images = sum(len(t.compute) for t in computing)
    n_decode = sum(len(t.compute) for t in decoding)
    workers = default_workers(len(decoding), n_decode) if workers is None else min(workers, len(decoding))
    loader = DataLoader(ShardImages(decoding, model.preprocess, job.views, batch_size), batch_size=None,
                        num_workers=workers, worker_init_fn=_worker_init if workers else None,
                        multiprocessing_context=_worker_context() if workers else None,
                        pin_memory=model.device.type == "cuda", persistent_workers=False) if decoding else []
    if cache is not None:
        used["images"] = n_images - n_decode
    bar = _progress(progress, f"embed {job.source_name} images", n_images, "img")
    done: dict[int, list[torch.Tensor]] = {t.index: [] for t in tasks}
    finished = {t.index for t in tasks if not t.compute}
    state = {"next": 0, "total": 0}

    def commit_ready() -> None:   # parts go in shard order, whichever worker finished first
        while state["next"] in finished:
            t = tasks[state["next"]]
            state["total"] += _commit_shard(writer, job, t, done.pop(t.index), copies)
            state["next"] += 1

    commit_ready()
    for batch in chain(_cached_batches(cached, cache, model, batch_size), loader):
        task = tasks[batch["task"]]
        if "error" in batch:
            raise ClipstoreError(f"cannot read an image of corpus {job.source_name}: {batch['error']}",
                                 where=str(task.shard), fix="re-ingest the corpus (the shard may be damaged)")
        features = model.encode_images(batch["pixels"])
        check_finite(features.numpy(), f"images of shard {task.shard.name}")
        done[task.index].append(features)
        if bar is not None:
            bar.update(len(batch["pixels"]))
        if batch["last"]:
            finished.add(task.index)
        commit_ready()
    if bar is not None:
        bar.close()
    return state["total"], sum(len(t.items) - len(t.compute) for t in tasks), used


# ---- images from a pixel cache -----------------------------------------------------------------
def model_pixel_spec(model: LoadedModel) -> PixelSpec:
    """The geometric half of the model's eval transform, as a pixel cache spec."""
    return PixelSpec.from_preprocess(model.identity["preprocess"])


def _normalisation(model: LoadedModel) -> tuple[tuple, tuple]:
    """The mean/std the model's eval transform normalises with (its Normalize step itself)."""
    for t in getattr(model.preprocess, "transforms", []):
        if type(t).__name__ == "Normalize":
            return tuple(t.mean), tuple(t.std)
    cfg = model.identity["preprocess"]
    return tuple(cfg["mean"]), tuple(cfg["std"])


def _usable_pixel_cache(store: Store, job: Job, model: LoadedModel, computing: list[ShardTask],
                        mode: str) -> tuple[PixelCache | None, dict | None]:
    """The corpus's pixel cache of the model's spec, when the mode allows it, one exists and its
    first pending image equals the decoded path's tensor exactly (a cache written by another Pillow
    or decoder build may not); else (None, why it was not used)."""
    if mode == "off" or job.views is not None or not computing:
        return None, None
    spec = model_pixel_spec(model)
    art = find_pixel_cache(store, job.source_name, spec)
    if art is None:
        if mode == "use":
            raise NotFoundError(f"no pixel cache of corpus {job.source_name} for {spec.slug} (the preprocessing "
                                f"of {model.name})", where=str(store.root),
                                fix=f"build it: clipstore pixels --corpus {job.source_name} --model {model.arch}, "
                                    "or embed with --pixel-cache auto")
        return None, None
    cache = open_pixel_cache(store, art)
    probe = next((ref for t in computing for ref, _ in t.compute if ref.image_id in cache), None)
    if probe is None:
        return None, {"artifact": art.artifact_id, "images": 0, "why": "holds none of the pending images"}
    with open(probe.shard, "rb") as tar:
        decoded = model.preprocess(decode(tar, probe))
    mean, std = _normalisation(model)
    if not torch.equal(decoded, to_model_input(cache.images([probe.image_id]), mean, std)[0]):
        if mode == "use":
            raise ClipstoreError(f"the pixel cache {art.artifact_id} differs from decoding image {probe.image_id}",
                                 where=str(art.path), fix="rebuild it (a new Pillow?) or embed with --pixel-cache off")
        return None, {"artifact": art.artifact_id, "images": 0, "why": f"differs from decoding {probe.image_id}"}
    return cache, {"artifact": art.artifact_id, "images": 0}


def _cached_batches(tasks: list[ShardTask], cache: PixelCache | None, model: LoadedModel,
                    batch_size: int) -> Iterator[dict]:
    """The batches ShardImages would yield for these tasks (same items, same boundaries), made from
    the cache's rows: no decode. On a GPU the uint8 rows travel and are normalised there."""
    if not tasks:
        return
    mean, std = _normalisation(model)
    device = model.device if model.device.type == "cuda" else None
    for task in tasks:
        rows = cache.rows_of([ref.image_id for ref, _ in task.compute])
        for start in range(0, len(rows), batch_size):
            chunk = cache.gather(rows[start:start + batch_size])
            if device is not None:
                chunk = torch.from_numpy(chunk).pin_memory()
            yield {"task": task.index, "pixels": to_model_input(chunk, mean, std, device),
                   "last": start + batch_size >= len(rows)}


def _commit_shard(writer: PartWriter, job: Job, task: ShardTask, computed: list[torch.Tensor],
                  copies: dict[tuple, Copy]) -> int:
    rows = [{"item_id": ref.image_id, "modality": IMAGE, "view": view, "corpus": job.source_name,
             "sample_id": ref.sample_id, "text": None} for ref, view in task.items]
    if not copies:
        return writer.raw(rows, torch.cat(computed).numpy())
    unit, norms = (normalise(torch.cat(computed).numpy()) if computed else
                   (np.zeros((0, 0), dtype=np.float16), np.zeros(0, dtype=np.float32)))
    out_unit, out_norms, fresh = [], [], 0
    for ref, view in task.items:
        hit = copies.get((ref.image_id, view))
        if hit is None:
            out_unit.append(unit[fresh])
            out_norms.append(norms[fresh])
            fresh += 1
        else:
            out_unit.append(np.asarray(hit.vectors[hit.row]))
            out_norms.append(hit.norm)
    return writer.unit(rows, np.stack(out_unit), np.asarray(out_norms, dtype=np.float32))


# ---- texts ----------------------------------------------------------------------------------
def _encode_texts(model: LoadedModel, texts: list[str], batch_size: int, bar=None) -> np.ndarray:
    chunks = []
    for i in range(0, len(texts), batch_size):
        chunk = model.encode_texts(texts[i:i + batch_size])
        check_finite(chunk.numpy(), "texts")
        chunks.append(chunk)
        if bar is not None:
            bar.update(len(chunk))
    return torch.cat(chunks).numpy() if chunks else np.zeros((0, model.embed_dim), dtype=np.float32)


def _embed_texts(writer: PartWriter, model: LoadedModel, pending: list[dict], batch_size: int,
                 progress: bool, source: str) -> int:
    bar = _progress(progress, f"embed {source} texts", len(pending), "text")
    total = 0
    for start in range(0, len(pending), TEXT_PART_SIZE):
        chunk = pending[start:start + TEXT_PART_SIZE]
        total += writer.raw(chunk, _encode_texts(model, [r["text"] for r in chunk], batch_size, bar))
    if bar is not None:
        bar.close()
    return total


def _embed_classes(writer: PartWriter, job: Job, model: LoadedModel, classes: list[sources.ClassPrompts],
                   batch_size: int) -> int:
    """One row per class: the renormalised mean of its normalised prompt vectors (docs/models.md);
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
    return writer.raw(rows, np.concatenate(vectors))


def _progress(enabled: bool, desc: str, total: int, unit: str):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(desc=desc, total=total, unit=f" {unit}", dynamic_ncols=True, leave=False)   # total, rate and ETA
