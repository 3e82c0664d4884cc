"""What the trainer reads, and in which order.

Items: the labeled images (a split's labeled role, or every captioned image of a corpus) with
their captions, and the unlabeled images of the split, read through the warehouse (the split
manifest, the `images` and `captions` views; `clipstore.data.select`).

Order: a pure function of (seed, epoch, step), so a resumed run reads exactly what an
uninterrupted one would. An epoch is one pass over the labeled items in a seeded permutation
(the last incomplete global batch is dropped, as S-CLIP's loader does), one caption drawn per
item and epoch; unlabeled images are drawn alongside from their own stream, which cycles
through seeded permutations of the unlabeled role independently of the epochs. Each process of
a distributed run takes its slice of every global batch, so W processes with batch B read what
one process with batch W*B reads, in the same order. Augmentations are seeded per draw.

Pixels come from an `ImageSource` (`load(index) -> PIL image`): `ShardImages` reads the corpus
shards (one seek and read per image); a pixel cache plugs in with the same one method. Images a
frozen tower would encode come from the embedding cache instead (`FeatureBanks`, filled by the
loop), and then no pixel is read at all."""

from __future__ import annotations

import io
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Protocol

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from clipstore.data import select
from clipstore.warehouse.errors import InputError
from clipstore.warehouse.shards import StoredImage, decode
from clipstore.warehouse.sql import Session
from clipstore.warehouse.store import Artifact, Store

# stream ids: each seeded draw of the run has its own, so changing one never shifts another
LABELED_ORDER, CAPTION_CHOICE, UNLABELED_ORDER, LABELED_AUG, UNLABELED_AUG = range(5)


# ---- items --------------------------------------------------------------------------------
@dataclass
class Items:
    """Images of one stream, in a fixed order; labeled items also carry their captions: item i's
    are rows caption_start[i]:caption_start[i+1] of caption_ids / caption_texts."""

    label: str                                   # "target10.labeled", "synth_source"
    refs: list[StoredImage]
    corpora: list[str]
    inputs: dict[str, Artifact]                  # what was read: the split and the corpora
    caption_start: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=np.int64))
    caption_ids: list[str] = field(default_factory=list)
    caption_texts: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.refs)

    @property
    def image_ids(self) -> list[str]:
        return [r.image_id for r in self.refs]

    @property
    def caption_counts(self) -> np.ndarray:
        return np.diff(self.caption_start)


def read_items(store: Store, *, split: str | None = None, role: str | None = None, corpus: str | None = None,
               captions: bool = True) -> Items:
    """The images of a split role (manifest order) or of a corpus (shard order); with `captions`,
    only images that have one, with all their captions in ordinal order."""
    sel = select(store, split=split, role=role, corpus=corpus)
    refs = [s.image for s in sel.samples]
    corpora = [s.corpus for s in sel.samples]
    if not captions:
        return Items(sel.label, refs, corpora, sel.inputs)
    by_sample: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    names = sorted(set(corpora))
    with Session(store) as session:
        if names and "captions" in session.tables():
            rows = session.query("SELECT corpus, sample_id, caption_id, raw FROM captions WHERE "
                                 "list_contains($corpora, corpus) ORDER BY corpus, sample_id, ordinal",
                                 {"corpora": names}).to_pylist()
            for r in rows:
                by_sample[(r["corpus"], r["sample_id"])].append((r["caption_id"], r["raw"]))
    keep = [i for i, s in enumerate(sel.samples) if by_sample.get((s.corpus, s.sample_id))]
    start, ids, texts = [0], [], []
    for i in keep:
        caps = by_sample[(sel.samples[i].corpus, sel.samples[i].sample_id)]
        ids += [c for c, _ in caps]
        texts += [t for _, t in caps]
        start.append(len(ids))
    return Items(sel.label, [refs[i] for i in keep], [corpora[i] for i in keep], sel.inputs,
                 np.asarray(start, dtype=np.int64), ids, texts)


def training_items(store: Store, *, split: str | None, corpus: str | None,
                   unlabeled: bool) -> tuple[Items, Items | None]:
    """(labeled, unlabeled or None) for a run; refuses what cannot train."""
    labeled = read_items(store, split=split, role="labeled", corpus=corpus) if split else \
        read_items(store, corpus=corpus)
    if not len(labeled):
        raise InputError(f"{labeled.label} has no image with a caption to train on",
                         fix="check the split or corpus (`clipstore sql \"SELECT role, count(*) FROM splits ...\"`)")
    if not unlabeled:
        return labeled, None
    unl = read_items(store, split=split, role="unlabeled", captions=False)
    if not len(unl):
        raise InputError(f"split {split} has no unlabeled image", fix="S-CLIP needs a split with an unlabeled role")
    return labeled, unl


# ---- pixels -------------------------------------------------------------------------------
class ImageSource(Protocol):
    """Where a stream's pixels come from: the decoded RGB image of item `index`."""

    def load(self, index: int) -> Image.Image: ...


class ShardImages:
    """Images read from the corpus shards at their recorded offsets (files opened lazily, per
    process: a DataLoader worker opens its own)."""

    def __init__(self, refs: list[StoredImage]):
        self.refs = refs
        self._files: dict[Path, io.BufferedReader] = {}

    def load(self, index: int) -> Image.Image:
        ref = self.refs[index]
        f = self._files.get(ref.shard)
        if f is None:
            f = self._files[ref.shard] = open(ref.shard, "rb")
        return decode(f, ref)

    def __getstate__(self):
        return {"refs": self.refs, "_files": {}}


class CachedPixels:
    """Images from a pixel cache (clipstore.warehouse.pixels): the cached, already resized rows,
    opened lazily per process (memory maps are not sent to DataLoader workers)."""

    def __init__(self, store_root: Path, artifact_ids: list[str], rows: np.ndarray):
        self.store_root, self.artifact_ids, self.rows = Path(store_root), list(artifact_ids), rows
        self._cache = None

    def load(self, index: int) -> Image.Image:
        if self._cache is None:
            from clipstore.warehouse.pixels import open_pixel_cache
            self._cache = open_pixel_cache(Store(self.store_root, create=False), self.artifact_ids)
        return Image.fromarray(np.asarray(self._cache[int(self.rows[index])]))

    def __getstate__(self):
        return {**self.__dict__, "_cache": None}


def pixel_cache_source(store: Store, corpora: list[str], spec, image_ids: list[str]):
    """(factory refs -> CachedPixels, the pixels artifacts) for `--pixel-cache use`; an error naming
    the `clipstore pixels` command when a corpus has no cache of this spec or lacks images."""
    from clipstore.warehouse.pixels import find_pixel_cache, open_pixel_cache
    size = f"--size {spec.width}" if spec.width == spec.height else "--model M"
    arts = []
    for corpus in corpora:
        art = find_pixel_cache(store, corpus, spec)
        if art is None:
            raise InputError(f"--pixel-cache use: corpus {corpus} has no pixel cache {spec.slug}",
                             where=str(store.root), fix=f"clipstore pixels --corpus {corpus} {size} (the model's "
                                                         "eval geometry is --model M), or --pixel-cache off")
        arts.append(art)
    cache = open_pixel_cache(store, arts)
    missing = cache.missing(image_ids)
    if missing:
        raise InputError(f"--pixel-cache use: {len(missing)} images are not in the pixel cache yet",
                         fix=f"bring it up to date: clipstore pixels --corpus {' --corpus '.join(corpora)} {size}")
    ids = [a.artifact_id for a in arts]
    return (lambda refs: CachedPixels(store.root, ids, cache.rows_of([r.image_id for r in refs]))), arts


def seed_of(*keys: int) -> int:
    """A 32-bit seed from a tuple of non-negative ints (one per draw)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


# ---- the order ----------------------------------------------------------------------------
@dataclass
class Schedule:
    """Which items every step reads (see the module doc); global batches, sliced per rank."""

    seed: int
    n_labeled: int
    n_unlabeled: int
    batch: int               # labeled per process
    unlabeled: int           # unlabeled per process (0: none drawn)
    world: int = 1
    rank: int = 0
    _perms: dict = field(default_factory=dict, repr=False)

    @property
    def global_batch(self) -> int:
        return self.batch * self.world

    @property
    def global_unlabeled(self) -> int:
        return self.unlabeled * self.world

    @property
    def steps_per_epoch(self) -> int:
        return self.n_labeled // self.global_batch

    def labeled(self, epoch: int) -> np.ndarray:
        """(steps, global batch) labeled item indices of an epoch."""
        steps = self.steps_per_epoch
        perm = np.random.default_rng([self.seed, LABELED_ORDER, epoch]).permutation(self.n_labeled)
        return perm[:steps * self.global_batch].reshape(steps, self.global_batch)

    def captions(self, epoch: int, counts: np.ndarray) -> np.ndarray:
        """The caption (0..count-1) each labeled item shows in an epoch."""
        return np.random.default_rng([self.seed, CAPTION_CHOICE, epoch]).integers(0, counts)

    def unlabeled_positions(self, step: int) -> np.ndarray:
        """Draw positions of a global step's unlabeled images (the stream never restarts)."""
        return step * self.global_unlabeled + np.arange(self.global_unlabeled, dtype=np.int64)

    def unlabeled_items(self, positions: np.ndarray) -> np.ndarray:
        cycles, within = np.divmod(positions, self.n_unlabeled)
        out = np.empty(len(positions), dtype=np.int64)
        for c in np.unique(cycles):
            if c not in self._perms:
                if len(self._perms) > 2:
                    self._perms.pop(min(self._perms))
                self._perms[c] = np.random.default_rng([self.seed, UNLABELED_ORDER, c]).permutation(self.n_unlabeled)
            out[cycles == c] = self._perms[c][within[cycles == c]]
        return out

    def mine(self, row: np.ndarray, per_rank: int) -> np.ndarray:
        return row[self.rank * per_rank:(self.rank + 1) * per_rank]


class StepPixels(Dataset):
    """Item k = this process's pixels for step k of one epoch: labeled images (seeded per
    epoch and item) and unlabeled images (seeded per draw position)."""

    def __init__(self, seed: int, epoch: int, transform, labeled: ImageSource | None, labeled_rows: np.ndarray,
                 unlabeled: ImageSource | None, unlabeled_rows: np.ndarray, unlabeled_positions: np.ndarray):
        self.seed, self.epoch, self.transform = seed, epoch, transform
        self.labeled, self.labeled_rows = labeled, labeled_rows
        self.unlabeled, self.unlabeled_rows, self.positions = unlabeled, unlabeled_rows, unlabeled_positions

    def __len__(self) -> int:
        return len(self.labeled_rows)

    def _pixels(self, source: ImageSource, index: int, seed: int) -> torch.Tensor:
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only (what fork_rng restores): torch.manual_seed would also queue a
            # lazy CUDA seeding with a stack trace per image (~2 ms each on CPU)
            torch.default_generator.manual_seed(seed)
            return self.transform(source.load(int(index)))

    def __getitem__(self, k: int) -> dict:
        out = {"k": k}
        if self.labeled is not None:
            out["image"] = torch.stack([self._pixels(self.labeled, i, seed_of(self.seed, LABELED_AUG, self.epoch, i))
                                        for i in self.labeled_rows[k]])
        if self.unlabeled is not None:
            out["unlabeled"] = torch.stack([self._pixels(self.unlabeled, i, seed_of(self.seed, UNLABELED_AUG, p))
                                            for i, p in zip(self.unlabeled_rows[k], self.positions[k])])
        return out


# ---- what the loop gets -------------------------------------------------------------------
@dataclass
class Keywords:
    """A keyword vocabulary for S-CLIP's partial labels: its keywords in rank order and, per
    labeled caption row, which of them the caption contains (the mining stage's matrix)."""

    vocab: Artifact
    ids: list[str]
    texts: list[str]
    matrix: torch.Tensor                       # (labeled caption rows, M) bool


@dataclass
class CaptionTargets:
    """Global OT targets per unlabeled item: labeled caption rows and their weights (empty: none)."""

    artifact: Artifact
    rows: list[np.ndarray]
    weights: list[np.ndarray]


@dataclass
class TrainData:
    """Batches for the loop. What a batch holds follows from the run: pixels or cached features
    per tower, unlabeled images, keywords and global caption targets when the method uses them.

    Per process (gathered by the loop): image | image_features, text | text_features,
    unlabeled | unlabeled_features. Shared by every process (the whole global batch):
    labeled_index, unlabeled_index, keyword_tokens | keyword_features, keyword_labels (global
    labeled x M), target_tokens | target_features, target_weights, target_keyword_labels."""

    labeled: Items
    unlabeled: Items | None
    schedule: Schedule
    transform: Callable
    tokenizer: Callable
    device: torch.device
    pixels: bool = True                  # the image tower trains: read pixels (else cached features)
    tokens: bool = True                  # the text tower trains: tokenize (else cached features)
    keywords: Keywords | None = None
    targets: CaptionTargets | None = None
    banks: dict[str, torch.Tensor] = field(default_factory=dict)   # cached unit vectors (float16)
    workers: int = 0
    image_source: Callable[[list[StoredImage]], ImageSource] = ShardImages
    _keyword_tokens: torch.Tensor | None = None

    @property
    def steps_per_epoch(self) -> int:
        return self.schedule.steps_per_epoch

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[int, dict]]:
        """(step within the epoch, batch on the device) from step `start` to the epoch's end."""
        s = self.schedule
        rows = s.labeled(epoch)
        caption_rows = self.labeled.caption_start[:-1] + s.captions(epoch, self.labeled.caption_counts)
        steps = epoch * s.steps_per_epoch + np.arange(s.steps_per_epoch)
        positions = np.stack([s.unlabeled_positions(t) for t in steps]) if self.unlabeled is not None and \
            s.unlabeled else np.zeros((len(steps), 0), dtype=np.int64)
        unl_rows = np.stack([s.unlabeled_items(p) for p in positions]) if positions.size else positions
        mine_l = np.stack([s.mine(r, s.batch) for r in rows]) if len(rows) else rows
        mine_u = np.stack([s.mine(r, s.unlabeled) for r in unl_rows]) if unl_rows.size else unl_rows
        mine_p = np.stack([s.mine(r, s.unlabeled) for r in positions]) if positions.size else positions
        pixels = StepPixels(s.seed, epoch, self.transform,
                            self.image_source(self.labeled.refs) if self.pixels else None, mine_l,
                            self.image_source(self.unlabeled.refs) if self.pixels and unl_rows.size else None,
                            mine_u, mine_p)
        loader = DataLoader(pixels, batch_size=None, sampler=range(start, len(pixels)), num_workers=self.workers,
                            multiprocessing_context=_worker_context() if self.workers else None,
                            worker_init_fn=_worker_init if self.workers else None,
                            pin_memory=self.device.type == "cuda")
        for loaded in loader:
            k = loaded.pop("k")
            batch = self._complete(loaded, rows[k], caption_rows[rows[k]], unl_rows[k] if unl_rows.size else None,
                                   mine_l[k], mine_u[k] if unl_rows.size else None)
            yield k, {key: v.to(self.device, non_blocking=True) for key, v in batch.items()}

    def _complete(self, batch: dict, rows: np.ndarray, caption_rows: np.ndarray, unl_rows: np.ndarray | None,
                  mine_l: np.ndarray, mine_u: np.ndarray | None) -> dict:
        """Add texts, cached features and the shared tensors to a step's pixels."""
        mine_caps = caption_rows[self.schedule.rank * self.schedule.batch:][:self.schedule.batch]
        batch["labeled_index"] = torch.as_tensor(rows)
        if self.tokens:
            batch["text"] = self.tokenizer([self.labeled.caption_texts[c] for c in mine_caps])
        else:
            batch["text_features"] = self.banks["caption"][torch.as_tensor(mine_caps)]
        if not self.pixels:
            batch["image_features"] = self.banks["image"][torch.as_tensor(mine_l)]
        if unl_rows is not None:
            batch["unlabeled_index"] = torch.as_tensor(unl_rows)
            if not self.pixels:
                batch["unlabeled_features"] = self.banks["unlabeled"][torch.as_tensor(mine_u)]
        if self.keywords is not None:
            if self.tokens:
                if self._keyword_tokens is None:
                    self._keyword_tokens = self.tokenizer(self.keywords.texts)
                batch["keyword_tokens"] = self._keyword_tokens
            else:
                batch["keyword_features"] = self.banks["keyword"]
            batch["keyword_labels"] = self.keywords.matrix[torch.as_tensor(caption_rows)]
        if self.targets is not None and unl_rows is not None:
            batch.update(self._targets(unl_rows))
        return batch

    def _targets(self, unl_rows: np.ndarray) -> dict:
        """The global OT targets of a step's unlabeled images: the columns are the distinct
        labeled captions matched by any of them; each row's weights sit on its own matches."""
        t = self.targets
        columns = np.unique(np.concatenate([t.rows[u] for u in unl_rows] + [np.zeros(0, dtype=np.int64)]))
        where = {int(c): j for j, c in enumerate(columns)}
        weights = torch.zeros(len(unl_rows), len(columns))
        best = np.full(len(unl_rows), -1, dtype=np.int64)
        for i, u in enumerate(unl_rows):
            for c, w in zip(t.rows[u], t.weights[u]):
                weights[i, where[int(c)]] += float(w)
            if len(t.rows[u]):
                best[i] = t.rows[u][int(np.argmax(t.weights[u]))]
        out = {"target_weights": weights}
        if self.tokens:
            out["target_tokens"] = self.tokenizer([self.labeled.caption_texts[c] for c in columns]) if len(columns) \
                else torch.zeros((0, 1), dtype=torch.long)
        else:
            out["target_features"] = self.banks["caption"][torch.as_tensor(columns, dtype=torch.long)]
        if self.keywords is not None:
            labels = torch.zeros(len(unl_rows), len(self.keywords.ids), dtype=torch.bool)
            has = best >= 0
            labels[torch.as_tensor(has)] = self.keywords.matrix[torch.as_tensor(best[has])]
            out["target_keyword_labels"] = labels
        return out


def _worker_context():
    """Workers fork from a clean server process, as embed's do (this process runs torch's
    OpenMP pool, which is not fork-safe)."""
    from clipstore.warehouse.workers import context
    return context("forkserver", preload=["clipstore.train.data"])


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)
